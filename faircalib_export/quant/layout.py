"""Where the online transforms sit and how big they are.

FlatQuant-style transforms sit at four sites per block: before q/k/v (shared), before
the attention output projection, before gate/up (shared), before the down projection.
Each is Kronecker-factored, P = P1 (n1 x n1) ⊗ P2 (n2 x n2) with n1 * n2 = n and both
factors near sqrt(n), so applying it costs two small matmuls on x reshaped to (n1, n2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..models.config import ModelConfig
from ..models.families import TRANSFORM_SITES


def kron_factors(n: int) -> tuple[int, int]:
    """The divisor pair (n1, n2), n1 <= n2, n1 * n2 = n, with n1 closest to sqrt(n).

    12288 -> (96, 128), 4096 -> (64, 64), 3584 -> (56, 64), 18944 -> (128, 148).
    """
    if n <= 0:
        raise ValueError(f"dimension must be positive, got {n}")
    n1 = math.isqrt(n)
    while n % n1:
        n1 -= 1
    return n1, n // n1


@dataclass(frozen=True)
class TransformSite:
    name: str  # e.g. "qkv"
    dim: int  # input feature size of the linears it feeds
    linears: tuple[str, ...]  # canonical module names inside a block


def transform_sites(cfg: ModelConfig) -> list[TransformSite]:
    dims = {"hidden": cfg.hidden_size, "intermediate": cfg.intermediate_size}
    return [TransformSite(name, dims[width], linears) for name, width, linears in TRANSFORM_SITES]
