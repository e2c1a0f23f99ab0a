"""Per-step record of a decode: commits and the teacher's sharpness at masked positions.

Only (steps, B, K) arrays over the generation window are kept, never logits. For each
step t (0-based loop step; t = 0 is the all-masked state):

    masked[t]       bool   window positions still masked before the step
    committed[t]    bool   positions written at the step (the commit set C_t)
    written[t]      int64  the token written at committed positions, -1 elsewhere
    top1_prob[t]    f32    softmax top-1 probability          } at masked positions,
    margin[t]       f32    p_top1 - p_top2                     } NaN elsewhere; from the
    neg_entropy[t]  f32    sum p log(p + 1e-10)                } model's unfiltered softmax
    ref_prob[t]     f32    probability of a given reference token (optional)

Saved with `save` as one .npz; `Trajectory.load` reads it back.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Trajectory:
    masked: np.ndarray  # (T, B, K) bool
    committed: np.ndarray  # (T, B, K) bool
    written: np.ndarray  # (T, B, K) int64
    top1_prob: np.ndarray  # (T, B, K) float32
    margin: np.ndarray  # (T, B, K) float32
    neg_entropy: np.ndarray  # (T, B, K) float32
    ref_prob: np.ndarray | None = None  # (T, B, K) float32

    @property
    def num_steps(self) -> int:
        return self.masked.shape[0]

    def commit_set(self, step: int, sample: int) -> tuple[np.ndarray, np.ndarray]:
        """Window positions committed at `step` for `sample`, and the tokens written."""
        pos = np.flatnonzero(self.committed[step, sample])
        return pos, self.written[step, sample, pos]

    def save(self, path: str | Path) -> None:
        arrays = {f.name: getattr(self, f.name) for f in fields(self)}
        np.savez_compressed(path, **{k: v for k, v in arrays.items() if v is not None})

    @classmethod
    def load(cls, path: str | Path) -> Trajectory:
        with np.load(path) as data:
            return cls(**{k: data[k] for k in data.files})


class TrajectoryRecorder:
    """Collects a `Trajectory` from the decode loop (pass as `generate(..., recorder=)`).

    `reference_tokens` (B, K) asks for the per-step probability of those tokens; it makes
    the loop request full logits, since a summary does not carry them.
    """

    def __init__(self, reference_tokens: np.ndarray | None = None):
        self.reference_tokens = (None if reference_tokens is None
                                 else np.asarray(reference_tokens, dtype=np.int64))
        self._steps: list[dict[str, np.ndarray]] = []

    @property
    def needs_logits(self) -> bool:
        return self.reference_tokens is not None

    def start(self, batch: int, window: int) -> None:
        ref = self.reference_tokens
        if ref is not None and ref.shape != (batch, window):
            raise ValueError(f"reference_tokens has shape {ref.shape}, expected "
                             f"{(batch, window)} (batch, generation window)")
        self._steps = []

    def record(self, *, masked: np.ndarray, committed: np.ndarray, written: np.ndarray,
               top1_prob: np.ndarray, margin: np.ndarray, neg_entropy: np.ndarray,
               ref_prob: np.ndarray | None = None) -> None:
        """One step; every argument is a (B, K) array over the window."""
        def at_masked(a: np.ndarray) -> np.ndarray:
            return np.where(masked, a, np.nan).astype(np.float32)

        step = {
            "masked": masked.astype(bool),
            "committed": committed.astype(bool),
            "written": np.where(committed, written, -1).astype(np.int64),
            "top1_prob": at_masked(top1_prob),
            "margin": at_masked(margin),
            "neg_entropy": at_masked(neg_entropy),
        }
        if ref_prob is not None:
            step["ref_prob"] = at_masked(ref_prob)
        self._steps.append(step)

    def result(self) -> Trajectory:
        if not self._steps:
            raise ValueError("no steps were recorded")
        keys = self._steps[0].keys()
        return Trajectory(**{k: np.stack([s[k] for s in self._steps]) for k in keys})
