"""TensorRT's TRT_FP4DynamicQuantize as an ONNX reference-evaluator kernel.

An emulation of the op as TensorRT documents it (IDynamicQuantizeLayer, NVFP4 mode), not
TensorRT itself: per block of 16 along `axis`, with the scalar double-quantization scale d,
  s = E4M3(amax_block / 6 / d)      round to nearest even, saturated at 448
  y = E2M1(x / (s · d))             round to nearest, ties to even, saturated at +-6
outputs y (FLOAT4E2M1, x's shape) and s (FLOAT8E4M3FN, x's shape with the blocked axis
divided by 16). A block whose scale rounds to 0 (amax / 6 / d under 2^-10) quantizes to
zeros (our reading; TensorRT's docs do not say). Running the native FP4 graph with it
checks the graph and our reading of the op's semantics on the CPU.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
from onnx import TensorProto
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

from faircalib_export.quant.formats import E2M1_MAX, E4M3_MAX
from faircalib_export.trt.native_fp4 import DYNAMIC_QUANTIZE_OP, TRT_DOMAIN

BLOCK = 16


def dynamic_quantize(x: np.ndarray, d: float, axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """(FP4 values as float4_e2m1fn, block scales as float8_e4m3fn)."""
    assert x.ndim in (2, 3) and axis in (-1, -2, x.ndim - 1, x.ndim - 2), (x.shape, axis)
    xm = np.moveaxis(np.asarray(x, np.float32), axis, -1)
    assert xm.shape[-1] % BLOCK == 0, xm.shape
    xb = xm.reshape(*xm.shape[:-1], -1, BLOCK)  # (..., n / 16, 16)
    d = np.float32(d)
    amax = np.abs(xb).max(-1)
    s = np.minimum(amax / np.float32(E2M1_MAX) / d, np.float32(E4M3_MAX)).astype(
        ml_dtypes.float8_e4m3fn)
    denom = (s.astype(np.float32) * d)[..., None]
    y = np.divide(xb, denom, out=np.zeros_like(xb), where=denom > 0)
    y = np.clip(y, -E2M1_MAX, E2M1_MAX).astype(ml_dtypes.float4_e2m1fn).reshape(xm.shape)
    return np.moveaxis(y, -1, axis), np.moveaxis(s, -1, axis)


class TRT_FP4DynamicQuantize(OpRun):  # noqa: N801 (the op's name)
    op_domain = TRT_DOMAIN

    def _run(self, x, double_quant_scale, axis=-1, block_size=None, scale_type=None):
        assert block_size == BLOCK and scale_type == TensorProto.FLOAT8E4M3FN, (
            block_size, scale_type)
        assert np.size(double_quant_scale) == 1  # a scalar, a build-time constant
        return dynamic_quantize(x, float(np.asarray(double_quant_scale).reshape(())), axis)


assert TRT_FP4DynamicQuantize.__name__ == DYNAMIC_QUANTIZE_OP


def evaluator(model) -> ReferenceEvaluator:
    return ReferenceEvaluator(model, new_ops=[TRT_FP4DynamicQuantize])
