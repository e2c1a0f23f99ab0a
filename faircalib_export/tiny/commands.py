"""CLI commands for the trained tiny models, for registration on the main app.

    faircalib-export tiny train --family llada --out DIR      (train_cmd)
    faircalib-export eval MODEL --task chain --limit 500       (eval_cmd)

Both are thin: parse, call `train.train` / `evaluate.evaluate`, print the result.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ..options import CacheOpt, DecodeOpt, OverwriteOpt, ThresholdOpt, decode_overrides
from .config import EVAL_LIMIT

console = Console()
err_console = Console(stderr=True)


def train_cmd(
    family: Annotated[str, typer.Option(help="llada or dream.")] = "llada",
    out: Annotated[Path | None, typer.Option(
        help="Output checkpoint directory. Default: ./<family>-chain")] = None,
    steps: Annotated[int | None, typer.Option(
        help="Optimizer steps (default: the family's shipped config).")] = None,
    seed: Annotated[int | None, typer.Option(
        help="Seed (default: the family's shipped config).")] = None,
    resume: Annotated[bool, typer.Option(
        help="Continue from the last training state saved for OUT.")] = False,
    state_dir: Annotated[Path | None, typer.Option(
        help="Where resumable training state goes (default: under the cache dir).")] = None,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Sequences per step.")] = None,
    eval_examples: Annotated[int | None, typer.Option(
        help="Held-out examples scored for the model card.")] = None,
    stop_after: Annotated[int | None, typer.Option(
        help="Stop after this many total steps, keeping the state for --resume.")] = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Train a tiny LLaDA- or Dream-style model on the `chain` task (CPU, deterministic)."""
    from .. import checks
    from .config import default_config
    from .train import train

    for name, value in (("--steps", steps), ("--threads", threads), ("--batch-size", batch_size),
                        ("--eval-examples", eval_examples), ("--stop-after", stop_after)):
        checks.count(name, value)  # None: the shipped config's value; 0 is an error
    cfg = default_config(family, steps=steps, seed=seed, threads=threads,
                         batch_size=batch_size, eval_examples=eval_examples)
    out = out or Path(f"{family}-chain")
    record = train(family, out, cfg, resume=resume, state_dir=state_dir,
                   stop_after=stop_after, overwrite=overwrite, console=err_console)
    if "heldout" in record:
        ev = record["heldout"]
        console.print(f"wrote {out}: {record['steps']} steps in "
                      f"{record['training_time_s'] / 60:.1f} min, final loss "
                      f"{record['final_loss_ema']:.4f}, held-out accuracy {ev['accuracy']:.1%} "
                      f"({ev['correct']}/{ev['n']})")


def eval_cmd(
    model: Annotated[str, typer.Argument(
        help="Checkpoint directory, shipped model name (e.g. llada-chain), calibrated "
             "artifact or folded model.")],
    task: Annotated[str, typer.Option(help="Task name (chain, chain1).")] = "chain",
    limit: Annotated[int, typer.Option(help="Number of problems to score.")] = EVAL_LIMIT,
    split: Annotated[str, typer.Option(help="heldout, calib or train.")] = "heldout",
    gen_length: Annotated[int | None, typer.Option(
        help="Generation window (default: the model's generation_config.json).")] = None,
    steps: Annotated[int | None, typer.Option(help="Denoising steps (default: the model's).")
                     ] = None,
    block_length: Annotated[int | None, typer.Option(
        help="LLaDA semi-AR block length (default: the model's).")] = None,
    batch_size: Annotated[int, typer.Option(help="Problems decoded together.")] = 64,
    seed: Annotated[int, typer.Option(help="Which problems of the split to draw.")] = 0,
    dtype: Annotated[str, typer.Option(help="fp32, bf16 or fp16.")] = "fp32",
    output: Annotated[Path | None, typer.Option("-o", "--output",
                                                help="Write the results as JSON.")] = None,
    overwrite: bool = False,
    decode: DecodeOpt = None,
    threshold: ThresholdOpt = None,
    cache: CacheOpt = None,
) -> None:
    """Exact-match accuracy on a task, decoded with the model's own commit policy."""
    from .evaluate import evaluate

    result = evaluate(model, task, limit, gen_length=gen_length, steps=steps,
                      block_length=block_length, batch_size=batch_size, seed=seed,
                      split=split, dtype=dtype, console=err_console,
                      **decode_overrides(decode, threshold, cache))
    print_result(result)
    if output is not None:
        from .. import distributed
        from ..artifacts import write_output_file

        distributed.on_main(lambda: write_output_file(  # rank 0 writes for all ranks
            output, json.dumps(result, indent=2) + "\n", inputs=(model,), overwrite=overwrite))
        console.print(f"wrote {output}")


def print_result(result: dict) -> None:
    table = Table(title=f"{result['model']} on {result['task']} ({result['split']})")
    for col in ("family", "decoding", "n", "correct", "accuracy", "answered", "time"):
        table.add_column(col, justify="left" if col in ("family", "decoding") else "right")
    table.add_row(result["family"], result["decoding"]["description"], str(result["n"]),
                  str(result["correct"]),
                  f"{result['accuracy']:.1%} ± {result['stderr']:.1%}",
                  f"{result['answered']:.0%}", f"{result['time_s']:.1f} s")
    console.print(table)
