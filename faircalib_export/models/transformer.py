"""One bidirectional pre-norm transformer serving LLaDA and Dream.

Both families are RMSNorm -> attention -> RMSNorm -> SwiGLU blocks with half-split RoPE
and no causal mask; their differences (q/k/v bias, grouped-query attention, fp32 RoPE,
logit shift) come from `ModelConfig`. Parameter names are canonical; the checkpoint key
layout of each family lives in `families.py`.

Shapes: B batch, S sequence, H heads, G kv heads, D head dim, E hidden, V vocab.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalize in fp32 whatever the storage dtype, as both reference models do.
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rope_cos_sin(position_ids: torch.Tensor, head_dim: int, theta: float):
    """fp32 cos/sin tables of shape (B, S, D) for half-split rotation."""
    exponents = torch.arange(0, head_dim, 2, device=position_ids.device).float() / head_dim
    inv_freq = 1.0 / (theta ** exponents)  # (D/2,)
    freqs = position_ids[..., None].float() * inv_freq  # (B, S, D/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (B, S, D)
    return emb.cos(), emb.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, fp32: bool) -> torch.Tensor:
    """Rotate x (B, H, S, D); cos/sin are (B, S, D) fp32."""
    cos, sin = cos[:, None], sin[:, None]  # broadcast over heads
    if fp32:
        xf = x.float()
        return (xf * cos + _rotate_half(xf) * sin).to(x.dtype)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return x * cos + _rotate_half(x) * sin


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        e, kv = cfg.hidden_size, cfg.kv_dim
        self.q_proj = nn.Linear(e, e, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(e, kv, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(e, kv, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(e, e, bias=False)

    def forward(self, x, cos, sin, attn_mask, past=None, present=None):
        cfg = self.cfg
        b, s, _ = x.shape
        h, g, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        q = self.q_proj(x).view(b, s, h, d).transpose(1, 2)  # (B, H, S, D)
        k = self.k_proj(x).view(b, s, g, d).transpose(1, 2)  # (B, G, S, D)
        v = self.v_proj(x).view(b, s, g, d).transpose(1, 2)
        q = apply_rope(q, cos, sin, cfg.rope_fp32)
        k = apply_rope(k, cos, sin, cfg.rope_fp32)
        return self.o_proj(attention(q, k, v, attn_mask, past, present))


def attention(q, k, v, attn_mask, past=None, present=None) -> torch.Tensor:
    """The attention core of every PyTorch block (FP, calibrated, folded): (B, S, H * D).

    q (B, H, S, D), k / v (B, G, S, D) with RoPE applied. `past` (2, B, G, K, D) holds the
    keys and values of K earlier positions (a KV cache, any float dtype), attended before
    the queries' own; `attn_mask` is then (B, 1, S, K + S). `present`, a list, receives
    this call's (2, B, G, S, D) keys and values in float32.
    """
    if present is not None:
        present.append(torch.stack((k, v)).float())
    if past is not None:
        k = torch.cat((past[0].to(k.dtype), k), dim=2)
        v = torch.cat((past[1].to(v.dtype), v), dim=2)
    b, h, s, d = q.shape
    if k.shape[1] != h:  # grouped-query attention: each kv head serves h // g query heads
        k = k.repeat_interleave(h // k.shape[1], dim=1)
        v = v.repeat_interleave(h // v.shape[1], dim=1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=False)
    return out.transpose(1, 2).reshape(b, s, h * d)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        e, f = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = nn.Linear(e, f, bias=False)  # SiLU branch (LLaDA: ff_proj)
        self.up_proj = nn.Linear(e, f, bias=False)
        self.down_proj = nn.Linear(f, e, bias=False)  # (LLaDA: block ff_out)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, h, cos, sin, attn_mask, past=None, present=None):
        h = h + self.attn(self.attn_norm(h), cos, sin, attn_mask, past, present)
        return h + self.mlp(self.mlp_norm(h))


def attention_bias(attention_mask: torch.Tensor | None, dtype: torch.dtype,
                   num_queries: int | None = None):
    """Turn a padding mask into the boolean SDPA mask (B, 1, S, S), or None.

    `attention_mask` is (B, S) with 1 for real tokens (pairwise mask built as in Dream:
    a real token attends to real tokens only) or an explicit (B, S, S) pairwise mask. Pad
    rows are allowed to attend to themselves so that no row is fully masked: that keeps
    them finite (a NaN there would leak into real rows through the values), and real
    rows never see them.

    Cached calls: the keys are [K past positions, Q queries] and the mask is (B, K + Q)
    (the queries' rows are its last `num_queries` columns) or (B, Q, K + Q); the result
    is (B, 1, Q, K + Q) with the same rule, query q's own key being column K + q.
    """
    if attention_mask is None:
        return None
    m = attention_mask.bool()
    if m.dim() == 2:
        queries = m[:, m.shape[1] - (m.shape[1] if num_queries is None else num_queries):]
        m = queries[:, :, None] & m[:, None, :]  # (B, Q, K + Q)
    q, k = m.shape[-2:]
    keys = torch.arange(k, device=m.device)
    eye = keys[None, :] == keys[k - q:, None]  # (Q, K + Q): each query's own key
    return (m | eye)[:, None]  # (B, 1, Q, K + Q)


class DiffusionLM(nn.Module):
    """Bidirectional masked-diffusion LM; `forward` returns position-aligned logits."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed.weight

    def rope(self, position_ids: torch.Tensor):
        return rope_cos_sin(position_ids, self.cfg.head_dim, self.cfg.rope_theta)

    @staticmethod
    def default_position_ids(input_ids: torch.Tensor) -> torch.Tensor:
        b, s = input_ids.shape
        return torch.arange(s, device=input_ids.device).expand(b, s)

    def head(self, h: torch.Tensor, align: bool = True) -> torch.Tensor:
        """Final norm + LM head; with `align`, apply the family's logit shift."""
        logits = self.lm_head(self.norm(h))
        if align and self.cfg.logit_shift:
            # Dream: the prediction for position i is read at position i - 1.
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        return logits

    def forward(
        self,
        input_ids: torch.Tensor,  # (B, S) int64
        attention_mask: torch.Tensor | None = None,  # (B, S) or (B, S, S); cached (B, K + S)
        position_ids: torch.Tensor | None = None,  # (B, S)
        align: bool = True,
        past_key_values: torch.Tensor | None = None,  # (L, 2, B, G, K, D)
        return_present: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:  # (B, S, V) [, (L, 2, B, G, S, D)]
        """Logits of the S query positions; with `past_key_values` they also attend to K
        cached positions (see `cached_blocks`), with `return_present` their own keys and
        values come back too, float32."""
        if position_ids is None:
            position_ids = self.default_position_ids(input_ids)
        h = self.embed(input_ids)
        cos, sin = self.rope(position_ids)
        mask = attention_bias(attention_mask, h.dtype, input_ids.shape[1])
        h, present = cached_blocks(self.blocks, h, cos, sin, mask, past_key_values,
                                   return_present)
        logits = self.head(h, align)
        return (logits, present) if return_present else logits

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def cached_blocks(blocks, h, cos, sin, mask, past=None, return_present=False):
    """Run `blocks` over h, block i attending also to past[i]: (h, present or None).

    `past` is (L, 2, B, G, K, D) or None; present is (L, 2, B, G, S, D) float32.
    """
    present = [] if return_present else None
    for i, block in enumerate(blocks):
        h = block(h, cos, sin, mask, past=None if past is None else past[i], present=present)
    return h, torch.stack(present) if return_present else None
