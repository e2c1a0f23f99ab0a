"""The cached forward of every PyTorch model kind (FP checkpoint, calibrated, folded), both
families: with no past it is the forward, bit for bit; queries attending to the other
positions' cached keys and values reproduce the full forward at those positions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import padded_batch

from faircalib_export.fold.fold import fold_artifact
from faircalib_export.opener import open_model
from faircalib_runtime.backend import supports_cache

KINDS = ("checkpoint", "calibrated", "folded")
SPLIT_TOLERANCE = 1e-5  # exact math; only the order of the attention sums differs


@pytest.fixture(scope="module")
def opened(calibrated, tmp_path_factory):
    """kind -> the model opened as `faircalib-export` opens it."""
    base, art = calibrated
    deploy = fold_artifact(art, tmp_path_factory.mktemp("cached") / "deploy")
    return {kind: open_model(path) for kind, path in
            zip(KINDS, (base, art, deploy), strict=True)}


def _split(n: int, a: int, b: int, shift: bool):
    """(query range, past positions) for the aligned outputs [a, b): a shifted family's
    queries start one position early (its output a reads the hidden state at a - 1)."""
    start = a - 1 if shift else a
    return slice(start, b), np.r_[0:start, b:n]


@pytest.mark.parametrize("kind", KINDS)
def test_no_past_is_the_forward(opened, kind):
    model = opened[kind].model
    ids, mask, pos = padded_batch()
    with torch.no_grad():
        full = model(ids, mask, pos)
        logits, present = model(ids, mask, pos, return_present=True)
        cfg = model.cfg
        empty = torch.zeros(cfg.num_layers, 2, 3, cfg.num_kv_heads, 0, cfg.head_dim)
        with_empty, _ = model(ids, mask, pos, past_key_values=empty, return_present=True)
    assert torch.equal(logits, full) and torch.equal(with_empty, full)
    assert present.dtype == torch.float32
    assert present.shape == (cfg.num_layers, 2, 3, cfg.num_kv_heads, 17, cfg.head_dim)

    backend = opened[kind].backend()  # numpy in, numpy out
    assert supports_cache(backend)
    for want in ("logits", "summary"):
        step = backend.forward_cached(ids.numpy(), mask.numpy(), pos.numpy(), None, want)
        plain = backend.forward(ids.numpy(), mask.numpy(), pos.numpy(), want)
        if want == "logits":
            np.testing.assert_array_equal(step.output.logits, plain.logits)
        else:
            for field in ("token", "prob", "margin", "neg_entropy"):
                np.testing.assert_array_equal(getattr(step.output.summary, field),
                                              getattr(plain.summary, field))
    np.testing.assert_array_equal(step.present, present.numpy())


@pytest.mark.parametrize("kind", KINDS)
def test_queries_over_a_cached_past_match_the_full_forward(opened, kind):
    """Queries [a, b) of a left-padded batch (pads among the queries and in the past), the
    other positions' keys and values as the past: the full forward's logits there."""
    model = opened[kind].model
    ids, mask, pos = padded_batch()
    n = ids.shape[1]
    with torch.no_grad():
        full, present = model(ids, mask, pos, return_present=True)
    backend = opened[kind].backend()
    for a, b in ((3, 11), (1, 6), (12, n)):
        queries, past = _split(n, a, b, model.cfg.logit_shift)
        key_mask = torch.cat([mask[:, past], mask[:, queries]], dim=1)
        with torch.no_grad():
            logits, mine = model(ids[:, queries], key_mask, pos[:, queries],
                                 past_key_values=present[..., past, :], return_present=True)
        got = logits[:, a - queries.start:]  # the shifted family's first output is not needed
        assert (got - full[:, a:b]).abs().max() < SPLIT_TOLERANCE, (a, b)
        assert (mine - present[..., queries, :]).abs().max() < SPLIT_TOLERANCE
        step = backend.forward_cached(ids[:, queries].numpy(), key_mask.numpy(),
                                      pos[:, queries].numpy(), present[..., past, :].numpy(),
                                      "logits")
        np.testing.assert_array_equal(step.output.logits, logits.numpy())
        np.testing.assert_array_equal(step.present, mine.numpy())


def test_a_model_without_the_cache_is_refused():
    from faircalib_export.decoding.torch_backend import TorchBackend

    backend = TorchBackend(lambda ids, attention_mask=None, position_ids=None: None,
                           device="cpu")
    assert not supports_cache(backend)
    ids = np.zeros((1, 4), np.int64)
    with pytest.raises(TypeError, match="no cached forward"):
        backend.forward_cached(ids, None, ids, None, "logits")
