"""The folded deployment format and its PyTorch reference implementation.

    DEPLOY/
      deploy.json          format, model config, bit widths, head/embedding formats,
                           decoding defaults, special tokens
      weights.safetensors  tensors below
      tokenizer files, manifest.json

Tensors (canonical names; i = block, lin in q/k/v/o/gate/up/down_proj):
  embed.weight           (V, E) fp16, or embed.qweight int8 (V, E) + embed.scale (V,)
  norm.weight            (E,) fp32
  lm_head.weight         (V, E) fp16, or lm_head.qweight + lm_head.scale (weight-only)
  blocks.i.attn_norm.weight, blocks.i.mlp_norm.weight
                         fp32, with the qkv / gate-up site scales c folded in (w / c)
  blocks.i.<lin>.qweight (out, ceil(in / 2)) uint8, int4 codes packed (pack.py), or
                         (out, in) int8 for 5-8 bits; W = codes * scale[:, None]
  blocks.i.<lin>.scale   (out,) fp32 per-output-channel scale
  FP4 (deploy.json quant_format nvfp4 / mxfp4; absent: int):
  blocks.i.<lin>.qweight (out, in / 2) uint8, E2M1 nibbles (pack_fp4)
  blocks.i.<lin>.block_scale  (out, in / B) uint8: E4M3 bytes (nvfp4, B = 16) or E8M0
                         biased exponents (mxfp4, B = 32)
  blocks.i.<lin>.scale   (out,) fp32 second-level scale (nvfp4: the tensor scale; mxfp4:
                         1), v / up rows divided by the o / down site scales;
                         W = (e2m1 * block_scale) * scale[:, None]
  blocks.i.<lin>.bias    q/k/v biases where the family has them (v divided by c_o)
  blocks.i.<site>.p1/p2  online Kronecker factors (fp32), absent when P = I
  blocks.i.<site>.act_clip  scalar activation clip ratio

Online per site: x' = (P1 ⊗ P2) x, per-token int quantization of x' with scale
act_clip * max|x'_row| / qmax, then x'_q @ W^T. The o and down sites' scales live in the
rows of v_proj and up_proj. FP4: x' quantized per token and block (quant/formats.py).
`DeployedModel` computes exactly this with torch; the ONNX graph computes the same thing
node by node.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
from torch import nn

from ..artifacts import DEPLOY_JSON, read_json
from ..errors import CheckpointError
from ..models.config import ModelConfig
from ..models.families import LINEAR_SITE
from ..models.loading import TensorFile, all_finite
from ..models.transformer import attention_bias, cached_blocks, rope_cos_sin
from ..quant.folded import block_forward, dequantized, rms_norm
from ..quant.formats import QuantFormat, decode_block_scales
from ..quant.layout import transform_sites
from .pack import unpack_fp4, unpack_int4

WEIGHTS = "weights.safetensors"
FORMAT = "faircalib-w4a4"


def quant_format(meta: dict) -> QuantFormat:
    """The blocks' format (deploy dirs folded before FP4 have no field: int)."""
    try:
        return QuantFormat(meta.get("quant_format", QuantFormat.INT.value))
    except ValueError:
        raise CheckpointError(f"unknown quant_format {meta.get('quant_format')!r} in "
                              f"{DEPLOY_JSON}") from None


def fp4_meta(fmt: QuantFormat, quantized_activations: bool) -> dict:
    """deploy.json's format entries (fold writes them)."""
    if not fmt.is_fp4:
        return {"quant_format": fmt.value}
    scale = ("E4M3 bytes per 16 inputs, fp32 tensor scale per row" if fmt is
             QuantFormat.NVFP4 else "E8M0 biased exponents per 32 inputs")
    act = (f"per token and block of {fmt.block_size}, {fmt.value} (quant/formats.py), "
           f"clip act_clip on the amax" if quantized_activations else "none")
    return {"quant_format": fmt.value, "block_size": fmt.block_size,
            "nibble_order": "element 2j in bits 0-3, element 2j+1 in bits 4-7 (E2M1: bit 3 "
                            "sign, bits 0-2 magnitude code)",
            "block_scales": scale, "activation_quantization": act}


def read_deploy(directory: str | Path) -> tuple[dict, TensorFile]:
    directory = Path(directory)
    meta_file = directory / DEPLOY_JSON
    if not meta_file.is_file():
        raise CheckpointError(f"{directory} is not a folded model (no {DEPLOY_JSON}); "
                              f"run `faircalib-export fold` first")
    meta = read_json(meta_file)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_file}: unknown format {meta.get('format')!r}")
    if not (directory / WEIGHTS).is_file():
        raise CheckpointError(f"{directory / WEIGHTS} is missing")
    # read tensor by tensor on access (export walks them once); load_deployed copies all
    tensors = TensorFile(directory / WEIGHTS)
    _check_packing(meta, tensors, meta_file)
    return meta, tensors


def _check_packing(meta: dict, tensors: dict[str, torch.Tensor], meta_file: Path) -> None:
    """deploy.json's weight bit width must be the one the stored codes are packed for."""
    try:
        cfg = ModelConfig(**meta["model_config"])
        bits = meta["w_bits"]
    except (KeyError, TypeError) as err:
        raise CheckpointError(f"{meta_file}: incomplete ({err})") from None
    for key in tensors:  # one pass: a NaN scale would decode as garbage
        if not all_finite(tensors[key]):  # (one tensor read at a time)
            raise CheckpointError(f"{meta_file.parent / WEIGHTS}: {key} holds NaN or Inf")
    for name, table_bits in (("embed", meta.get("embed_bits")),
                             ("lm_head", meta.get("head_bits"))):
        stored = "weight" if f"{name}.weight" in tensors else \
            "qweight" if f"{name}.qweight" in tensors else None
        if stored is None or (table_bits == 16) != (stored == "weight"):
            raise CheckpointError(f"{meta_file}: {name} bits {table_bits} disagree with the "
                                  f"stored weights ({name}.{stored or 'missing'})")
    width = {lin: site.dim for site in transform_sites(cfg) for lin in site.linears}
    fmt = quant_format(meta)
    for i in range(cfg.num_layers):
        for lin in LINEAR_SITE:
            q = tensors.get(f"blocks.{i}.{lin}.qweight")
            if q is None:
                raise CheckpointError(f"{meta_file.parent}: weights lack blocks.{i}.{lin}")
            if fmt.is_fp4:
                s = tensors.get(f"blocks.{i}.{lin}.block_scale")
                if s is None or s.dtype != torch.uint8 or tuple(s.shape) != (
                        q.shape[0], width[lin] // fmt.block_size):
                    raise CheckpointError(
                        f"{meta_file}: {fmt.value} needs blocks.{i}.{lin}.block_scale uint8 "
                        f"({q.shape[0]}, {width[lin] // fmt.block_size}), not "
                        f"{None if s is None else (s.dtype, tuple(s.shape))}")
            cols, dtype = ((width[lin] + 1) // 2, torch.uint8) if bits <= 4 else \
                (width[lin], torch.int8)
            if q.ndim != 2 or q.shape[1] != cols or q.dtype != dtype:
                raise CheckpointError(
                    f"{meta_file}: w_bits {bits} disagrees with the stored weights "
                    f"(blocks.{i}.{lin}.qweight is {q.dtype} {tuple(q.shape)})")


def codes_of(tensors: dict[str, torch.Tensor], prefix: str, in_features: int,
             bits: int, fmt: QuantFormat = QuantFormat.INT) -> torch.Tensor:
    """(out, in) int8 codes from the stored (packed for <= 4 bits) qweight; FP4: float32
    E2M1 values."""
    q = tensors[f"{prefix}.qweight"]
    if fmt.is_fp4:
        return torch.from_numpy(unpack_fp4(q.numpy(), in_features))
    return torch.from_numpy(unpack_int4(q.numpy(), in_features)) if bits <= 4 else q


def block_scales_of(tensors: dict[str, torch.Tensor], prefix: str,
                    fmt: QuantFormat) -> torch.Tensor:
    """(out, in / B) float32 block scales from their stored bytes."""
    return torch.from_numpy(decode_block_scales(fmt, tensors[f"{prefix}.block_scale"].numpy()))


class DeployedModel(nn.Module):
    """Runs a folded model in float32 exactly as the exported graph does."""

    def __init__(self, meta: dict, tensors: dict[str, torch.Tensor]):
        super().__init__()
        self.meta = meta
        self.cfg = cfg = ModelConfig(**meta["model_config"])
        self.w_bits, self.a_bits = meta["w_bits"], meta["a_bits"]
        self.format = quant_format(meta)
        self.t = tensors
        in_features = {"attn.o_proj": cfg.hidden_size, "mlp.down_proj": cfg.intermediate_size}
        self.blocks = []
        for i in range(cfg.num_layers):
            prefix = f"blocks.{i}."
            block = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            for lin in LINEAR_SITE:
                block[f"{lin}.codes"] = codes_of(tensors, prefix + lin,
                                                 in_features.get(lin, cfg.hidden_size),
                                                 self.w_bits, self.format)
                del block[f"{lin}.qweight"]
                if self.format.is_fp4:
                    block[f"{lin}.block_scale"] = block_scales_of(tensors, prefix + lin,
                                                                  self.format)
            self.blocks.append(dequantized(block))
        self.embed = self._table("embed", meta["embed_bits"])
        self.lm_head = self._table("lm_head", meta["head_bits"])

    def _table(self, name: str, bits: int) -> torch.Tensor:
        if bits == 16:
            return self.t[f"{name}.weight"].float()
        codes = codes_of(self.t, name, self.cfg.hidden_size, bits)
        return codes.float() * self.t[f"{name}.scale"].float()[:, None]

    @torch.no_grad()
    def forward(self, input_ids, attention_mask=None, position_ids=None, align=True,
                past_key_values=None, return_present=False):
        """Aligned logits; the cache arguments as in `models.transformer.DiffusionLM`."""
        cfg = self.cfg
        b, s = input_ids.shape
        if position_ids is None:
            position_ids = torch.arange(s, device=input_ids.device).expand(b, s)
        cos, sin = rope_cos_sin(position_ids, cfg.head_dim, cfg.rope_theta)
        mask = attention_bias(attention_mask, torch.float32, s)
        h = self.embed[input_ids]
        blocks = [partial(block_forward, block, cfg, self.a_bits, fmt=self.format)
                  for block in self.blocks]
        h, present = cached_blocks(blocks, h, cos, sin, mask, past_key_values, return_present)
        logits = rms_norm(h, self.t["norm.weight"], cfg.rms_norm_eps) @ self.lm_head.T
        if align and cfg.logit_shift:
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        return (logits, present) if return_present else logits


def load_deployed(directory: str | Path) -> DeployedModel:
    meta, tensors = read_deploy(directory)
    return DeployedModel(meta, dict(tensors))


def site_names(cfg: ModelConfig) -> list[str]:
    return [s.name for s in transform_sites(cfg)]
