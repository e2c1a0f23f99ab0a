"""Export a folded model to an ONNX graph that ONNX Runtime runs on CPU or CUDA.

Graph (opset 21, IR 10), float32 compute:
  inputs   input_ids, attention_mask (1 = real token), position_ids: int64 (batch, seq)
  outputs  logits (batch, seq, vocab) position-aligned (Dream's shift applied), and the
           per-position decision summaries token (int64), prob, margin, neg_entropy
           (batch, seq), so greedy decoding never fetches full-vocabulary logits.
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
With 16-bit activations the linears are DequantizeLinear(weights) + MatMul. Attention is
bidirectional with the pairwise padding mask of the PyTorch model. Embedding and head
stay fp16 initializers unless folded smaller.

ONNX Runtime's optimizer fuses DequantizeLinear(int4) + MatMul into MatMulNBits and by
default runs it at accuracy level 4, which re-quantizes the activations to int8 per block
and breaks the W4A4 numerics; `runtime.json` therefore carries the session setting
`session.qdq_matmulnbits_accuracy_level = 1` (fp32 accumulation), which the runtime's
backend applies.

`variant="weight-only"` replaces every block matmul by ORT's MatMulNBits (4-bit weights,
per-channel scales repeated over blocks of 32) and skips activation quantization: W4A16
numerics, for speed where int4 activation emulation is slow.

Beside the graph, `runtime.json` tells the torch-free runtime everything it needs:
family, special ids, decoding policy, chat template prefix/suffix, output names.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from ..artifacts import RUNTIME_JSON, atomic_dir, file_sha256, read_json, write_manifest
from ..errors import ConfigError
from ..fold.deployed import read_deploy
from ..fold.pack import unpack_int4
from ..models.config import ModelConfig
from ..quant.quantizer import NO_QUANT_BITS, qmax
from .graph import MS_DOMAIN, GraphBuilder, int_tensor

MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
# w4a4: Q/DQ graph (portable; float compute); w4a4-int: integer GEMMs (exact, fast on CPU);
# weight-only: MatMulNBits, W4A16
VARIANTS = ("w4a4", "w4a4-int", "weight-only")
SUMMARY_OUTPUTS = ("token", "prob", "margin", "neg_entropy")
EXTERNAL_DATA_BYTES = 1 << 30  # initializers above this go to an external-data file
NBITS_BLOCK = 32
ORT_SESSION_CONFIG = {"session.qdq_matmulnbits_accuracy_level": "1"}


@dataclass(frozen=True)
class ExportOptions:
    variant: str = "w4a4"  # see VARIANTS
    external_data: bool | None = None  # None: only when the weights are large

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ConfigError(f"unknown ONNX variant {self.variant!r}; use one of "
                              f"{', '.join(VARIANTS)}")


class _Writer:
    """Emits the nodes of one model into a GraphBuilder."""

    def __init__(self, b: GraphBuilder, meta: dict, t: dict, variant: str):
        self.b, self.meta, self.t, self.variant = b, meta, t, variant
        self.cfg = ModelConfig(**meta["model_config"])
        self.w_bits, self.a_bits = meta["w_bits"], meta["a_bits"]
        if variant != "weight-only" and self.a_bits not in (4, 8, NO_QUANT_BITS):
            raise ConfigError(f"ONNX export supports 4, 8 or 16-bit activations, not {self.a_bits}")
        if variant == "weight-only" and self.w_bits != 4:
            raise ConfigError("the weight-only variant (MatMulNBits) needs 4-bit weights")
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
        p1 = self.t.get(f"blocks.{i}.{site}.p1")
        if p1 is not None:
            p2 = self.np(f"blocks.{i}.{site}.p2")
            n1, n2 = p1.shape[0], p2.shape[0]
            xs = b.op("Reshape", [x, b.const([0, 0, n1, n2], np.int64)])  # (B, S, n1, n2)
            xs = b.op("MatMul", [b.init(f"blocks.{i}.{site}.p1", p1.numpy()), xs])
            xs = b.op("MatMul", [xs, b.init(f"blocks.{i}.{site}.p2_t", p2.T.copy())])
            x = b.op("Reshape", [xs, b.const([0, 0, n1 * n2], np.int64)])
        if self.variant == "weight-only" or self.a_bits == NO_QUANT_BITS:
            return x
        clip = float(self.np(f"blocks.{i}.{site}.act_clip"))
        absmax = b.op("ReduceMax", [b.op("Abs", [x]), b.const([-1], np.int64)], keepdims=1)
        # same op order as the PyTorch reference: clamp(clip * absmax, eps) / qmax
        scale = b.op("Div", [b.op("Max", [b.op("Mul", [absmax, b.const(clip)]),
                                          b.const(1e-8)]), b.const(float(qmax(self.a_bits)))])
        if self.variant == "w4a4":  # Q/DQ: int4 codes, dequantized before a float MatMul
            zp = self._zero_point(TensorProto.INT4 if self.a_bits == 4 else TensorProto.INT8)
            q = b.op("QuantizeLinear", [b.op("Div", [x, scale]), b.const(1.0), zp])
            return b.op("Mul", [b.op("DequantizeLinear", [q, b.const(1.0), zp]), scale])
        # w4a4-int: codes as uint8 offset by the zero point z = 2^(a-1),
        # u = clamp(round_half_even(x / s), -z, z - 1) + z
        z = 1 << (self.a_bits - 1)
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
        return self.b.op("MatMulNBits", [x, self.b.init(f"{prefix}.nbits", packed),
                                         self.b.init(f"{prefix}.nbits_scale", scales)],
                         domain=MS_DOMAIN, K=k, N=n, bits=4, block_size=NBITS_BLOCK)

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

    def attention_bias(self, mask: str) -> str:
        """(B, 1, S, S) additive mask: 0 where both tokens are real (or on the diagonal)."""
        b = self.b
        m = b.op("Cast", [mask], to=TensorProto.BOOL)
        pair = b.op("And", [b.op("Unsqueeze", [m, b.const([2], np.int64)]),
                            b.op("Unsqueeze", [m, b.const([1], np.int64)])])
        seq = b.op("Gather", [b.op("Shape", [mask]), b.const(1, np.int64)], axis=0)
        r = b.op("Range", [b.const(0, np.int64), seq, b.const(1, np.int64)])
        eye = b.op("Equal", [b.op("Unsqueeze", [r, b.const([1], np.int64)]),
                             b.op("Unsqueeze", [r, b.const([0], np.int64)])])
        allowed = b.op("Or", [pair, eye])
        bias = b.op("Where", [allowed, b.const(0.0), b.const(-np.inf)])
        return b.op("Unsqueeze", [bias, b.const([1], np.int64)])

    def heads(self, x: str, n: int) -> str:
        b = self.b
        x = b.op("Reshape", [x, b.const([0, 0, n, self.cfg.head_dim], np.int64)])
        return b.op("Transpose", [x], perm=[0, 2, 1, 3])  # (B, n, S, D)

    def block(self, i: int, h: str, cos: str, sin: str, bias: str) -> str:
        b, cfg = self.b, self.cfg
        nh, g, e, f = cfg.num_heads, cfg.num_kv_heads, cfg.hidden_size, cfg.intermediate_size
        x = self.site(i, "qkv", self.rms_norm(h, f"blocks.{i}.attn_norm.weight"))
        q = self.rotate(self.heads(self.linear(i, "attn.q_proj", x, e), nh), cos, sin)
        k = self.rotate(self.heads(self.linear(i, "attn.k_proj", x, e), g), cos, sin)
        v = self.heads(self.linear(i, "attn.v_proj", x, e), g)
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
        return b.op("Add", [h, self.linear(i, "mlp.down_proj", self.site(i, "down", gated), f)])

    def build(self) -> None:
        b, cfg = self.b, self.cfg
        ids = b.input("input_ids", TensorProto.INT64, ["batch", "seq"])
        mask = b.input("attention_mask", TensorProto.INT64, ["batch", "seq"])
        pos = b.input("position_ids", TensorProto.INT64, ["batch", "seq"])
        table, scale = self.table("embed", self.meta["embed_bits"])
        h = b.op("Cast", [b.op("Gather", [table, ids], axis=0)], to=TensorProto.FLOAT)
        if scale is not None:
            h = b.op("Mul", [h, b.op("Gather", [scale, ids], axis=0)])
        cos, sin = self.rope(pos)
        bias = self.attention_bias(mask)
        for i in range(cfg.num_layers):
            h = self.block(i, h, cos, sin, bias)
        logits = self.head_logits(self.rms_norm(h, "norm.weight"))
        if cfg.logit_shift:  # Dream: position i reads the prediction made at i - 1
            first = b.op("Slice", [logits, b.const([0], np.int64), b.const([1], np.int64),
                                   b.const([1], np.int64)])
            rest = b.op("Slice", [logits, b.const([0], np.int64), b.const([-1], np.int64),
                                  b.const([1], np.int64)])
            logits = b.op("Concat", [first, rest], axis=1)
        self.summaries(logits)
        b.output(logits, "logits", TensorProto.FLOAT, ["batch", "seq", cfg.vocab_size])

    def head_logits(self, h: str) -> str:
        """Logits (B, S, V) float32 from the final normed hidden state."""
        b = self.b
        head, head_scale = self.table("lm_head", self.meta["head_bits"])
        w = b.op("Cast", [head], to=TensorProto.FLOAT)
        if head_scale is not None:
            w = b.op("Mul", [w, head_scale])
        return b.op("MatMul", [h, b.op("Transpose", [w], perm=[1, 0])])

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


def write_export_dir(model: onnx.ModelProto, deploy_dir: Path, meta: dict, out: str | Path, *,
                     variant: str, external_data: bool | None, kind: str,
                     extra: dict | None = None, overwrite: bool = False) -> Path:
    """Save a graph with runtime.json, tokenizer files and a manifest, atomically.

    Shared by every exporter; `extra` adds variant-specific runtime.json fields.
    """
    from faircalib_runtime.defaults import family_defaults

    from ..models.families import END_OF_TURN, get_family
    from ..models.loading import load_tokenizer

    onnx.checker.check_model(model)
    cfg = ModelConfig(**meta["model_config"])
    tokenizer = load_tokenizer(deploy_dir, get_family(cfg.family))
    vocab = tokenizer.get_vocab()
    gen_file = deploy_dir / "generation_config.json"
    generation = read_json(gen_file) if gen_file.is_file() else {}
    size = sum(t.ByteSize() for t in model.graph.initializer)
    external = external_data if external_data is not None else size > EXTERNAL_DATA_BYTES
    with atomic_dir(out, kind, inputs=(deploy_dir,), overwrite=overwrite) as tmp:
        if external:
            # small tensors (shapes, axes) stay inline: shape inference must read them
            onnx.save_model(model, str(tmp / MODEL_FILE), save_as_external_data=True,
                            all_tensors_to_one_file=True, location=DATA_FILE,
                            size_threshold=1024)
            (tmp / DATA_FILE).chmod(0o644)
        else:
            onnx.save_model(model, str(tmp / MODEL_FILE))
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
    builder = GraphBuilder(f"faircalib-{meta['family']}-{options.variant}")
    _Writer(builder, meta, tensors, options.variant).build()
    model = builder.model({MS_DOMAIN: 1} if options.variant == "weight-only" else None)
    extra = {"ort_session_config": ORT_SESSION_CONFIG}
    if options.variant == "weight-only":
        extra["a_bits"] = NO_QUANT_BITS
    return write_export_dir(model, deploy_dir, meta, out, variant=options.variant,
                            external_data=options.external_data, kind="onnx", extra=extra,
                            overwrite=overwrite)
