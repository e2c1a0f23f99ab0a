"""CLI options shared by several commands, defined once (typer only: no heavy imports)."""

from __future__ import annotations

from typing import Annotated

import typer

OverwriteOpt = Annotated[bool, typer.Option(
    "--overwrite", help="Replace a non-empty OUT that is not this command's kind of artifact "
                        "(it is moved aside to OUT.replaced-TIME, never deleted).")]


# --- decoding mode (the defaults are the fields of faircalib_runtime's configs) ----------
def _fast_default(name: str):
    import dataclasses

    from faircalib_runtime.config import ConfidencePolicy

    value = next(f.default for f in dataclasses.fields(ConfidencePolicy) if f.name == name)
    return getattr(value, "value", value)


DecodeOpt = Annotated[str | None, typer.Option(
    "--decode", help=f"exact: the model's reference loop, step for step | parallel: commit "
                     f"every position of the current block whose confidence is >= "
                     f"--threshold (at least one per step) | cached: the policy's schedule "
                     f"over a block-wise approximate KV cache | fast: both. Default: the "
                     f"model's setting, else {_fast_default('decode')}.")]
ThresholdOpt = Annotated[float | None, typer.Option(
    "--threshold", help=f"Confidence threshold tau of --decode parallel / fast, in (0, 1]. "
                        f"Default: {_fast_default('threshold')}.")]
CacheOpt = Annotated[str | None, typer.Option(
    "--cache", help=f"--decode cached / fast: prefix (reuse the prompt's and finished blocks' "
                    f"K/V; a step computes the block and everything after it) or dual (reuse "
                    f"the masked suffix's too; a step computes the block alone). Default: "
                    f"{_fast_default('cache')}.")]


def decode_overrides(decode: str | None, threshold: float | None, cache: str | None) -> dict:
    """The decoding-mode options as policy overrides (None: the model's own setting)."""
    return {k: v for k, v in (("decode", decode), ("threshold", threshold), ("cache", cache))
            if v is not None}
