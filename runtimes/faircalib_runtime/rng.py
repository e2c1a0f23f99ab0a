"""Counter-based random numbers that numpy and torch draw bit-identically.

A uniform is a pure function of (seed, step, stream, flat index): nothing is carried
between calls, so a loop may draw for any subset of a grid (e.g. only the masked rows of
a (B, S, V) tensor) and get the values the full grid would hold at those indices, on any
device, in any order.

Construction: (seed, step, stream) are hashed on the host (Python ints) into two 32-bit
keys. Each counter is split into 32-bit halves and mixed with each key by two rounds of
murmur3's fmix32 finalizer, giving two 32-bit words a and b. Their top 52 bits form an
integer m, and u = (2m + 1) / 2^53, which lies in the open interval (0, 1): never 0 (safe
for log) and never 1. Every operation is an int64 `*`, `+`, `^`, `>>`, `&` whose low 32
bits are kept with a mask, so int64 wrap-around on overflow (identical in numpy and
torch) never changes a result, and the final int -> float64 conversion is exact.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

MASK32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B1  # odd Weyl increment: spreads consecutive counters apart
_HI_MIX = 0x27D4EB2F
_INV_2_53 = 2.0 ** -53


class Stream(IntEnum):
    """One independent stream per use, so no two decisions ever share a draw."""

    GUMBEL = 1  # LLaDA Gumbel-max token noise, indexed over (B, S, V)
    REMASK_RANDOM = 2  # LLaDA `random` remasking confidence, over (B, S)
    CATEGORICAL = 3  # inverse-CDF token sampling (Dream, random commit), over (B, S)
    POSITION_GUMBEL = 4  # Dream alg_temp position sampling without replacement, (B, S)
    TRANSFER = 5  # Dream `origin` per-position transfer coin, over (B, S)
    COMMIT_ORDER = 6  # random-commit subset choice, over (B, S)


def fmix32(h):
    """murmur3 32-bit finalizer on int64 arrays/tensors (or Python ints) in [0, 2^32)."""
    h = h ^ (h >> 16)
    h = (h * 0x85EBCA6B) & MASK32
    h = h ^ (h >> 13)
    h = (h * 0xC2B2AE35) & MASK32
    return h ^ (h >> 16)


def stream_keys(seed: int, step: int, stream: int) -> tuple[int, int]:
    """Two 32-bit keys for one (seed, step, stream); computed with Python ints."""
    if seed < 0 or step < 0 or stream < 0:
        raise ValueError(f"seed, step and stream must be >= 0, got {seed}, {step}, {stream}")
    k = fmix32((int(stream) * _GOLDEN + 0x3C6EF372) & MASK32)
    k = fmix32(k ^ (int(step) & MASK32))
    k = fmix32(k ^ ((int(step) >> 32) & MASK32))
    k = fmix32(k ^ (int(seed) & MASK32))
    k = fmix32(k ^ ((int(seed) >> 32) & MASK32))
    return k, fmix32(k ^ 0x5BD1E995)


def _word(lo, hi, key: int):
    h = fmix32(((lo * _GOLDEN) + key) & MASK32)
    return fmix32(h ^ ((hi * _HI_MIX + key) & MASK32))


def uniform_bits(counter, seed: int, step: int, stream: int):
    """Integer 2m + 1 (odd, < 2^53) for int64 counters; array type follows `counter`."""
    ka, kb = stream_keys(seed, step, stream)
    lo, hi = counter & MASK32, counter >> 32  # counter: (...) int64, >= 0
    a, b = _word(lo, hi, ka), _word(lo, hi, kb)
    m = (a << 20) | (b >> 12)  # 32 + 20 = 52 bits
    return 2 * m + 1


def uniform(counter: np.ndarray, seed: int, step: int, stream: int) -> np.ndarray:
    """float64 uniforms in (0, 1), same shape as the int64 `counter` array."""
    bits = uniform_bits(np.asarray(counter, dtype=np.int64), seed, step, stream)
    return bits.astype(np.float64) * _INV_2_53


def uniform_grid(shape: tuple[int, ...], seed: int, step: int, stream: int) -> np.ndarray:
    """Uniforms for a whole grid: counter = C-order flat index of each element."""
    counter = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape)
    return uniform(counter, seed, step, stream)
