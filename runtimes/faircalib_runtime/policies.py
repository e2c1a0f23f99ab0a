"""Per-step policy arithmetic of LLaDA, Dream and random commit, for any `ArrayOps`.

Pure functions: schedules, token choice, confidences and commit-set selection. The loops
that call them live in `decode.py`. Shapes: B batch, S sequence, V vocabulary, N rows
(the flattened (b, i) positions a step works on; `rows` holds their flat indices b*S + i,
which is also the counter of their random draws, see `rng.py`).

Tie rule, shared by every path: among equal values the lowest index wins (first argmax,
stable descending sort).
"""

from __future__ import annotations

import numpy as np

from .backend import ENTROPY_EPS
from .config import DreamAlg, Remasking
from .rng import Stream
from .xp import Array, ArrayOps, softmax

NEG_INF = float("-inf")


# --- shared ---------------------------------------------------------------------------

def even_schedule(masked: Array, steps: int, ops: ArrayOps) -> Array:
    """LLaDA's per-step commit counts: (B,) masked counts -> (B, steps) int64.

    Step j commits m // steps, plus one for the first m % steps steps.
    """
    m = ops.i64(masked)[:, None]  # (B, 1)
    j = ops.arange(steps)[None, :]  # (1, steps)
    return m // steps + ops.i64(j < m % steps)


def top_k_mask(confidence: Array, k: Array, ops: ArrayOps) -> Array:
    """(B, S) bool marking each row's k[b] most confident positions (ties: lowest index)."""
    _, order = ops.sort_desc(confidence)  # (B, S)
    take = ops.arange(confidence.shape[-1])[None, :] < k[:, None]  # (B, S) by rank
    return ops.scatter(ops.full(confidence.shape, False, "bool"), order, take)


def gumbel(u: Array, ops: ArrayOps) -> Array:
    """Standard Gumbel noise -log(-log u) from uniforms in (0, 1)."""
    return -ops.log(-ops.log(u))


def categorical(probs: Array, rows: Array, seed: int, step: int, ops: ArrayOps) -> Array:
    """Inverse-CDF draw from each row of probs (N, V); one uniform per row.

    Returns the first index whose cumulative probability exceeds u * total, which always
    has positive probability (u is in (0, 1) and u * total < total in float64).
    """
    cdf = ops.cumsum(probs)  # (N, V)
    u = ops.uniform(rows, seed, step, Stream.CATEGORICAL)  # (N,)
    threshold = (u * cdf[:, -1])[:, None]
    idx = ops.sum(ops.i64(cdf <= threshold))
    return ops.where(idx < probs.shape[-1], idx, probs.shape[-1] - 1)


def scatter_rows(values: Array, rows: Array, shape: tuple[int, int], fill, dtype: str,
                 ops: ArrayOps) -> Array:
    """Place per-row values (N,) at flat positions `rows` of a (B, S) array of `fill`."""
    out = ops.full((shape[0] * shape[1],), fill, dtype)
    out[rows] = values
    return out.reshape(shape)


# --- LLaDA ----------------------------------------------------------------------------

def llada_tokens(logits: Array, rows: Array, vocab: int, temperature: float, seed: int,
                 step: int, ops: ArrayOps) -> Array:
    """x0 for rows (N, V): argmax, or Gumbel-max argmax(exp(l) / (-log U)^T) in float64."""
    z = ops.f64(logits)
    if temperature == 0:
        return ops.argmax(z)
    counter = rows[:, None] * vocab + ops.arange(vocab)[None, :]  # (N, V) over (B, S, V)
    u = ops.uniform(counter, seed, step, Stream.GUMBEL)
    return ops.argmax(ops.exp(z) / (-ops.log(u)) ** temperature)


def llada_confidence(logits: Array, x0: Array, rows: Array, remasking: Remasking,
                     seed: int, step: int, ops: ArrayOps) -> Array:
    """(N,) confidence of x0: its softmax probability, or uniform noise for `random`."""
    if remasking is Remasking.RANDOM:
        return ops.uniform(rows, seed, step, Stream.REMASK_RANDOM)
    return ops.gather(softmax(ops, logits), x0[:, None])[:, 0]


def cfg_combine(cond: Array, uncond: Array, cfg_scale: float, ops: ArrayOps) -> Array:
    """Classifier-free guidance in float64: un + (cfg + 1) * (cond - un)."""
    un = ops.f64(uncond)
    return un + (cfg_scale + 1.0) * (ops.f64(cond) - un)


# --- Dream ----------------------------------------------------------------------------

def top_p_filter(z: Array, top_p: float, ops: ArrayOps) -> Array:
    """Nucleus filter on float64 logits (N, V): drop tokens past cumulative prob top_p.

    The removal mask is shifted right by one so the token that crosses the threshold
    (and always the most likely one) is kept.
    """
    sorted_z, order = ops.sort_desc(z)  # (N, V)
    remove = ops.cumsum(softmax(ops, sorted_z)) > top_p  # (N, V), in sorted order
    shifted = ops.full(remove.shape, False, "bool")  # column 0 is never removed
    shifted[:, 1:] = remove[:, :-1]
    drop = ops.scatter(ops.full(z.shape, False, "bool"), order, shifted)  # back to vocab order
    return ops.where(drop, NEG_INF, z)


def top_k_filter(z: Array, top_k: int, ops: ArrayOps) -> Array:
    """Keep logits >= the k-th largest of each row (ties at the threshold are kept)."""
    k = min(top_k, z.shape[-1])
    return ops.where(z < ops.kth_largest(z, k)[:, None], NEG_INF, z)


def sample_tokens(logits: Array, rows: Array, *, temperature: float, top_p: float | None,
                  top_k: int | None, alg: DreamAlg, seed: int, step: int,
                  ops: ArrayOps) -> tuple[Array, Array]:
    """Dream's sample_tokens on rows (N, V) -> (confidence (N,) f64, x0 (N,) int64)."""
    z = ops.f64(logits)
    if temperature > 0:
        z = z / temperature
    if top_p is not None and top_p < 1:
        z = top_p_filter(z, top_p, ops)
    if top_k:
        z = top_k_filter(z, top_k, ops)
    probs = softmax(ops, z)  # (N, V)
    if temperature > 0:
        x0 = categorical(probs, rows, seed, step, ops)
        confidence = ops.gather(probs, x0[:, None])[:, 0]
    else:
        x0 = ops.argmax(probs)
        confidence = ops.amax(probs)
    if alg is DreamAlg.TOPK_MARGIN:
        top1, top2 = ops.top2(probs)
        confidence = top1 - top2
    elif alg is DreamAlg.ENTROPY:
        confidence = ops.sum(probs * ops.log(probs + ENTROPY_EPS))
    return confidence, x0


def dream_timesteps(steps: int, eps: float) -> np.ndarray:
    """(steps + 1,) float32 grid from 1 to eps, as torch.linspace computes it.

    torch fills the first half forward from `start` and the second half backward from
    `end` with a float32 step; reproducing that keeps k (an int() of float32 products)
    identical to the reference.
    """
    n = steps + 1
    start, end = np.float32(1.0), np.float32(eps)
    delta = (end - start) / np.float32(n - 1)
    idx = np.arange(n, dtype=np.float32)
    forward = start + delta * idx
    backward = end - delta * (np.float32(n - 1) - idx)
    return np.where(np.arange(n) < n // 2, forward, backward).astype(np.float32)


def dream_ratio(ts: np.ndarray, i: int) -> np.float32:
    """1 - s/t for step i, in float32 like the reference."""
    return np.float32(1.0) - ts[i + 1] / ts[i]


def dream_transfer_count(masked_total: int, batch: int, ts: np.ndarray, i: int) -> int:
    """k for the confidence algs: int(mean masked count * (1 - s/t)), all at the end."""
    mean = np.float32(masked_total) / np.float32(batch)
    steps = len(ts) - 1
    return int(mean * dream_ratio(ts, i)) if i < steps - 1 else int(mean)


def dream_transfer_probability(ts: np.ndarray, i: int) -> float:
    """`origin`: probability that a masked position commits at step i."""
    return float(dream_ratio(ts, i)) if i < len(ts) - 2 else 1.0


def sampled_top_k_mask(confidence: Array, k: Array, alg_temp: float, seed: int, step: int,
                       ops: ArrayOps) -> Array:
    """k positions per row drawn without replacement from softmax(confidence / alg_temp).

    Gumbel-top-k: adding Gumbel noise to the log-weights and keeping the k largest draws
    from the same distribution as sequential sampling without replacement (what
    torch.multinomial(replacement=False) does). -inf positions are never drawn.
    """
    b, s = confidence.shape
    u = ops.uniform(ops.arange(b * s).reshape(b, s), seed, step, Stream.POSITION_GUMBEL)
    scores = ops.where(confidence > NEG_INF, confidence / alg_temp + gumbel(u, ops), NEG_INF)
    return top_k_mask(scores, k, ops)


def select_confidence(summary, alg: DreamAlg) -> Array:
    """The Summary field that is the confidence of `alg` (unfiltered, temperature 0)."""
    if alg is DreamAlg.TOPK_MARGIN:
        return summary.margin
    if alg is DreamAlg.ENTROPY:
        return summary.neg_entropy
    return summary.prob
