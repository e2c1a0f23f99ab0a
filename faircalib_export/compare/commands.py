"""CLI command for the method comparison, for registration on the main app.

    faircalib-export compare MODEL --methods rtn,quarot,flatquant,fair-calib --seeds 3 \
        -o REPORT_DIR [--ablations] [--formats int4,nvfp4,mxfp4]
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ..options import DecodeOpt, OverwriteOpt, ThresholdOpt

console = Console()
err_console = Console(stderr=True)


def compare_cmd(
    model: Annotated[str, typer.Argument(help="FP checkpoint directory or built-in model name.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Report directory (reused on rerun).")],
    methods: Annotated[str, typer.Option(
        help="Comma-separated METHOD or METHOD@VARIANT (prior variants: both, frontier-only, "
             "reliability-only, uniform-schedule, late-boost, window-flat, probeN).")
    ] = "rtn,quarot,flatquant,fair-calib",
    seeds: Annotated[int, typer.Option(help="Calibration seeds 0..N-1 per method.")] = 3,
    ablations: Annotated[bool, typer.Option(
        help="Add the prior ablations: frontier-only, reliability-only, uniform and "
             "late-boost schedules, a 16-rollout probing budget.")] = False,
    w_bits: Annotated[int, typer.Option("--wbits", help="Weight bits.")] = 4,
    a_bits: Annotated[int, typer.Option("--abits", help="Activation bits.")] = 4,
    formats: Annotated[str, typer.Option(
        help="Comma-separated quantization formats, each calibrated for every method: int "
             "(or int4), nvfp4, mxfp4 (docs/fp4.md). Methods that cannot calibrate a format "
             "(quarot's GPTQ in FP4) are skipped for it with a note.")] = "int",
    epochs: Annotated[int | None, typer.Option(
        help="Calibration epochs per block (default: the model's recipe, "
             "faircalib_export/calibrate/config.py).")] = None,
    data: Annotated[str | None, typer.Option(
        help="Calibration data (default: the model's own task, calibration split).")] = None,
    calib_samples: Annotated[int | None, typer.Option(
        help="Calibration sequences (default: the model's recipe).")] = None,
    task: Annotated[str | None, typer.Option(
        help="Accuracy: a tiny task (chain) or benchmark (gsm8k, arc_easy, ...). Default: "
             "the model's task.")] = None,
    limit: Annotated[int, typer.Option(help="Held-out problems per model.")] = 500,
    samples: Annotated[int, typer.Option(help="Diagnosed sequences (paper: 32).")] = 32,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    decode: DecodeOpt = None,
    threshold: ThresholdOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Calibrate, evaluate and diagnose several methods side by side; Markdown report.

    --decode parallel scores and diagnoses every model under threshold commits (the cached
    modes are refused: the diagnostics need full predictions)."""
    from .. import distributed
    from .report import write_report
    from .run import ABLATIONS, CompareConfig, parse_entries, parse_formats, run_compare

    spec = [m for m in methods.split(",") if m.strip()] + (list(ABLATIONS) if ablations else [])
    config = CompareConfig(entries=tuple(parse_entries(spec)), seeds=tuple(range(seeds)),
                           w_bits=w_bits, a_bits=a_bits,
                           formats=parse_formats(formats, w_bits, a_bits),
                           epochs=epochs, data=data,
                           calib_samples=calib_samples, task=task,
                           limit=limit, diag_samples=samples, device=device,
                           decode=decode, threshold=threshold)
    with err_console.status("comparing") as status:
        def step(msg: str) -> None:
            err_console.log(msg)
            status.update(msg)

        results = run_compare(model, out, config, step, status.update, overwrite=overwrite)
    report = distributed.on_main(lambda: write_report(results, Path(out)))  # rank 0 writes
    console.print(summary_table(results))
    console.print(f"wrote {report}")


def summary_table(results: dict) -> Table:
    from .report import DIAG_METRICS, _ms

    s = results["settings"]
    table = Table(title=f"W{s['w_bits']}A{s['a_bits']} on {Path(results['model']).name} "
                        f"(mean ± std over seeds {s['seeds']})")
    with_format = s.get("formats", ["int"]) != ["int"]
    table.add_column("model")
    if with_format:
        table.add_column("format")
    table.add_column("accuracy", justify="right")
    for *_, title in DIAG_METRICS[:4]:
        table.add_column(title, justify="right")
    fmt = lambda e: [e.get("format", "int")] if with_format else []  # noqa: E731
    table.add_row("FP", *(["-"] if with_format else []), f"{results['fp']['accuracy']:.1%}",
                  "0", "0", _ms(results["fp"]["never_agree_rate"]), "-")
    for label, e in results["entries"].items():
        name = label.rsplit(":", 1)[0] if with_format else label
        table.add_row(name, *fmt(e), _ms(e["accuracy"], ".1f", pct=True),
                      *[_ms(e[key]) for key, *_ in DIAG_METRICS[:4]])
    return table
