"""CLI command for diagnostics, for registration on the main app.

    faircalib-export diagnose TEACHER STUDENT... -o DIAG_DIR [--data SOURCE] [--prior DIR]

Thin: parse, call `run.diagnose` and `run.write_diagnose_dir`, print a summary table.
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


def diagnose_cmd(
    teacher: Annotated[str, typer.Option(
        "--teacher", help="FP checkpoint directory or built-in model name.")],
    students: Annotated[list[Path], typer.Option(
        "--student", help="Calibrated artifact or folded model directory (repeatable).")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output directory.")],
    data: Annotated[str | None, typer.Option(
        help="Prompts: task:NAME (tiny task, held-out split), a GSM8K .jsonl or a text file. "
             "Default for shipped tiny models: their task.")] = None,
    samples: Annotated[int, typer.Option(help="Sequences (paper: 32).")] = 32,
    seed: Annotated[int, typer.Option(help="Prompt stream / policy seed.")] = 0,
    prior: Annotated[Path | None, typer.Option(
        help="Prior directory from `probe`: correlate w̄ with per-position flips and KL.")
    ] = None,
    seed_group: Annotated[list[str] | None, typer.Option(
        help="Group label per student, in order (repeat the option); students of one group "
             "give error bars over seeds. Default: the calibration method from the "
             "manifests.")] = None,
    window: Annotated[int | None, typer.Option(
        help="Generation window (default: the teacher's decoding default).")] = None,
    steps: Annotated[int | None, typer.Option(help="Decoding steps.")] = None,
    block_length: Annotated[int | None, typer.Option(help="LLaDA semi-AR block.")] = None,
    batch_size: Annotated[int, typer.Option(help="Sequences per batch.")] = 16,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    decode: DecodeOpt = None,
    threshold: ThresholdOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Flips, margins, post-commit mismatch, stability lag and divergence vs the FP teacher.

    --decode parallel measures them under threshold commits (several tokens per step at
    the frontier); the cached modes are refused (diagnostics need full predictions)."""
    from .. import distributed
    from ..artifacts import check_output
    from .run import KIND, DiagnoseConfig, diagnose, write_diagnose_dir

    # before the long run; under torchrun rank 0 checks and writes for every rank
    distributed.on_main(lambda: check_output(out, KIND, tuple(students), overwrite))
    config = DiagnoseConfig(samples=samples, seed=seed, batch_size=batch_size, window=window,
                            steps=steps, block_length=block_length, decode=decode,
                            threshold=threshold)
    with err_console.status("diagnosing") as status:
        report = diagnose(teacher, students, data, config=config, prior=prior,
                          groups=seed_group, device=device,
                          progress=lambda msg: status.update(msg))
    distributed.on_main(lambda: write_diagnose_dir(report, out, overwrite=overwrite))
    console.print(summary_table(report))
    console.print(f"wrote {out}")


def _fmt(stat: dict | None) -> str:
    if not stat or stat.get("mean") is None:
        return "-"
    return f"{stat['mean']:.3g} ± {stat['std']:.2g}"


def summary_table(report: dict) -> Table:
    table = Table(title=f"diagnose ({report['n_sequences']} sequences, mean ± std)")
    for col in ("model", "flips/seq", "margin", "KL masked", "never_agree", "mean_disagree",
                "lag", "final disagree"):
        table.add_column(col)
    for m in report["models"]:
        name = m["name"]
        tf = report["teacher_forced"].get(name, {})
        margin = tf.get("margin") if tf else report["teacher_margin"]
        pc = report["post_commit"][name]
        div = report["divergence"].get(name, {})
        table.add_row(name, _fmt(tf.get("flips_per_seq")), _fmt(margin),
                      _fmt(tf.get("kl_masked")), _fmt(pc["never_agree_rate"]),
                      _fmt(pc["mean_disagree_rate"]), _fmt(report["stability_lag"][name]["lag"]),
                      _fmt(div.get("final_disagreement")))
    for name, corr in report.get("prior_correlation", {}).items():
        parts = ", ".join(f"{k} ρ={v['spearman']:.2f}" for k, v in corr.items()
                          if v["spearman"] == v["spearman"])
        table.caption = (table.caption or "") + f"\nprior vs {name}: {parts}"
    return table
