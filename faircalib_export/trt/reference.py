"""The exact arithmetic of the TensorRT W4A4 kernels, in numpy.

This pins what `runtimes/tensorrt/kernels` must compute (the contract is
`runtimes/tensorrt/include/faircalib/kernels.h`; the CUDA harness checks the kernels against
a C++ transcription of the same steps, bit for bit):

Packed words: a row of K int4 codes is stored as `packed_words(K)` int32 words (K padded
with zero codes to a multiple of `K_ALIGN`); code k sits in word k // 8 at bits
4 * (k % 8) .. +3, which is `fold.pack.pack_int4`'s byte order read as little-endian int32.

Quantize (per token row x of length n = n1 * n2, per transform site):
    x' = P1 · X · P2^T   X = x viewed (n1, n2); each output is one float32 FMA chain over
                         ascending k, T = P1 X first, then T P2^T
    s  = max(clip * max|x'|, 1e-8) / 7                      float32, one rounding per op
    q  = clip(rint(x' / s), -8, 7)                          IEEE division, half to even
The scale and the codes are `quant.quantizer.quantize_rows` exactly; the transform differs
from PyTorch's matmul only in summation order.

GEMM:
    acc = sum_k a[m, k] * b[n, k]                            exact int32
    y   = (float32(acc) * a_scale[m]) * b_scale[n] (+ bias[n]), then rounded to the output type
PyTorch computes (q * s_a) @ (c * s_w)^T in float32 instead: the same value up to float32
rounding of the products and the sum.

numpy has no fused multiply-add, so `fma32` rounds the exact float64 product-sum to float32:
that equals a true float32 FMA except when double rounding bites (about one case in 2^29).
"""

from __future__ import annotations

import numpy as np

from ..fold.pack import pack_int4, unpack_int4

K_ALIGN = 128
QMAX = 7
SCALE_EPS = np.float32(1e-8)
OUT_DTYPES = ("float32", "float16", "bfloat16")


def packed_words(k: int) -> int:
    """int32 words per packed row of k int4 codes."""
    return -(-k // K_ALIGN) * K_ALIGN // 8


def pack_words(codes: np.ndarray) -> np.ndarray:
    """(rows, k) int codes in [-8, 7] -> (rows, packed_words(k)) int32."""
    codes = np.asarray(codes)
    rows, k = codes.shape
    padded = np.zeros((rows, packed_words(k) * 8), dtype=np.int8)
    padded[:, :k] = codes
    return np.ascontiguousarray(pack_int4(padded)).view("<i4")


def unpack_words(words: np.ndarray, k: int) -> np.ndarray:
    """Inverse of `pack_words`: (rows, w) int32 -> (rows, k) int8."""
    words = np.ascontiguousarray(words, dtype="<i4")
    return unpack_int4(words.view(np.uint8).reshape(words.shape[0], -1), k)


def fma32(a, b, c) -> np.ndarray:
    """float32 a * b + c with one rounding (see the module note on double rounding)."""
    f64 = lambda v: np.asarray(v, np.float64)
    return (f64(a) * f64(b) + f64(c)).astype(np.float32)


def kron_transform(x: np.ndarray, p1: np.ndarray, p2: np.ndarray) -> np.ndarray:
    """x' = P1 · X · P2^T per row, in the kernel's FMA order. x: (rows, n1 * n2) float32."""
    p1 = np.asarray(p1, np.float32)
    p2 = np.asarray(p2, np.float32)
    n1, n2 = p1.shape[0], p2.shape[0]
    x = np.asarray(x, np.float32).reshape(-1, n1, n2)  # (rows, n1, n2)
    t = np.zeros_like(x)
    for k in range(n1):  # T[r, i, j] = sum_k P1[i, k] X[r, k, j]
        t = fma32(p1[None, :, k, None], x[:, k, None, :], t)
    y = np.zeros_like(x)
    for k in range(n2):  # Y[r, i, j] = sum_k T[r, i, k] P2[j, k]
        y = fma32(t[:, :, k, None], p2[None, None, :, k], y)
    return y.reshape(-1, n1 * n2)


def row_scales(x: np.ndarray, clip: float) -> np.ndarray:
    """(rows,) float32: max(clip * max|x_row|, 1e-8) / 7."""
    absmax = np.abs(np.asarray(x, np.float32)).max(axis=-1)
    return np.maximum(np.float32(clip) * absmax, SCALE_EPS) / np.float32(QMAX)


def quantize_rows(x: np.ndarray, clip: float) -> tuple[np.ndarray, np.ndarray]:
    """(codes (rows, n) int8, scales (rows,) float32) of already transformed rows."""
    x = np.asarray(x, np.float32)
    scales = row_scales(x, clip)
    codes = np.clip(np.rint(x / scales[:, None]), -QMAX - 1, QMAX).astype(np.int8)
    return codes, scales


def quantize(x: np.ndarray, clip: float, p1: np.ndarray | None = None,
             p2: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The FaircalibW4A4Quantize plugin: (rows, n) -> (packed words, scales (rows,))."""
    x = np.asarray(x, np.float32)
    if p1 is not None:
        x = kron_transform(x, p1, p2)
    codes, scales = quantize_rows(x, clip)
    return pack_words(codes), scales


def round_output(y: np.ndarray, out_dtype: str) -> np.ndarray:
    """float32 -> the kernel's output type, round to nearest even (bfloat16 as float32)."""
    if out_dtype == "float32":
        return y
    if out_dtype == "float16":
        return y.astype(np.float16)
    if out_dtype == "bfloat16":
        bits = y.view(np.uint32).astype(np.uint64)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16 << 16
        return rounded.astype(np.uint32).view(np.float32)
    raise ValueError(f"unknown output type {out_dtype!r}; one of {OUT_DTYPES}")


def gemm(a_words: np.ndarray, a_scales: np.ndarray, b_words: np.ndarray,
         b_scales: np.ndarray, k: int, bias: np.ndarray | None = None,
         out_dtype: str = "float32") -> np.ndarray:
    """The FaircalibW4A4Gemm plugin: (m, words) x (n, words) -> (m, n)."""
    a = unpack_words(a_words, k).astype(np.int64)
    b = unpack_words(b_words, k).astype(np.int64)
    acc = (a @ b.T).astype(np.int32)  # exact: |acc| <= 64 k
    y = acc.astype(np.float32) * np.asarray(a_scales, np.float32).reshape(-1, 1)
    y = y * np.asarray(b_scales, np.float32).reshape(1, -1)
    if bias is not None:
        y = y + np.asarray(bias, np.float32).reshape(1, -1)
    return round_output(y, out_dtype)
