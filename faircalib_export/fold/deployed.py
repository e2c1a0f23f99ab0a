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

from functools import partial
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from ..artifacts import DEPLOY_JSON, read_json
from ..errors import CheckpointError
from ..models.config import ModelConfig
from ..models.families import LINEAR_SITE
from ..models.transformer import attention_bias, cached_blocks, rope_cos_sin
from ..quant.folded import block_forward, dequantized, rms_norm
from ..quant.layout import transform_sites
from .pack import unpack_int4

WEIGHTS = "weights.safetensors"
FORMAT = "faircalib-w4a4"


def read_deploy(directory: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    directory = Path(directory)
    meta_file = directory / DEPLOY_JSON
    if not meta_file.is_file():
        raise CheckpointError(f"{directory} is not a folded model (no {DEPLOY_JSON}); "
                              f"run `faircalib-export fold` first")
    meta = read_json(meta_file)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_file}: unknown format {meta.get('format')!r}")
    try:
        tensors = load_file(str(directory / WEIGHTS))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{directory / WEIGHTS} is missing, corrupt or truncated "
                              f"({err})") from None
    _check_packing(meta, tensors, meta_file)
    return meta, tensors


def _check_packing(meta: dict, tensors: dict[str, torch.Tensor], meta_file: Path) -> None:
    """deploy.json's weight bit width must be the one the stored codes are packed for."""
    try:
        cfg = ModelConfig(**meta["model_config"])
        bits = meta["w_bits"]
    except (KeyError, TypeError) as err:
        raise CheckpointError(f"{meta_file}: incomplete ({err})") from None
    for key, value in tensors.items():  # one pass: a NaN scale would decode as garbage
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise CheckpointError(f"{meta_file.parent / WEIGHTS}: {key} holds NaN or Inf")
    for name, table_bits in (("embed", meta.get("embed_bits")),
                             ("lm_head", meta.get("head_bits"))):
        stored = "weight" if f"{name}.weight" in tensors else \
            "qweight" if f"{name}.qweight" in tensors else None
        if stored is None or (table_bits == 16) != (stored == "weight"):
            raise CheckpointError(f"{meta_file}: {name} bits {table_bits} disagree with the "
                                  f"stored weights ({name}.{stored or 'missing'})")
    width = {lin: site.dim for site in transform_sites(cfg) for lin in site.linears}
    for i in range(cfg.num_layers):
        for lin in LINEAR_SITE:
            q = tensors.get(f"blocks.{i}.{lin}.qweight")
            if q is None:
                raise CheckpointError(f"{meta_file.parent}: weights lack blocks.{i}.{lin}")
            cols, dtype = ((width[lin] + 1) // 2, torch.uint8) if bits <= 4 else \
                (width[lin], torch.int8)
            if q.ndim != 2 or q.shape[1] != cols or q.dtype != dtype:
                raise CheckpointError(
                    f"{meta_file}: w_bits {bits} disagrees with the stored weights "
                    f"(blocks.{i}.{lin}.qweight is {q.dtype} {tuple(q.shape)})")


def codes_of(tensors: dict[str, torch.Tensor], prefix: str, in_features: int,
             bits: int) -> torch.Tensor:
    """(out, in) int8 codes from the stored (packed for <= 4 bits) qweight."""
    q = tensors[f"{prefix}.qweight"]
    return torch.from_numpy(unpack_int4(q.numpy(), in_features)) if bits <= 4 else q


class DeployedModel(nn.Module):
    """Runs a folded model in float32 exactly as the exported graph does."""

    def __init__(self, meta: dict, tensors: dict[str, torch.Tensor]):
        super().__init__()
        self.meta = meta
        self.cfg = cfg = ModelConfig(**meta["model_config"])
        self.w_bits, self.a_bits = meta["w_bits"], meta["a_bits"]
        self.t = tensors
        in_features = {"attn.o_proj": cfg.hidden_size, "mlp.down_proj": cfg.intermediate_size}
        self.blocks = []
        for i in range(cfg.num_layers):
            prefix = f"blocks.{i}."
            block = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            for lin in LINEAR_SITE:
                block[f"{lin}.codes"] = codes_of(tensors, prefix + lin,
                                                 in_features.get(lin, cfg.hidden_size),
                                                 self.w_bits)
                del block[f"{lin}.qweight"]
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
        blocks = [partial(block_forward, block, cfg, self.a_bits) for block in self.blocks]
        h, present = cached_blocks(blocks, h, cos, sin, mask, past_key_values, return_present)
        logits = rms_norm(h, self.t["norm.weight"], cfg.rms_norm_eps) @ self.lm_head.T
        if align and cfg.logit_shift:
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        return (logits, present) if return_present else logits


def load_deployed(directory: str | Path) -> DeployedModel:
    meta, tensors = read_deploy(directory)
    return DeployedModel(meta, tensors)


def site_names(cfg: ModelConfig) -> list[str]:
    return [s.name for s in transform_sites(cfg)]
