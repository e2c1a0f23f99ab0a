"""The layout every decode loop shares: left-padded batches, step events and results.

`left_pad` lays prompts out as pads | prompt | K mask tokens; `DecodeResult` is what the
exact loops (decode.py) and the fast loops (fast.py) return.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .config import Padding, PolicyConfig
from .xp import Array


class PromptError(ValueError):
    """A prompt the loop cannot decode: empty, not token ids, or holding the mask id."""


@dataclass(frozen=True)
class Batch:
    """A left-padded batch laid out on the host."""

    input_ids: np.ndarray  # (B, S) int64: pads | prompt | K mask tokens
    attention_mask: np.ndarray | None  # (B, S) bool, only when some prompt is padded
    position_ids: np.ndarray | None  # (B, S) int64, only for ATTENTION_AND_POSITIONS
    pad: np.ndarray  # (B,) number of left pads per sample
    prompt_width: int  # P: the window is columns P .. S - 1


def left_pad(prompts: Sequence[Sequence[int]], window: int, *, pad_id: int, mask_id: int,
             padding: Padding) -> Batch:
    """Lay out prompts of different lengths; validates them."""
    if not prompts:
        raise PromptError("no prompts given")
    lengths = [len(p) for p in prompts]
    if min(lengths) == 0:
        raise PromptError(f"prompt {lengths.index(0)} is empty")
    width = max(lengths)
    b, s = len(prompts), width + window
    ids = np.full((b, s), mask_id, dtype=np.int64)
    real = np.ones((b, s), dtype=bool)
    pad = np.array([width - n for n in lengths], dtype=np.int64)
    for i, prompt in enumerate(prompts):
        row = np.asarray(prompt, dtype=np.int64)
        if row.ndim != 1 or (row < 0).any():
            raise PromptError(f"prompt {i} must be a flat list of non-negative token ids")
        if (row == mask_id).any():
            raise PromptError(f"prompt {i} contains the mask id {mask_id}")
        ids[i, : pad[i]] = pad_id
        ids[i, pad[i]:width] = row
        real[i, : pad[i]] = False
    if not pad.any():
        return Batch(ids, None, None, pad, width)
    positions = None
    if padding is Padding.ATTENTION_AND_POSITIONS:
        positions = np.cumsum(real, axis=1) - 1  # (B, S): real tokens count from 0
        positions[~real] = 1  # as Dream's reference does
    return Batch(ids, real, positions, pad, width)


@dataclass(frozen=True)
class StepEvent:
    """Passed to `on_step` after each commit; arrays are in the loop's namespace."""

    step: int
    block: int  # LLaDA block index, 0 for the other policies
    x: Array  # (B, S) state after the commit
    committed: Array  # (B, S) bool commit set of this step


@dataclass(frozen=True)
class DecodeResult:
    tokens: np.ndarray  # (B, S) int64 final state: pads | prompt | window
    prompt_width: int  # P: the window starts at column P
    pad: np.ndarray  # (B,) left pads per sample
    commit_step: np.ndarray  # (B, K) loop step that wrote each window position, -1 never
    generated: list[list[int]]  # window ids cut at the first EOS, mask ids dropped
    steps_run: int

    @property
    def window(self) -> np.ndarray:
        return self.tokens[:, self.prompt_width:]  # (B, K)


def expand_prompts(prompts: Sequence[Sequence[int]], config: PolicyConfig
                   ) -> Sequence[Sequence[int]]:
    """Each prompt `num_return_sequences` times (Dream), copies adjacent like the
    reference's repeat_interleave; other policies decode each prompt once."""
    n = getattr(config, "num_return_sequences", 1)
    return prompts if n == 1 else [p for p in prompts for _ in range(n)]


def generated_text_ids(window: np.ndarray, config: PolicyConfig) -> list[list[int]]:
    """Each row of a (B, K) window cut at its first EOS, mask ids dropped."""
    eos = set(config.eos_ids)
    out = []
    for row in window.tolist():
        cut = next((i for i, t in enumerate(row) if t in eos), len(row))
        out.append([t for t in row[:cut] if t != config.mask_id])
    return out
