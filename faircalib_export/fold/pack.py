"""Packing signed integer codes two per byte.

Nibble order (same as ONNX INT4): element 2j in the low nibble (bits 0-3), element 2j+1
in the high nibble (bits 4-7), two's complement. An odd row length is padded with a zero
code. Codes of 2-4 bits use this layout; 5-8 bit codes are stored as plain int8.
FP4 (E2M1) values pack in the same nibble order (`pack_fp4`).
"""

from __future__ import annotations

import numpy as np

from ..quant.formats import e2m1_to_nibbles, nibbles_to_e2m1


def pack_int4(codes: np.ndarray) -> np.ndarray:
    """(rows, n) int8 codes in [-8, 7] -> (rows, ceil(n / 2)) uint8."""
    codes = np.asarray(codes)
    if codes.min(initial=0) < -8 or codes.max(initial=0) > 7:
        raise ValueError("int4 codes must lie in [-8, 7]")
    if codes.shape[-1] % 2:
        codes = np.concatenate([codes, np.zeros((*codes.shape[:-1], 1), codes.dtype)], -1)
    u = codes.astype(np.int16) & 0x0F  # two's complement nibbles
    return (u[..., 0::2] | (u[..., 1::2] << 4)).astype(np.uint8)


def unpack_int4(packed: np.ndarray, n: int) -> np.ndarray:
    """Inverse of `pack_int4`: (rows, ceil(n / 2)) uint8 -> (rows, n) int8."""
    packed = np.asarray(packed, dtype=np.uint8)
    low = (packed & 0x0F).astype(np.int8)
    high = (packed >> 4).astype(np.int8)
    out = np.empty((*packed.shape[:-1], packed.shape[-1] * 2), dtype=np.int8)
    out[..., 0::2], out[..., 1::2] = low, high
    out = np.where(out > 7, out - 16, out).astype(np.int8)
    return out[..., :n]


def pack_fp4(values: np.ndarray) -> np.ndarray:
    """(rows, n) E2M1 values -> (rows, ceil(n / 2)) uint8, the nibble order of `pack_int4`
    (each nibble the FLOAT4E2M1 bit pattern: bit 3 sign, bits 0-2 the magnitude's code)."""
    codes = e2m1_to_nibbles(values)
    if codes.shape[-1] % 2:
        codes = np.concatenate([codes, np.zeros((*codes.shape[:-1], 1), np.uint8)], -1)
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)


def unpack_fp4(packed: np.ndarray, n: int) -> np.ndarray:
    """Inverse of `pack_fp4`: (rows, ceil(n / 2)) uint8 -> (rows, n) float32 E2M1 values."""
    packed = np.asarray(packed, dtype=np.uint8)
    codes = np.empty((*packed.shape[:-1], packed.shape[-1] * 2), dtype=np.uint8)
    codes[..., 0::2], codes[..., 1::2] = packed & 0x0F, packed >> 4
    return nibbles_to_e2m1(codes[..., :n])
