"""Invertible transforms applied to activations before quantization.

A site transform computes x' = P (x / c): c is a positive per-channel scale (folds into
the preceding norm or linear at export), P = P1 ⊗ P2 is Kronecker-factored and stays
online (two small matmuls on x viewed as (n1, n2)). The weights it feeds become
W' = W diag(c) P^-1, folded offline.

Each factor is parameterized as P_i = U_i diag(exp(s_i)) V_i^T R_i with U_i, V_i
orthogonal (Cayley maps of skew-symmetric matrices), s_i a log-scale vector and R_i a
fixed orthogonal start (identity or a random Hadamard). The inverse
R_i^-1 V_i diag(exp(-s_i)) U_i^T is exact; U and V need no inversion and R_i^-1 is fixed. At init
(zeros) P_i = R_i.

Row-major vec identity used throughout: (A ⊗ B) vec(X) = vec(A X B^T) for X of shape
(n1, n2), so `kron_apply(x, A, B)` never forms the n x n matrix.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .layout import kron_factors


def kron_apply(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(A ⊗ B) applied to the last dim of x (..., n1 * n2)."""
    n1, n2 = a.shape[0], b.shape[0]
    xs = x.reshape(*x.shape[:-1], n1, n2)  # (..., n1, n2)
    return (a @ xs @ b.T).reshape(*x.shape[:-1], n1 * n2)


def cayley(a: torch.Tensor) -> torch.Tensor:
    """Orthogonal (I + S)^-1 (I - S) for S the skew-symmetric part of a; a = 0 gives I."""
    s = a - a.T
    eye = torch.eye(a.shape[0], dtype=a.dtype, device=a.device)
    return torch.linalg.solve(eye + s, eye - s)


def walsh_hadamard(n: int) -> torch.Tensor:
    """Orthonormal Sylvester Hadamard matrix, n a power of two."""
    if n & (n - 1):
        raise ValueError(f"Sylvester Hadamard needs a power of two, got {n}")
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / math.sqrt(n)


def random_orthogonal(n: int, gen: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).contiguous()  # sign fix: Haar-uniform draw


def random_hadamard(n: int, seed: int) -> torch.Tensor:
    """Random orthogonal rotation of any size, Hadamard-like (QuaRot).

    n = 2^k * m: a Walsh-Hadamard matrix with random column signs on the 2^k part, and
    for m > 1 a random orthogonal m x m matrix Kronecker-multiplied in (like QuaRot's
    H_m ⊗ H_2^k for sizes such as 12288 = 3 * 4096). float64.
    """
    gen = torch.Generator().manual_seed(seed)
    pow2 = n & -n  # largest power of two dividing n
    m = n // pow2
    signs = torch.randint(0, 2, (pow2,), generator=gen, dtype=torch.float64) * 2 - 1
    h = walsh_hadamard(pow2) * signs
    return torch.kron(random_orthogonal(m, gen), h) if m > 1 else h


class KronFactor(nn.Module):
    """P = U diag(exp(s)) V^T R, learnable U, s, V; fixed orthogonal R."""

    def __init__(self, n: int, start: torch.Tensor | None, learnable: bool):
        super().__init__()
        self.n = n
        self.register_buffer("start", start if start is not None else torch.eye(n))
        if learnable:
            self.u = nn.Parameter(torch.zeros(n, n))
            self.v = nn.Parameter(torch.zeros(n, n))
            self.log_s = nn.Parameter(torch.zeros(n))
        else:
            self.u = self.v = self.log_s = None

    def matrix(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        dtype = dtype or self.start.dtype
        start = self.start.to(dtype)
        if self.u is None:
            return start
        u, v = cayley(self.u.to(dtype)), cayley(self.v.to(dtype))
        return (u * self.log_s.to(dtype).exp()) @ v.T @ start

    def inverse(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        dtype = dtype or self.start.dtype
        # R is orthogonal only to its storage precision: invert the stored matrix itself so
        # that a float64 fold is exact for the R the deployed graph will hold.
        start_inv = torch.linalg.inv(self.start.to(dtype))
        if self.u is None:
            return start_inv
        u, v = cayley(self.u.to(dtype)), cayley(self.v.to(dtype))
        return start_inv @ (v * (-self.log_s.to(dtype)).exp()) @ u.T


class SiteTransform(nn.Module):
    """x' = (P1 ⊗ P2)(x / c) at one quantization site, and the matching weight fold.

    kind: "none" (P = I), "hadamard" (fixed random rotation per factor, QuaRot) or
    "learnable" (FlatQuant-style, starting from a random Hadamard-like rotation).
    `smooth` adds the learnable per-channel scale c. For the attention-output site with
    grouped-query attention, c must be shared by the query heads of a group so that it
    can fold into v_proj: pass `kv_groups=(num_kv_heads, heads_per_group, head_dim)`.
    """

    def __init__(self, dim: int, kind: str, smooth: bool, seed: int,
                 kv_groups: tuple[int, int, int] | None = None):
        super().__init__()
        if kind not in ("none", "hadamard", "learnable"):
            raise ValueError(f"unknown transform kind {kind!r}")
        self.dim, self.kind = dim, kind
        self.n1, self.n2 = kron_factors(dim)
        if kind == "none":
            self.f1 = self.f2 = None
        else:
            starts = [random_hadamard(n, seed + i).float() if n > 1 else torch.eye(n)
                      for i, n in enumerate((self.n1, self.n2))]
            learnable = kind == "learnable"
            self.f1 = KronFactor(self.n1, starts[0], learnable)
            self.f2 = KronFactor(self.n2, starts[1], learnable)
        self.kv_groups = kv_groups
        smooth_dim = dim if kv_groups is None else kv_groups[0] * kv_groups[2]
        self.log_c = nn.Parameter(torch.zeros(smooth_dim)) if smooth else None

    def scale(self, dtype: torch.dtype | None = None) -> torch.Tensor | None:
        """The per-channel divisor c over all `dim` input channels (None if no smoothing)."""
        if self.log_c is None:
            return None
        c = self.log_c.to(dtype or self.log_c.dtype).exp()
        if self.kv_groups is not None:
            g, rep, d = self.kv_groups
            c = c.view(g, 1, d).expand(g, rep, d).reshape(g * rep * d)
        return c

    def factors(self, dtype: torch.dtype | None = None):
        """The online Kronecker factors (P1, P2), or None when P = I."""
        return None if self.f1 is None else (self.f1.matrix(dtype), self.f2.matrix(dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.scale()
        if c is not None:
            x = x / c.to(x.dtype)
        if self.f1 is None:
            return x
        p1, p2 = self.f1.matrix(), self.f2.matrix()
        return kron_apply(x, p1.to(x.dtype), p2.to(x.dtype))

    def fold_weight(self, w: torch.Tensor) -> torch.Tensor:
        """W' = W diag(c) P^-1 for a weight (out, dim) that consumes this site's output,
        computed in w's dtype (float64 for an exact fold)."""
        c = self.scale(w.dtype)
        if c is not None:
            w = w * c
        if self.f1 is None:
            return w
        # rows: w P^-1 = ((P^-1)^T w^T)^T and (A ⊗ B)^T = A^T ⊗ B^T.
        i1, i2 = self.f1.inverse(w.dtype), self.f2.inverse(w.dtype)
        return kron_apply(w, i1.T, i2.T)
