"""Export a folded model to an ONNX graph that ONNX Runtime runs on CPU or CUDA.

Graph (opset 21, IR 10), float32 compute:
  inputs   input_ids, position_ids: int64 (batch, seq); attention_mask (1 = real token)
           int64 (batch, past + seq) over [past positions, the seq queries];
           past_key_values float32 (layers, 2, batch, kv_heads, past, head_dim): keys (RoPE
           applied) and values of cached positions (past = 0: no cache, a plain forward)
  outputs  logits (batch, seq, vocab) position-aligned (Dream's shift applied), and the
           per-position decision summaries token (int64), prob, margin, neg_entropy
           (batch, seq), so greedy decoding never fetches full-vocabulary logits;
           present_key_values float32 (layers, 2, batch, kv_heads, seq, head_dim), the
           queries' own keys and values (the cached contract of faircalib_runtime.backend).
Per block, at each of the four sites: x' = P1 · X · P2^T on x viewed as (n1, n2) (two
MatMuls), then dynamic per-token quantization with s = clip · max|x'_row| / qmax. Two
W4A4 forms compute the same numbers:
- `w4a4` (default, the portable Q/DQ form): QuantizeLinear(x' / s) -> DequantizeLinear
  -> · s (unit-scale Q/DQ keeps the per-token scale a plain tensor op); weights are INT4
  initializers (in, out) with per-output-channel DequantizeLinear before a float MatMul.
- `w4a4-int` (integer GEMMs, for CPUs): uint8 codes u = clamp(round(x' / s), -z, z - 1) + z
  with z = 2^(a-1) (QuantizeLinear with zero point z, then Clip), MatMulInteger(u, W; z)
  with exact int32 accumulation, then · s (per token) · c (per output channel). Weights
  are the same INT4 initializers, cast to int8 by a Cast node that ONNX Runtime folds once
  at load. It sums (q·s)(w·c) exactly instead of emulating it in float and runs ONNX
  Runtime's int8 kernels (VNNI where the CPU has it).
Models folded from an FP4 calibration (nvfp4 / mxfp4) take their own variants,
`w4a4-fp4` (opset 23, FLOAT4E2M1 Q/DQ with block_size) and `w4a4-fp4-emu` (float weights,
FP4 activation rounding as ops, for ONNX Runtime on CPU): export/fp4_graph.py, docs/fp4.md.
With 16-bit activations the linears are DequantizeLinear(weights) + MatMul. Attention is
bidirectional with the pairwise padding mask of the PyTorch model. Embedding and head
stay fp16 initializers unless folded smaller.

LM head. By default (`head_activations="float"`) the head is a float32 MatMul on the
head's table (fp16, or int4 / int8 codes x per-row scales), which ONNX Runtime folds into
one float32 weight at load: the head costs 4 bytes per weight resident and an fp32 GEMM.
In the `w4a4` and `weight-only` graphs a head folded to 4 bits is instead written like a
block linear, DequantizeLinear(INT4 codes (E, V), per-column scales) + MatMul, which ORT
fuses into MatMulNBits: 4 bits resident (LLaDA-8B: the whole session 1.44x the file).
`head_activations="int8"` (w4a4-int only, a head folded to 4 or 8 bits) runs it as the
sites do, with integer GEMMs: h (the final normed hidden state) -> per-token symmetric
int8 codes, s = max|h_row| / 127 (no clip), u = round_half_even(h / s) + 128 ->
MatMulInteger(u, codes^T; 128) (exact int32) -> · s (per token) · c (per vocabulary row).
The head weights stay int8 resident (int4 on disk, widened at load like the blocks).
Its cost on the teacher-forced tiny models: top-1 agreement 0.9987-0.9999 with the float
head, logits relative error 3-6e-3, identical decodes and held-out accuracy (+0 / -1 of
200); the head's time falls to about 0.2-0.3x (docs/export.md).

Resident weights of the integer graph. ONNX Runtime has no integer GEMM with per-token
activation scales and 4-bit weights: MatMulInteger takes int8 / uint8 only (an INT4 B is
refused by the graph checker), MatMulIntegerToFloat and DynamicQuantizeMatMul take a
per-tensor (or per-column-of-A) activation scale and int8 weights, and MatMulNBits at
accuracy level 4 re-quantizes A to int8 per block of K with its own scales (W4A8 per
block, not per-token W4A4). So w4a4-int widens its INT4 weights to int8 at load (resident
int8 block weights: RSS after load about 1.3x that of the weight-only graph). What keeps
the weights at 4 bits with the exact W4A4 numbers is MatMulNBits at level 1 on the codes
themselves (u - z as float32 x int4 codes with unit scales, then · s · c: the fp32 sums
of small integers are exact below 2^24, i.e. K < 2^24 / (2^(a-1) · 8)), but its fp32
GEMM is 2.3-2.7x slower than MatMulInteger; `benchmarks/bench_ort_costs.py
--experimental` measures it (not an export option). The `w4a4` Q/DQ graph keeps 4-bit
weights too (fused into MatMulNBits at level 1), with float-rounded rather than exact sums.

ONNX Runtime's optimizer fuses DequantizeLinear(int4) + MatMul into MatMulNBits and by
default runs it at accuracy level 4, which re-quantizes the activations to int8 per block
and breaks the W4A4 numerics; `runtime.json` therefore carries the session setting
`session.qdq_matmulnbits_accuracy_level = 1` (fp32 accumulation), which the runtime's
backend applies.

`variant="weight-only"` replaces every block matmul by ORT's MatMulNBits (4-bit weights,
per-channel scales repeated over blocks of 32) and skips activation quantization: W4A16
numerics, for speed where int4 activation emulation is slow. `accuracy_level` (written
on every MatMulNBits node and into runtime.json) is the minimum precision of A inside the
op, as ORT's contrib-op docs define it: 0 unset (ORT's choice: fp32 on CPU), 1 fp32
(dequantized weights, fp32 GEMM: exact W4A16), 2 fp16 and 3 bf16 (A downcast, on EPs
that implement it; the CPU EP computes them in fp32), 4 int8 (A quantized to int8 per row
and block of 32 along K, scale absmax / 127, int8 GEMM: W4A8 per block; logits 0.4%
relative error against level 1 on llada-chain). The default is 1: level 4 was 1.1-1.3x
slower for 128 and 384-token forwards on an AVX512-VNNI/AMX CPU and only faster (0.8x)
for 32-token steps, and it holds more memory after load.

Beside the graph, `runtime.json` tells the torch-free runtime everything it needs:
family, special ids, decoding policy, chat template prefix/suffix, output names, and the
cache's input, output and shape ("cache"; exports without it run uncached only), and
the export options "head_activations" and "accuracy_level" (null but for weight-only).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from faircalib_runtime.backend import PAST_LAYOUT

from ..artifacts import RUNTIME_JSON, atomic_dir, file_sha256, read_json, write_manifest
from ..errors import ConfigError
from ..fold.deployed import quant_format, read_deploy
from ..fold.pack import unpack_fp4, unpack_int4
from ..models.config import ModelConfig
from ..quant.formats import QuantFormat
from ..quant.quantizer import NO_QUANT_BITS, qmax
from . import fp4_graph
from .graph import (
    EXTERNAL_MIN_BYTES,
    FP4_IR_VERSION,
    FP4_OPSET,
    MS_DOMAIN,
    GraphBuilder,
    int_tensor,
)

MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
# w4a4: Q/DQ graph (portable; float compute); w4a4-int: integer GEMMs (exact, fast on CPU);
# weight-only: MatMulNBits, W4A16
VARIANTS = ("w4a4", "w4a4-int", "weight-only")
# Models folded from an nvfp4 / mxfp4 calibration (export/fp4_graph.py): w4a4-fp4, the
# opset-23 FLOAT4E2M1 Q/DQ graph (ReferenceEvaluator, FP4 runtimes); w4a4-fp4-emu, the same
# numbers in float32 with the FP4 rounding as ops (ONNX Runtime on CPU)
FP4_VARIANTS = ("w4a4-fp4", "w4a4-fp4-emu")
SUMMARY_OUTPUTS = ("token", "prob", "margin", "neg_entropy")
EXTERNAL_DATA_BYTES = 1 << 30  # initializers above this go to an external-data file
PROTOBUF_LIMIT_BYTES = (1 << 31) - (256 << 20)  # protobuf: 2 GiB a message, less a margin
NBITS_BLOCK = 32
CACHE_INPUT, CACHE_OUTPUT = "past_key_values", "present_key_values"
ORT_SESSION_CONFIG = {"session.qdq_matmulnbits_accuracy_level": "1"}
# How ONNX Runtime holds the weights (runtime.json's session config, read at open):
#   fast  ORT's defaults: it also prepacks GEMM operands (a second copy of the fp32 head)
#   low   no prepacking: LLaDA-8B w4a4-int peaks at 9.7 instead of 11.3 GiB, its forward
#         about 20% slower (docs/export.md). Constant folding stays on: without it every
#         weight's cast runs at the start of each forward, and the session held more.
ORT_MEMORY = {"fast": {}, "low": {"session.disable_prepacking": "1"}}
HEAD_ACTIVATIONS = ("float", "int8")
HEAD_ACT_BITS = 8  # int8 head: per-token symmetric codes in [-128, 127], scale absmax / 127
# MatMulNBits accuracy_level (ORT contrib op docs): the minimum precision of input A inside
# the op. 1 keeps the activations fp32 (dequantized weights, fp32 GEMM: W4A16 numerics);
# 4 quantizes A to int8 per block of NBITS_BLOCK along K (symmetric, scale absmax / 127 per
# row and block) and runs an int8 GEMM: W4A8-per-block numerics, faster on CPUs with VNNI.
ACCURACY_LEVELS = {0: "unset (ORT's default: fp32 on CPU)", 1: "fp32", 2: "fp16", 3: "bf16",
                   4: "int8"}
# weight-only default: level 1. Level 4 was not faster for a full 384-token forward on CPU
# (AVX512-VNNI/AMX, ORT 1.32: 1.2-1.3x slower; faster only for short steps of about 32
# tokens) and holds more memory; docs/export.md has the figures.
WEIGHT_ONLY_ACCURACY_LEVEL = 1


@dataclass(frozen=True)
class ExportOptions:
    variant: str = "w4a4"  # see VARIANTS
    external_data: bool | None = None  # None: only when the weights are large
    # LM head input: "float" (fp32 MatMul) or "int8" (per-token int8 codes x the head's
    # int4/int8 codes with MatMulInteger; w4a4-int and a head folded to 4 or 8 bits only)
    head_activations: str = "float"
    # MatMulNBits accuracy_level of the weight-only graph (see ACCURACY_LEVELS); None:
    # WEIGHT_ONLY_ACCURACY_LEVEL. The other variants take none (they run at level 1).
    accuracy_level: int | None = None
    ort_memory: str = "fast"  # see ORT_MEMORY

    def __post_init__(self) -> None:
        if self.ort_memory not in ORT_MEMORY:
            raise ConfigError(f"unknown ORT memory mode {self.ort_memory!r}; use one of "
                              f"{', '.join(ORT_MEMORY)}")
        if self.variant not in VARIANTS + FP4_VARIANTS:
            raise ConfigError(f"unknown ONNX variant {self.variant!r}; use one of "
                              f"{', '.join(VARIANTS + FP4_VARIANTS)}")
        if self.head_activations not in HEAD_ACTIVATIONS:
            raise ConfigError(f"unknown head activations {self.head_activations!r}; use one "
                              f"of {', '.join(HEAD_ACTIVATIONS)}")
        if self.head_activations == "int8" and self.variant != "w4a4-int":
            raise ConfigError(f"int8 head activations need the integer graph (variant "
                              f"w4a4-int), not {self.variant}")
        level = self.accuracy_level
        if level is not None:
            if isinstance(level, bool) or not isinstance(level, int) \
                    or level not in ACCURACY_LEVELS:
                raise ConfigError("accuracy level must be an integer in 0..4 ("
                                  + ", ".join(f"{k} {v}" for k, v in ACCURACY_LEVELS.items())
                                  + f"), not {level!r}")
            if self.variant != "weight-only":
                raise ConfigError(f"the accuracy level applies to the weight-only graph "
                                  f"(MatMulNBits) only; the {self.variant} graph runs its "
                                  f"fused int4 matmuls at level 1 (fp32)")

    @property
    def matmulnbits_accuracy_level(self) -> int | None:
        """The level written on the weight-only graph's MatMulNBits nodes (None: other
        variants, which write no MatMulNBits)."""
        if self.variant != "weight-only":
            return None
        return WEIGHT_ONLY_ACCURACY_LEVEL if self.accuracy_level is None else self.accuracy_level


def check_variant_format(variant: str, fmt: QuantFormat) -> QuantFormat:
    """FP4 variants for FP4 models, the others for integer ones."""
    if fmt.is_fp4 and variant not in FP4_VARIANTS:
        raise ConfigError(f"this model is folded from a {fmt.value} calibration; export it "
                          f"with --variant {' or '.join(FP4_VARIANTS)}, not {variant}")
    if not fmt.is_fp4 and variant in FP4_VARIANTS:
        raise ConfigError(f"variant {variant} needs a model calibrated with --format nvfp4 "
                          f"or mxfp4; this one is {fmt.value} (use {', '.join(VARIANTS)})")
    return fmt


class _Writer:
    """Emits the nodes of one model into a GraphBuilder."""

    def __init__(self, b: GraphBuilder, meta: dict, t: dict, variant: str, *,
                 head_activations: str = "float", accuracy_level: int | None = None):
        self.b, self.meta, self.t, self.variant = b, meta, t, variant
        self.head_activations, self.accuracy_level = head_activations, accuracy_level
        self.cfg = ModelConfig(**meta["model_config"])
        self.w_bits, self.a_bits = meta["w_bits"], meta["a_bits"]
        self.format = check_variant_format(variant, quant_format(meta))
        if variant != "weight-only" and self.a_bits not in (4, 8, NO_QUANT_BITS):
            raise ConfigError(f"ONNX export supports 4, 8 or 16-bit activations, not {self.a_bits}")
        if variant == "weight-only" and self.w_bits != 4:
            raise ConfigError("the weight-only variant (MatMulNBits) needs 4-bit weights")
        if head_activations == "int8" and meta["head_bits"] not in (4, 8):
            raise ConfigError(f"int8 head activations need an LM head folded to 4 or 8-bit "
                              f"codes (fold --head-bits 4 or 8); this model's head is "
                              f"{meta['head_bits']}-bit")
        self._act_scale: dict[str, str] = {}  # uint8 activation codes -> per-token scales

    def np(self, name: str) -> np.ndarray:
        return self.t[name].float().numpy() if self.t[name].is_floating_point() \
            else self.t[name].numpy()

    # --- building blocks ---------------------------------------------------------------
    def rms_norm(self, x: str, weight: str) -> str:
        b = self.b
        var = b.op("ReduceMean", [b.op("Mul", [x, x]), b.const([-1], np.int64)], keepdims=1)
        inv = b.op("Reciprocal", [b.op("Sqrt", [b.op("Add", [var, b.const(
            self.cfg.rms_norm_eps)])])])
        return b.op("Mul", [b.op("Mul", [x, inv]), b.init(weight, self.np(weight))])

    def site(self, i: int, site: str, x: str) -> str:
        b = self.b
        x = self.transform(i, site, x)
        if self.variant == "weight-only" or self.a_bits == NO_QUANT_BITS:
            return x
        if self.format.is_fp4:
            return fp4_graph.act_qdq(b, x, self.format,
                                     float(self.np(f"blocks.{i}.{site}.act_clip")),
                                     emulate=self.variant == "w4a4-fp4-emu")
        scale = self._token_scale(x, self.a_bits,
                                  float(self.np(f"blocks.{i}.{site}.act_clip")))
        if self.variant == "w4a4":  # Q/DQ: int4 codes, dequantized before a float MatMul
            zp = self._zero_point(TensorProto.INT4 if self.a_bits == 4 else TensorProto.INT8)
            q = b.op("QuantizeLinear", [b.op("Div", [x, scale]), b.const(1.0), zp])
            return b.op("Mul", [b.op("DequantizeLinear", [q, b.const(1.0), zp]), scale])
        return self._uint8_codes(x, scale, self.a_bits)

    def transform(self, i: int, site: str, x: str) -> str:
        """x (B, S, n) through the site's online transform P1 · X · P2^T (none: x)."""
        b = self.b
        p1 = self.t.get(f"blocks.{i}.{site}.p1")
        if p1 is not None:
            p2 = self.np(f"blocks.{i}.{site}.p2")
            n1, n2 = p1.shape[0], p2.shape[0]
            xs = b.op("Reshape", [x, b.const([0, 0, n1, n2], np.int64)])  # (B, S, n1, n2)
            xs = b.op("MatMul", [b.init(f"blocks.{i}.{site}.p1", p1.numpy()), xs])
            xs = b.op("MatMul", [xs, b.init(f"blocks.{i}.{site}.p2_t", p2.T.copy())])
            x = b.op("Reshape", [xs, b.const([0, 0, n1 * n2], np.int64)])
        return x

    def _token_scale(self, x: str, bits: int, clip: float | None) -> str:
        """Per-token scale (B, S, 1) of x; same op order as the PyTorch reference:
        clamp(clip * absmax, eps) / qmax (no Mul where clip is None)."""
        b = self.b
        absmax = b.op("ReduceMax", [b.op("Abs", [x]), b.const([-1], np.int64)], keepdims=1)
        if clip is not None:
            absmax = b.op("Mul", [absmax, b.const(clip)])
        return b.op("Div", [b.op("Max", [absmax, b.const(1e-8)]),
                            b.const(float(qmax(bits)))])

    def _uint8_codes(self, x: str, scale: str, bits: int) -> str:
        """Codes as uint8 offset by the zero point z = 2^(bits-1), u = clamp(
        round_half_even(x / s), -z, z - 1) + z, for MatMulInteger (scale remembered)."""
        b = self.b
        z = 1 << (bits - 1)
        u = b.op("QuantizeLinear", [b.op("Div", [x, scale]), b.const(1.0),
                                    b.const(z, np.uint8)])
        u = b.op("Clip", [u, b.const(0, np.uint8), b.const(2 * z - 1, np.uint8)])
        self._act_scale[u] = scale
        return u

    def _zero_point(self, elem_type: int) -> str:
        key = f"zero_point_{elem_type}"
        if not any(t.name == key for t in self.b.initializers):
            self.b.init(key, onnx.helper.make_tensor(key, elem_type, [], [0]))
        return key

    def _codes(self, prefix: str, in_features: int, bits: int) -> np.ndarray:
        q = self.t[f"{prefix}.qweight"].numpy()
        return unpack_int4(q, in_features) if bits <= 4 else q  # (out, in)

    def linear(self, i: int, lin: str, x: str, in_features: int) -> str:
        b, prefix = self.b, f"blocks.{i}.{lin}"
        if self.format.is_fp4:
            w = fp4_graph.weight(b, prefix, unpack_fp4(self.np(f"{prefix}.qweight"), in_features),
                                 self.np(f"{prefix}.block_scale"), self.np(f"{prefix}.scale"),
                                 self.format, emulate=self.variant == "w4a4-fp4-emu")
            return self._bias(prefix, b.op("MatMul", [x, w]))
        codes = self._codes(prefix, in_features, self.w_bits)
        scale = self.np(f"{prefix}.scale")
        if self.variant == "weight-only":
            return self._bias(prefix, self._matmul_nbits(prefix, x, codes, scale))
        weight = b.init(f"{prefix}.qweight_t", int_tensor(f"{prefix}.qweight_t", codes.T,
                                                           self.w_bits))  # (in, out)
        if x in self._act_scale:  # integer GEMM, exact int32 accumulation
            if self.w_bits <= 4:  # INT4 on disk; ORT folds the cast once at load
                weight = b.op("Cast", [weight], to=TensorProto.INT8)
            z = 1 << (self.a_bits - 1)
            acc = b.op("MatMulInteger", [x, weight, b.const(z, np.uint8)])
            y = b.op("Mul", [b.op("Mul", [b.op("Cast", [acc], to=TensorProto.FLOAT),
                                          self._act_scale[x]]),
                             b.init(f"{prefix}.scale", scale)])
        else:  # Q/DQ variant or 16-bit activations: dequantized weights, float MatMul
            w = b.op("DequantizeLinear", [weight, b.init(f"{prefix}.scale", scale)], axis=1)
            y = b.op("MatMul", [x, w])
        return self._bias(prefix, y)

    def _bias(self, prefix: str, y: str) -> str:
        bias = self.t.get(f"{prefix}.bias")
        return y if bias is None else self.b.op("Add", [y, self.b.init(f"{prefix}.bias",
                                                                       bias.numpy())])

    def _matmul_nbits(self, prefix: str, x: str, codes: np.ndarray, scale: np.ndarray) -> str:
        n, k = codes.shape
        blocks = math.ceil(k / NBITS_BLOCK)
        u = np.zeros((n, blocks * NBITS_BLOCK), dtype=np.uint8)
        u[:, :k] = (codes.astype(np.int16) + 8).astype(np.uint8)  # unsigned, zero point 8
        u = u.reshape(n, blocks, NBITS_BLOCK)
        packed = (u[..., 0::2] | (u[..., 1::2] << 4)).astype(np.uint8)
        scales = np.repeat(scale[:, None], blocks, axis=1).astype(np.float32).reshape(-1)
        level = WEIGHT_ONLY_ACCURACY_LEVEL if self.accuracy_level is None else self.accuracy_level
        return self.b.op("MatMulNBits", [x, self.b.init(f"{prefix}.nbits", packed),
                                         self.b.init(f"{prefix}.nbits_scale", scales)],
                         domain=MS_DOMAIN, K=k, N=n, bits=4, block_size=NBITS_BLOCK,
                         accuracy_level=level)

    def table(self, name: str, bits: int) -> tuple[str, str | None]:
        """(float table or int codes, per-row scales or None) initializers."""
        b = self.b
        if bits == 16:
            return b.init(f"{name}.weight", self.t[f"{name}.weight"].numpy()), None
        codes = self._codes(name, self.cfg.hidden_size, bits)
        return (b.init(f"{name}.codes", int_tensor(f"{name}.codes", codes, bits)),
                b.init(f"{name}.scale", self.np(f"{name}.scale")[:, None]))

    # --- the model ---------------------------------------------------------------------
    def rope(self, position_ids: str) -> tuple[str, str]:
        b, d = self.b, self.cfg.head_dim
        inv_freq = 1.0 / (self.cfg.rope_theta ** (np.arange(0, d, 2, dtype=np.float32) / d))
        pos = b.op("Unsqueeze", [b.op("Cast", [position_ids], to=TensorProto.FLOAT),
                                 b.const([-1], np.int64)])
        freqs = b.op("Mul", [pos, b.const(inv_freq.astype(np.float32))])  # (B, S, D/2)
        emb = b.op("Concat", [freqs, freqs], axis=-1)
        axis = b.const([1], np.int64)
        return (b.op("Unsqueeze", [b.op("Cos", [emb]), axis]),
                b.op("Unsqueeze", [b.op("Sin", [emb]), axis]))  # (B, 1, S, D)

    def rotate(self, x: str, cos: str, sin: str) -> str:
        b, half = self.b, self.cfg.head_dim // 2
        x1, x2 = b.op("Split", [x, b.const([half, half], np.int64)], outputs=2, axis=-1)
        rotated = b.op("Concat", [b.op("Neg", [x2]), x1], axis=-1)
        return b.op("Add", [b.op("Mul", [x, cos]), b.op("Mul", [rotated, sin])])

    def attention_bias(self, mask: str, ids: str) -> str:
        """(B, 1, S, K + S) additive mask over the keys [K past positions, S queries]: 0
        where the query and the key are real tokens, or the key is the query's own."""
        b = self.b
        m = b.op("Cast", [mask], to=TensorProto.BOOL)  # (B, K + S)
        keys = b.op("Gather", [b.op("Shape", [mask]), b.const(1, np.int64)], axis=0)
        seq = b.op("Gather", [b.op("Shape", [ids]), b.const(1, np.int64)], axis=0)
        past = b.op("Sub", [keys, seq])  # keys, seq, past: 1-element tensors, as consts are
        queries = b.op("Slice", [m, past, keys, b.const([1], np.int64)])  # (B, S)
        pair = b.op("And", [b.op("Unsqueeze", [queries, b.const([2], np.int64)]),
                            b.op("Unsqueeze", [m, b.const([1], np.int64)])])
        one = b.const(1, np.int64)
        own = b.op("Range", [past, keys, one])  # query q's own key is K + q
        r = b.op("Range", [b.const(0, np.int64), keys, one])
        eye = b.op("Equal", [b.op("Unsqueeze", [own, b.const([1], np.int64)]),
                             b.op("Unsqueeze", [r, b.const([0], np.int64)])])
        allowed = b.op("Or", [pair, eye])
        bias = b.op("Where", [allowed, b.const(0.0), b.const(-np.inf)])
        return b.op("Unsqueeze", [bias, b.const([1], np.int64)])

    def past(self, past: str, i: int, j: int) -> str:
        """past[i, j] (B, G, K, D): block i's cached keys (j = 0) or values (j = 1)."""
        b = self.b
        one = b.op("Slice", [past, b.const([i, j], np.int64), b.const([i + 1, j + 1], np.int64),
                             b.const([0, 1], np.int64)])
        return b.op("Squeeze", [one, b.const([0, 1], np.int64)])

    def heads(self, x: str, n: int) -> str:
        b = self.b
        x = b.op("Reshape", [x, b.const([0, 0, n, self.cfg.head_dim], np.int64)])
        return b.op("Transpose", [x], perm=[0, 2, 1, 3])  # (B, n, S, D)

    def block(self, i: int, h: str, cos: str, sin: str, bias: str, past: str
              ) -> tuple[str, str]:
        """Block i over h attending to [past_key_values[i], itself]: (h, present (1, 2, B,
        G, S, D))."""
        b, cfg = self.b, self.cfg
        nh, g, e, f = cfg.num_heads, cfg.num_kv_heads, cfg.hidden_size, cfg.intermediate_size
        x = self.site(i, "qkv", self.rms_norm(h, f"blocks.{i}.attn_norm.weight"))
        q = self.rotate(self.heads(self.linear(i, "attn.q_proj", x, e), nh), cos, sin)
        k = self.rotate(self.heads(self.linear(i, "attn.k_proj", x, e), g), cos, sin)
        v = self.heads(self.linear(i, "attn.v_proj", x, e), g)
        axis0 = b.const([0], np.int64)
        present = b.op("Unsqueeze", [b.op("Concat", [b.op("Unsqueeze", [k, axis0]),
                                                     b.op("Unsqueeze", [v, axis0])], axis=0),
                                     axis0])
        k, v = (b.op("Concat", [self.past(past, i, j), t], axis=2)
                for j, t in ((0, k), (1, v)))  # (B, G, K + S, D)
        if g != nh:  # repeat each kv head for its group of query heads
            rep = b.const([1, 1, nh // g, 1, 1], np.int64)
            shape = b.const([0, nh, -1, cfg.head_dim], np.int64)
            k, v = (b.op("Reshape", [b.op("Tile", [b.op("Unsqueeze", [t, b.const([2], np.int64)]),
                                                   rep]), shape]) for t in (k, v))
        scores = b.op("MatMul", [q, b.op("Transpose", [k], perm=[0, 1, 3, 2])])
        scores = b.op("Add", [b.op("Mul", [scores, b.const(1 / math.sqrt(cfg.head_dim))]), bias])
        attn = b.op("MatMul", [b.op("Softmax", [scores], axis=-1), v])  # (B, H, S, D)
        attn = b.op("Reshape", [b.op("Transpose", [attn], perm=[0, 2, 1, 3]),
                                b.const([0, 0, e], np.int64)])
        h = b.op("Add", [h, self.linear(i, "attn.o_proj", self.site(i, "o", attn), e)])
        x = self.site(i, "gate_up", self.rms_norm(h, f"blocks.{i}.mlp_norm.weight"))
        gate = self.linear(i, "mlp.gate_proj", x, e)
        gated = b.op("Mul", [b.op("Mul", [gate, b.op("Sigmoid", [gate])]),
                             self.linear(i, "mlp.up_proj", x, e)])
        h = b.op("Add", [h, self.linear(i, "mlp.down_proj", self.site(i, "down", gated), f)])
        return h, present

    def build(self) -> None:
        b, cfg = self.b, self.cfg
        ids = b.input("input_ids", TensorProto.INT64, ["batch", "seq"])
        mask = b.input("attention_mask", TensorProto.INT64, ["batch", "past+seq"])
        pos = b.input("position_ids", TensorProto.INT64, ["batch", "seq"])
        past = b.input(CACHE_INPUT, TensorProto.FLOAT, self.cache_shape("past"))
        table, scale = self.table("embed", self.meta["embed_bits"])
        h = b.op("Cast", [b.op("Gather", [table, ids], axis=0)], to=TensorProto.FLOAT)
        if scale is not None:
            h = b.op("Mul", [h, b.op("Gather", [scale, ids], axis=0)])
        cos, sin = self.rope(pos)
        bias = self.attention_bias(mask, ids)
        presents = []
        for i in range(cfg.num_layers):
            h, present = self.block(i, h, cos, sin, bias, past)
            presents.append(present)
        logits = self.head_logits(self.rms_norm(h, "norm.weight"))
        if cfg.logit_shift:  # Dream: position i reads the prediction made at i - 1
            first = b.op("Slice", [logits, b.const([0], np.int64), b.const([1], np.int64),
                                   b.const([1], np.int64)])
            rest = b.op("Slice", [logits, b.const([0], np.int64), b.const([-1], np.int64),
                                  b.const([1], np.int64)])
            logits = b.op("Concat", [first, rest], axis=1)
        self.summaries(logits)
        b.output(logits, "logits", TensorProto.FLOAT, ["batch", "seq", cfg.vocab_size])
        b.output(b.op("Concat", presents, axis=0), CACHE_OUTPUT, TensorProto.FLOAT,
                 self.cache_shape("seq"))

    def cache_shape(self, keys: str) -> list:
        """(layers, 2, batch, kv_heads, keys, head_dim), `keys` named."""
        cfg = self.cfg
        return [cfg.num_layers, 2, "batch", cfg.num_kv_heads, keys, cfg.head_dim]

    def head_logits(self, h: str) -> str:
        """Logits (B, S, V) float32 from the final normed hidden state."""
        b = self.b
        if self.head_activations == "int8":
            return self._int8_head(h)
        if self.meta["head_bits"] == 4 and self.variant in ("w4a4", "weight-only"):
            # int4 codes (E, V) with per-column scales, DequantizeLinear + MatMul: ONNX
            # Runtime fuses them into MatMulNBits and keeps the head at 4 bits resident
            # (the Cast form below is folded to an fp32 table at load)
            weight, scale = self._head_codes_t(4)
            return b.op("MatMul", [h, b.op("DequantizeLinear", [weight, scale], axis=1)])
        head, head_scale = self.table("lm_head", self.meta["head_bits"])
        w = b.op("Cast", [head], to=TensorProto.FLOAT)
        if head_scale is not None:
            w = b.op("Mul", [w, head_scale])
        return b.op("MatMul", [h, b.op("Transpose", [w], perm=[1, 0])])

    def _int8_head(self, h: str) -> str:
        """Logits = (u - 128) @ codes^T (MatMulInteger, exact int32) * s * c: h quantized
        per token to int8 codes u (s = max|h_row| / 127, no clip), the head's int4 / int8
        codes (V, E) with per-row scales c (V,)."""
        b, bits = self.b, self.meta["head_bits"]
        weight, head_scale = self._head_codes_t(bits)
        if bits <= 4:  # INT4 on disk; ORT folds the cast once at load
            weight = b.op("Cast", [weight], to=TensorProto.INT8)
        scale = self._token_scale(h, HEAD_ACT_BITS, None)
        u = self._uint8_codes(h, scale, HEAD_ACT_BITS)
        acc = b.op("MatMulInteger", [u, weight, b.const(1 << (HEAD_ACT_BITS - 1), np.uint8)])
        return b.op("Mul", [b.op("Mul", [b.op("Cast", [acc], to=TensorProto.FLOAT), scale]),
                            head_scale])

    def _head_codes_t(self, bits: int) -> tuple[str, str]:
        """The folded head's codes as an (E, V) int initializer and its per-row scales
        (V,): the layout of a block linear's weight, for the integer and the Q/DQ head."""
        codes = self._codes("lm_head", self.cfg.hidden_size, bits)  # (V, E)
        return (self.b.init("lm_head.codes_t", int_tensor("lm_head.codes_t", codes.T, bits)),
                self.b.init("lm_head.scale", self.np("lm_head.scale").reshape(-1)))

    def summaries(self, logits: str) -> None:
        b = self.b
        probs = b.op("Softmax", [logits], axis=-1)
        top2 = b.op("TopK", [probs, b.const([2], np.int64)], outputs=2, axis=-1)[0]
        p1, p2 = b.op("Split", [top2, b.const([1, 1], np.int64)], outputs=2, axis=-1)
        last = b.const([-1], np.int64)
        logp = b.op("Log", [b.op("Add", [probs, b.const(1e-10)])])
        neg_entropy = b.op("ReduceSum", [b.op("Mul", [probs, logp]), last], keepdims=0)
        b.output(b.op("ArgMax", [logits], axis=-1, keepdims=0), "token", TensorProto.INT64,
                 ["batch", "seq"])
        b.output(b.op("Squeeze", [p1, last]), "prob", TensorProto.FLOAT, ["batch", "seq"])
        b.output(b.op("Squeeze", [b.op("Sub", [p1, p2]), last]), "margin", TensorProto.FLOAT,
                 ["batch", "seq"])
        b.output(neg_entropy, "neg_entropy", TensorProto.FLOAT, ["batch", "seq"])


def chat_affixes(tokenizer) -> tuple[str, str] | None:
    """(prefix, suffix) around the user text in the tokenizer's chat template, if any."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    marker = "\x00PROMPT\x00"
    text = tokenizer.apply_chat_template([{"role": "user", "content": marker}],
                                         add_generation_prompt=True, tokenize=False)
    prefix, _, suffix = text.partition(marker)
    return prefix, suffix


def cache_config(cfg: ModelConfig) -> dict:
    """runtime.json's "cache": the graph's past / present tensors and their shape (None
    where the dimension varies)."""
    return {"input": CACHE_INPUT, "output": CACHE_OUTPUT, "layout": list(PAST_LAYOUT),
            "shape": [cfg.num_layers, 2, None, cfg.num_kv_heads, None, cfg.head_dim]}


def write_export_dir(model: onnx.ModelProto, deploy_dir: Path, meta: dict, out: str | Path, *,
                     variant: str, external_data: bool | None, kind: str,
                     extra: dict | None = None, overwrite: bool = False,
                     data_file: Path | None = None) -> Path:
    """Save a graph with runtime.json, tokenizer files and a manifest, atomically.

    Shared by every exporter; `extra` adds variant-specific runtime.json fields.
    `data_file`: the external data the graph was built with (`GraphBuilder(data_file=)`),
    moved into OUT as DATA_FILE; otherwise large graphs are split here.
    """
    from faircalib_runtime.defaults import family_defaults

    from ..models.families import END_OF_TURN, get_family
    from ..models.loading import load_tokenizer

    size = sum(t.ByteSize() for t in model.graph.initializer)
    # protobuf cannot serialize a message over 2 GiB: a larger graph is checked from its
    # saved file (with its external data) instead of in memory
    in_memory_check = size < PROTOBUF_LIMIT_BYTES and data_file is None
    if in_memory_check:
        onnx.checker.check_model(model)
    cfg = ModelConfig(**meta["model_config"])
    tokenizer = load_tokenizer(deploy_dir, get_family(cfg.family))
    vocab = tokenizer.get_vocab()
    gen_file = deploy_dir / "generation_config.json"
    generation = read_json(gen_file) if gen_file.is_file() else {}
    external = external_data if external_data is not None else size > EXTERNAL_DATA_BYTES
    external = external or data_file is not None
    with atomic_dir(out, kind, inputs=(deploy_dir,), overwrite=overwrite) as tmp:
        if data_file is not None:
            onnx.save_model(model, str(tmp / MODEL_FILE))
            os.replace(data_file, tmp / DATA_FILE)
            (tmp / DATA_FILE).chmod(0o644)
        elif external:
            # small tensors (shapes, axes) stay inline: shape inference must read them
            onnx.save_model(model, str(tmp / MODEL_FILE), save_as_external_data=True,
                            all_tensors_to_one_file=True, location=DATA_FILE,
                            size_threshold=EXTERNAL_MIN_BYTES)
            (tmp / DATA_FILE).chmod(0o644)
        else:
            onnx.save_model(model, str(tmp / MODEL_FILE))
        if not in_memory_check:
            onnx.checker.check_model(str(tmp / MODEL_FILE))
        tokenizer.backend_tokenizer.save(str(tmp / "tokenizer.json"))
        runtime = {
            "format": "faircalib-onnx", "version": 1, "variant": variant,
            "family": cfg.family, "vocab_size": cfg.vocab_size,
            "mask_token_id": cfg.mask_token_id, "pad_token_id": cfg.pad_token_id,
            "eos_token_ids": list(dict.fromkeys(
                [cfg.eos_token_id] + [vocab[t] for t in END_OF_TURN if t in vocab])),
            "special_token_ids": sorted(set(tokenizer.all_special_ids)),
            "logit_shift_applied_in_graph": cfg.logit_shift,
            "decoding": family_defaults(cfg.family, generation),
            "chat": chat_affixes(tokenizer),
            "inputs": ["input_ids", "attention_mask", "position_ids"],
            "cache": cache_config(cfg),
            "outputs": {"logits": "logits", "summary": list(SUMMARY_OUTPUTS)},
            "model_file": MODEL_FILE, "external_data": DATA_FILE if external else None,
            "model_sha256": hashlib.sha256((tmp / MODEL_FILE).read_bytes()).hexdigest(),
            "w_bits": meta["w_bits"], "a_bits": meta["a_bits"],
            "embed_bits": meta["embed_bits"], "head_bits": meta["head_bits"],
            "deploy_config": meta["model_config"],
            "source_artifact_sha256": meta.get("source_artifact_sha256"),
            "deploy_weights_sha256": file_sha256(deploy_dir / "weights.safetensors"),
            **(extra or {}),
        }
        (tmp / RUNTIME_JSON).write_text(json.dumps(runtime, indent=1) + "\n")
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            if (deploy_dir / name).is_file():
                shutil.copy(deploy_dir / name, tmp / name)
        write_manifest(tmp, kind, runtime,
                       inputs={"deploy_weights": deploy_dir / "weights.safetensors"})
    return Path(out)


def export_onnx(deploy_dir: str | Path, out: str | Path,
                options: ExportOptions = ExportOptions(), *, overwrite: bool = False) -> Path:
    """Write OUT/model.onnx (+ external data when large) and OUT/runtime.json."""
    from ..artifacts import check_output

    deploy_dir = Path(deploy_dir)
    check_output(out, "onnx", (deploy_dir,), overwrite)
    meta, tensors = read_deploy(deploy_dir)
    weights = deploy_dir / "weights.safetensors"
    external = options.external_data if options.external_data is not None \
        else weights.stat().st_size > EXTERNAL_DATA_BYTES
    # external: the weights stream to a staging file beside OUT while the graph is built
    # (one weight in memory at a time), which write_export_dir moves into OUT
    out = Path(out)
    data_file = out.parent / f".{out.name}.data-{os.getpid()}" if external else None
    try:
        builder = GraphBuilder(f"faircalib-{meta['family']}-{options.variant}", data_file,
                               location=DATA_FILE)
        level = options.matmulnbits_accuracy_level
        _Writer(builder, meta, tensors, options.variant,
                head_activations=options.head_activations, accuracy_level=level).build()
        opset = dict(opset=FP4_OPSET, ir_version=FP4_IR_VERSION) \
            if options.variant == "w4a4-fp4" else {}
        domains = {MS_DOMAIN: 1} if options.variant == "weight-only" else None
        model = builder.model(domains, **opset)
        session_config = {**ORT_SESSION_CONFIG, **ORT_MEMORY[options.ort_memory]}
        extra = {"ort_session_config": session_config, "ort_memory": options.ort_memory,
                 "head_activations": options.head_activations, "accuracy_level": level,
                 "quant_format": quant_format(meta).value}
        if options.variant == "weight-only":
            extra["a_bits"] = NO_QUANT_BITS
        return write_export_dir(model, deploy_dir, meta, out, variant=options.variant,
                                external_data=options.external_data, kind="onnx",
                                extra=extra, overwrite=overwrite, data_file=data_file)
    finally:
        if data_file is not None:
            data_file.unlink(missing_ok=True)  # moved into OUT on success
