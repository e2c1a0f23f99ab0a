"""The folded W4A4 block arithmetic, shared by every PyTorch evaluation path.

A folded block is a dict of tensors with block-relative names:
  attn_norm.weight, mlp_norm.weight   RMSNorm weights with the qkv / gate-up site scales
                                       folded in (w / c)
  <lin>.codes (out, in) int8, <lin>.scale (out,) float32, <lin>.bias (optional)
                                       W = codes * scale; the o / down site scales are in
                                       the rows of v_proj / up_proj
  FP4 formats: <lin>.codes (out, in) float32 E2M1 values, <lin>.block_scale (out, in / B)
                                       float32 (E4M3 or E8M0 values), <lin>.scale (out,)
                                       the second-level scale (NVFP4's tensor scale; 1 for
                                       MXFP4) with the o / down site scales folded in:
                                       W = (codes * block_scale) * scale
  <site>.p1, <site>.p2                 online Kronecker factors (absent when P = I)
  <site>.act_clip                      activation clip ratio (scalar)
`QuantBlock.folded()` produces it from calibration parameters (float64 math), `fold`
stores it packed, and both the calibrated model's evaluation and the deployed reference
run `block_forward` on it, so they round every weight and activation identically.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models.config import ModelConfig
from ..models.transformer import apply_rope, attention
from .formats import QuantFormat
from .fp4 import expand_blocks
from .quantizer import NO_QUANT_BITS, act_fake_quant

LINEARS = ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj", "mlp.gate_proj",
           "mlp.up_proj", "mlp.down_proj")


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.float()
    return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps))


def dequantized(block: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace codes/scales by float32 weights (codes * scale, FP4: (codes * block_scale)
    * scale), keeping everything else."""
    out = {k: v for k, v in block.items()
           if not k.endswith((".codes", ".scale", ".block_scale"))}
    for lin in LINEARS:
        scale = block[f"{lin}.scale"].float()[:, None]
        codes = block[f"{lin}.codes"].float()
        block_scale = block.get(f"{lin}.block_scale")
        if block_scale is not None:  # FP4: B = in / blocks
            codes = codes * expand_blocks(block_scale.float(),
                                          codes.shape[1] // block_scale.shape[1])
        out[f"{lin}.weight"] = codes * scale
    return out


def _site(w: dict[str, torch.Tensor], site: str, x: torch.Tensor, a_bits: int,
          fmt: QuantFormat = QuantFormat.INT) -> torch.Tensor:
    p1 = w.get(f"{site}.p1")
    if p1 is not None:
        p2 = w[f"{site}.p2"]
        n1, n2 = p1.shape[0], p2.shape[0]
        x = (p1 @ x.reshape(*x.shape[:-1], n1, n2) @ p2.T).reshape(x.shape)
    if a_bits == NO_QUANT_BITS:
        return x
    return act_fake_quant(x, a_bits, w[f"{site}.act_clip"], fmt)


def block_math(cfg: ModelConfig, h, cos, sin, mask, *, norm, site, mm, past=None,
               present=None) -> torch.Tensor:
    """The W4A4 block dataflow, with the three operations supplied by the caller:
    norm(name, x) for the two RMSNorms, site(name, x) for a site's transform and
    activation quantization, mm(linear, x) for a quantized linear. `past` / `present`:
    cached keys and values, as in `models.transformer.attention`."""
    b, s, _ = h.shape
    nh, g, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    x = site("qkv", norm("attn_norm", h))
    q = mm("attn.q_proj", x).view(b, s, nh, d).transpose(1, 2)  # (B, H, S, D)
    k = mm("attn.k_proj", x).view(b, s, g, d).transpose(1, 2)  # (B, G, S, D)
    v = mm("attn.v_proj", x).view(b, s, g, d).transpose(1, 2)
    q, k = apply_rope(q, cos, sin, cfg.rope_fp32), apply_rope(k, cos, sin, cfg.rope_fp32)
    attn = attention(q, k, v, mask, past, present)  # (B, S, nh * d)
    h = h + mm("attn.o_proj", site("o", attn))
    x = site("gate_up", norm("mlp_norm", h))
    gated = F.silu(mm("mlp.gate_proj", x)) * mm("mlp.up_proj", x)
    return h + mm("mlp.down_proj", site("down", gated))


def block_forward(w: dict[str, torch.Tensor], cfg: ModelConfig, a_bits: int, h, cos, sin,
                  mask, past=None, present=None, *,
                  fmt: QuantFormat = QuantFormat.INT) -> torch.Tensor:
    """One folded W4A4 block (weights already dequantized by `dequantized`); `fmt` is the
    activation format."""
    return block_math(
        cfg, h, cos, sin, mask,
        norm=lambda name, x: rms_norm(x, w[f"{name}.weight"], cfg.rms_norm_eps),
        site=lambda name, x: _site(w, name, x, a_bits, fmt),
        mm=lambda lin, x: F.linear(x, w[f"{lin}.weight"], w.get(f"{lin}.bias")),
        past=past, present=present,
    )
