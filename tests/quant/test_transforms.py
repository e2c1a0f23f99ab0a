"""Transforms: exact inverses at any size, and the Kronecker identity the export relies on."""

from __future__ import annotations

import pytest
import torch

from faircalib_export.quant.transforms import (
    SiteTransform,
    cayley,
    kron_apply,
    random_hadamard,
    walsh_hadamard,
)


def _randomize(module, std=0.3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(std * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return module


def test_kron_apply_matches_dense_kron():
    a, b = torch.randn(6, 6, dtype=torch.float64), torch.randn(4, 4, dtype=torch.float64)
    x = torch.randn(3, 24, dtype=torch.float64)
    torch.testing.assert_close(kron_apply(x, a, b), x @ torch.kron(a, b).T)


@pytest.mark.parametrize("n", [1, 2, 12, 56, 96, 128, 148, 224])
def test_random_hadamard_orthogonal_any_size(n):
    h = random_hadamard(n, seed=3)
    torch.testing.assert_close(h @ h.T, torch.eye(n, dtype=torch.float64))
    if n >= 12:  # tiny sizes have few sign patterns to draw from
        assert not torch.equal(h, random_hadamard(n, seed=4))


def test_walsh_hadamard_entries():
    h = walsh_hadamard(8)
    assert torch.allclose(h.abs(), torch.full((8, 8), 8 ** -0.5, dtype=torch.float64))


def test_cayley_orthogonal():
    q = cayley(torch.randn(9, 9, dtype=torch.float64))
    torch.testing.assert_close(q @ q.T, torch.eye(9, dtype=torch.float64))


# Real model sizes: 12288 = 96 x 128 (LLaDA FFN), 3584 = 56 x 64 and 18944 = 128 x 148
# (Dream); 224 and 13 (prime) for odd tiny sizes.
@pytest.mark.parametrize("dim", [13, 224, 3584, 12288, 18944])
@pytest.mark.parametrize("kind", ["none", "hadamard", "learnable"])
def test_fold_is_exact_inverse(dim, kind):
    site = _randomize(SiteTransform(dim, kind, smooth=True, seed=1)).double()
    x = torch.randn(3, dim, dtype=torch.float64)
    w = torch.randn(5, dim, dtype=torch.float64)
    y = site(x) @ site.fold_weight(w).T
    assert (y - x @ w.T).abs().max() < 1e-10 * (x @ w.T).abs().max()


def test_o_site_scale_shared_within_kv_group():
    site = _randomize(SiteTransform(32, "none", smooth=True, seed=0, kv_groups=(2, 2, 8)))
    c = site.scale().view(2, 2, 8)  # (kv heads, query heads per group, head dim)
    torch.testing.assert_close(c[:, 0], c[:, 1])
    assert site.log_c.numel() == 16


def test_identity_block_at_16_bits_reproduces_full_precision(dream_dir):
    from faircalib_export.models.loading import load_model
    from faircalib_export.quant.qblock import QuantBlock
    from faircalib_export.quant.spec import QuantSpec

    model = load_model(dream_dir)
    block = model.blocks[0]
    spec = QuantSpec(w_bits=16, a_bits=16, transform="none", smooth=False)
    qb = QuantBlock(block, spec)
    h = torch.randn(2, 7, model.cfg.hidden_size, generator=torch.Generator().manual_seed(0))
    cos, sin = model.rope(model.default_position_ids(torch.zeros(2, 7, dtype=torch.long)))
    with torch.no_grad():
        torch.testing.assert_close(qb(h, cos, sin, None), block(h, cos, sin, None),
                                   rtol=1e-6, atol=1e-6)
