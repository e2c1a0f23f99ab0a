"""Quantization formats: the integer grid and the two FP4 block formats.

FP4 values are E2M1: sign and magnitude in {0, 0.5, 1, 1.5, 2, 3, 4, 6}, rounded to the
nearest grid point with ties to the even code (even mantissa bit: 2.5 -> 2, 5 -> 4),
saturating at 6. Blocks run along the last (reduction) dimension and must divide it
(no padding: every dLLM width, and the shipped models', is a multiple of 32).

- NVFP4: one E4M3 scale per 16 elements and one FP32 second-level scale t.
  Weights: t = max|W| / (6 * 448) per tensor. Activations: t = clip * max|x_row| /
  (6 * 448) per token, dynamic (a per-tensor amax would need a calibration pass per
  site; per token it stays exact for every batch). The block scale is
  E4M3(clip * max|block| / 6 / t), rounded to nearest even and saturated to
  [2^-9, 448]: never zero, so x / scale is always finite (a block that would round to
  0 is quantized with the smallest subnormal instead). Value = e2m1 * (block * t).
- MXFP4 (OCP MX v1.0): one E8M0 scale per 32 elements, 2^(floor(log2(clip * max|block|))
  - 2), the exponent clamped to [-127, 127] (a zero block gets 2^-127); no tensor scale.

The learnable clip multiplies the block (and NVFP4's tensor) amax before the scale.
This module is torch-free (the CLI and the exporters read it): the enum, the constants
and a numpy reference (`*_ref`: nearest point of an explicit value table) that the torch
fake quantizers of `fp4.py` match bit for bit in float32 and float64.
"""

from __future__ import annotations

from enum import Enum

import numpy as np


class QuantFormat(str, Enum):
    # symmetric integer grid of w_bits / a_bits, one scale per row (weights: output
    # channel, activations: token); the project's original format
    INT = "int"
    # E2M1 values, an E4M3 scale per 16 elements, an FP32 scale per tensor (weights) or
    # per token (activations)
    NVFP4 = "nvfp4"
    # E2M1 values, an E8M0 (power-of-two) scale per 32 elements (OCP MX)
    MXFP4 = "mxfp4"

    @property
    def is_fp4(self) -> bool:
        return self is not QuantFormat.INT

    @property
    def block_size(self) -> int:
        return {QuantFormat.NVFP4: 16, QuantFormat.MXFP4: 32}[self]


FP4_BITS = 4
E2M1_MAX = 6.0
E4M3_MAX = 448.0
E4M3_MIN = 2.0 ** -9  # smallest positive (subnormal) E4M3 value
E8M0_EXP_RANGE = (-127, 127)
E2M1_EMAX = 2  # floor(log2(6)): MX scale = 2^(floor(log2 amax) - E2M1_EMAX)
NV_TENSOR_DIV = E2M1_MAX * E4M3_MAX  # t = amax / (6 * 448)
AMAX_EPS = 1e-8  # as the integer row scales: a zero row still gets a finite scale

E2M1_GRID = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])  # magnitude by 3-bit code


# --- numpy reference -------------------------------------------------------------------
def _nearest_even(a: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Each |a| to the nearest entry of the increasing table; a tie goes to the entry of
    even index (even code = even mantissa bit). Beyond the last entry: the last."""
    d = np.abs(a[..., None] - table)
    ties = d == d.min(-1, keepdims=True)
    even = ties & (np.arange(len(table)) % 2 == 0)
    index = np.where(even.any(-1), even.argmax(-1), ties.argmax(-1))
    return table[index]


def _e4m3_table() -> np.ndarray:
    """The non-negative finite E4M3 (fn) values by code 0x00-0x7E."""
    codes = np.arange(0x7F)
    exp, man = codes >> 3, codes & 7
    return np.where(exp == 0, man / 8 * 2.0 ** -6, (1 + man / 8) * 2.0 ** (exp - 7))


E4M3_TABLE = _e4m3_table()


def e2m1_round_ref(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y)
    return np.copysign(_nearest_even(np.abs(y), E2M1_GRID).astype(y.dtype), y)


def e4m3_round_ref(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v)
    q = _nearest_even(v, E4M3_TABLE).astype(v.dtype)
    return np.maximum(q, v.dtype.type(E4M3_MIN))


def e8m0_scale_ref(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v)
    exponent = np.where(v > 0, np.frexp(v)[1] - 1 - E2M1_EMAX, E8M0_EXP_RANGE[0])
    return np.ldexp(v.dtype.type(1), np.clip(exponent, *E8M0_EXP_RANGE)).astype(v.dtype)


def fp4_quantize_ref(x: np.ndarray, fmt: QuantFormat, clip=1.0, tensor_amax=None):
    """Numpy `fp4_quantize` (same arithmetic order, in x's dtype)."""
    x = np.asarray(x)
    dt = x.dtype.type
    xb = x.reshape(*x.shape[:-1], -1, fmt.block_size)
    amax = np.abs(xb).max(-1) * np.asarray(clip, x.dtype)
    if fmt is QuantFormat.MXFP4:
        tensor = dt(1)
        block_scale = scale = e8m0_scale_ref(amax)
    else:
        if tensor_amax is None:
            tensor_amax = np.abs(x).max(-1, keepdims=True) * np.asarray(clip, x.dtype)
        tensor = np.maximum(np.asarray(tensor_amax, x.dtype), dt(AMAX_EPS)) / dt(NV_TENSOR_DIV)
        block_scale = e4m3_round_ref(amax / dt(E2M1_MAX) / tensor)
        scale = block_scale * tensor
    values = e2m1_round_ref(xb / scale[..., None])
    return values.reshape(x.shape), block_scale, tensor


def fp4_fake_quant_ref(x: np.ndarray, fmt: QuantFormat, clip=1.0, tensor_amax=None):
    values, block_scale, tensor = fp4_quantize_ref(x, fmt, clip, tensor_amax)
    scale = block_scale * tensor
    return (values.reshape(*values.shape[:-1], -1, fmt.block_size)
            * scale[..., None]).reshape(values.shape)


# --- storage codes -----------------------------------------------------------------------
def e2m1_to_nibbles(values: np.ndarray) -> np.ndarray:
    """E2M1 values -> uint8 codes 0-15 (bit 3 sign, bits 0-2 the magnitude's grid index:
    the FLOAT4E2M1 bit pattern of OCP and ONNX)."""
    values = np.asarray(values)
    index = np.searchsorted(E2M1_GRID, np.abs(values))
    if (index >= len(E2M1_GRID)).any() or \
            not np.array_equal(E2M1_GRID[np.minimum(index, 7)], np.abs(values)):
        raise ValueError("values are not on the E2M1 grid")
    return (index | (np.signbit(values) << 3)).astype(np.uint8)


def nibbles_to_e2m1(codes: np.ndarray) -> np.ndarray:
    codes = np.asarray(codes, dtype=np.uint8)
    magnitude = E2M1_GRID[codes & 7].astype(np.float32)
    return np.where(codes & 8, -magnitude, magnitude)


def e4m3_to_bytes(values: np.ndarray) -> np.ndarray:
    """Non-negative E4M3 values -> their uint8 codes (the FLOAT8E4M3FN bit pattern)."""
    values = np.asarray(values, dtype=np.float64)
    index = np.searchsorted(E4M3_TABLE, values)
    if (index >= len(E4M3_TABLE)).any() or \
            not np.array_equal(E4M3_TABLE[np.minimum(index, 0x7E)], values):
        raise ValueError("values are not non-negative E4M3 values")
    return index.astype(np.uint8)


def bytes_to_e4m3(codes: np.ndarray) -> np.ndarray:
    return E4M3_TABLE[np.asarray(codes, dtype=np.uint8)].astype(np.float32)


def e8m0_to_bytes(values: np.ndarray) -> np.ndarray:
    """Powers of two 2^e, e in [-127, 127] -> uint8 e + 127 (the OCP E8M0 code)."""
    mantissa, exponent = np.frexp(np.asarray(values, dtype=np.float64))
    if not (mantissa == 0.5).all() or not ((exponent >= -126) & (exponent <= 128)).all():
        raise ValueError("values are not E8M0 scales (powers of two 2^-127 .. 2^127)")
    return (exponent - 1 + 127).astype(np.uint8)


def bytes_to_e8m0(codes: np.ndarray) -> np.ndarray:
    return np.ldexp(np.float32(1), np.asarray(codes, dtype=np.int32) - 127).astype(np.float32)


def decode_block_scales(fmt: QuantFormat, codes: np.ndarray) -> np.ndarray:
    """Stored uint8 block-scale codes -> float32 scales."""
    return bytes_to_e8m0(codes) if fmt is QuantFormat.MXFP4 else bytes_to_e4m3(codes)


def encode_block_scales(fmt: QuantFormat, values: np.ndarray) -> np.ndarray:
    return e8m0_to_bytes(values) if fmt is QuantFormat.MXFP4 else e4m3_to_bytes(values)
