"""Per-step policy arithmetic of LLaDA, Dream and random commit, for any `ArrayOps`.

Pure functions: schedules, token choice, confidences and commit-set selection. The loops
that call them live in `decode.py`. Shapes: B batch, S sequence, V vocabulary, N rows
(the flattened (b, i) positions a step works on; `rows` holds their flat indices b*S + i,
which is also the counter of their random draws, see `rng.py`).

Tie rule, shared by every path: among equal values the lowest index wins (first argmax,
stable descending sort). The references' `torch.topk` does not specify which of equal
values it keeps (on CPU an arbitrary, size-dependent subset; see `xp`), so where equal
confidences straddle the k-th place our commit set is the reference's up to that choice.
Equal confidences are common in the model's dtype: every probability within half an ulp of
1 is 1.0 (float32: p > 1 - 6e-8; bfloat16: p > 1 - 2e-3).

Precision (`float64` arguments, from the config's `confidence_dtype`): True computes
softmax, probabilities, margins and entropies in float64 (LLaDA's earlier generate.py and
this runtime's historical behaviour); False keeps the logits' dtype, as the current LLaDA
and Dream loops do. Gumbel-max noise is float64 either way (LLaDA's add_gumbel_noise).
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
                     seed: int, step: int, ops: ArrayOps, float64: bool = True) -> Array:
    """(N,) confidence of x0: its softmax probability, or uniform noise for `random`."""
    if remasking is Remasking.RANDOM:
        return ops.uniform(rows, seed, step, Stream.REMASK_RANDOM)
    return ops.gather(softmax(ops, logits, float64), x0[:, None])[:, 0]


def llada_confidence_suppressed(eos_ids: tuple[int, ...], temperature: float
                                ) -> tuple[int, ...]:
    """Ids whose logits are -inf in the confidence softmax with `confidence_eos_eot_inf`.

    generate.py runs `logits_with_noise[:, :, EOS] = logits[:, :, EOT] = -torch.inf`
    after x0 is chosen. At temperature 0 `add_gumbel_noise` returns `logits` itself, so
    both assignments hit the tensor the softmax reads: EOS and EOT are suppressed. At
    temperature > 0 `logits_with_noise` is a new float64 tensor, so only EOT is. (A chosen
    x0 that is suppressed keeps confidence 0, not -inf, and can still be committed.)
    EOS is eos_ids[0], EOT the other eos_ids (the reference's 126081 and 126348).
    """
    return tuple(eos_ids) if temperature == 0 else tuple(eos_ids[1:])


def suppress(logits: Array, ids: tuple[int, ...], ops: ArrayOps) -> Array:
    """logits (N, V) with the columns `ids` set to -inf (out of place, same dtype)."""
    if not ids:
        return logits
    hit = ops.full((logits.shape[-1],), False, "bool")
    hit[list(ids)] = True
    return ops.where(hit[None, :], NEG_INF, logits)


def cfg_combine(cond: Array, uncond: Array, cfg_scale: float, ops: ArrayOps,
                float64: bool = True) -> Array:
    """Classifier-free guidance un + (cfg + 1) * (cond - un), in float64 or (float64=False)
    in the logits' dtype as generate.py computes it."""
    un = ops.f64(uncond) if float64 else uncond
    return un + (cfg_scale + 1.0) * ((ops.f64(cond) if float64 else cond) - un)


# --- Dream ----------------------------------------------------------------------------

def top_p_filter(z: Array, top_p: float, ops: ArrayOps, float64: bool = True) -> Array:
    """Nucleus filter on logits (N, V): drop tokens past cumulative prob top_p.

    The removal mask is shifted right by one so the token that crosses the threshold
    (and always the most likely one) is kept.
    """
    sorted_z, order = ops.sort_desc(z)  # (N, V)
    remove = ops.cumsum(softmax(ops, sorted_z, float64)) > top_p  # (N, V), in sorted order
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
                  ops: ArrayOps, float64: bool = True) -> tuple[Array, Array]:
    """Dream's sample_tokens on rows (N, V) -> (confidence (N,), x0 (N,) int64).

    The confidence is float64, or (float64=False) in the logits' dtype like the reference,
    whose x0 is then `probs.max(-1)`: the first of the tokens whose probabilities tie.
    """
    z = ops.f64(logits) if float64 else logits
    if temperature > 0:
        z = z / temperature
    if top_p is not None and top_p < 1:
        z = top_p_filter(z, top_p, ops, float64)
    if top_k:
        z = top_k_filter(z, top_k, ops)
    probs = softmax(ops, z, float64)  # (N, V)
    if temperature > 0:  # our own draw, from the float64 cumulative sum
        x0 = categorical(ops.f64(probs), rows, seed, step, ops)
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
    """(steps + 1,) float32 grid from 1 to eps, bit for bit `torch.linspace(1, eps, n)`.

    torch's CPU kernel takes a float32 step = (f32(eps) - 1) / f32(n - 1), fills the first
    n // 2 entries forward, start + step * i, and the rest backward from the end,
    end - step * (n - 1 - i), each with a fused multiply-add: rounded to float32 once.
    float64 evaluates those products and sums exactly (24-bit operands, i < 2**29, eps >=
    2**-29), so rounding the float64 result once reproduces the FMA; a float32 multiply
    then add rounds twice and differs for most step counts. The grid matters because k
    is int(mean masked count * (1 - s/t)) in float32.
    """
    n = steps + 1
    start, end = np.float32(1.0), np.float32(eps)
    step = np.float64((end - start) / np.float32(n - 1))
    i = np.arange(n, dtype=np.float64)
    forward = np.float64(start) + step * i
    backward = np.float64(end) - step * (n - 1 - i)
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
