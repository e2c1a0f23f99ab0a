"""A thin array-namespace shim so one copy of the policy arithmetic runs on numpy and torch.

Policies and the decode loop are written against `ArrayOps`; `NumpyOps` (here) runs them
on the host, `faircalib_export.decoding.torch_policy.TorchOps` runs the same code on a
torch device. Only operations whose spelling differs between the two libraries go
through the shim; indexing, arithmetic, comparisons and `&`/`|`/`~` are used directly.

Conventions shared by both implementations (they are what makes the two paths agree):
- reductions and sorts act on the last axis;
- ties in sorts and argmax resolve to the lowest index (stable sort, first maximum);
- "f64" math is IEEE float64; integers are int64; masks are bool; other float math runs
  in the dtype of its input (the model's: float32, or bfloat16 on torch).

The references select with `torch.topk`, whose documentation says nothing about which of
equal values it returns; on CPU it runs std::partial_sort (k * 64 <= n) or
std::nth_element over (value, index) pairs compared by value only, so among ties it returns
an arbitrary, size-dependent subset (e.g. k = 3 of 64 equal values gives indices 42-44), and
CUDA's radix select differs again. We keep one rule everywhere: lowest index first, i.e.
`torch.sort(values, descending=True, stable=True).indices[:k]`. It changes nothing unless
equal values straddle the k-th place.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from . import rng

Array = Any  # np.ndarray or torch.Tensor, depending on the ops in use


class ArrayOps(Protocol):
    name: str

    def asarray(self, a: np.ndarray) -> Array: ...  # host numpy -> native (same dtype)
    def to_numpy(self, a: Array) -> np.ndarray: ...
    def arange(self, n: int) -> Array: ...  # (n,) int64
    def full(self, shape: tuple[int, ...], value: float | int | bool, dtype) -> Array: ...
    # dtype: "f64" | "i64" | "bool", or a native dtype (an array's .dtype)
    def f64(self, a: Array) -> Array: ...
    def i64(self, a: Array) -> Array: ...
    def exp(self, a: Array) -> Array: ...
    def softmax(self, a: Array) -> Array: ...  # last axis, in a's dtype, as the library does
    def log(self, a: Array) -> Array: ...
    def where(self, cond: Array, a: Array | float, b: Array | float) -> Array: ...
    def sum(self, a: Array) -> Array: ...  # last axis
    def cumsum(self, a: Array) -> Array: ...  # last axis
    def amax(self, a: Array) -> Array: ...  # last axis
    def argmax(self, a: Array) -> Array: ...  # last axis, first maximum
    def sort_desc(self, a: Array) -> tuple[Array, Array]: ...  # stable: values, indices
    def top2(self, a: Array) -> tuple[Array, Array]: ...  # largest and second largest
    def kth_largest(self, a: Array, k: int) -> Array: ...  # (...,) k-th largest value
    def gather(self, a: Array, idx: Array) -> Array: ...  # take_along last axis
    def scatter(self, a: Array, idx: Array, values: Array) -> Array: ...  # out of place
    def nonzero(self, mask: Array) -> Array: ...  # 1-d bool -> (N,) int64 indices
    def count(self, mask: Array) -> int: ...  # number of True (host sync)
    def concat(self, arrays: list[Array]) -> Array: ...  # along axis 0
    def uniform(self, counter: Array, seed: int, step: int, stream: int) -> Array: ...


def softmax(ops: ArrayOps, logits: Array, float64: bool = True) -> Array:
    """Softmax over the last axis: in float64, or (float64=False) in the logits' own dtype,
    computed as the array library computes it (torch.softmax on torch: what the reference
    loops run; numpy: exp(z - max) times 1 / sum, which is how torch's and ONNX Runtime's
    CPU kernels normalize)."""
    if not float64:
        return ops.softmax(logits)
    z = ops.f64(logits)
    e = ops.exp(z - ops.amax(z)[..., None])
    return e / ops.sum(e)[..., None]


_DTYPES = {"f64": np.float64, "i64": np.int64, "bool": np.bool_}


class NumpyOps:
    name = "numpy"

    def asarray(self, a):
        return np.asarray(a)

    def to_numpy(self, a):
        return np.asarray(a)

    def arange(self, n):
        return np.arange(n, dtype=np.int64)

    def full(self, shape, value, dtype):
        return np.full(shape, value, dtype=_DTYPES.get(dtype, dtype))

    def f64(self, a):
        return np.asarray(a, dtype=np.float64)

    def i64(self, a):
        return np.asarray(a, dtype=np.int64)

    def exp(self, a):
        return np.exp(a)

    def softmax(self, a):
        e = np.exp(a - np.max(a, axis=-1, keepdims=True))
        return e * (1 / np.sum(e, axis=-1, keepdims=True))

    def log(self, a):
        return np.log(a)

    def where(self, cond, a, b):
        return np.where(cond, a, b)

    def sum(self, a):
        return np.sum(a, axis=-1)

    def cumsum(self, a):
        return np.cumsum(a, axis=-1)

    def amax(self, a):
        return np.max(a, axis=-1)

    def argmax(self, a):
        return np.argmax(a, axis=-1)

    def sort_desc(self, a):
        # Stable ascending sort of the negation = stable descending sort (lowest index
        # first among equal values); -(-inf) = +inf keeps -inf entries last.
        idx = np.argsort(-a, axis=-1, kind="stable")
        return np.take_along_axis(a, idx, axis=-1), idx

    def top2(self, a):
        part = -np.partition(-a, 1, axis=-1)[..., :2]  # (..., 2): [largest, second]
        return part[..., 0], part[..., 1]

    def kth_largest(self, a, k):
        return -np.partition(-a, k - 1, axis=-1)[..., k - 1]

    def gather(self, a, idx):
        return np.take_along_axis(a, idx, axis=-1)

    def scatter(self, a, idx, values):
        out = a.copy()
        np.put_along_axis(out, idx, values, axis=-1)
        return out

    def nonzero(self, mask):
        return np.flatnonzero(mask).astype(np.int64)

    def count(self, mask):
        return int(np.count_nonzero(mask))

    def concat(self, arrays):
        return np.concatenate(arrays, axis=0)

    def uniform(self, counter, seed, step, stream):
        return rng.uniform(counter, seed, step, stream)


NUMPY = NumpyOps()
