"""The FP4 pieces of the exported graph: block-scaled weights and dynamic activations.

Two forms compute the numbers of `quant/fp4.py` (formats: `quant/formats.py`):
- `w4a4-fp4` (opset 23): weights are FLOAT4E2M1 initializers (in, out) with their block
  scales (NVFP4: FLOAT8E4M3FN, read by a unit-scale DequantizeLinear; MXFP4: the float32
  powers of two, opset 23 having no E8M0 type) and a blocked DequantizeLinear (axis 0,
  block_size 16 / 32), then · the per-row second-level scale. Activations: their block
  scales computed with ops, then QuantizeLinear(output_dtype FLOAT4E2M1, block_size) ->
  DequantizeLinear. ONNX Runtime's CPU provider has no FP4 Q/DQ kernels; the graph runs
  under `onnx.reference.ReferenceEvaluator` and FP4-capable runtimes.
- `w4a4-fp4-emu` (the usual opset): the same weights dequantized to float32 at export
  ((e2m1 · block) · scale, the PyTorch order) and the activation rounding written with
  elementary ops (Abs, Div, Round, Where), so ONNX Runtime on CPU runs it. The E4M3
  rounding of NVFP4 block scales is a Cast to FLOAT8E4M3FN (saturating) and back.

Activation scales, in the PyTorch op order: amax per block (ReduceMax over the block
axis of x viewed as (B, S, K / b, b)) · clip; NVFP4: t = max(clip · max|x_row|, eps) /
2688, block = max(E4M3(amax / 6 / t), 2^-9), scale = block · t; MXFP4: 2^(floor(log2
amax) - 2) with the exponent clamped to [-127, 127], floor(log2) from Log / ln 2 and
corrected by one either way against Pow(2, e) so it is exact at powers of two.
"""

from __future__ import annotations

import math

import numpy as np
from onnx import TensorProto

from ..quant.formats import (
    AMAX_EPS,
    E2M1_EMAX,
    E2M1_MAX,
    E4M3_MAX,
    E4M3_MIN,
    E8M0_EXP_RANGE,
    NV_TENSOR_DIV,
    QuantFormat,
    decode_block_scales,
)
from .graph import GraphBuilder, e4m3_tensor, fp4_tensor


def act_scale(b: GraphBuilder, x: str, fmt: QuantFormat, clip: float) -> tuple[str, str]:
    """(x viewed as blocks (B, S, K / b, b), per-block scales (B, S, K / b)) of x (B, S, K)."""
    xb = b.op("Reshape", [x, b.const([0, 0, -1, fmt.block_size], np.int64)])
    last = b.const([-1], np.int64)
    amax = b.op("Mul", [b.op("ReduceMax", [b.op("Abs", [xb]), last], keepdims=0),
                        b.const(clip)])  # (B, S, K / b)
    if fmt is QuantFormat.MXFP4:
        return xb, _e8m0(b, amax)
    row = b.op("Mul", [b.op("ReduceMax", [b.op("Abs", [x]), last], keepdims=1),
                       b.const(clip)])  # (B, S, 1)
    tensor = b.op("Div", [b.op("Max", [row, b.const(AMAX_EPS)]), b.const(NV_TENSOR_DIV)])
    ratio = b.op("Div", [b.op("Div", [amax, b.const(E2M1_MAX)]), tensor])
    ratio = b.op("Min", [ratio, b.const(E4M3_MAX)])
    fp8 = b.op("Cast", [ratio], to=TensorProto.FLOAT8E4M3FN, saturate=1)
    block = b.op("Max", [b.op("Cast", [fp8], to=TensorProto.FLOAT), b.const(E4M3_MIN)])
    return xb, b.op("Mul", [block, tensor])


def _e8m0(b: GraphBuilder, amax: str) -> str:
    """2^clamp(floor(log2 amax) - 2, -127, 127), exact (amax = 0: 2^-127)."""
    two = b.const(2.0)
    e = b.op("Floor", [b.op("Div", [b.op("Log", [amax]), b.const(math.log(2.0))])])
    # Log / ln 2 can miss an exact power of two by an ulp: correct against 2^e
    p = b.op("Pow", [two, e])
    up = b.op("Cast", [b.op("LessOrEqual", [b.op("Mul", [p, two]), amax])],
              to=TensorProto.FLOAT)
    down = b.op("Cast", [b.op("Greater", [p, amax])], to=TensorProto.FLOAT)
    e = b.op("Sub", [b.op("Add", [e, up]), down])
    e = b.op("Sub", [e, b.const(float(E2M1_EMAX))])
    e = b.op("Min", [b.op("Max", [e, b.const(float(E8M0_EXP_RANGE[0]))]),
                     b.const(float(E8M0_EXP_RANGE[1]))])  # log(0) = -inf -> -127
    return b.op("Pow", [two, e])


def act_qdq(b: GraphBuilder, x: str, fmt: QuantFormat, clip: float, emulate: bool) -> str:
    """x (B, S, K) fake-quantized per token and block."""
    xb, scale = act_scale(b, x, fmt, clip)
    if not emulate:
        kw = dict(axis=2, block_size=fmt.block_size)
        q = b.op("QuantizeLinear", [x, scale], output_dtype=TensorProto.FLOAT4E2M1, **kw)
        return b.op("DequantizeLinear", [q, scale], **kw)
    scale = b.op("Unsqueeze", [scale, b.const([-1], np.int64)])  # (B, S, K / b, 1)
    q = e2m1_round(b, b.op("Div", [xb, scale]))
    return b.op("Reshape", [b.op("Mul", [q, scale]), b.const([0, 0, -1], np.int64)])


def e2m1_round(b: GraphBuilder, y: str) -> str:
    """Nearest E2M1 value of y, ties to even, saturating at +-6: one half-even Round per
    binade (steps 0.5 below 2, 1 below 4, 2 up to 6)."""
    a = b.op("Min", [b.op("Abs", [y]), b.const(E2M1_MAX)])
    step = b.op("Where", [b.op("Less", [a, b.const(2.0)]), b.const(0.5),
                          b.op("Where", [b.op("Less", [a, b.const(4.0)]), b.const(1.0),
                                         b.const(2.0)])])
    q = b.op("Mul", [b.op("Round", [b.op("Div", [a, step])]), step])
    return b.op("Where", [b.op("Less", [y, b.const(0.0)]), b.op("Neg", [q]), q])


def dequantized_weight(values: np.ndarray, block_codes: np.ndarray, scale: np.ndarray,
                       fmt: QuantFormat) -> np.ndarray:
    """(out, in) float32 (values · block) · scale, the order of `quant.folded.dequantized`."""
    block = np.repeat(decode_block_scales(fmt, block_codes), fmt.block_size, axis=1)
    return (values.astype(np.float32) * block) * scale.astype(np.float32)[:, None]


def weight(b: GraphBuilder, prefix: str, values: np.ndarray, block_codes: np.ndarray,
           scale: np.ndarray, fmt: QuantFormat, emulate: bool) -> str:
    """The (in, out) float32 weight of a linear, for a MatMul."""
    if emulate:
        w = dequantized_weight(values, block_codes, scale, fmt)
        return b.init(f"{prefix}.weight_t", np.ascontiguousarray(w.T))
    w = block_weight(b, prefix, values, block_codes, fmt)
    return b.op("Mul", [w, b.init(f"{prefix}.scale", scale.astype(np.float32))])


def block_weight(b: GraphBuilder, prefix: str, values: np.ndarray, block_codes: np.ndarray,
                 fmt: QuantFormat, unit: str | None = None) -> str:
    """(in, out) e2m1 · block scale, without the row scale: a FLOAT4E2M1 initializer and
    its blocked DequantizeLinear (axis 0), the block scales read by a DequantizeLinear of
    their own (NVFP4: FLOAT8E4M3FN with the unit scale `unit`, default a shared 1.0:
    TensorRT's "double DQ")."""
    codes = b.init(f"{prefix}.fp4_t", fp4_tensor(f"{prefix}.fp4_t", values.T))  # (in, out)
    if fmt is QuantFormat.NVFP4:
        stored = b.init(f"{prefix}.block_scale_t", e4m3_tensor(f"{prefix}.block_scale_t",
                                                              block_codes.T))
        block = b.op("DequantizeLinear", [stored, unit or b.const(1.0)])  # exact E4M3 -> fp32
    else:
        block = b.init(f"{prefix}.block_scale_t",
                       np.ascontiguousarray(decode_block_scales(fmt, block_codes).T))
    return b.op("DequantizeLinear", [codes, block], axis=0, block_size=fmt.block_size)
