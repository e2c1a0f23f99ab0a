"""A QuantBlock in an FP4 format: it trains (gradients through the straight-through
quantizers reach transforms, scales and clips), its folded form computes what its
calibration form computes, and widths that no block divides are refused.

Mutants: a QuantBlock that ignores spec.format (int numerics), a fold that drops the
o / down site scales from the FP4 row scales, a detached FP4 clip.
"""

from __future__ import annotations

import pytest
import torch

from faircalib_export.errors import ConfigError
from faircalib_export.models.loading import load_model
from faircalib_export.models.tiny import write_tiny_checkpoint
from faircalib_export.quant.folded import dequantized
from faircalib_export.quant.formats import QuantFormat
from faircalib_export.quant.qblock import QuantBlock
from faircalib_export.quant.spec import QuantSpec


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = write_tiny_checkpoint(tmp_path_factory.mktemp("m") / "dream", "dream", init_std=0.1,
                                 hidden_size=64, intermediate_size=128, num_layers=1,
                                 num_heads=4, num_kv_heads=2)
    return load_model(path)


def _inputs(model):
    h = torch.randn(2, 9, model.cfg.hidden_size, generator=torch.Generator().manual_seed(0))
    cos, sin = model.rope(model.default_position_ids(torch.zeros(2, 9, dtype=torch.long)))
    return h, cos, sin


def _randomized(model, fmt):
    qb = QuantBlock(model.blocks[0], QuantSpec(format=fmt), seed=1)
    with torch.no_grad():  # non-trivial scales, transforms and clips
        for p in qb.trainable()[0]:
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    return qb


@pytest.mark.parametrize("fmt", ["nvfp4", "mxfp4"])
def test_fp4_block_trains_and_its_fold_matches(model, fmt):
    h, cos, sin = _inputs(model)
    qb = _randomized(model, fmt)
    with torch.no_grad():
        target = model.blocks[0](h, cos, sin, None)
    other, clips = qb.trainable()
    opt = torch.optim.Adam([*other, *clips], lr=1e-3)
    losses = []
    for _ in range(6):
        loss = (qb(h, cos, sin, None) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in clips)
        assert sum(p.grad.abs().sum() for p in other) > 0
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]

    folded = qb.folded()
    assert folded["attn.q_proj.block_scale"].shape == (64, 64 // QuantFormat(fmt).block_size)
    with torch.no_grad():
        calib_form = qb(h, cos, sin, None)
        deployed = qb.convert()(h, cos, sin, None)
    rel = ((deployed - calib_form).norm() / calib_form.norm()).item()
    assert rel < 1e-5, rel
    # and it is not the int4 block
    int_qb = QuantBlock(model.blocks[0], QuantSpec(), seed=1)
    int_qb.load_calib_state(qb.calib_state())
    with torch.no_grad():
        assert not torch.allclose(int_qb.convert()(h, cos, sin, None), deployed)
    w = dequantized(folded)["attn.v_proj.weight"]
    assert torch.isfinite(w).all()


def test_fp4_needs_block_aligned_widths(tmp_path):
    path = write_tiny_checkpoint(tmp_path / "d", "dream", init_std=0.1, hidden_size=48,
                                 intermediate_size=128, num_layers=1, num_heads=4,
                                 num_kv_heads=2)
    block = load_model(path).blocks[0]
    with pytest.raises(ConfigError, match="multiple"):
        QuantBlock(block, QuantSpec(format="mxfp4"))
    QuantBlock(block, QuantSpec(format="nvfp4"))  # 48 and 128 are multiples of 16
