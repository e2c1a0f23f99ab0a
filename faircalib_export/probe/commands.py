"""CLI commands for Stage I, for registration on the main app.

    faircalib-export probe MODEL -o PRIOR_DIR [--data SOURCE] ...    (probe_cmd)
    faircalib-export probe-compare PRIOR_A PRIOR_B -o compare.png   (probe_compare_cmd)

Thin: parse, call `artifact.run_probe` / `compare.compare_priors`, print the result.
Defaults come from `ProbeConfig` (torch-free), so `--help` stays instant.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ..options import OverwriteOpt
from .config import PAPER_SAMPLES, TINY_SAMPLES, ProbeConfig, Schedule, Score

console = Console()
err_console = Console(stderr=True)
_D = ProbeConfig  # class attributes hold the field defaults


def probe_cmd(
    model: Annotated[str, typer.Argument(
        help="FP checkpoint directory or built-in model name (the teacher).")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output prior directory.")],
    data: Annotated[str | None, typer.Option(
        help="Prompts: task:NAME (tiny task, CALIB split), a GSM8K .jsonl (question + "
             "zero-shot CoT, chat template) or a text file (one prompt per line). "
             "Default for shipped tiny models: their task.")] = None,
    samples: Annotated[int | None, typer.Option(
        help=f"Prompts to roll out (default: {PAPER_SAMPLES}; {TINY_SAMPLES} for tiny "
             f"models).")] = None,
    steps: Annotated[int | None, typer.Option(
        help="Decoding steps T (default: 256; tiny models: their window).")] = None,
    window: Annotated[int | None, typer.Option(
        help="Generation window K (default: 256; tiny models: their window).")] = None,
    schedule: Annotated[str, typer.Option(
        help="λ0(t): " + ", ".join(s.value for s in Schedule))] = _D.schedule.value,
    score: Annotated[str, typer.Option(
        help="Sharpness c: " + ", ".join(s.value for s in Score))] = _D.score.value,
    lambda0: Annotated[float, typer.Option(help="Frontier-hit scale λ0.")] = _D.lambda0,
    alpha: Annotated[float, typer.Option(help="Schedule exponent α.")] = _D.alpha,
    rho: Annotated[float, typer.Option(help="Schedule floor ρ.")] = _D.rho,
    lambda1: Annotated[float, typer.Option(
        help="Reliability scale λ1 (0: frontier-hit only).")] = _D.lambda1,
    floor: Annotated[float | None, typer.Option(
        help="Weight of positions before the window (default: the prior format's "
             "DEFAULT_FLOOR).")] = None,
    seed: Annotated[int, typer.Option(help="Prompt stream and commit-order seed.")] = _D.seed,
    batch_size: Annotated[int, typer.Option(help="Rollouts per batch.")] = _D.batch_size,
    temperature: Annotated[float, typer.Option(
        help="Teacher sampling temperature for written tokens (0 = argmax).")
    ] = _D.temperature,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    overwrite: OverwriteOpt = False,
) -> None:
    """Stage I: probe the FP teacher with random commits and write the position prior."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from .artifact import run_probe

    with Progress(TextColumn("probing"), BarColumn(), MofNCompleteColumn(),
                  console=err_console) as bar:
        task = bar.add_task("probe", total=None)
        result = run_probe(
            model, data, out, samples=samples, steps=steps, window=window, device=device,
            overwrite=overwrite,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
            schedule=schedule, score=score, lambda0=lambda0, alpha=alpha, rho=rho,
            lambda1=lambda1, floor=floor, seed=seed, batch_size=batch_size,
            temperature=temperature)
    w = result.prior.weights
    console.print(f"wrote {out}: {result.info['n_samples']} rollouts, K={len(w)}, "
                  f"T={result.config.steps}; w̄ min {w.min():.3f} at {int(w.argmin())}, "
                  f"max at {int(w.argmax())}, floor {result.prior.floor}")


def probe_compare_cmd(
    prior_a: Annotated[Path, typer.Argument(help="First prior directory (or prior .json).")],
    prior_b: Annotated[Path, typer.Argument(help="Second prior directory (or prior .json).")],
    out_png: Annotated[Path, typer.Option(
        "-o", "--out", help="Plot to write; the numbers go beside it as .json.")
    ] = Path("prior-compare.png"),
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace an existing plot and its .json.")] = False,
) -> None:
    """Cross-corpus rank consistency: Spearman and Pearson between two priors."""
    from ..artifacts import check_output_file, write_output_file
    from .artifact import load_band
    from .compare import compare_priors
    from .plots import plot_comparison

    inputs = (prior_a, prior_b)
    for path in (out_png, out_png.with_suffix(".json")):  # both, before any work
        check_output_file(path, inputs=inputs, overwrite=overwrite)
    result = compare_priors(prior_a, prior_b)
    tmp_png = out_png.parent / f".{out_png.name}.tmp-{os.getpid()}{out_png.suffix}"
    plot_comparison(result, tmp_png, (load_band(prior_a), load_band(prior_b)))
    summary = {"spearman": result["spearman"], "pearson": result["pearson"], "n": result["n"],
               "components": {k: {m: v[m] for m in ("spearman", "pearson", "n")}
                              for k, v in result["components"].items()}}
    write_output_file(out_png.with_suffix(".json"), json.dumps({**result, **summary},
                                                                indent=1) + "\n",
                      inputs=inputs, overwrite=overwrite)
    tmp_png.replace(out_png)
    console.print_json(json.dumps(summary))
