"""Quantizers: numerics (SQNR floors), grids, straight-through gradients, bit-width checks."""

from __future__ import annotations

import math

import pytest
import torch

from faircalib_export.errors import ConfigError
from faircalib_export.quant.quantizer import (
    ActQuantizer,
    WeightQuantizer,
    check_bits,
    quantize_rows,
)


def sqnr_db(x: torch.Tensor, xq: torch.Tensor) -> float:
    return 20 * math.log10(x.norm() / (x - xq).norm())


# Floors for per-row max scaling of Gaussian rows (256 wide): ~6 dB per bit.
@pytest.mark.parametrize("bits,floor", [(3, 9.0), (4, 15.0), (8, 38.0)])
@pytest.mark.parametrize("shape", [(64, 256), (7, 608)])
def test_weight_sqnr_floor(bits, floor, shape):
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(bits))
    wq = WeightQuantizer(shape[0], bits, learnable_clip=False)(w)
    assert sqnr_db(w, wq) > floor
    # on the grid: each row holds at most 2^bits distinct values, symmetric scale
    for row in wq[:3]:
        assert row.unique().numel() <= 2 ** bits


@pytest.mark.parametrize("bits,floor", [(4, 14.0), (8, 37.0)])
def test_activation_per_token_sqnr_and_grid(bits, floor):
    x = torch.randn(5, 16, 224) * torch.logspace(-2, 2, 16)[None, :, None]  # wild token scales
    xq = ActQuantizer(bits, learnable_clip=False)(x)
    for t in range(16):  # per-token scales: every token keeps its own precision
        assert sqnr_db(x[:, t], xq[:, t]) > floor
    q, scale = quantize_rows(x, bits)
    assert q.min() >= -(2 ** (bits - 1)) and q.max() <= 2 ** (bits - 1) - 1
    torch.testing.assert_close(q.float() * scale, xq)


def test_sixteen_bit_activations_pass_through():
    x = torch.randn(3, 8)
    assert torch.equal(ActQuantizer(16, learnable_clip=True)(x), x)


def test_ste_and_clip_gradients():
    w = torch.randn(8, 32, requires_grad=True)
    wq = WeightQuantizer(8, 4, learnable_clip=True)
    (wq(w) * torch.randn(8, 32)).sum().backward()
    assert w.grad is not None and w.grad.abs().sum() > 0
    assert wq.clip_logit.grad is not None and wq.clip_logit.grad.abs().sum() > 0
    aq = ActQuantizer(4, learnable_clip=True)
    x = torch.randn(4, 32, requires_grad=True)
    (aq(x) * torch.randn(4, 32)).sum().backward()
    assert aq.clip_logit.grad is not None and aq.clip_logit.grad != 0


def test_qdrop_keeps_some_elements_full_precision():
    x = torch.randn(64, 64)
    aq = ActQuantizer(4, learnable_clip=False)
    kept = (aq(x, drop_prob=0.5) == x).float().mean()
    assert 0.35 < kept < 0.65  # the quantized half rarely lands exactly on x


@pytest.mark.parametrize("bits", [0, 1, 9, 12])
def test_unsupported_bits(bits):
    with pytest.raises(ConfigError, match=f"bit width {bits}"):
        check_bits(bits, "weight")
    with pytest.raises(ConfigError):
        WeightQuantizer(4, bits, learnable_clip=False)


def test_int4_hand_computed_with_clipping():
    x = torch.tensor([[0.7, -1.4, 0.35, 0.1, -0.05]])
    # absmax 1.4, scale 1.4 / 7 = 0.2: codes round(x / 0.2), half to even
    q, scale = quantize_rows(x, 4)
    assert scale.item() == pytest.approx(0.2)
    assert q.tolist() == [[4, -7, 2, 0, 0]]  # 3.5 -> 4, 1.75 -> 2, 0.5 -> 0, -0.25 -> 0
    # clip 0.5: scale 0.1, and -1.4 / 0.1 = -14 saturates at -8, 0.7 -> 7
    q, scale = quantize_rows(x, 4, clip=0.5)
    assert scale.item() == pytest.approx(0.1)
    assert q.tolist() == [[7, -8, 4, 1, 0]]  # 3.5 -> 4 (even), 0.5 -> 0 (even)
