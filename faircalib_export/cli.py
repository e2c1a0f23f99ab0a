"""The `faircalib-export` command line.

Commands are thin: parse options, call one library function, print the result. Heavy
imports (torch, transformers, onnx) happen inside the commands so `--help` is instant.
User errors (`FaircalibError`) print one line naming the problem and exit with status 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .build import QUALITY_PROBLEMS
from .calibrate.config import CalibConfig
from .compare.commands import compare_cmd
from .diagnose.commands import diagnose_cmd
from .errors import FaircalibError
from .options import CacheOpt, DecodeOpt, OverwriteOpt, ThresholdOpt, decode_overrides
from .plan import plan_cmd
from .probe.commands import probe_cmd, probe_compare_cmd
from .serve.engine import DEFAULT_MAX_TOKENS, MAX_BATCH
from .tiny.commands import train_cmd
from .validate import Thresholds

DEFAULT_MODEL = "llada-chain"  # shipped, trained (assets/models)

app = typer.Typer(
    name="faircalib-export",
    help="FAIR-Calib W4A4 quantization and edge export for diffusion LLMs (LLaDA, Dream).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",  # docstring paragraphs are re-wrapped to the terminal
    add_completion=False,
)
tiny_app = typer.Typer(help="Tiny LLaDA / Dream checkpoints for tests, examples and CI.",
                       rich_markup_mode="markdown",
                       no_args_is_help=True)
app.add_typer(tiny_app, name="tiny")

console = Console()
err_console = Console(stderr=True)

ModelArg = Annotated[
    str,
    typer.Argument(help="Checkpoint directory, or a built-in model name "
                        "(see `faircalib-export tiny list`)."),
]
AnyModelArg = Annotated[
    str,
    typer.Argument(help="A model of any kind: checkpoint, calibrated artifact, folded model, "
                        "exported ONNX or TensorRT directory, or a built-in model name."),
]


def _mib(n: int) -> str:
    return f"{n / 2**20:,.2f} MiB" if n < 2**30 else f"{n / 2**30:,.2f} GiB"


@app.command()
def info(
    model: ModelArg = DEFAULT_MODEL,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Family, size, quantized linear layers, special tokens and a memory estimate."""
    from .info import checkpoint_info
    from .models.builtin import resolve_model

    data = checkpoint_info(resolve_model(model))
    if as_json:
        console.print_json(json.dumps(data))
        return
    cfg = data["config"]
    console.print(f"[bold]{data['path']}[/]  family [cyan]{data['family']}[/] "
                  f"(model_type {data['model_type']!r}), {data['parameters']:,} parameters, "
                  f"{len(data['shards'])} shard(s)")
    console.print(f"hidden {cfg['hidden_size']}, intermediate {cfg['intermediate_size']}, "
                  f"{cfg['num_layers']} layers, {cfg['num_heads']} heads / "
                  f"{cfg['num_kv_heads']} KV heads, vocab {cfg['vocab_size']}, "
                  f"logit shift {cfg['logit_shift']}, default policy {data['default_policy']}")
    tokens = data["special_tokens"]
    console.print("special tokens: " + ", ".join(f"{k} {v}" for k, v in tokens.items()))

    table = Table(title="Linear layers quantized to W4A4")
    for col in ("layer", "checkpoint key", "out", "in"):
        table.add_column(col, justify="right" if col in ("out", "in") else "left")
    for layer in data["linear_layers"]:
        table.add_row(layer["name"], layer["checkpoint_key"], str(layer["out_features"]),
                      str(layer["in_features"]))
    console.print(table)

    sites = Table(title="Online transform sites (per block)")
    for col in ("site", "dim", "kronecker", "feeds"):
        sites.add_column(col)
    for s in data["transform_sites"]:
        sites.add_row(s["name"], str(s["dim"]), " x ".join(map(str, s["kron"])),
                      ", ".join(s["linears"]))
    console.print(sites)

    mem = data["memory"]
    console.print(f"weights: FP16 {_mib(mem['fp16_bytes'])} -> W4A4 {_mib(mem['w4a4_bytes'])} "
                  f"({mem['fp16_bytes'] / mem['w4a4_bytes']:.2f}x smaller; embeddings and "
                  f"LM head kept in FP16)")


@app.command()
def calibrate(
    model: ModelArg,
    out: Annotated[Path, typer.Option("-o", "--out", help="Output artifact directory.")],
    method: Annotated[str, typer.Option(
        help="rtn, quarot, flatquant, fair-calib, qdrop or qdrop-weighted.")] = "fair-calib",
    prior: Annotated[Path | None, typer.Option(
        help="Prior from `probe` (fair-calib, qdrop-weighted); without one, the FP model is "
             "probed first and the prior kept in OUT.prior.")] = None,
    data: Annotated[str | None, typer.Option(
        help="Calibration text: a .txt file, a .jsonl file (text, or question/answer), or "
             "task:NAME for a tiny-model task. Default for shipped tiny models: their task.")
    ] = None,
    samples: Annotated[int | None, typer.Option(
        help="Calibration sequences (default: the model's recipe).")] = None,
    seq_len: Annotated[int | None, typer.Option(
        help="Tokens per sequence (default: the model's recipe).")] = None,
    epochs: Annotated[int | None, typer.Option(
        help="Epochs per block (default: the model's recipe).")] = None,
    batch_size: int = CalibConfig.batch_size,
    lr: float = CalibConfig.lr,
    w_bits: Annotated[int, typer.Option("--wbits", "--w-bits", help="Weight bits (2-8).")] = 4,
    a_bits: Annotated[int, typer.Option("--abits", "--a-bits",
                                        help="Activation bits (2-8, 16 = none).")] = 4,
    quant_format: Annotated[str, typer.Option(
        "--format", help="int (integer grid, per channel / token), nvfp4 (E2M1, E4M3 scale "
                         "per 16, FP32 tensor scale) or mxfp4 (E2M1, E8M0 scale per 32); "
                         "the FP4 formats are W4A4.")] = CalibConfig.format.value,
    act_clips: Annotated[bool, typer.Option(
        "--act-clips/--no-act-clips",
        help="Learn the activation clips (methods that learn clips). --no-act-clips keeps "
             "them at 1, as TensorRT's native NVFP4 graph needs (its dynamic quantization "
             "maps each block's amax to 6); build does so for FP4 targets.")
    ] = CalibConfig.act_clips,
    seed: int = 0,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    overwrite: OverwriteOpt = False,
) -> None:
    """Stage II: calibrate every block against the FP model (resumable)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from .calibrate.entry import calibrate_checkpoint
    from .calibrate.methods import get_method
    from .models.builtin import resolve_model
    from .models.loading import read_config

    path = resolve_model(model)
    _, mcfg = read_config(path)
    cfg = CalibConfig(method=method, w_bits=w_bits, a_bits=a_bits, format=quant_format,
                      epochs=epochs, act_clips=act_clips,
                      batch_size=batch_size, lr=lr, seed=seed, device=device
                      ).resolved(mcfg.hidden_size)
    epochs = cfg.epochs
    meth = get_method(method)
    epochs_total = mcfg.num_layers * max(1, epochs if meth.trains else 1)
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                  console=err_console) as bar:
        task = bar.add_task(f"{method} block 0", total=epochs_total)

        def progress(block: int, phase: str, loss: float | None) -> None:
            shown = "" if loss is None else f" loss {loss:.3e}"
            bar.update(task, description=f"{method} block {block}/{mcfg.num_layers} "
                                         f"{phase}{shown}")
            if phase == "epoch" or (phase in ("resumed", "done") and not meth.trains):
                bar.advance(task)
            elif phase == "resumed":
                bar.advance(task, max(1, epochs))

        result = calibrate_checkpoint(path, out, cfg, data=data, prior=prior, samples=samples,
                                      seq_len=seq_len, progress=progress, overwrite=overwrite)
    console.print(f"wrote calibrated artifact {result}")


@app.command()
def fold(
    artifact: Annotated[Path, typer.Argument(help="Calibrated artifact from `calibrate`.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output deployment directory.")],
    embed_bits: Annotated[int, typer.Option(help="Embedding table: 16 or 8 (int8 gather).")] = 16,
    head_bits: Annotated[int, typer.Option(help="LM head: 16, or 8 / 4 weight-only.")] = 16,
    overwrite: OverwriteOpt = False,
) -> None:
    """Fold scales, inverse transforms and clipping into packed int4 weights (float64)."""
    from .fold.fold import fold_artifact

    path = fold_artifact(artifact, out, embed_bits=embed_bits, head_bits=head_bits,
                         overwrite=overwrite)
    size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    console.print(f"wrote folded model {path} ({_mib(size)})")


@app.command()
def generate(
    model: AnyModelArg,
    prompt: Annotated[list[str], typer.Option("--prompt", "-p", help="Prompt (repeatable).")],
    policy: Annotated[str | None, typer.Option(
        help="LLaDA: low_confidence | random. Dream: entropy | maskgit_plus | topk_margin | "
             "origin. Default: the family's.")] = None,
    steps: Annotated[int | None, typer.Option(help="Denoising steps.")] = None,
    gen_length: Annotated[int | None, typer.Option(help="Generated tokens (window).")] = None,
    block_length: Annotated[int | None, typer.Option(help="LLaDA semi-AR block.")] = None,
    temperature: Annotated[float | None, typer.Option(help="0 = greedy.")] = None,
    top_p: Annotated[float | None, typer.Option(help="Dream nucleus sampling.")] = None,
    top_k: Annotated[int | None, typer.Option(help="Dream top-k sampling.")] = None,
    alg_temp: Annotated[float | None, typer.Option(help="Dream position sampling temp.")] = None,
    cfg_scale: Annotated[float | None, typer.Option(help="LLaDA classifier-free guidance.")
                         ] = None,
    seed: int = 0,
    chat: Annotated[bool, typer.Option(help="Apply the tokenizer's chat template.")] = True,
    show_steps: Annotated[bool, typer.Option(
        help="Print the window after every step (unmasking order).")] = False,
    device: Annotated[str, typer.Option(help="cpu or cuda (PyTorch models).")] = "cpu",
    decode: DecodeOpt = None,
    threshold: ThresholdOpt = None,
    cache: CacheOpt = None,
) -> None:
    """Decode prompts with the model's own commit policy and print the text.

    MODEL: a checkpoint, a calibrated artifact, a folded model, or an exported ONNX
    directory (served by the torch-free runtime).
    """
    from rich.progress import BarColumn, Progress, TextColumn

    extra = {k: v for k, v in (("top_p", top_p), ("top_k", top_k), ("alg_temp", alg_temp),
                               ("cfg_scale", cfg_scale)) if v is not None}
    extra.update(decode_overrides(decode, threshold, cache))
    from .opener import open_model

    opened = open_model(model, device)
    config = opened.policy(seed=seed, policy=policy, gen_length=gen_length, steps=steps,
                           block_length=block_length, temperature=temperature, **extra)
    decoder = opened.text_decoder(chat)
    prompts = [decoder.encode(p) for p in prompt]
    mask_id = config.mask_id

    def show(event) -> None:
        window = event.x[0, -config.window:]
        pieces = ["░" if int(t) == mask_id else decoder.decode([int(t)]) or "·" for t in window]
        err_console.print(f"step {event.step:>3}: " + "".join(pieces).replace("\n", "⏎"),
                          highlight=False, markup=False)

    with Progress(TextColumn("{task.description}"), BarColumn(),
                  TextColumn("{task.completed}/{task.total} steps"), console=err_console,
                  disable=show_steps) as bar:
        task = bar.add_task(f"decoding ({opened.kind})", total=config.steps)

        def on_step(event) -> None:
            bar.update(task, completed=event.step + 1)
            if show_steps:
                show(event)

        result = opened.generate(prompts, config, on_step=on_step)
    for text, ids in zip(prompt, result.generated, strict=True):
        console.print(f"[bold]{text}[/]", highlight=False)
        console.print(decoder.decode(ids), highlight=False, markup=False)
    if hasattr(result, "steps_per_block"):
        err_console.print(f"decode {config.decode.value}: {result.steps_run} steps "
                          f"(per block {result.steps_per_block}), {result.forward_calls} "
                          f"model calls, {result.positions_computed} positions computed")


@app.command()
def serve(
    model: AnyModelArg,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    max_batch: Annotated[int, typer.Option(
        help="Most requests decoded together in one backend call (1: one at a time).")
    ] = MAX_BATCH,
    max_tokens: Annotated[int | None, typer.Option(
        help=f"Largest max_tokens a request may ask for. Default: {DEFAULT_MAX_TOKENS}, "
             f"capped by the model's context.")] = None,
    timeout: Annotated[float | None, typer.Option(
        help="Seconds a request may wait and decode before it fails (504).")] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda (PyTorch models).")] = "cpu",
    name: Annotated[str | None, typer.Option(
        help="Served model name (the request's `model`). Default: the directory name.")
                    ] = None,
) -> None:
    """Serve MODEL over an OpenAI-compatible HTTP API (/v1/completions,
    /v1/chat/completions, /v1/models, /health, /metrics).

    Greedy exact-decoding requests on an exported model are batched continuously (a
    request joins the running batch before the next denoising step); other settings are
    decoded a batch at a time. An exported ONNX directory is served without torch. Needs
    the `serve` extra (fastapi, uvicorn, jinja2).
    """
    if max_batch < 1:
        raise FaircalibError(f"max-batch must be an integer >= 1, got {max_batch}")
    try:
        import uvicorn

        from .serve import create_app
    except ImportError as err:
        raise FaircalibError(f"serving needs fastapi and uvicorn ({err}): "
                             f"pip install 'faircalib-export[serve]'") from err
    app_ = create_app(model, name=name, max_batch=max_batch, max_tokens=max_tokens,
                      timeout=timeout, device=device)
    uvicorn.run(app_, host=host, port=port)


@app.command()
def export(
    deploy: Annotated[Path, typer.Argument(help="Folded model directory from `fold`.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output directory.")],
    format: Annotated[str, typer.Option("--format", help="onnx or tensorrt.")] = "onnx",
    target: Annotated[str, typer.Option(
        help="TensorRT target GPU profile (configs/targets).")] = "rtx4090",
    variant: Annotated[str, typer.Option(
        help="w4a4 (portable int4 Q/DQ graph), w4a4-int (same numbers with integer GEMMs: "
             "faster on CPU) or weight-only (MatMulNBits, W4A16); for nvfp4 / mxfp4 models "
             "w4a4-fp4 (opset-23 FLOAT4E2M1 Q/DQ) or w4a4-fp4-emu (FP4 rounding as float ops, "
             "for ONNX Runtime on CPU).")] = "w4a4",
    external_data: Annotated[bool | None, typer.Option(
        "--external-data/--inline-data",
        help="Weights in model.onnx.data beside the graph. Default: only above 1 GiB.")
    ] = None,
    head_activations: Annotated[str, typer.Option(
        help="LM head of the w4a4-int graph: float (fp32 MatMul) or int8 (per-token int8 "
             "activations x the head's int4/int8 codes with MatMulInteger, about 4x cheaper; "
             "needs fold --head-bits 4 or 8).")] = "float",
    accuracy_level: Annotated[int | None, typer.Option(
        help="MatMulNBits accuracy level of the weight-only graph: 0 unset, 1 fp32 (default: "
             "exact W4A16), 2 fp16, 3 bf16, 4 int8 per block of 32 (faster for short "
             "steps only).")] = None,
    ort_memory: Annotated[str | None, typer.Option(
        help="How ONNX Runtime holds the weights: fast (its defaults) or low (no prepacked "
             "GEMM operands: LLaDA-8B w4a4-int 9.7 instead of 11.3 GiB, about 20% slower). "
             "Default: fast.")
    ] = None,
    engine: Annotated[bool, typer.Option(
        help="--format tensorrt: build the engine (needs tensorrt and a GPU, plus the "
             "plugin library for int models or a Blackwell GPU for nvfp4; nothing is written "
             "where they are missing). --no-engine writes the graph alone, to build the "
             "engine on the GPU machine.")] = True,
    overwrite: OverwriteOpt = False,
) -> None:
    """Export a folded model for ONNX Runtime or TensorRT.

    --format onnx writes an ONNX graph for ONNX Runtime; --format tensorrt writes a graph
    whose quantized matmuls are W4A4 plugin nodes (int models) or TensorRT's native NVFP4
    ops (nvfp4 models calibrated with --no-act-clips) and, where TensorRT (and for int
    the plugin library) is available, an engine for the target GPU.
    """
    if format == "tensorrt":
        from .trt.export import export_tensorrt

        result = export_tensorrt(deploy, out, target, external_data=external_data,
                                 engine=engine, overwrite=overwrite)
        console.print(f"wrote TensorRT export {result.directory} (engine {result.engine})")
        return
    if format != "onnx":
        raise FaircalibError(f"unknown export format {format!r}; use onnx or tensorrt")
    from .export.onnx_export import ExportOptions, export_onnx

    options = ExportOptions(variant=variant, external_data=external_data,
                            head_activations=head_activations, accuracy_level=accuracy_level,
                            **({} if ort_memory is None else {"ort_memory": ort_memory}))
    path = export_onnx(deploy, out, options, overwrite=overwrite)
    size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    console.print(f"wrote {variant} ONNX model {path} ({_mib(size)})")


@app.command()
def validate(
    reference: Annotated[str, typer.Option(
        help="Reference model of any kind, usually the calibrated artifact or folded model "
             "the export came from.")],
    exported: Annotated[Path, typer.Option(
        help="Model to check, of any kind, usually an exported ONNX / TensorRT directory.")],
    prompts: Annotated[Path | None, typer.Option(
        help="Prompt file (one per line, or JSONL with 'prompt'). Default: the model's "
             "held-out task prompts, else a few built-in prompts.")] = None,
    limit: Annotated[int, typer.Option("-n", "--limit", help="Prompts to use.")] = 32,
    out: Annotated[Path | None, typer.Option(
        "-o", "--out", help="Write report.json and report.md here.")] = None,
    top1_min: Annotated[float, typer.Option(
        help="Least top-1 agreement on teacher-forced masked states.")] = Thresholds.top1_min,
    decode_match_min: Annotated[float, typer.Option(
        help="Least share of prompts decoded to identical tokens.")
    ] = Thresholds.decode_match_min,
    rel_error_max: Annotated[float, typer.Option(
        help="Largest relative error of the masked-position logits.")
    ] = Thresholds.rel_error_max,
    kl_max: Annotated[float, typer.Option(
        help="Largest mean KL(reference || checked) per masked position.")] = Thresholds.kl_max,
    steps: Annotated[int | None, typer.Option(help="Denoising steps.")] = None,
    gen_length: Annotated[int | None, typer.Option(help="Generated tokens.")] = None,
    chat: Annotated[bool, typer.Option(help="Apply the chat template.")] = True,
    decode: DecodeOpt = None,
    threshold: ThresholdOpt = None,
    cache: CacheOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Compare an exported model with its PyTorch reference; non-zero exit on failure.

    With --decode other than exact, both models decode in that mode (the checks compare
    them there), and the report adds the mode's agreement with the exact loop.

    Teacher-forced top-1 agreement, KL and logit errors on the masked positions of the
    reference's own decoding trajectories, commit flips, and decoded-token agreement.
    """
    from . import checks
    from .artifacts import check_output
    from .opener import open_model
    from .validate import ValidationError, default_prompts, markdown, read_prompts
    from .validate import validate as run_validation

    checks.count("--limit", limit)
    for name, value in (("--top1-min", top1_min), ("--decode-match-min", decode_match_min),
                        ("--rel-error-max", rel_error_max), ("--kl-max", kl_max)):
        if not value >= 0:  # NaN fails too
            raise FaircalibError(f"{name} must be a number >= 0, got {value}")
    if out is not None:
        check_output(out, "validation", (reference, exported), overwrite)
    ref = open_model(reference)
    exp = open_model(exported)
    texts = read_prompts(prompts, default_prompts(ref, limit))[:limit]
    report = run_validation(
        ref, exp, texts, chat=chat, steps=steps, gen_length=gen_length,
        thresholds=Thresholds(top1_min, decode_match_min, rel_error_max, kl_max),
        **decode_overrides(decode, threshold, cache))
    text = markdown(report, reference, str(exported))
    if out is not None:
        from .artifacts import atomic_dir, write_manifest

        with atomic_dir(out, "validation", inputs=(reference, exported),
                        overwrite=overwrite) as tmp:
            (tmp / "report.json").write_text(json.dumps(report, indent=1) + "\n")
            (tmp / "report.md").write_text(text)
            write_manifest(tmp, "validation", {"reference": reference,
                                               "exported": str(exported)})
    console.print(text, markup=False, highlight=False)
    if not report["passed"]:
        failed = [k for k, ok in report["checks"].items() if not ok]
        raise ValidationError(f"validation failed: {', '.join(failed)}")


@app.command()
def build(
    model: ModelArg,
    target: Annotated[str, typer.Option("--target", "-t", help="Target GPU profile.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output directory.")],
    method: str = "fair-calib",
    data: Annotated[str | None, typer.Option(help="Calibration data (see calibrate).")] = None,
    probe_data: Annotated[str | None, typer.Option(help="Probing prompts (see probe).")
                          ] = None,
    samples: Annotated[int | None, typer.Option(
        help="Calibration sequences (default: the model's recipe).")] = None,
    seq_len: Annotated[int | None, typer.Option(
        help="Calibration sequence length (default: the model's recipe).")] = None,
    epochs: Annotated[int | None, typer.Option(
        help="Epochs per block (default: the model's recipe).")] = None,
    seed: int = 0,
    device: str = "cpu",
    variant: Annotated[str, typer.Option(
        help="ONNX variant: auto (int: w4a4-int, integer GEMMs, on CPU, w4a4 on CUDA; FP4: "
             "w4a4-fp4-emu), w4a4, w4a4-int, w4a4-fp4 or w4a4-fp4-emu.")] = "auto",
    format: Annotated[str | None, typer.Option(
        "--format", help="Quantization format: int, nvfp4 or mxfp4 (default: the target's; "
                         "nvfp4 on Blackwell targets such as rtx5090, calibrated with the "
                         "activation clips at 1 for TensorRT's native NVFP4 graph; mxfp4 "
                         "has no TensorRT graph).")] = None,
    tensorrt: Annotated[bool, typer.Option(help="Also build the TensorRT engine.")] = True,
    validate_prompts: Annotated[int, typer.Option(help="Prompts used by validation.")] = 32,
    quality_problems: Annotated[int, typer.Option(
        help="Held-out problems scored for FP vs W4A4 accuracy (0: skip the quality "
             "comparison).")] = QUALITY_PROBLEMS,
    gen_length: Annotated[int | None, typer.Option(help="Validation decode length.")] = None,
    steps: Annotated[int | None, typer.Option(help="Validation decode steps.")] = None,
    decode: DecodeOpt = None,
    threshold: ThresholdOpt = None,
    cache: CacheOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Checkpoint -> probe -> calibrate -> fold -> ONNX (+ TensorRT) -> validate -> quality.

    --decode sets the mode validation and the quality comparison decode in.

    Completed stages are skipped on a re-run. The summary lists the artifacts and their
    sizes, the validation of the export, and what quantization cost against the FP model
    (held-out accuracy of both, teacher-forced KL). Exits 2 when validation fails.
    """
    from .build import BuildSettings, run_build
    from .validate import ValidationError

    settings = BuildSettings(method=method, data=data, probe_data=probe_data, samples=samples,
                             seq_len=seq_len, epochs=epochs, seed=seed, device=device,
                             variant=variant, format=format, tensorrt=tensorrt,
                             validate_prompts=validate_prompts,
                             quality_problems=quality_problems,
                             policy={"gen_length": gen_length, "steps": steps,
                                     **decode_overrides(decode, threshold, cache)})
    result = run_build(model, target, out, settings, overwrite=overwrite,
                       log=lambda m: err_console.print(m, markup=False))
    table = Table(title=f"build {out} for {target}")
    for col in ("stage", "status", "seconds", "detail"):
        table.add_column(col)
    for r in result.stages:
        table.add_row(r.name, r.status, f"{r.seconds:.1f}", r.detail)
    console.print(table)
    sizes = Table(title="artifacts")
    sizes.add_column("directory")
    sizes.add_column("size", justify="right")
    for d in sorted(p for p in out.iterdir() if p.is_dir()):
        sizes.add_row(str(d), _mib(sum(f.stat().st_size for f in d.rglob("*") if f.is_file())))
    console.print(sizes)
    v = result.validation["metrics"]
    console.print(f"validation {'passed' if result.passed else 'FAILED'}: exported ONNX vs "
                  f"calibrated PyTorch, top-1 agreement {v['top1_agreement']:.4f}, KL "
                  f"{v['kl_mean']:.2e}, {v['decode_identical_rate']:.0%} of prompts decoded "
                  f"identically")
    if result.quality is not None:
        q = result.quality
        if "heldout" in q:
            h = q["heldout"]
            console.print(f"quality: {h['task']} held-out accuracy FP {h['fp']['accuracy']:.1%}"
                          f" -> W4A4 {h['w4a4']['accuracy']:.1%} ({h['w4a4']['n']} problems)")
        tf = q["teacher_forced"]
        console.print(f"quality: teacher-forced KL(FP || W4A4) {tf['kl_mean']:.4f}, top-1 "
                      f"agreement {tf['top1_agreement']:.3f}, "
                      f"{tf['flips_per_sequence_mean']:.2f} commit flips per sequence")
    if not result.passed:
        failed = [k for k, ok in result.validation["checks"].items() if not ok]
        raise ValidationError(f"validation failed: {', '.join(failed)} "
                              f"(see {out / 'validation' / 'report.md'})")


@tiny_app.command("create")
def tiny_create(
    out: Annotated[Path, typer.Argument(help="Output checkpoint directory.")],
    family: Annotated[str, typer.Option(help="llada or dream.")] = "llada",
    hidden_size: int = 64,
    intermediate_size: Annotated[int | None, typer.Option(
        help="Default: 3 x hidden size.")] = None,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: Annotated[int | None, typer.Option(help="Default: num heads.")] = None,
    shards: Annotated[int, typer.Option(help="Number of safetensors shards.")] = 1,
    seed: int = 0,
    dtype: Annotated[str, typer.Option(help="fp32, bf16 or fp16.")] = "fp32",
    overwrite: OverwriteOpt = False,
) -> None:
    """Write a random-init checkpoint in the real LLaDA or Dream layout."""
    from .models.tiny import write_tiny_checkpoint

    path = write_tiny_checkpoint(
        out, family, shards=shards, seed=seed, dtype=dtype, hidden_size=hidden_size,
        intermediate_size=intermediate_size, num_layers=num_layers,
        num_heads=num_heads, num_kv_heads=num_kv_heads, overwrite=overwrite,
    )
    console.print(f"wrote {family} checkpoint to {path}")


@tiny_app.command("list")
def tiny_list() -> None:
    """Built-in model names accepted wherever a MODEL is expected."""
    from .models.builtin import TINY, shipped_models

    for name in shipped_models():
        console.print(f"{name}  (shipped, trained)")
    for name in sorted(TINY):
        console.print(f"{name}  (random init, generated on first use)")


app.command("plan")(plan_cmd)
app.command("probe")(probe_cmd)
app.command("probe-compare")(probe_compare_cmd)
app.command("diagnose")(diagnose_cmd)
app.command("compare")(compare_cmd)
tiny_app.command("train")(train_cmd)


@app.command("eval")
def eval_command(
    model: AnyModelArg,
    task: Annotated[str, typer.Option(
        help="A tiny-model task (chain, chain1) or a benchmark: arc_easy, arc_challenge, "
             "boolq, winogrande, piqa, gsm8k, humaneval, wikitext2.")] = "chain",
    limit: Annotated[int | None, typer.Option(help="Number of problems to score.")] = None,
    data: Annotated[Path | None, typer.Option(
        help="Benchmark file (default: ../shared/data/<benchmark file>).")] = None,
    gen_length: Annotated[int | None, typer.Option(help="Generation window.")] = None,
    steps: Annotated[int | None, typer.Option(help="Denoising steps.")] = None,
    samples: Annotated[int, typer.Option(help="Monte Carlo samples per likelihood.")] = 8,
    batch_size: Annotated[int | None, typer.Option(
        help="Problems decoded together (default: 64 on tiny tasks, 8 on benchmarks); under "
             "torchrun each process takes whole batches.")] = None,
    execute: Annotated[bool, typer.Option(
        help="HumanEval: run the tests on completions (a subprocess with a time limit, "
             "not a sandbox).")] = False,
    seed: int = 0,
    decode: DecodeOpt = None,
    threshold: ThresholdOpt = None,
    cache: CacheOpt = None,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Write JSON here.")
                      ] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace an existing --output file.")] = False,
) -> None:
    """Accuracy of a model (any kind) with its own commit policy, as JSON."""
    from . import checks
    from .artifacts import check_output_file
    from .evaluate import benchmark_names, evaluate_benchmark

    checks.count("--batch-size", batch_size)
    if output is not None:  # before the evaluation, not after
        check_output_file(output, inputs=(model,), overwrite=overwrite)
    if task not in benchmark_names():
        from .tiny.commands import eval_cmd
        from .tiny.config import EVAL_LIMIT

        eval_cmd(model, task=task, limit=EVAL_LIMIT if limit is None else limit,
                 gen_length=gen_length, steps=steps, batch_size=batch_size or 64,
                 seed=seed, output=output, overwrite=overwrite, decode=decode,
                 threshold=threshold, cache=cache)
        return
    from rich.progress import Progress

    from .opener import open_model

    checks.count("--limit", limit)
    opened = open_model(model)
    with Progress(console=err_console) as bar:
        job = bar.add_task(f"{task}", total=limit)
        result = evaluate_benchmark(opened, task, path=data, limit=limit, seed=seed,
                                    samples=samples, execute=execute,
                                    batch_size=batch_size or 8,
                                    progress=lambda *a: bar.advance(job),
                                    gen_length=gen_length, steps=steps,
                                    **decode_overrides(decode, threshold, cache))
    text = json.dumps(result, indent=1)
    console.print_json(text)
    if output is not None:
        from . import distributed
        from .artifacts import write_output_file

        distributed.on_main(lambda: write_output_file(output, text + "\n", inputs=(model,),
                                                      overwrite=overwrite))


_DEBUG = {"on": False}


# The commands that run data-parallel under torchrun (faircalib_export/distributed.py);
# the others would have every rank write the same output, so they refuse to.
DATA_PARALLEL = ("probe", "calibrate", "eval", "diagnose", "compare")


@app.callback()
def _options(ctx: typer.Context, debug: Annotated[bool, typer.Option(
        "--debug", help="Show the full traceback of errors (bug reports).")] = False) -> None:
    """FAIR-Calib W4A4 quantization and edge export for diffusion LLMs (LLaDA, Dream)."""
    from . import distributed

    _DEBUG["on"] = debug
    if distributed.active() and ctx.invoked_subcommand not in DATA_PARALLEL:
        raise distributed.DistributedError(
            f"`{ctx.invoked_subcommand}` runs as one process; under torchrun only "
            f"{', '.join(DATA_PARALLEL)} do")


def user_error(err: BaseException) -> str | None:
    """One line for an error the user caused (bad input, missing or corrupt file); None for
    anything else, which is a bug and keeps its traceback."""
    import json

    from safetensors import SafetensorError

    from faircalib_runtime import PolicyConfigError, PromptError
    from faircalib_runtime.onnx import ExportError

    if isinstance(err, (FaircalibError, PolicyConfigError, PromptError, ExportError)):
        return str(err)
    if isinstance(err, OSError):
        where = err.filename or ""
        reason = err.strerror or str(err)
        return f"{where}: {reason}" if where else reason
    if isinstance(err, json.JSONDecodeError):
        return f"invalid JSON: {err.msg} at line {err.lineno} column {err.colno}"
    if isinstance(err, UnicodeDecodeError):
        return f"a text file is not UTF-8 ({err.reason} at byte {err.start})"
    if isinstance(err, SafetensorError):
        return f"a safetensors file is corrupt or truncated ({err})"
    return None


def main(argv: list[str] | None = None) -> None:
    """The console script: user errors print one line and exit 2; bugs keep their traceback
    (and `--debug` shows it for user errors too)."""
    from . import distributed

    try:
        distributed.init()  # under torchrun only: the process group, this rank's GPU
        with distributed.quiet_peers():  # under torchrun, rank 0 prints for all
            app(args=argv, prog_name="faircalib-export")
    except Exception as err:
        message = user_error(err)
        if message is None or _DEBUG["on"]:
            raise
        err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False,
                          soft_wrap=True)  # one line, whatever the terminal width
        sys.exit(2)
    finally:
        distributed.teardown()


if __name__ == "__main__":
    main()
