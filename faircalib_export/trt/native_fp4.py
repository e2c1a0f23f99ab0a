"""TensorRT's native NVFP4 graph: the FP4 export with TensorRT's own FP4 ops, no plugin.

Per site, x (B, S, K) after the online transform (opset 23 + the custom domain "trt"):

  t  = max(max|x_row|, eps) / 2688                       (B, S, 1), the calibrated
                                                          per-token second-level scale
  q, q_scale = trt::TRT_FP4DynamicQuantize(x / t, 1.0)   axis -1, block_size 16,
                                                          scale_type FLOAT8E4M3FN
  x_hat = DequantizeLinear(q, DequantizeLinear(q_scale, 1.0), axis -1, block_size 16)

and per linear, y = (x_hat @ W_blocks) · t · scale[row] (+ bias), where W_blocks is the
FLOAT4E2M1 initializer (in, out) dequantized by its FLOAT8E4M3FN block scales (themselves
read by a unit-scale DequantizeLinear: the "double DQ" TensorRT fuses with the MatMul
into an FP4 GEMM), and `scale` is the fold's per-row second-level scale (docs/fp4.md).

TensorRT's dynamic quantization (IDynamicQuantizeLayer) takes one build-time constant
double-quantization scale d and computes per block of 16: s = E4M3(amax / 6 / d),
q = E2M1(x / (s · d)). Dividing x by the per-token t first and passing d = 1 gives
E4M3(amax / t / 6), the calibrated block scale, and the product (s · t) · q the
calibrated rounding (up to the float rounding of x / t), provided the activation clip
is 1: TensorRT always maps a block's amax to 6, so a learned clip (< 1) cannot be
expressed and such a fold is refused (`calibrate --no-act-clips` keeps the clips at 1).
One known difference: a block whose scale rounds below half the smallest E4M3 subnormal
is quantized with 2^-9 by the calibration and with scale 0 (zeros) by TensorRT; such a
block's amax is under 2.2e-6 of its row's, so its values are negligible in the GEMM.
MXFP4 (32-blocks, E8M0 scales) has no TensorRT dynamic quantization and is refused.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from ..errors import ConfigError
from ..export import fp4_graph
from ..export.graph import GraphBuilder
from ..export.onnx_export import _Writer
from ..fold.deployed import quant_format
from ..fold.pack import unpack_fp4
from ..models.config import ModelConfig
from ..quant.formats import AMAX_EPS, NV_TENSOR_DIV, QuantFormat
from ..quant.layout import transform_sites
from ..quant.quantizer import NO_QUANT_BITS
from .plugin_graph import check_head_precision, fp16_head_logits

TRT_DOMAIN = "trt"
DYNAMIC_QUANTIZE_OP = "TRT_FP4DynamicQuantize"
DOUBLE_QUANT_SCALE = 1.0  # the per-token scale is applied outside the op (module note)
SCALE_TYPE = TensorProto.FLOAT8E4M3FN
NATIVE_FORMAT = QuantFormat.NVFP4
REBUILD_HINT = ("recalibrate with `calibrate --format nvfp4 --no-act-clips` (`build` does so "
                "for FP4 targets) and fold again")


def check_native_format(meta: dict) -> None:
    """Refuse a fold of another format than nvfp4 (deploy.json alone decides)."""
    fmt = quant_format(meta)
    if fmt is not NATIVE_FORMAT:
        raise ConfigError(
            f"TensorRT's native FP4 graph is nvfp4 only: its dynamic activation quantization "
            f"takes 16-element blocks with E4M3 scales, not {fmt.value} (export this fold "
            f"with --format onnx --variant w4a4-fp4 or w4a4-fp4-emu, or calibrate with "
            f"--format nvfp4)")


def check_native_fp4(meta: dict, tensors) -> None:
    """Refuse a fold TensorRT's native FP4 graph cannot reproduce: another format, or a
    learned activation clip."""
    check_native_format(meta)
    if meta["a_bits"] == NO_QUANT_BITS:
        return
    cfg = ModelConfig(**meta["model_config"])
    names = [f"blocks.{i}.{s.name}.act_clip" for i in range(cfg.num_layers)
             for s in transform_sites(cfg)]
    clipped = [(n, float(tensors[n])) for n in names if float(tensors[n]) != 1.0]
    if clipped:
        shown = ", ".join(f"{n} {c:.4g}" for n, c in clipped[:3])
        raise ConfigError(
            f"{len(clipped)} of {len(names)} activation sites have a learned clip ({shown}"
            f"{', ...' if len(clipped) > 3 else ''}); TensorRT's dynamic FP4 quantization "
            f"maps every block's amax to 6 and cannot apply a clip: {REBUILD_HINT}")


class NativeFP4Writer(_Writer):
    """`_Writer` with the sites as TRT_FP4DynamicQuantize and the linears as FP4 double-DQ
    MatMuls, scaled by the per-token and per-row second-level scales."""

    def __init__(self, b: GraphBuilder, meta: dict, t: dict, head_precision: str = "fp32"):
        check_native_fp4(meta, t)
        super().__init__(b, meta, t, "w4a4-fp4")
        self.head_precision = check_head_precision(head_precision)
        self._token_scale_of: dict[str, str] = {}  # x_hat -> its t (B, S, 1)
        # a 0-d scalar (GraphBuilder.const makes 1-element vectors): TensorRT's double
        # quantization scale, and the per-tensor scale of every FP8 block-scale DQ
        self.unit = b.init("double_quant_scale", helper.make_tensor(
            "double_quant_scale", TensorProto.FLOAT, [], [DOUBLE_QUANT_SCALE]))

    def site(self, i: int, site: str, x: str) -> str:
        b, fmt = self.b, self.format
        x = self.transform(i, site, x)
        if self.a_bits == NO_QUANT_BITS:
            return x
        row = b.op("ReduceMax", [b.op("Abs", [x]), b.const([-1], np.int64)], keepdims=1)
        t = b.op("Div", [b.op("Max", [row, b.const(AMAX_EPS)]), b.const(NV_TENSOR_DIV)])
        d = self.unit
        q, q_scale = b.op(DYNAMIC_QUANTIZE_OP, [b.op("Div", [x, t]), d], outputs=2,
                          domain=TRT_DOMAIN, axis=-1, block_size=fmt.block_size,
                          scale_type=SCALE_TYPE)  # (B, S, K) FP4, (B, S, K / 16) FP8
        block = b.op("DequantizeLinear", [q_scale, d])
        x_hat = b.op("DequantizeLinear", [q, block], axis=-1, block_size=fmt.block_size)
        self._token_scale_of[x_hat] = t
        return x_hat

    def linear(self, i: int, lin: str, x: str, in_features: int) -> str:
        b, prefix = self.b, f"blocks.{i}.{lin}"
        w = fp4_graph.block_weight(b, prefix,
                                   unpack_fp4(self.np(f"{prefix}.qweight"), in_features),
                                   self.np(f"{prefix}.block_scale"), self.format,
                                   unit=self.unit)
        y = b.op("MatMul", [x, w])  # (B, S, out)
        if x in self._token_scale_of:
            y = b.op("Mul", [y, self._token_scale_of[x]])
        y = b.op("Mul", [y, b.init(f"{prefix}.scale",
                                   self.np(f"{prefix}.scale").astype(np.float32))])
        return self._bias(prefix, y)

    def head_logits(self, h: str) -> str:
        if self.meta["head_bits"] == 16 and self.head_precision == "fp16":
            return fp16_head_logits(self.b, self.t, h)
        return super().head_logits(h)
