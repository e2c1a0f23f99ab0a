"""The ONNX graph TensorRT builds from: the W4A4 export with plugin nodes at every site.

TensorRT's ONNX parser imports any node whose op type it does not know as a plugin: it
looks up the creator named by the op type, with the node's string attributes
`plugin_version` (default "1") and `plugin_namespace` (default "") and its other attributes
handed over as plugin fields (INT -> kINT32, FLOAT -> kFLOAT32); the node's domain plays no
part in the lookup. The nodes live in the custom domain `trt.plugins` so that the ONNX
checker accepts them, and their op types equal the creator names of
`runtimes/tensorrt/plugins`:

  FaircalibW4A4Quantize  x (B, S, n) [, p1 (n1, n1), p2t (n2, n2)]
                         -> codes (B, S, words) int32, scales (B, S, 1) float32
                         fields: dim, n1, n2, has_transform, act_clip
  FaircalibW4A4Gemm      codes, scales, weight (N, words) int32, wscale (N,) [, bias (N,)]
                         -> y (B, S, N) float32
                         fields: in_features, out_features, has_bias, out_dtype

Each site is one Quantize node; the site's linears share one Gemm node over their
concatenated weights (q|k|v and gate|up), split afterwards. Weights are stored in the
kernels' packed-word layout (`reference.pack_words`). Everything else is the graph of
`export.onnx_export._Writer`. The LM head has two forms: "fp32" (default) casts the fp16
weight to float32 as the ONNX export does, which TensorRT folds into a float32 constant
(twice the head's fp16 bytes in the engine) and which matches the PyTorch reference to
float32 rounding; "fp16" multiplies in fp16 on a pre-transposed fp16 weight (half the
memory, logits rounded to fp16: about 3e-4 relative error, enough to flip near-ties).
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from ..errors import ConfigError
from ..export.graph import GraphBuilder
from ..export.onnx_export import _Writer
from ..quant.layout import transform_sites
from . import reference

PLUGIN_DOMAIN = "trt.plugins"
QUANTIZE_OP = "FaircalibW4A4Quantize"
GEMM_OP = "FaircalibW4A4Gemm"
PLUGIN_VERSION = "1"
PLUGIN_NAMESPACE = ""
OUT_DTYPE_FLOAT32 = 0  # Gemm field out_dtype: 0 fp32, 1 fp16, 2 bf16
HEAD_PRECISIONS = ("fp32", "fp16")


def check_plugin_format(meta: dict) -> None:
    """The plugins' GEMM takes int4 codes with one scale per row: refuse an FP4 fold, whose
    E2M1 nibbles and block scales it would misread as int4 codes."""
    from ..fold.deployed import quant_format

    fmt = quant_format(meta)
    if fmt.is_fp4:
        raise ConfigError(
            f"this model is folded from a {fmt.value} calibration; the TensorRT W4A4 plugins "
            f"take int4 codes only and would misread its E2M1 nibbles (an nvfp4 fold takes "
            f"TensorRT's native FP4 graph, trt/native_fp4.py; ONNX: --variant w4a4-fp4 or "
            f"w4a4-fp4-emu)")


class PluginWriter(_Writer):
    """`_Writer` with the sites and linears as TensorRT plugin nodes."""

    def __init__(self, b: GraphBuilder, meta: dict, t: dict, head_precision: str = "fp32"):
        check_plugin_format(meta)  # before the writer reads FP4 nibbles as int4 codes
        super().__init__(b, meta, t, "w4a4")
        self.head_precision = check_head_precision(head_precision)
        if (self.w_bits, self.a_bits) != (4, 4):
            raise ConfigError(f"the TensorRT plugins implement W4A4 only; this model is "
                              f"W{self.w_bits}A{self.a_bits}")
        self.site_linears = {s.name: s.linears for s in transform_sites(self.cfg)}
        self._scales: dict[str, str] = {}  # codes tensor -> its scales tensor
        self._outputs: dict[tuple[int, str], dict[str, str]] = {}  # (block, site) -> lin -> y

    def _plugin(self, op: str, inputs: list[str], outputs: int, **fields) -> str | list[str]:
        return self.b.op(op, inputs, outputs=outputs, domain=PLUGIN_DOMAIN,
                         plugin_version=PLUGIN_VERSION, plugin_namespace=PLUGIN_NAMESPACE,
                         **fields)

    def site(self, i: int, site: str, x: str) -> str:
        prefix = f"blocks.{i}.{site}"
        p1 = self.t.get(f"{prefix}.p1")
        inputs = [x]
        if p1 is not None:
            p2 = self.np(f"{prefix}.p2")
            n1, n2 = p1.shape[0], p2.shape[0]
            inputs += [self.b.init(f"{prefix}.p1", self.np(f"{prefix}.p1")),
                       self.b.init(f"{prefix}.p2_t", np.ascontiguousarray(p2.T))]
        else:
            n1, n2 = 1, self.cfg.intermediate_size if site == "down" else self.cfg.hidden_size
        codes, scales = self._plugin(
            QUANTIZE_OP, inputs, 2, dim=n1 * n2, n1=n1, n2=n2, has_transform=int(p1 is not None),
            act_clip=float(self.np(f"{prefix}.act_clip")))
        self._scales[codes] = scales
        return codes

    def linear(self, i: int, lin: str, x: str, in_features: int) -> str:
        site = next(s for s, lins in self.site_linears.items() if lin in lins)
        if (i, site) not in self._outputs:
            self._outputs[(i, site)] = self._gemm(i, site, x, in_features)
        return self._outputs[(i, site)][lin]

    def _gemm(self, i: int, site: str, codes: str, in_features: int) -> dict[str, str]:
        b, linears = self.b, self.site_linears[site]
        weights, scales, biases = [], [], []
        for lin in linears:
            prefix = f"blocks.{i}.{lin}"
            w = self._codes(prefix, in_features, self.w_bits)  # (out, in) int8
            weights.append(w)
            scales.append(self.np(f"{prefix}.scale").reshape(-1))
            bias = self.t.get(f"{prefix}.bias")
            biases.append(None if bias is None else self.np(f"{prefix}.bias"))
        sizes = [w.shape[0] for w in weights]
        inputs = [codes, self._scales[codes],
                  b.init(f"blocks.{i}.{site}.qweight_words",
                         reference.pack_words(np.concatenate(weights))),
                  b.init(f"blocks.{i}.{site}.wscale", np.concatenate(scales).astype(np.float32))]
        has_bias = any(v is not None for v in biases)
        if has_bias:
            full = [np.zeros(n, np.float32) if v is None else v
                    for v, n in zip(biases, sizes, strict=True)]
            inputs.append(b.init(f"blocks.{i}.{site}.bias", np.concatenate(full)))
        y = self._plugin(GEMM_OP, inputs, 1, in_features=in_features, out_features=sum(sizes),
                         has_bias=int(has_bias), out_dtype=OUT_DTYPE_FLOAT32)
        if len(linears) == 1:
            return {linears[0]: y}
        parts = b.op("Split", [y, b.const(sizes, np.int64)], outputs=len(linears), axis=-1)
        return dict(zip(linears, parts, strict=True))

    def head_logits(self, h: str) -> str:
        """Logits (B, S, V) float32 from the final hidden state (see the module note)."""
        if self.meta["head_bits"] == 16 and self.head_precision == "fp16":
            return fp16_head_logits(self.b, self.t, h)
        return super().head_logits(h)


def check_head_precision(head_precision: str) -> str:
    if head_precision not in HEAD_PRECISIONS:
        raise ConfigError(f"head precision must be one of {', '.join(HEAD_PRECISIONS)}, "
                          f"got {head_precision!r}")
    return head_precision


def fp16_head_logits(b: GraphBuilder, t: dict, h: str) -> str:
    """The "fp16" head of the TensorRT graphs: h (B, S, E) in fp16 times the pre-transposed
    fp16 table, logits cast back to float32."""
    w_t = np.ascontiguousarray(t["lm_head.weight"].half().numpy().T)  # (E, V)
    logits = b.op("MatMul", [b.op("Cast", [h], to=TensorProto.FLOAT16),
                             b.init("lm_head.weight_t", w_t)])
    return b.op("Cast", [logits], to=TensorProto.FLOAT)

