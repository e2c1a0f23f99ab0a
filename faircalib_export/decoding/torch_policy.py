"""The decoding policies on torch tensors, on any device.

The policy arithmetic itself is written once, in `faircalib_runtime.policies`, against
the `ArrayOps` shim; `TorchOps` is the torch implementation of that shim, so the torch
path runs the very same steps (confidence, Gumbel-max, schedules, top-k selection with
the lowest-index tie rule, top-p / top-k filtering) as the numpy runtime. `uniform` is
the torch twin of `faircalib_runtime.rng.uniform`: the same int64 hash, so both draw
bit-identical uniforms for the same (seed, step, stream, counter).
"""

from __future__ import annotations

import numpy as np
import torch

from faircalib_runtime import rng

_DTYPES = {"f64": torch.float64, "i64": torch.int64, "bool": torch.bool}
_INV_2_53 = 2.0 ** -53


def uniform(counter: torch.Tensor, seed: int, step: int, stream: int) -> torch.Tensor:
    """float64 uniforms in (0, 1) for int64 `counter`, bit-identical to the numpy RNG."""
    bits = rng.uniform_bits(counter.to(torch.int64), seed, step, stream)
    return bits.to(torch.float64) * _INV_2_53


class TorchOps:
    """`faircalib_runtime.xp.ArrayOps` on torch tensors held on `device`."""

    name = "torch"

    def __init__(self, device: str | torch.device = "cpu"):
        self.device = torch.device(device)

    def asarray(self, a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(a), device=self.device)

    def to_numpy(self, a: torch.Tensor) -> np.ndarray:
        if a.dtype == torch.bfloat16:  # numpy has no bfloat16; float32 holds it exactly
            a = a.float()
        return a.detach().cpu().numpy()

    def arange(self, n):
        return torch.arange(n, dtype=torch.int64, device=self.device)

    def full(self, shape, value, dtype):
        return torch.full(shape, value, dtype=_DTYPES.get(dtype, dtype), device=self.device)

    def f64(self, a):
        return a.to(torch.float64)

    def i64(self, a):
        return a.to(torch.int64)

    def exp(self, a):
        return torch.exp(a)

    def softmax(self, a):
        return torch.softmax(a, dim=-1)

    def log(self, a):
        return torch.log(a)

    def where(self, cond, a, b):
        return torch.where(cond, a, b)

    def sum(self, a):
        return a.sum(-1)

    def cumsum(self, a):
        return a.cumsum(-1)

    def amax(self, a):
        return a.amax(-1)

    def argmax(self, a):
        return a.argmax(-1)  # first maximal index, like numpy

    def sort_desc(self, a):
        values, idx = torch.sort(a, dim=-1, descending=True, stable=True)
        return values, idx

    def top2(self, a):
        v = torch.topk(a, 2, dim=-1).values  # (..., 2)
        return v[..., 0], v[..., 1]

    def kth_largest(self, a, k):
        return torch.topk(a, k, dim=-1).values[..., -1]

    def gather(self, a, idx):
        return torch.gather(a, -1, idx)

    def scatter(self, a, idx, values):
        return a.scatter(-1, idx, values)

    def nonzero(self, mask):
        return torch.nonzero(mask).reshape(-1)

    def count(self, mask):
        return int(mask.sum())

    def concat(self, arrays):
        return torch.cat(arrays, dim=0)

    def uniform(self, counter, seed, step, stream):
        return uniform(counter, seed, step, stream)
