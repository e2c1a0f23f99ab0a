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
  blocks.i.<lin>.bias    q/k/v biases where the family has them (v divided by c_o)
  blocks.i.<site>.p1/p2  online Kronecker factors (fp32), absent when P = I
  blocks.i.<site>.act_clip  scalar activation clip ratio

Online per site: x' = (P1 ⊗ P2) x, per-token int quantization of x' with scale
act_clip * max|x'_row| / qmax, then x'_q @ W^T. The o and down sites' scales live in the
rows of v_proj and up_proj. `DeployedModel` computes exactly this with torch; the ONNX
graph computes the same thing node by node.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from ..errors import CheckpointError
from ..models.config import ModelConfig
from ..models.transformer import apply_rope, attention_bias, rope_cos_sin
from ..quant.layout import transform_sites
from ..quant.qblock import LINEAR_SITE
from ..quant.quantizer import NO_QUANT_BITS, fake_quant, row_scale
from .pack import unpack_int4

DEPLOY_JSON = "deploy.json"
WEIGHTS = "weights.safetensors"
FORMAT = "faircalib-w4a4"


def read_deploy(directory: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    directory = Path(directory)
    meta_file = directory / DEPLOY_JSON
    if not meta_file.is_file():
        raise CheckpointError(f"{directory} is not a folded model (no {DEPLOY_JSON}); "
                              f"run `faircalib-export fold` first")
    meta = json.loads(meta_file.read_text())
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_file}: unknown format {meta.get('format')!r}")
    return meta, load_file(str(directory / WEIGHTS))


def dequantize(tensors: dict[str, torch.Tensor], prefix: str, in_features: int,
               bits: int) -> torch.Tensor:
    """(out, in) float32 weight from stored codes and per-row scales."""
    q = tensors[f"{prefix}.qweight"]
    if bits <= 4:
        q = torch.from_numpy(unpack_int4(q.numpy(), in_features))
    return q.float() * tensors[f"{prefix}.scale"].float()[:, None]


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.float()
    return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps))


class DeployedModel(nn.Module):
    """Runs a folded model in float32 exactly as the exported graph does."""

    def __init__(self, meta: dict, tensors: dict[str, torch.Tensor]):
        super().__init__()
        self.meta = meta
        self.cfg = cfg = ModelConfig(**meta["model_config"])
        self.w_bits, self.a_bits = meta["w_bits"], meta["a_bits"]
        self.t = {k: v for k, v in tensors.items()}
        self.weights: dict[str, torch.Tensor] = {}
        in_features = {"attn.o_proj": cfg.hidden_size, "mlp.down_proj": cfg.intermediate_size}
        for i in range(cfg.num_layers):
            for lin in LINEAR_SITE:
                prefix = f"blocks.{i}.{lin}"
                self.weights[prefix] = dequantize(
                    tensors, prefix, in_features.get(lin, cfg.hidden_size), self.w_bits)
        self.embed = self._table("embed", meta["embed_bits"])
        self.lm_head = self._table("lm_head", meta["head_bits"])

    def _table(self, name: str, bits: int) -> torch.Tensor:
        if bits == 16:
            return self.t[f"{name}.weight"].float()
        return dequantize(self.t, name, self.cfg.hidden_size, bits)

    def _site(self, i: int, site: str, x: torch.Tensor) -> torch.Tensor:
        p1 = self.t.get(f"blocks.{i}.{site}.p1")
        if p1 is not None:
            p2 = self.t[f"blocks.{i}.{site}.p2"]
            n1, n2 = p1.shape[0], p2.shape[0]
            x = (p1 @ x.reshape(*x.shape[:-1], n1, n2) @ p2.T).reshape(x.shape)
        if self.a_bits == NO_QUANT_BITS:
            return x
        clip = self.t[f"blocks.{i}.{site}.act_clip"]
        return fake_quant(x, row_scale(x, self.a_bits, clip), self.a_bits)

    def _linear(self, i: int, lin: str, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weights[f"blocks.{i}.{lin}"], self.t.get(f"blocks.{i}.{lin}.bias"))

    @torch.no_grad()
    def forward(self, input_ids, attention_mask=None, position_ids=None):
        cfg = self.cfg
        b, s = input_ids.shape
        nh, g, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        if position_ids is None:
            position_ids = torch.arange(s).expand(b, s)
        cos, sin = rope_cos_sin(position_ids, d, cfg.rope_theta)
        mask = attention_bias(attention_mask, torch.float32)
        h = self.embed[input_ids]
        for i in range(cfg.num_layers):
            x = self._site(i, "qkv", rms_norm(h, self.t[f"blocks.{i}.attn_norm.weight"],
                                              cfg.rms_norm_eps))
            q = self._linear(i, "attn.q_proj", x).view(b, s, nh, d).transpose(1, 2)
            k = self._linear(i, "attn.k_proj", x).view(b, s, g, d).transpose(1, 2)
            v = self._linear(i, "attn.v_proj", x).view(b, s, g, d).transpose(1, 2)
            q, k = apply_rope(q, cos, sin, cfg.rope_fp32), apply_rope(k, cos, sin, cfg.rope_fp32)
            if g != nh:
                k = k.repeat_interleave(nh // g, dim=1)
                v = v.repeat_interleave(nh // g, dim=1)
            attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            attn = attn.transpose(1, 2).reshape(b, s, nh * d)
            h = h + self._linear(i, "attn.o_proj", self._site(i, "o", attn))
            x = self._site(i, "gate_up", rms_norm(h, self.t[f"blocks.{i}.mlp_norm.weight"],
                                                  cfg.rms_norm_eps))
            gated = F.silu(self._linear(i, "mlp.gate_proj", x)) * self._linear(i, "mlp.up_proj", x)
            h = h + self._linear(i, "mlp.down_proj", self._site(i, "down", gated))
        logits = rms_norm(h, self.t["norm.weight"], cfg.rms_norm_eps) @ self.lm_head.T
        if cfg.logit_shift:
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        return logits


def load_deployed(directory: str | Path) -> DeployedModel:
    meta, tensors = read_deploy(directory)
    return DeployedModel(meta, tensors)


def site_names(cfg: ModelConfig) -> list[str]:
    return [s.name for s in transform_sites(cfg)]
