"""FP4 fake quantization in torch, straight-through (the formats: `formats.py`).

Every rounding takes a straight-through gradient whose value is exact,
q + (x - x.detach()); the E2M1 input is clamped to +-6 first, so saturated elements pass
no gradient (as the integer grid's clamp). Scales take the gradient of the ideal block
scale clip * max|block| / 6, which is how learnable clips train.
"""

from __future__ import annotations

import torch

from .formats import (
    AMAX_EPS,
    E2M1_EMAX,
    E2M1_MAX,
    E4M3_MAX,
    E4M3_MIN,
    E8M0_EXP_RANGE,
    NV_TENSOR_DIV,
    QuantFormat,
)


def _ste(q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The value of q with the gradient of x (exactly q: x - x.detach() is 0)."""
    return q.detach() + (x - x.detach())


def e2m1_round(y: torch.Tensor) -> torch.Tensor:
    """Nearest E2M1 value, ties to even, saturating at +-6. Grid steps are 0.5 below 2,
    1 below 4 and 2 up to 6, so it is one half-even round per binade."""
    a = y.abs().clamp(max=E2M1_MAX)
    step = torch.where(a < 2, 0.5, torch.where(a < 4, 1.0, 2.0)).to(a.dtype)
    return torch.copysign(torch.round(a / step) * step, y)


def e4m3_round(v: torch.Tensor) -> torch.Tensor:
    """Non-negative v to the nearest E4M3 value, ties to even, saturated to [2^-9, 448]."""
    v = v.clamp(max=E4M3_MAX)
    exponent = (torch.frexp(v)[1] - 1).clamp(min=-6)  # floor(log2 v); subnormals below 2^-6
    step = torch.ldexp(torch.ones_like(v), exponent - 3)  # 3 mantissa bits
    return (torch.round(v / step) * step).clamp(E4M3_MIN, E4M3_MAX)


def e8m0_scale(v: torch.Tensor) -> torch.Tensor:
    """2^(floor(log2 v) - 2), exponent clamped to [-127, 127]; v = 0 gives 2^-127."""
    exponent = torch.frexp(v)[1] - 1 - E2M1_EMAX
    exponent = torch.where(v > 0, exponent, E8M0_EXP_RANGE[0]).clamp(*E8M0_EXP_RANGE)
    return torch.ldexp(torch.ones_like(v), exponent)


def fp4_quantize(x: torch.Tensor, fmt: QuantFormat, clip: torch.Tensor | float = 1.0,
                 tensor_amax: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x (..., n) -> (E2M1 values (..., n), block scales (..., n / B), second-level scale t
    ((..., 1) per row, or the shape of `tensor_amax`)), straight-through.

    `tensor_amax` (NVFP4 weights): max|W| of the whole tensor, clip not applied; None: the
    row's clip * max|x| (activations). MXFP4 has no second-level scale (t = 1).
    `clip` broadcasts against (..., 1): per row (weights) or a scalar (activations).
    """
    block = fmt.block_size
    if x.shape[-1] % block:
        raise ValueError(f"{fmt.value} needs the last dimension divisible by {block}, "
                         f"got {x.shape[-1]}")
    xb = x.unflatten(-1, (-1, block))  # (..., n / B, B)
    amax = xb.abs().amax(-1) * clip  # (..., n / B)
    if fmt is QuantFormat.MXFP4:
        tensor = torch.ones((), dtype=x.dtype, device=x.device)
        scale = _ste(e8m0_scale(amax), amax / E2M1_MAX)
        block_scale = scale
    else:
        if tensor_amax is None:
            tensor_amax = x.abs().amax(-1, keepdim=True) * clip
        tensor = tensor_amax.clamp(min=AMAX_EPS) / NV_TENSOR_DIV
        ratio = amax / E2M1_MAX / tensor
        block_scale = _ste(e4m3_round(ratio), ratio)
        scale = block_scale * tensor
    y = (xb / scale[..., None]).clamp(-E2M1_MAX, E2M1_MAX)  # no gradient where saturated
    return _ste(e2m1_round(y), y).flatten(-2), block_scale, tensor


def fp4_fake_quant(x: torch.Tensor, fmt: QuantFormat, clip: torch.Tensor | float = 1.0,
                   tensor_amax: torch.Tensor | None = None) -> torch.Tensor:
    """Quantize-dequantize x along its last dimension (values * (block * t))."""
    values, block_scale, tensor = fp4_quantize(x, fmt, clip, tensor_amax)
    scale = block_scale * tensor
    return (values.unflatten(-1, (-1, fmt.block_size)) * scale[..., None]).flatten(-2)


def expand_blocks(block_scale: torch.Tensor, block: int) -> torch.Tensor:
    """(..., n / B) per-block values -> (..., n), each repeated over its block."""
    return block_scale.repeat_interleave(block, dim=-1)
