"""`build`: one command from a checkpoint to a validated deployment for a target GPU.

    OUT/prior        Stage I prior (weighted methods only)
    OUT/calibrated   Stage II artifact
    OUT/deploy       folded model (int4, or FP4 codes with block scales)
    OUT/onnx         W4A4 ONNX graph for ONNX Runtime (always; `w4a4-int` on CPU, and
                     `w4a4-fp4-emu` for an FP4 format)
    OUT/tensorrt     TensorRT graph + engine: the plugin graph for int, TensorRT's
                     native NVFP4 graph for nvfp4 on an FP4 target (the engine when
                     TensorRT, and the plugin library or a Blackwell GPU, are here)
    OUT/validation   report.json / report.md (exported ONNX vs calibrated PyTorch)
    OUT/quality.json the quantized model against the FP one: held-out accuracy of both
                     (models with a task) and teacher-forced KL, top-1 agreement, flips
    OUT/build.json   the settings and outcome of every stage

The format (int, nvfp4, mxfp4) is the target's default format unless given: Blackwell
targets (rtx5090, ...) calibrate in nvfp4, with the activation clips kept at 1
(`CalibConfig.act_clips`), which TensorRT's native NVFP4 graph needs. An nvfp4 build on
such a target writes that graph (trt/native_fp4.py) and builds its engine only where
TensorRT and a Blackwell GPU are; elsewhere the stage says why there is no engine. A
format TensorRT does not run on the target (mxfp4 anywhere, nvfp4 on a GPU without FP4
tensor cores) skips the TensorRT stage with the reason. The ONNX stage and validation run
as for int (FP4: the w4a4-fp4-emu graph, which ONNX Runtime runs).

Each stage writes its directory atomically; a re-run skips a stage whose directory is
complete and whose recorded settings are unchanged (and redoes the stages after one
that changed). An interrupted calibration resumes from its finished blocks.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .artifacts import BUILD_JSON, MANIFEST, read_json
from .errors import ConfigError, FaircalibError

QUALITY_JSON = "quality.json"
QUALITY_PROBLEMS = 200  # held-out problems scored for FP vs W4A4 accuracy
QUALITY_PROMPTS = 32  # prompts of the teacher-forced FP vs W4A4 comparison
VARIANTS = ("auto", "w4a4", "w4a4-int", "w4a4-fp4", "w4a4-fp4-emu")


@dataclass
class BuildSettings:
    method: str = "fair-calib"
    data: str | None = None  # calibration text (default: a tiny model's task)
    probe_data: str | None = None  # probing prompts (default: same as data)
    samples: int | None = None  # calibration sequences (default: the model's recipe)
    seq_len: int | None = None
    epochs: int | None = None
    seed: int = 0
    device: str = "cpu"
    probe_samples: int | None = None
    validate_prompts: int = 32
    quality_problems: int = QUALITY_PROBLEMS  # 0: skip the FP vs W4A4 comparison
    variant: str = "auto"  # ONNX variant; auto: see `onnx_variant`
    format: str | None = None  # int | nvfp4 | mxfp4; None: the target's default format
    tensorrt: bool = True
    policy: dict = field(default_factory=dict)  # decoding overrides for validation

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ConfigError(f"unknown ONNX variant {self.variant!r} for build; "
                              f"choose one of {', '.join(VARIANTS)}")
        if self.validate_prompts < 1 or self.quality_problems < 0:
            raise ConfigError("validate_prompts must be >= 1 and quality_problems >= 0")
        if self.format is not None:
            from .export.onnx_export import check_variant_format
            from .quant.spec import check_format

            fmt = check_format(self.format, 4, 4)  # names the formats when unknown
            if self.variant != "auto":
                check_variant_format(self.variant, fmt)

    def onnx_variant(self, format: str) -> str:
        """The ONNX variant for a model calibrated in `format`. auto: w4a4-int (integer
        GEMMs) on CPU, else w4a4; for FP4, w4a4-fp4-emu, the FP4 graph ONNX Runtime runs
        (validation needs it; w4a4-fp4 runs under the ONNX reference evaluator only)."""
        from .export.onnx_export import check_variant_format
        from .quant.formats import QuantFormat

        fmt = QuantFormat(format)
        if self.variant != "auto":
            check_variant_format(self.variant, fmt)
            return self.variant
        if fmt.is_fp4:
            return "w4a4-fp4-emu"
        return "w4a4-int" if self.device == "cpu" else "w4a4"


@dataclass
class StageResult:
    name: str
    status: str  # done | skipped (up to date) | unavailable | failed
    seconds: float
    detail: str = ""


@dataclass
class BuildResult:
    stages: list[StageResult]
    validation: dict
    quality: dict | None
    out: Path

    @property
    def passed(self) -> bool:
        return bool(self.validation["passed"])


def _complete(directory: Path) -> bool:
    return (directory / MANIFEST).is_file()


def run_build(model: str, target: str, out: str | Path, settings: BuildSettings,
              log: Callable[[str], None] = print, overwrite: bool = False) -> BuildResult:
    """Run every stage; returns the stage results, the validation report and the quality.

    OUT is claimed for the whole run: absent, empty, an earlier build (resumed), or with
    `overwrite` a foreign directory moved aside; a second concurrent build is refused.
    """
    from .artifacts import claim_workdir
    from .models.builtin import resolve_model

    out = Path(out)
    model_path = resolve_model(model)
    with claim_workdir(out, "build", inputs=(model_path,), overwrite=overwrite):
        return _run_build(model_path, target, out, settings, log)


def _run_build(model_path: Path, target: str, out: Path, settings: BuildSettings,
               log: Callable[[str], None]) -> BuildResult:
    from .calibrate.config import CalibConfig
    from .calibrate.entry import calibrate_checkpoint
    from .calibrate.methods import get_method
    from .export.onnx_export import ExportOptions, export_onnx
    from .fold.fold import fold_artifact
    from .models.loading import read_config
    from .quant.formats import QuantFormat
    from .trt.targets import load_target

    target_profile = load_target(target)
    fmt = settings.format or target_profile.default_format
    variant = settings.onnx_variant(fmt)  # refuses a variant of the other format, up front
    hidden = read_config(model_path)[1].hidden_size
    record_file = out / BUILD_JSON
    previous = read_json(record_file).get("stages", {}) if record_file.is_file() else {}
    record: dict = {"model": str(model_path), "target": target_profile.name, "format": fmt,
                    "stages": {}}
    results: list[StageResult] = []
    upstream_changed = False

    def stage(name: str, directory: Path, stage_settings: dict, run: Callable[[], str]) -> None:
        nonlocal upstream_changed
        start = time.time()
        same = previous.get(name, {}).get("settings") == stage_settings
        if _complete(directory) and same and not upstream_changed:
            results.append(StageResult(name, "skipped (up to date)", 0.0))
        else:
            upstream_changed = True  # the stage's writer replaces its own stale output
            log(f"[{name}] running")
            detail = run()
            results.append(StageResult(name, "done", time.time() - start, detail))
        record["stages"][name] = {"settings": stage_settings, "directory": str(directory)}
        record_file.write_text(json.dumps(record, indent=1) + "\n")

    method = get_method(settings.method)
    prior_dir = out / "prior"
    if method.weighted:
        from .probe.artifact import run_probe

        probe_settings = {"data": settings.probe_data or settings.data,
                          "samples": settings.probe_samples, "seed": settings.seed}
        stage("probe", prior_dir, probe_settings,
              lambda: str(run_probe(model_path, probe_settings["data"], prior_dir,
                                    samples=settings.probe_samples, seed=settings.seed,
                                    device=settings.device).prior.weights.shape[0])
              + " window positions")
    native_fp4 = QuantFormat(fmt).is_fp4 and fmt in target_profile.formats
    cfg = CalibConfig(method=settings.method, epochs=settings.epochs, seed=settings.seed,
                      device=settings.device, format=fmt,
                      act_clips=not native_fp4).resolved(hidden)
    calib_settings = {"calib": cfg.to_dict(), "data": settings.data,
                      "samples": settings.samples, "seq_len": settings.seq_len}
    stage("calibrate", out / "calibrated", calib_settings,
          lambda: f"{cfg.method}, {cfg.epochs} epochs per block: " + str(calibrate_checkpoint(
              model_path, out / "calibrated", cfg, data=settings.data,
              prior=prior_dir if method.weighted else None, samples=settings.samples,
              seq_len=settings.seq_len)))
    stage("fold", out / "deploy", {}, lambda: str(fold_artifact(out / "calibrated",
                                                                out / "deploy")))
    stage("onnx", out / "onnx", {"variant": variant},
          lambda: variant + " " + str(export_onnx(out / "deploy", out / "onnx",
                                                  ExportOptions(variant=variant))))

    if settings.tensorrt and cfg.spec().format.is_fp4 and not native_fp4:
        why = (f"{target_profile.name} has no FP4 tensor cores" if not target_profile.fp4
               else "TensorRT's dynamic FP4 quantization is nvfp4 only")
        results.append(StageResult(
            "tensorrt", "skipped", 0.0,
            f"{fmt}: no TensorRT graph ({why}; the int4 plugins take int only). Use "
            f"{out / 'onnx'}, or --format int for the plugin engine"))
    elif settings.tensorrt:
        from .trt.errors import PluginLibraryError, TensorRTUnavailableError
        from .trt.export import export_tensorrt

        start = time.time()
        graph = "native NVFP4 graph" if native_fp4 else "plugin graph"
        try:
            export_tensorrt(out / "deploy", out / "tensorrt", target_profile)
            results.append(StageResult("tensorrt", "done", time.time() - start, graph))
        except (TensorRTUnavailableError, PluginLibraryError) as err:  # no TensorRT here:
            # ship the graph, for an engine built on the GPU machine
            export_tensorrt(out / "deploy", out / "tensorrt", target_profile, engine=False)
            needs = (" (the NVFP4 engine needs TensorRT 10.8+ on a Blackwell GPU)"
                     if native_fp4 else "")
            results.append(StageResult("tensorrt", "graph only", time.time() - start,
                                       f"{graph}, no engine: " + str(err).split(";")[0]
                                       + needs))
        except FaircalibError as err:  # the engine build itself failed
            results.append(StageResult("tensorrt", "failed", time.time() - start,
                                       str(err).split(";")[0]))

    start = time.time()
    log("[validate] exported ONNX against the calibrated model")
    report = _validate(out, settings)
    ok = report["passed"]
    results.append(StageResult("validate", "done" if ok else "failed", time.time() - start,
                               ", ".join(f"{k} {v:.4g}" for k, v in report["metrics"].items()
                                         if k in ("top1_agreement", "decode_identical_rate"))))
    quality = None
    if settings.quality_problems:
        start = time.time()
        log("[quality] quantized against full precision")
        quality = _quality(model_path, out, settings)
        results.append(StageResult("quality", "done", time.time() - start,
                                   _quality_line(quality)))
    record["validation_passed"] = ok
    record_file.write_text(json.dumps(record, indent=1) + "\n")
    return BuildResult(results, report, quality, out)


def _validate(out: Path, settings: BuildSettings) -> dict:
    from .opener import open_model
    from .validate import default_prompts, markdown, validate

    reference = open_model(out / "calibrated")
    exported = open_model(out / "onnx")
    report = validate(reference, exported, default_prompts(reference, settings.validate_prompts),
                      **settings.policy)
    (out / "validation").mkdir(exist_ok=True)
    (out / "validation" / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "validation" / "report.md").write_text(
        markdown(report, str(out / "calibrated"), str(out / "onnx")))
    return report


def _quality(model_path: Path, out: Path, settings: BuildSettings) -> dict:
    """The exported W4A4 model against the FP checkpoint: what quantization cost."""
    from .models.builtin import default_task
    from .opener import open_model
    from .validate import compare_models, default_prompts

    fp, quantized = open_model(model_path, settings.device), open_model(out / "onnx")
    prompts = default_prompts(fp, QUALITY_PROMPTS)
    metrics, _ = compare_models(fp, quantized, prompts, **settings.policy)
    quality: dict = {"teacher_forced": {k: metrics[k] for k in (
        "prompts", "kl_mean", "top1_agreement", "flips_per_sequence_mean",
        "decode_identical_rate")}}
    task = default_task(model_path)
    if task is not None:
        from .tiny.evaluate import evaluate

        name, n = task.removeprefix("task:"), settings.quality_problems
        accuracy = {}
        for label, target in (("fp", model_path), ("w4a4", out / "onnx")):
            result = evaluate(target, name, n, console=False, **settings.policy)
            accuracy[label] = {"accuracy": result["accuracy"], "correct": result["correct"],
                               "n": result["n"]}
        quality["heldout"] = {"task": name, **accuracy}
    (out / QUALITY_JSON).write_text(json.dumps(quality, indent=1) + "\n")
    return quality


def _quality_line(quality: dict) -> str:
    tf = quality["teacher_forced"]
    line = f"KL {tf['kl_mean']:.4f}, top-1 {tf['top1_agreement']:.3f}"
    if "heldout" in quality:
        h = quality["heldout"]
        line = (f"{h['task']} accuracy FP {h['fp']['accuracy']:.1%} -> W4A4 "
                f"{h['w4a4']['accuracy']:.1%} ({h['w4a4']['n']} problems), " + line)
    return line
