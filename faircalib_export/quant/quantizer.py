"""Symmetric uniform quantizers with straight-through rounding and learnable clipping.

Integer grid for b bits: [-2^(b-1), 2^(b-1) - 1] (int4: -8..7); the scale maps the
clipped max magnitude to 2^(b-1) - 1, so the extra negative level only absorbs rounding.

- weights: one scale per output channel (row), clip ratio per row;
- activations: one scale per token (row of the flattened input), computed on the fly
  from the row's max magnitude, one clip ratio per quantization site.

Clip ratios are sigmoid(logit) so they stay in (0, 1); gradients reach them through
the scale (LSQ-style), and reach the inputs through the straight-through estimator.

FP4 formats (`formats.py`, `fp4.py`) keep the same clip parameters and apply them to
the block amax: weights quantize per block of the input dimension (one clip per row),
activations per token and block (one clip per site).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .formats import QuantFormat
from .fp4 import fp4_fake_quant, fp4_quantize
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


def act_fake_quant(x: torch.Tensor, bits: int, clip: torch.Tensor,
                   fmt: QuantFormat = QuantFormat.INT) -> torch.Tensor:
    """Dynamic activation fake-quant along the last dim: per token (int), per token and
    block with a per-token second-level scale (FP4)."""
    if fmt.is_fp4:
        return fp4_fake_quant(x, fmt, clip)
    return fake_quant(x, row_scale(x, bits, clip), bits)


class WeightQuantizer(nn.Module):
    """Per-output-channel (int) or per-block (FP4) fake quantizer with an optional
    learnable clip per row."""

    def __init__(self, out_features: int, bits: int, learnable_clip: bool,
                 fmt: QuantFormat = QuantFormat.INT):
        super().__init__()
        self.bits = check_bits(bits, "weight", allow_16=True)
        self.format = QuantFormat(fmt)
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

    def fp4_codes(self, w: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """FP4 (out, in) E2M1 values, (out, in / B) block scales and the second-level
        scale t (NVFP4: max|W| / 2688; MXFP4: 1), in w's dtype, no gradient."""
        with torch.no_grad():
            return fp4_quantize(w, self.format, self.clip(w.dtype), self._tensor_amax(w))

    def _tensor_amax(self, w: torch.Tensor) -> torch.Tensor | None:
        return w.abs().amax() if self.format is QuantFormat.NVFP4 else None

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.bits == NO_QUANT_BITS:  # reference runs: weights left as they are
            return w
        if self.format.is_fp4:
            return fp4_fake_quant(w, self.format, self.clip(w.dtype), self._tensor_amax(w))
        return fake_quant(w, row_scale(w, self.bits, self.clip(w.dtype)), self.bits)


class ActQuantizer(nn.Module):
    """Per-token (int) or per-token-block (FP4) dynamic fake quantizer with one
    (optionally learnable) clip per site."""

    def __init__(self, bits: int, learnable_clip: bool, fmt: QuantFormat = QuantFormat.INT):
        super().__init__()
        self.bits = check_bits(bits, "activation", allow_16=True)
        self.format = QuantFormat(fmt)
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
        xq = act_fake_quant(x, self.bits, self.clip(), self.format)
        if drop_prob > 0:
            return torch.where(torch.rand_like(x) < drop_prob, x, xq)
        return xq
