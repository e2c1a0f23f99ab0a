"""`export --format tensorrt`: the TensorRT ONNX graph, then a TensorRT engine.

The graph follows the fold's format: int folds take the plugin graph (variant
"tensorrt-plugins", trt/plugin_graph.py), nvfp4 folds TensorRT's native FP4 graph (variant
"tensorrt-nvfp4", trt/native_fp4.py: TRT_FP4DynamicQuantize and FLOAT4E2M1 double-DQ
weights, no plugin; refused for learned activation clips); mxfp4 has no TensorRT graph.

    OUT/
      model.onnx (+ model.onnx.data)  the W4A4 graph: FaircalibW4A4* plugin nodes, or
                                      TensorRT's FP4 ops
      runtime.json                    as for the ONNX export, variant "tensorrt-plugins" or
                                      "tensorrt-nvfp4", plus "target", "plugins" (null for
                                      the native graph) and "engine" (null until built)
      model.engine                    serialized engine (when TensorRT is importable)
      engine.json                     what built it: TensorRT version, device, target,
                                      optimization profile, plugin library hash, timings
      build.log                       TensorRT's log of the parse and build
      tokenizer files, manifest.json

The graph and runtime.json are written atomically first, so a machine without TensorRT
still produces a complete graph (and a typed `TensorRTUnavailableError` saying what is
missing). `build_engine(OUT, ...)` builds the engine later from that directory on a
machine that has TensorRT and a GPU, plus the plugin library (runtimes/tensorrt) for the
plugin graph or a Blackwell GPU (compute capability >= 10.0) for the native FP4 graph.
The native graph's engine build (a strongly typed network) and `TensorRTBackend` on its
engine have not been run on a Blackwell GPU yet.

Engines are specific to the GPU architecture they are built on; engine.json records the
device next to the target and warns when they differ. The builder runs the non-plugin
layers in float32 with TF32 disabled (the plugins do the W4A4 work; attention and norms stay
as close to the PyTorch reference as TensorRT allows).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..artifacts import (
    TENSORRT_FP4_VARIANT,
    TENSORRT_VARIANT,
    file_sha256,
    package_versions,
    read_json,
)
from ..errors import ConfigError
from .errors import EngineBuildError, PluginLibraryError, TensorRTError, TensorRTUnavailableError
from .targets import Target, load_target

VARIANT = TENSORRT_VARIANT
NATIVE_FP4_VARIANT = TENSORRT_FP4_VARIANT
ENGINE_FILE = "model.engine"
ENGINE_JSON = "engine.json"
BUILD_LOG = "build.log"
PLUGIN_LIBRARY = "libfaircalib_trt_plugins.so"
PLUGIN_ENV = "FAIRCALIB_TRT_PLUGINS"
DEFAULT_WORKSPACE_GIB = 4.0
REPO_BUILD = Path(__file__).resolve().parents[2] / "runtimes" / "tensorrt" / "build"
BUILD_HINT = ("build it with `cmake -S runtimes/tensorrt -B runtimes/tensorrt/build "
              "-DTENSORRT_ROOT=<TensorRT prefix> && cmake --build runtimes/tensorrt/build`, "
              f"or point ${PLUGIN_ENV} at it")


@dataclass(frozen=True)
class TensorRTExport:
    directory: Path
    onnx: Path
    engine: Path | None


def find_plugin_library(explicit: str | Path | None = None) -> Path:
    """The plugin library: the given path, $FAIRCALIB_TRT_PLUGINS, or the source build."""
    for candidate, origin in ((explicit, "the given path"),
                              (os.environ.get(PLUGIN_ENV), f"${PLUGIN_ENV}")):
        if candidate:
            path = Path(candidate)
            if not path.is_file():
                raise PluginLibraryError(f"plugin library {path} ({origin}) does not exist")
            return path
    path = REPO_BUILD / PLUGIN_LIBRARY
    if path.is_file():
        return path
    raise PluginLibraryError(f"the TensorRT plugin library {PLUGIN_LIBRARY} was not found; "
                             + BUILD_HINT)


_LOADED_LIBRARIES: dict[str, object] = {}  # this process's plugin library handles


def _creators_registered(registry) -> bool:
    from .plugin_graph import PLUGIN_NAMESPACE, PLUGIN_VERSION, QUANTIZE_OP

    for getter in ("get_creator", "get_plugin_creator"):  # TensorRT 10+, older
        fn = getattr(registry, getter, None)
        try:
            if fn is not None and fn(QUANTIZE_OP, PLUGIN_VERSION, PLUGIN_NAMESPACE) is not None:
                return True
        except Exception:  # a lookup miss raises in some TensorRT versions
            continue
    return False


def load_plugins(trt, library: Path) -> None:
    """Register the plugin creators once per process (TensorRT refuses a second load)."""
    key = str(Path(library).resolve())
    if key in _LOADED_LIBRARIES:
        return
    registry = trt.get_plugin_registry()
    if _creators_registered(registry):
        _LOADED_LIBRARIES[key] = None
        return
    try:
        handle = registry.load_library(key)
    except Exception as err:  # TensorRT raises its own types
        raise PluginLibraryError(f"TensorRT could not load the plugin library {key}: {err}"
                                 ) from None
    if handle is None:
        raise PluginLibraryError(f"TensorRT could not load the plugin library {key} "
                                 f"(built for another TensorRT or CUDA version?)")
    _LOADED_LIBRARIES[key] = handle


def import_tensorrt():
    try:
        import tensorrt
    except ImportError as err:
        raise TensorRTUnavailableError(
            f"the `tensorrt` Python package is not importable ({err}); install TensorRT 10+ "
            f"(pip install 'faircalib-export[tensorrt]') on a machine with an NVIDIA GPU"
        ) from None
    return tensorrt


def write_plugin_onnx(deploy_dir: str | Path, out_dir: str | Path, target: str | Target, *,
                      head_precision: str = "fp32", external_data: bool | None = None,
                      overwrite: bool = False) -> Path:
    """Write OUT/model.onnx (plugin nodes), runtime.json, tokenizer and manifest."""
    from ..export.graph import GraphBuilder
    from ..export.onnx_export import write_export_dir
    from ..fold.deployed import read_deploy
    from .plugin_graph import (
        GEMM_OP,
        PLUGIN_DOMAIN,
        PLUGIN_NAMESPACE,
        PLUGIN_VERSION,
        QUANTIZE_OP,
        PluginWriter,
    )

    target = load_target(target)
    deploy_dir = Path(deploy_dir)
    meta, tensors = read_deploy(deploy_dir)
    builder = GraphBuilder(f"faircalib-{meta['family']}-{VARIANT}")
    PluginWriter(builder, meta, tensors, head_precision).build()
    extra = {
        "plugins": {"domain": PLUGIN_DOMAIN, "ops": [QUANTIZE_OP, GEMM_OP],
                    "version": PLUGIN_VERSION, "namespace": PLUGIN_NAMESPACE,
                    "library": PLUGIN_LIBRARY},
        "target": target.to_dict(), "engine": None, "head_precision": head_precision,
    }
    return write_export_dir(builder.model({PLUGIN_DOMAIN: 1}), deploy_dir, meta, out_dir,
                            variant=VARIANT, external_data=external_data, kind="tensorrt",
                            extra=extra, overwrite=overwrite)


def write_native_fp4_onnx(deploy_dir: str | Path, out_dir: str | Path, target: str | Target,
                          *, head_precision: str = "fp32", external_data: bool | None = None,
                          overwrite: bool = False) -> Path:
    """Write OUT/model.onnx (TensorRT's native NVFP4 ops), runtime.json, tokenizer and
    manifest; refuses a fold the native graph cannot reproduce (`check_native_fp4`)."""
    from ..export.graph import FP4_IR_VERSION, FP4_OPSET, GraphBuilder
    from ..export.onnx_export import write_export_dir
    from ..fold.deployed import read_deploy
    from .native_fp4 import DOUBLE_QUANT_SCALE, DYNAMIC_QUANTIZE_OP, TRT_DOMAIN, NativeFP4Writer

    target = load_target(target)
    deploy_dir = Path(deploy_dir)
    meta, tensors = read_deploy(deploy_dir)
    builder = GraphBuilder(f"faircalib-{meta['family']}-{NATIVE_FP4_VARIANT}")
    writer = NativeFP4Writer(builder, meta, tensors, head_precision)
    writer.build()
    extra = {
        "plugins": None, "quant_format": writer.format.value,
        "fp4": {"domain": TRT_DOMAIN, "op": DYNAMIC_QUANTIZE_OP,
                "block_size": writer.format.block_size,
                "double_quant_scale": DOUBLE_QUANT_SCALE,
                "token_scale": "max|x_row| / 2688, divided out before the op and "
                               "multiplied into the GEMM output"},
        "target": target.to_dict(), "engine": None, "head_precision": head_precision,
    }
    model = builder.model({TRT_DOMAIN: 1}, opset=FP4_OPSET, ir_version=FP4_IR_VERSION)
    return write_export_dir(model, deploy_dir, meta, out_dir, variant=NATIVE_FP4_VARIANT,
                            external_data=external_data, kind="tensorrt", extra=extra,
                            overwrite=overwrite)


def _write_atomic(path: Path, data: bytes | str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data) if isinstance(data, bytes) else tmp.write_text(data)
    tmp.replace(path)


def _collecting_logger(trt, lines: list[str]):
    class CollectingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity, msg) -> None:
            lines.append(f"[{getattr(severity, 'name', severity)}] {msg}")

    return CollectingLogger()


def _device_summary() -> dict:
    try:
        from .cuda import CudaRuntime

        cuda = CudaRuntime()
        major, minor = cuda.capability(0)
        _, total = cuda.mem_info()
        return {"compute_capability": f"{major}.{minor}", "memory_gib": round(total / 2**30, 2)}
    except TensorRTError as err:
        return {"error": str(err)}


def _profile(config: dict, max_batch: int, max_seq: int) -> dict[str, tuple]:
    """(min, opt, max) shape per engine input; the KV-cache input's past runs from 0 (the
    backend feeds an empty past) to max_seq."""
    shapes = {name: ((1, 1), (max_batch, max_seq), (max_batch, max_seq))
              for name in config["inputs"]}
    cache = config.get("cache")
    if cache is not None:
        layers, two, _, kv_heads, _, head_dim = cache["shape"]
        dims = lambda batch, past: (layers, two, batch, kv_heads, past, head_dim)  # noqa: E731
        shapes[cache["input"]] = (dims(1, 0), dims(max_batch, 0), dims(max_batch, max_seq))
    return shapes


def build_engine(export_dir: str | Path, target: str | Target | None = None, *,
                 plugin_library: str | Path | None = None, max_batch: int | None = None,
                 max_seq: int | None = None,
                 workspace_gib: float = DEFAULT_WORKSPACE_GIB) -> Path:
    """Build OUT/model.engine from OUT/model.onnx; returns the engine path."""
    export_dir = Path(export_dir)
    config = read_export_config(export_dir)
    native = config["variant"] == NATIVE_FP4_VARIANT
    target = load_target(target or config["target"]["name"])
    max_batch = max_batch or target.max_batch
    max_seq = max_seq or target.max_seq
    if max_batch <= 0 or max_seq <= 0:
        raise ConfigError("max_batch and max_seq must be positive")
    trt = import_tensorrt()
    library = None if native else find_plugin_library(plugin_library)
    if native:
        check_fp4_device()

    lines: list[str] = []
    logger = _collecting_logger(trt, lines)
    log_file = export_dir / BUILD_LOG
    try:
        if library is not None:
            load_plugins(trt, library)
        builder = trt.Builder(logger)
        # the native graph's types are explicit (FP4 / FP8 Q/DQ): a strongly typed network,
        # as NVIDIA's FP4 ONNX flows build (not confirmed as a requirement; untested here)
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if native else 0
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(export_dir / config["model_file"])):
            errors = "; ".join(str(parser.get_error(i)) for i in range(min(parser.num_errors, 3)))
            raise EngineBuildError(f"TensorRT could not parse {export_dir / config['model_file']}: "
                                   f"{errors} (full log: {log_file})")
        bconfig = builder.create_builder_config()
        bconfig.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * 2**30))
        if hasattr(trt.BuilderFlag, "TF32") and not native:  # strongly typed: no flags
            bconfig.clear_flag(trt.BuilderFlag.TF32)
        profile = builder.create_optimization_profile()
        shapes = _profile(config, max_batch, max_seq)
        for name, (low, opt, high) in shapes.items():
            profile.set_shape(name, low, opt, high)
        bconfig.add_optimization_profile(profile)
        start = time.perf_counter()
        serialized = builder.build_serialized_network(network, bconfig)
        seconds = time.perf_counter() - start
        if serialized is None:
            raise EngineBuildError(f"TensorRT failed to build the engine (log: {log_file})")
    finally:
        _write_atomic(log_file, "\n".join(lines) + "\n")

    engine = export_dir / ENGINE_FILE
    _write_atomic(engine, bytes(serialized))
    device = _device_summary()
    warnings = []
    if device.get("compute_capability") not in (None, target.compute_capability):
        warnings.append(f"built on compute capability {device['compute_capability']}, target "
                        f"{target.name} is {target.compute_capability}: TensorRT engines only "
                        f"load on the architecture they were built on")
    metadata = {
        "engine_file": ENGINE_FILE, "engine_sha256": file_sha256(engine),
        "tensorrt_version": trt.__version__, "versions": package_versions(),
        "device": device, "target": target.to_dict(), "warnings": warnings,
        "profile": {name: dict(zip(("min", "opt", "max"), map(list, dims), strict=True))
                    for name, dims in shapes.items()},
        "workspace_gib": workspace_gib, "tf32": None if native else False,
        "build_seconds": round(seconds, 1),
        "plugin_library": None if library is None else {"path": str(library),
                                                        "sha256": file_sha256(library)},
        "onnx_sha256": config["model_sha256"],
    }
    _write_atomic(export_dir / ENGINE_JSON, json.dumps(metadata, indent=1) + "\n")
    record_engine(export_dir, config, max_batch=max_batch, max_seq=max_seq)
    return engine


def read_export_config(export_dir: Path, error: type[Exception] = ConfigError) -> dict:
    """runtime.json of a TensorRT export (either graph); `error` for anything else."""
    from faircalib_runtime.onnx import ExportError, read_runtime_config

    try:
        config = read_runtime_config(export_dir)
    except ExportError as err:
        raise error(str(err)) from err
    if config.get("variant") not in (VARIANT, NATIVE_FP4_VARIANT):
        raise error(f"{export_dir} is a {config.get('variant')!r} export, not a TensorRT "
                    f"graph; export it with --format tensorrt")
    return config


def check_fp4_device() -> None:
    """The native FP4 engine needs FP4 tensor cores: a typed error naming what is here."""
    from .targets import FP4_MIN_MAJOR

    device = _device_summary()
    capability = device.get("compute_capability")
    if capability is None or int(capability.split(".")[0]) < FP4_MIN_MAJOR:
        here = (f"this GPU is compute capability {capability}" if capability else
                f"no CUDA device here ({device.get('error')})")
        raise TensorRTUnavailableError(
            f"the native NVFP4 engine needs a Blackwell GPU (compute capability >= "
            f"{FP4_MIN_MAJOR}.0, TensorRT 10.8+) and {here}; build it there with "
            f"`build_engine` from this directory")


def record_engine(export_dir: str | Path, config: dict | None = None, *, max_batch: int,
                  max_seq: int) -> dict:
    """Record OUT/model.engine in OUT/runtime.json and in manifest.json's copy of it.

    `config` is the export's runtime.json as read (read here when None). Each file is
    replaced atomically, the manifest first and runtime.json, which the runtime reads, last.
    Returns the updated runtime config.
    """
    from faircalib_runtime.onnx import RUNTIME_JSON

    from ..artifacts import MANIFEST

    export_dir = Path(export_dir)
    if config is None:
        config = json.loads((export_dir / RUNTIME_JSON).read_text())
    config = dict(config, engine={"file": ENGINE_FILE, "metadata": ENGINE_JSON,
                                  "build_log": BUILD_LOG, "max_batch": max_batch,
                                  "max_seq": max_seq})
    manifest_file = export_dir / MANIFEST
    if manifest_file.is_file():  # write_export_dir's manifest records runtime.json as "config"
        manifest = json.loads(manifest_file.read_text())
        manifest["config"] = config
        engine_files = [v for k, v in config["engine"].items() if k in ("file", "build_log",
                                                                        "metadata") and v]
        manifest["files"] = sorted(set(manifest.get("files", [])) | set(engine_files))
        _write_atomic(manifest_file, json.dumps(manifest, indent=2, default=str) + "\n")
    _write_atomic(export_dir / RUNTIME_JSON, json.dumps(config, indent=1) + "\n")
    return config


def export_tensorrt(deploy_dir: str | Path, out_dir: str | Path, target: str | Target, *,
                    plugin_library: str | Path | None = None, engine: bool = True,
                    max_batch: int | None = None, max_seq: int | None = None,
                    workspace_gib: float = DEFAULT_WORKSPACE_GIB, head_precision: str = "fp32",
                    external_data: bool | None = None, overwrite: bool = False
                    ) -> TensorRTExport:
    """The TensorRT graph for `target` (plugin graph for int folds, the native FP4 graph
    for nvfp4), then (with `engine`) a TensorRT engine.

    A fold no TensorRT graph fits (mxfp4, nvfp4 with learned activation clips) is refused
    first. With `engine`, TensorRT and the plugin library (int) or a Blackwell GPU (nvfp4)
    are looked up next: where they are missing, `TensorRTUnavailableError` /
    `PluginLibraryError` says what is needed and nothing is written. `EngineBuildError`
    (the build itself failed) comes after the graph is safely written; its message says
    where.
    """
    from ..artifacts import DEPLOY_JSON
    from ..fold.deployed import quant_format, read_deploy
    from .native_fp4 import check_native_format, check_native_fp4

    target = load_target(target)
    meta_file = Path(deploy_dir) / DEPLOY_JSON
    meta = read_json(meta_file) if meta_file.is_file() else {}  # none: read_deploy's error
    native = quant_format(meta).is_fp4
    if native:  # refused before any lookup
        check_native_format(meta)
        check_native_fp4(*read_deploy(deploy_dir))
    if engine:
        import_tensorrt()
        if native:
            check_fp4_device()
        else:
            find_plugin_library(plugin_library)
    write = write_native_fp4_onnx if native else write_plugin_onnx
    out = write(deploy_dir, out_dir, target, head_precision=head_precision,
                external_data=external_data, overwrite=overwrite)
    from ..export.onnx_export import MODEL_FILE

    if not engine:
        return TensorRTExport(out, out / MODEL_FILE, None)
    try:
        path = build_engine(out, target, plugin_library=plugin_library, max_batch=max_batch,
                            max_seq=max_seq, workspace_gib=workspace_gib)
    except TensorRTError as err:
        what = "native FP4" if native else "plugin"
        raise type(err)(f"wrote the TensorRT {what} graph to {out / MODEL_FILE}, but no "
                        f"engine: {err}") from None
    return TensorRTExport(out, out / MODEL_FILE, path)
