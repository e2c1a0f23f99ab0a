"""The backend contract between the decode loop and whatever runs the model.

A backend maps a token state to per-position predictions:

    forward(input_ids (B, S) int64,
            attention_mask (B, S) bool | (B, S, S) bool | None,
            position_ids (B, S) int64 | None,
            want: "logits" | "summary") -> StepOutput

Outputs are POSITION-ALIGNED: index i is the prediction for position i. A backend over a
model that predicts token i from the hidden state at i - 1 (Dream) applies the shift
itself, or is wrapped in `RawLogitsBackend`. With want="summary" a backend returns only
the (B, S) statistics of `Summary`, so a greedy loop never moves full-vocabulary logits
off the device that computed them.

Arrays are numpy for the public runtime; the torch loop runs the same contract on
tensors (see `faircalib_export.decoding.torch_backend`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from .xp import NUMPY, Array, ArrayOps, softmax

Want = Literal["logits", "summary"]
ENTROPY_EPS = 1e-10  # Dream's epsilon inside log(p + eps)


@dataclass(frozen=True)
class Summary:
    """What a deterministic policy needs from the softmax of each position; all (B, S)."""

    token: Array  # int64: argmax id (first maximum on ties)
    prob: Array  # float64: softmax probability of `token`
    margin: Array  # float64: p_top1 - p_top2
    neg_entropy: Array  # float64: sum_v p log(p + 1e-10) (larger = surer)


@dataclass(frozen=True)
class StepOutput:
    """Exactly one of `logits` (B, S, V) float32 or `summary` is set."""

    logits: Array | None = None
    summary: Summary | None = None

    def __post_init__(self) -> None:
        if (self.logits is None) == (self.summary is None):
            raise ValueError("StepOutput needs exactly one of logits or summary")


class Backend(Protocol):
    def forward(
        self,
        input_ids: Array,
        attention_mask: Array | None,
        position_ids: Array | None,
        want: Want,
    ) -> StepOutput: ...


SUMMARY_CHUNK_ROWS = 32  # rows per chunk: bounds the (rows, V) float64 temporaries


def summarize(logits: Array, ops: ArrayOps = NUMPY, chunk_rows: int = SUMMARY_CHUNK_ROWS
              ) -> Summary:
    """Summary of aligned logits (..., V); all math in float64, chunked over rows."""
    lead = logits.shape[:-1]
    flat = logits.reshape(-1, logits.shape[-1])  # (R, V)
    starts = range(0, flat.shape[0], chunk_rows) or range(1)  # one (empty) chunk if R = 0
    parts = [_summarize_rows(flat[i:i + chunk_rows], ops) for i in starts]
    cat = lambda k: ops.concat([p[k] for p in parts]).reshape(lead)
    return Summary(token=cat(0), prob=cat(1), margin=cat(2), neg_entropy=cat(3))


def _summarize_rows(logits: Array, ops: ArrayOps) -> tuple[Array, Array, Array, Array]:
    z = ops.f64(logits)  # (R, V)
    p = softmax(ops, z)
    top1, top2 = ops.top2(p)
    neg_entropy = ops.sum(p * ops.log(p + ENTROPY_EPS))
    return ops.argmax(z), top1, top1 - top2, neg_entropy


def token_probability(logits: Array, tokens: Array, ops: ArrayOps = NUMPY) -> Array:
    """float64 softmax probability of `tokens` (...,) under `logits` (..., V)."""
    return ops.gather(softmax(ops, logits), tokens[..., None])[..., 0]


def align_logits(raw: np.ndarray, shift: bool) -> np.ndarray:
    """Dream's shift on (B, S, V): new[:, i] = old[:, i - 1], new[:, 0] = old[:, 0]."""
    if not shift:
        return raw
    return np.concatenate([raw[:, :1], raw[:, :-1]], axis=1)


def _check_logits(logits: np.ndarray, input_ids: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits)
    if logits.ndim != 3 or logits.shape[:2] != input_ids.shape:
        raise ValueError(
            f"backend returned logits of shape {logits.shape}, expected "
            f"{tuple(input_ids.shape)} + (vocab,)"
        )
    return logits.astype(np.float32, copy=False)


LogitsFn = Callable[[np.ndarray, Any, Any], np.ndarray]


class FunctionBackend:
    """Backend over `fn(input_ids, attention_mask, position_ids) -> aligned logits`.

    For mock models, ONNX Runtime sessions and anything else that returns full logits;
    summaries are computed on the host from them.
    """

    def __init__(self, fn: LogitsFn):
        self.fn = fn

    def forward(self, input_ids, attention_mask, position_ids, want: Want) -> StepOutput:
        logits = _check_logits(self.fn(input_ids, attention_mask, position_ids), input_ids)
        if want == "summary":
            return StepOutput(summary=summarize(logits))
        return StepOutput(logits=logits)


class RawLogitsBackend:
    """Wrap a backend (or a logits function) that returns RAW model logits.

    `shift=True` applies Dream's alignment (prediction for i read at i - 1); LLaDA needs
    `shift=False`. The inner backend is always asked for logits.
    """

    def __init__(self, inner: Backend | LogitsFn, shift: bool):
        self.inner = inner if hasattr(inner, "forward") else FunctionBackend(inner)
        self.shift = shift

    def forward(self, input_ids, attention_mask, position_ids, want: Want) -> StepOutput:
        out = self.inner.forward(input_ids, attention_mask, position_ids, "logits")
        logits = align_logits(_check_logits(out.logits, input_ids), self.shift)
        if want == "summary":
            return StepOutput(summary=summarize(logits))
        return StepOutput(logits=logits)
