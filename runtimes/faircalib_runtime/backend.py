"""The backend contract between the decode loop and whatever runs the model.

A backend maps a token state to per-position predictions:

    forward(input_ids (B, S) int64,
            attention_mask (B, S) bool | (B, S, S) bool | None,
            position_ids (B, S) int64 | None,
            want: "logits" | "summary" | "summary64") -> StepOutput

Outputs are POSITION-ALIGNED: index i is the prediction for position i. A backend over a
model that predicts token i from the hidden state at i - 1 (Dream) applies the shift
itself, or is wrapped in `RawLogitsBackend`. With want="summary" a backend returns only
the (B, S) statistics of `Summary`, so a greedy loop never moves full-vocabulary logits
off the device that computed them. "summary" statistics are computed in the logits' own
dtype (the model's: float32 for ONNX graphs and fp32 models, bfloat16 for a torch model
run in bf16), as the official loops compute confidences; "summary64" asks for them in
float64 (config `confidence_dtype="float64"`). A backend that cannot compute float64
statistics where the logits live fetches the logits and calls `summarize` on the host.

Arrays are numpy for the public runtime; the torch loop runs the same contract on
tensors (see `faircalib_export.decoding.torch_backend`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from .xp import NUMPY, Array, ArrayOps, softmax

Want = Literal["logits", "summary", "summary64"]
ENTROPY_EPS = 1e-10  # Dream's epsilon inside log(p + eps)


@dataclass(frozen=True)
class Summary:
    """What a deterministic policy needs from the softmax of each position; all (B, S)."""

    token: Array  # int64: argmax id of the logits (first maximum on ties)
    # Floats in the logits' dtype (want="summary") or float64 (want="summary64"):
    prob: Array  # softmax probability of `token`
    margin: Array  # p_top1 - p_top2
    neg_entropy: Array  # sum_v p log(p + 1e-10) (larger = surer)


@dataclass(frozen=True)
class StepOutput:
    """Exactly one of `logits` (B, S, V), in the model's float dtype (float32 on numpy
    backends), or `summary` is set."""

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


# --- the cached contract (block-wise approximate KV cache, see fast.py) -----------------
#
# A cached call computes only the QUERY positions (B, Q) of the state and attends to
#   keys = [past positions (K of them, taken from `past`), the queries themselves].
# Attention is bidirectional, so the order of the keys does not matter.
#
#   forward_cached(input_ids    (B, Q) int64   tokens at the query positions
#                  key_mask     (B, K + Q) bool | None   True = a real token (pads False),
#                                                        ordered [past..., queries...]
#                  position_ids (B, Q) int64   the queries' positions (RoPE)
#                  past         (L, 2, B, G, K, D) float32 | None   keys (RoPE applied) and
#                                              values of the past positions, per layer
#                  want) -> CachedStep
#
# `output` is (B, Q[, V]) and position-aligned over the queries exactly as `forward` is
# over a whole state: for a shifted family (Dream) output j is the prediction made from
# query j - 1's hidden state, and output 0 comes from query 0 itself, so a cached Dream
# step starts its queries one position before the first position it needs. `present`
# holds the queries' own keys and values, ready to be cached.
# With K = 0 and the queries covering the whole state, a cached call computes exactly
# what `forward` computes (the same numbers), plus `present`.

PAST_LAYOUT = ("layers", "2", "batch", "kv_heads", "keys", "head_dim")


@dataclass(frozen=True)
class CachedStep:
    output: StepOutput  # over the queries (B, Q)
    present: Array  # (L, 2, B, G, Q, D) float32: keys (RoPE applied) and values


class CachedBackend(Backend, Protocol):
    supports_cache: bool  # False for a backend over a graph without the cache inputs

    def forward_cached(
        self,
        input_ids: Array,
        key_mask: Array | None,
        position_ids: Array,
        past: Array | None,
        want: Want,
    ) -> CachedStep: ...


def supports_cache(backend: Backend) -> bool:
    """Whether `backend` can run cached steps (has `forward_cached` and says it works)."""
    return callable(getattr(backend, "forward_cached", None)) and bool(
        getattr(backend, "supports_cache", True))


SUMMARY_CHUNK_ROWS = 32  # rows per chunk: bounds the (rows, V) float64 temporaries


def summarize(logits: Array, ops: ArrayOps = NUMPY, chunk_rows: int = SUMMARY_CHUNK_ROWS,
              float64: bool = True) -> Summary:
    """Summary of aligned logits (..., V), chunked over rows; the math is float64, or the
    logits' own dtype with float64=False (what want="summary" returns)."""
    lead = logits.shape[:-1]
    flat = logits.reshape(-1, logits.shape[-1])  # (R, V)
    starts = range(0, flat.shape[0], chunk_rows) or range(1)  # one (empty) chunk if R = 0
    parts = [_summarize_rows(flat[i:i + chunk_rows], ops, float64) for i in starts]
    cat = lambda k: ops.concat([p[k] for p in parts]).reshape(lead)
    return Summary(token=cat(0), prob=cat(1), margin=cat(2), neg_entropy=cat(3))


def _summarize_rows(logits: Array, ops: ArrayOps, float64: bool
                    ) -> tuple[Array, Array, Array, Array]:
    z = ops.f64(logits) if float64 else logits  # (R, V)
    p = softmax(ops, z, float64)
    top1, top2 = ops.top2(p)
    neg_entropy = ops.sum(p * ops.log(p + ENTROPY_EPS))
    return ops.argmax(z), top1, top1 - top2, neg_entropy


def step_output(logits: Array, want: Want, ops: ArrayOps = NUMPY) -> StepOutput:
    """What a backend holding aligned `logits` (B, S, V) returns for `want`."""
    if want == "logits":
        return StepOutput(logits=logits)
    if want not in ("summary", "summary64"):
        raise ValueError(f"want must be 'logits', 'summary' or 'summary64', not {want!r}")
    return StepOutput(summary=summarize(logits, ops, float64=want == "summary64"))


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
        return step_output(logits, want)


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
        return step_output(logits, want)
