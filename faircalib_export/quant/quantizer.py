"""Symmetric uniform quantizers with straight-through rounding and learnable clipping.

Integer grid for b bits: [-2^(b-1), 2^(b-1) - 1] (int4: -8..7); the scale maps the
clipped max magnitude to 2^(b-1) - 1, so the extra negative level only absorbs rounding.

- weights: one scale per output channel (row), clip ratio per row;
- activations: one scale per token (row of the flattened input), computed on the fly
  from the row's max magnitude, one clip ratio per quantization site.

Clip ratios are sigmoid(logit) so they stay in (0, 1); gradients reach them through
the scale (LSQ-style), and reach the inputs through the straight-through estimator.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .spec import NO_QUANT_BITS, check_bits

CLIP_INIT_LOGIT = 4.0  # sigmoid(4) = 0.982: a slight clip, learnable either way


def qmax(bits: int) -> int:
    return 2 ** (bits - 1) - 1


def round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


def fake_quant(x: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """Quantize-dequantize with a given (broadcastable) scale, STE through the rounding."""
    q = torch.clamp(round_ste(x / scale), -qmax(bits) - 1, qmax(bits))
    return q * scale


def row_scale(x: torch.Tensor, bits: int, clip: torch.Tensor | float = 1.0,
              eps: float = 1e-8) -> torch.Tensor:
    """Per-row scale: clip * max|x_row| / qmax, shape (..., 1)."""
    absmax = x.abs().amax(dim=-1, keepdim=True)
    return (clip * absmax).clamp(min=eps) / qmax(bits)


def quantize_rows(x: torch.Tensor, bits: int, clip: torch.Tensor | float = 1.0):
    """Integer codes and scales for per-row symmetric quantization (no gradient)."""
    scale = row_scale(x, bits, clip)
    q = torch.clamp(torch.round(x / scale), -qmax(bits) - 1, qmax(bits))
    return q.to(torch.int8), scale


class WeightQuantizer(nn.Module):
    """Per-output-channel fake quantizer with an optional learnable clip per row."""

    def __init__(self, out_features: int, bits: int, learnable_clip: bool):
        super().__init__()
        self.bits = check_bits(bits, "weight", allow_16=True)
        init = torch.full((out_features, 1), CLIP_INIT_LOGIT)
        if learnable_clip:
            self.clip_logit = nn.Parameter(init)
        else:
            self.register_buffer("clip_logit", torch.full((out_features, 1), math.inf))

    def clip(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        logit = self.clip_logit if dtype is None else self.clip_logit.to(dtype)
        return torch.sigmoid(logit)  # inf -> exactly 1.0 (plain RTN)

    def codes(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Integer codes (int8) and per-row scales of w, in w's dtype."""
        return quantize_rows(w, self.bits, self.clip(w.dtype))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.bits == NO_QUANT_BITS:  # reference runs: weights left as they are
            return w
        return fake_quant(w, row_scale(w, self.bits, self.clip(w.dtype)), self.bits)


class ActQuantizer(nn.Module):
    """Per-token dynamic fake quantizer with one (optionally learnable) clip per site."""

    def __init__(self, bits: int, learnable_clip: bool):
        super().__init__()
        self.bits = check_bits(bits, "activation", allow_16=True)
        if learnable_clip:
            self.clip_logit = nn.Parameter(torch.tensor(CLIP_INIT_LOGIT))
        else:
            self.register_buffer("clip_logit", torch.tensor(math.inf))

    def clip(self) -> torch.Tensor:
        return torch.sigmoid(self.clip_logit)

    def forward(self, x: torch.Tensor, drop_prob: float = 0.0) -> torch.Tensor:
        """Fake-quantize x (tokens x features); with `drop_prob` > 0 (QDrop, calibration
        only) each element keeps its full-precision value with that probability."""
        if self.bits == NO_QUANT_BITS:
            return x
        xq = fake_quant(x, row_scale(x, self.bits, self.clip()), self.bits)
        if drop_prob > 0:
            return torch.where(torch.rand_like(x) < drop_prob, x, xq)
        return xq
