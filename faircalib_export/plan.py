"""`faircalib-export plan`: will calibration and the W4A4 deployment fit on a target GPU?

Works from config.json alone (a checkpoint directory, a bare config.json, a built-in model
name, a shipped model config name such as `llada-8b-instruct` or a `ModelConfig`), so it
answers for LLaDA-8B / Dream-7B before anything is downloaded.

Calibration: the Stage II device peak of `calibrate.memory.calibration_plan` (one block
traced on the meta device) plus the CUDA runtime's own overhead.

Deployment (the TensorRT engine of `faircalib_export.trt`, batch x sequence at the engine's
profile maximum), in the target's default format or the one asked for:
  weights      int: int4 block weights in the kernels' packed layout (K padded to 128
               codes); nvfp4 / mxfp4: E2M1 codes, half a byte a weight (no padding: widths
               are multiples of the block), plus one block-scale byte per 16 (nvfp4, E4M3)
               or 32 (mxfp4, E8M0) weights, the fold's layout (docs/fp4.md); then
               float32 per-channel scales (FP4: the row second-level scale), float32
               Kronecker factors, float32 norms and biases, the fp16 embedding table and
               the LM head (fp16 in the deployment format; float32 in the engine when the
               head runs in fp32, the default, as TensorRT folds the graph's cast); int:
               within 1% of `info.memory_estimate`'s W4A4 bytes once the head's extra
               float32 half is taken off
  activations  float32, one layer at a time (TensorRT reuses activation memory across
               layers): the larger of the attention part (residual, q/k/v, rotated copies,
               GQA-repeated k/v, and the full (B, H, S, S) scores and probabilities: the
               exported graph has no fused attention kernel to rely on) and the MLP part;
               or, if larger, the head: logits (also the engine output), softmax
               probabilities and two vocabulary-sized temporaries of the decision summaries
  workspace    WORKSPACE_GIB of tactic scratch, plus RUNTIME_OVERHEAD_GIB for the CUDA
               context and TensorRT / cuBLAS handles
Host (CPU pipeline): `host_plan`, the peak RSS of calibrate (rtn), fold, export and the
ONNX Runtime session when they run on the CPU, checked by benchmarks/bench_real_scale.py.

A stage fits when its peak is at most (1 - SAFETY_MARGIN) of the card's memory: the margin
covers allocator fragmentation, the display and other processes. FP16 deployment (the
unquantized model, same activations) is reported beside it for comparison.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from .models.config import ModelConfig

GIB = 2**30
SAFETY_MARGIN = 0.10
RUNTIME_OVERHEAD_GIB = 1.0
WORKSPACE_GIB = 1.0
F32, F16 = 4, 2


def _config(model_or_config: str | Path | ModelConfig) -> ModelConfig:
    """A path (checkpoint directory or config.json) first, then a built-in model name,
    then a shipped model config (`llada-8b-instruct`, `configs/models/*.json`)."""
    if isinstance(model_or_config, ModelConfig):
        return model_or_config
    from importlib.resources import as_file

    from .configs_data import model_configs
    from .errors import CheckpointError
    from .models.builtin import builtin_names, resolve_model
    from .models.loading import read_config

    path = Path(model_or_config)
    name = str(model_or_config)
    shipped = model_configs()
    if not path.exists() and name not in builtin_names():
        file = shipped.get(name.removesuffix(".json"))
        if file is not None:
            with as_file(file) as config_json:
                return read_config(config_json)[1]
    if not (path.suffix == ".json" and path.is_file()):
        try:
            path = resolve_model(model_or_config)
        except CheckpointError as err:
            raise CheckpointError(f"{err}; nor a model config "
                                  f"({', '.join(shipped) or 'none shipped'})") from None
    return read_config(path)[1]


# the block-scale dtype of each FP4 format, as the deployment names it
_BLOCK_SCALE_NAME = {"nvfp4": "block_scales_e4m3", "mxfp4": "block_scales_e8m0"}


def _linear_bytes(out_features: int, in_features: int, format: str) -> tuple[int, int]:
    """(codes, block scales) bytes of one quantized linear in `format`."""
    from .quant.formats import QuantFormat
    from .trt.reference import packed_words

    fmt = QuantFormat(format)
    if not fmt.is_fp4:
        return out_features * packed_words(in_features) * 4, 0
    return out_features * in_features // 2, out_features * (in_features // fmt.block_size)


def deployment_weight_bytes(cfg: ModelConfig, head_precision: str = "fp32",
                            format: str = "int") -> dict[str, int]:
    """Bytes of every weight the TensorRT engine holds, by kind, for block weights in
    `format` (int, nvfp4, mxfp4)."""
    from .info import linear_shape
    from .quant.formats import QuantFormat
    from .quant.layout import kron_factors, transform_sites

    fmt = QuantFormat(format)
    linears = block_scales = scales = transforms = 0
    for site in transform_sites(cfg):
        for lin in site.linears:
            out_features, in_features = linear_shape(cfg, lin)
            codes, blocks = _linear_bytes(out_features, in_features, fmt)
            linears += codes
            block_scales += blocks
            scales += out_features * F32
        n1, n2 = kron_factors(site.dim)
        transforms += (n1 * n1 + n2 * n2) * F32
    per_block_norms = 2 * cfg.hidden_size * F32
    bias = (cfg.hidden_size + 2 * cfg.kv_dim) * F32 if cfg.qkv_bias else 0
    table = cfg.vocab_size * cfg.hidden_size
    # TensorRT folds the fp32 graph's Cast(fp16 head) into a float32 constant
    head = 0 if cfg.tie_word_embeddings else table * (F32 if head_precision == "fp32" else F16)
    n = cfg.num_layers
    quantized = ({"block_linears_e2m1": n * linears, _BLOCK_SCALE_NAME[fmt.value]: n * block_scales}
                 if fmt.is_fp4 else {"block_linears_int4": n * linears})
    return {
        **quantized,
        "channel_scales": n * scales,
        "kronecker_factors": n * transforms,
        "norms_and_biases": n * (per_block_norms + bias) + cfg.hidden_size * F32,
        "embedding_fp16": table * F16,
        f"lm_head_{head_precision}": head,
    }


def activation_bytes(cfg: ModelConfig, batch: int, seq: int, *,
                     fp16_weights: bool = False, format: str = "int") -> dict[str, int]:
    """Peak activation bytes of one forward pass (see the module docstring); the quantized
    activations take the layout of `format` (codes, block scales, a float32 per token)."""
    t = batch * seq
    e, f, kv, v = cfg.hidden_size, cfg.intermediate_size, cfg.kv_dim, cfg.vocab_size
    codes = lambda k: 0 if fp16_weights else sum(_linear_bytes(t, k, format)) + t * F32
    residual = 2 * t * e * F32  # block input and output
    qkv = t * (e + 2 * kv) * F32
    attention = (residual + t * e * F32 + codes(e)  # normed input, its codes
                 + 2 * qkv  # fused output and its split
                 + t * (e + kv) * F32  # rotated q, k
                 + (2 * t * e * F32 if kv != e else 0)  # k, v repeated over query heads
                 + 2 * batch * cfg.num_heads * seq * seq * F32  # scores, probabilities
                 + t * e * F32)  # attention output
    mlp = (residual + t * e * F32 + codes(e)
           + t * 2 * f * F32  # gate | up
           + t * f * F32 + codes(f))  # gated product and its codes
    head = 2 * t * e * F32 + 4 * t * v * F32  # logits, probabilities, two temporaries
    return {"attention": attention, "mlp": mlp, "head_and_summaries": head,
            "peak": max(attention, mlp, head)}


# Host (CPU) pipeline: peak RSS of each stage run on the CPU, as
# benchmarks/bench_real_scale.py measures it. Process baselines (Python, torch, the
# package; ONNX Runtime alone) were measured on the tiny models; the terms below follow
# what each stage holds at its peak (README "Real scale" compares them with measurements).
HOST_BASE_GIB = 0.35  # python + torch + faircalib_export, before any weight is read
ORT_BASE_GIB = 0.07  # python + onnxruntime + the torch-free runtime
F64, I8 = 8, 1


def host_plan(cfg: ModelConfig, *, samples: int, seq_len: int, checkpoint_bytes: int = 2,
              ort_memory: str = "fast") -> dict[str, float]:
    """Peak host RSS (GiB) of CPU calibration (rtn), fold, export (w4a4-int) and the ONNX
    Runtime session of its export, for a 16-bit embedding and head.

    - tables: a checkpoint table is read in its own dtype (`checkpoint_bytes`) and kept as
      fp16 (calibrate's embedding, fold's tables);
    - a block: fp32 weights (fold: and their int8 codes), the largest linear folded in
      float64 (input, product, the codes as float);
    - export streams its initializers to the data file: one fp16 table at a time;
    - ONNX Runtime holds the file, the w4a4-int block weights once more (INT4 codes
      widened to int8 at load) and the LM head in fp32 (the fp16 head's Cast folded at
      load); "fast" (its defaults) also prepacks the head for its GEMM, "low" does not.
    """
    from .info import QUANT_LINEARS, linear_shape, memory_estimate

    e = cfg.hidden_size
    table = cfg.vocab_size * e
    block = sum(o * i for o, i in (linear_shape(cfg, m) for m in QUANT_LINEARS))
    largest = max(o * i for o, i in (linear_shape(cfg, m) for m in QUANT_LINEARS))
    read_table = table * (checkpoint_bytes + F16)
    caches = 3 * samples * seq_len * e * F32
    fold_linear = 3 * largest * F64
    calibrate = HOST_BASE_GIB * GIB + caches + max(read_table, block * F32 + fold_linear)
    fold = HOST_BASE_GIB * GIB + max(read_table, block * (F32 + I8) + fold_linear)
    export = HOST_BASE_GIB * GIB + table * F16
    disk = memory_estimate(cfg)["w4a4_bytes"]
    blocks_int4 = memory_estimate(cfg)["w4a4_block_bytes_only"]
    head = 0 if cfg.tie_word_embeddings else table
    # the fp16 head becomes fp32 (+2 bytes a weight); "fast" also prepacks it (+4 more)
    ort = ORT_BASE_GIB * GIB + disk + blocks_int4 + head * (F32 + F16 if ort_memory == "fast"
                                                             else F16)
    gib = lambda n: round(n / GIB, 2)  # noqa: E731
    return {"calibrate_rtn": gib(calibrate), "fold": gib(fold), "export_w4a4_int": gib(export),
            "onnx_file": gib(disk), f"ort_session_{ort_memory}": gib(ort)}


def _fits(peak_gib: float, memory_gib: float) -> bool:
    return peak_gib <= memory_gib * (1 - SAFETY_MARGIN)


def plan(model_or_config: str | Path | ModelConfig, target, *, samples: int | None = None,
         seq_len: int | None = None, batch: int | None = None, max_batch: int | None = None,
         max_seq: int | None = None, head_precision: str = "fp32",
         format: str | None = None) -> dict:
    """Calibration and deployment memory for `target` (a name, JSON path or Target).

    Unset samples / seq_len / batch are what `calibrate` would use for this model; an
    unset format is the target's default format (int, or nvfp4 on Blackwell targets).
    """
    from .calibrate.config import CalibConfig, recipe_for
    from .calibrate.memory import calibration_plan
    from .errors import ConfigError
    from .info import memory_estimate
    from .trt.targets import load_target

    cfg = _config(model_or_config)
    recipe = recipe_for(cfg.hidden_size)
    samples = recipe.samples if samples is None else samples
    seq_len = recipe.seq_len if seq_len is None else seq_len
    batch = CalibConfig.batch_size if batch is None else batch
    target = load_target(target)
    format = format or target.default_format
    kernel_path = target.kernel_path_for(format)  # validates the format too
    max_batch = max_batch or target.max_batch
    max_seq = max_seq or target.max_seq
    for name, value in (("samples", samples), ("seq_len", seq_len), ("batch", batch),
                        ("max_batch", max_batch), ("max_seq", max_seq)):
        if value <= 0:
            raise ConfigError(f"{name} must be positive, got {value}")
    usable = target.memory_gib * (1 - SAFETY_MARGIN)

    calib = calibration_plan(cfg, samples=samples, seq_len=seq_len, batch=batch)
    calib_peak = calib["device_peak"] + RUNTIME_OVERHEAD_GIB

    weights = deployment_weight_bytes(cfg, head_precision, format)
    weights_total = sum(weights.values())
    acts = activation_bytes(cfg, max_batch, max_seq, format=format)
    overhead = WORKSPACE_GIB + RUNTIME_OVERHEAD_GIB
    deploy_peak = (weights_total + acts["peak"]) / GIB + overhead

    estimate = memory_estimate(cfg)
    fp16_acts = activation_bytes(cfg, max_batch, max_seq, fp16_weights=True)
    fp16_peak = (estimate["fp16_bytes"] + fp16_acts["peak"]) / GIB + overhead
    gib = lambda n: round(n / GIB, 3)
    return {
        "model": {"family": cfg.family, "hidden_size": cfg.hidden_size,
                  "intermediate_size": cfg.intermediate_size, "num_layers": cfg.num_layers,
                  "num_heads": cfg.num_heads, "num_kv_heads": cfg.num_kv_heads,
                  "vocab_size": cfg.vocab_size},
        "target": target.to_dict(),
        "safety_margin": SAFETY_MARGIN,
        "usable_gib": round(usable, 3),
        "calibration": {
            "samples": samples, "seq_len": seq_len, "batch": batch,
            "components_gib": calib, "runtime_overhead_gib": RUNTIME_OVERHEAD_GIB,
            "peak_gib": round(calib_peak, 3), "fits": _fits(calib_peak, target.memory_gib),
        },
        "deployment": {
            "format": format, "max_batch": max_batch, "max_seq": max_seq,
            "head_precision": head_precision, "kernel_path": kernel_path,
            # mxfp4 on Blackwell: sized, but TensorRT quantizes activations to 16-blocks only
            "tensorrt_native": format in target.formats,
            "weights_bytes": {**weights, "total": weights_total},
            "weights_gib": gib(weights_total),
            "deploy_format_w4a4_bytes": estimate["w4a4_bytes"],
            "activations_gib": {k: gib(v) for k, v in acts.items()},
            "workspace_gib": WORKSPACE_GIB, "runtime_overhead_gib": RUNTIME_OVERHEAD_GIB,
            "peak_gib": round(deploy_peak, 3), "fits": _fits(deploy_peak, target.memory_gib),
        },
        "host_cpu_pipeline_gib": {**host_plan(cfg, samples=samples, seq_len=seq_len),
                                  **host_plan(cfg, samples=samples, seq_len=seq_len,
                                              ort_memory="low")},
        "fp16_deployment": {
            "weights_bytes": estimate["fp16_bytes"], "weights_gib": gib(estimate["fp16_bytes"]),
            "activations_gib": gib(fp16_acts["peak"]),
            "peak_gib": round(fp16_peak, 3), "fits": _fits(fp16_peak, target.memory_gib),
        },
    }


def _print_plan(data: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    t, m = data["target"], data["model"]
    console.print(f"[bold]{t['display_name']}[/] ({t['name']}, sm {t['compute_capability']}, "
                  f"{t['memory_gib']} GiB, default format {t.get('default_format', 'int')}): "
                  f"usable "
                  f"{data['usable_gib']} GiB after a {data['safety_margin']:.0%} margin")
    if not data["deployment"].get("tensorrt_native", True):
        console.print(f"note: TensorRT has no native {data['deployment']['format']} path "
                      f"(its dynamic FP4 quantization takes 16-element E4M3 blocks: nvfp4); "
                      f"the plan sizes the folded layout")
    console.print(f"model: {m['family']}, hidden {m['hidden_size']}, intermediate "
                  f"{m['intermediate_size']}, {m['num_layers']} layers, vocab {m['vocab_size']}")
    verdict = lambda ok: "[green]fits[/]" if ok else "[red]does not fit[/]"
    table = Table(title="Memory plan (GiB)")
    for col in ("stage", "component", "GiB"):
        table.add_column(col, justify="right" if col == "GiB" else "left")
    c = data["calibration"]
    stage = f"calibration ({c['samples']} x {c['seq_len']}, batch {c['batch']})"
    for name, value in c["components_gib"].items():
        if name == "device_peak":
            continue
        label = {"cpu_activation_caches": "host RAM: activation caches (not on the GPU)",
                 "attention_probs_math_kernel": "attention probs (math kernel only; not counted)"
                 }.get(name, name)
        table.add_row(stage, label, f"{value:.3f}")
        stage = ""
    table.add_row("", "device tensors peak", f"{c['components_gib']['device_peak']:.3f}")
    table.add_row("", "runtime overhead", f"{c['runtime_overhead_gib']:.3f}")
    table.add_row("", "[bold]peak[/]: " + verdict(c["fits"]), f"[bold]{c['peak_gib']:.3f}[/]")
    d = data["deployment"]
    stage = (f"W4A4 deployment, {d['format']} via {d['kernel_path']} "
             f"(batch {d['max_batch']} x seq {d['max_seq']})")
    for name, value in d["weights_bytes"].items():
        if name != "total":
            table.add_row(stage, f"weights: {name} ({value:,} B)", f"{value / GIB:.3f}")
            stage = ""
    total = d["weights_bytes"]["total"]
    table.add_row("", f"weights total ({total:,} B)", f"{d['weights_gib']:.3f}")
    for name, value in d["activations_gib"].items():
        table.add_row("", f"activations: {name}", f"{value:.3f}")
    overhead = d["workspace_gib"] + d["runtime_overhead_gib"]
    table.add_row("", "workspace + runtime", f"{overhead:.3f}")
    table.add_row("", "[bold]peak[/]: " + verdict(d["fits"]), f"[bold]{d['peak_gib']:.3f}[/]")
    f = data["fp16_deployment"]
    table.add_row("FP16 deployment (comparison)", f"weights ({f['weights_bytes']:,} B)",
                  f"{f['weights_gib']:.3f}")
    table.add_row("", "activations", f"{f['activations_gib']:.3f}")
    table.add_row("", "[bold]peak[/]: " + verdict(f["fits"]), f"[bold]{f['peak_gib']:.3f}[/]")
    console.print(table)
    host = Table(title="CPU pipeline: peak host RAM (GiB)",
                 caption="calibrate --device cpu, export w4a4-int, 16-bit embedding and head")
    host.add_column("stage")
    host.add_column("GiB", justify="right")
    for name, value in data["host_cpu_pipeline_gib"].items():
        host.add_row(name.replace("_", " "), f"{value:.2f}")
    console.print(host)


def plan_cmd(
    model: Annotated[str | None, typer.Argument(
        help="Checkpoint directory, bare config.json, built-in model name, or model config "
             "name (configs/models: llada-8b-instruct, dream-7b-instruct).")] = None,
    model_option: Annotated[str | None, typer.Option(
        "--model", "-m", help="The same as MODEL, as an option.")] = None,
    target: Annotated[str, typer.Option(
        "--target", "-t", help="Target GPU (a name from configs/targets, or a JSON file).")
    ] = "rtx4090",
    samples: Annotated[int | None, typer.Option(
        help="Stage II calibration sequences (default: the model's recipe).")] = None,
    seq_len: Annotated[int | None, typer.Option(
        help="Stage II sequence length (default: the model's recipe).")] = None,
    batch: Annotated[int | None, typer.Option(
        help="Stage II batch size (default: calibrate's).")] = None,
    max_batch: Annotated[int | None, typer.Option(
        help="Deployment batch size (default: the target's).")] = None,
    max_seq: Annotated[int | None, typer.Option(
        help="Deployment sequence length, prompt + generation (default: the target's).")
    ] = None,
    format: Annotated[str | None, typer.Option(
        "--format", help="Deployment format: int, nvfp4 or mxfp4 (default: the target's; "
                         "nvfp4 on Blackwell targets such as rtx5090).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Will calibration and the W4A4 TensorRT deployment fit on a target GPU?"""
    if (model is None) == (model_option is None):
        raise typer.BadParameter("give the model once: as MODEL or as --model")
    data = plan(model or model_option, target, samples=samples, seq_len=seq_len, batch=batch,
                max_batch=max_batch, max_seq=max_seq, format=format)
    if as_json:
        print(json.dumps(data, indent=1))
    else:
        _print_plan(data)
