"""Unit checks of the policy building blocks, the RNG and the configs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from faircalib_runtime import (
    DreamConfig,
    LLaDAConfig,
    PolicyConfig,
    PolicyConfigError,
    RandomCommitConfig,
)
from faircalib_runtime import policies as P
from faircalib_runtime.rng import Stream, uniform, uniform_grid
from faircalib_runtime.xp import NUMPY as ops


def test_even_schedule():
    out = P.even_schedule(np.array([5, 3, 2]), 3, ops)
    assert out.tolist() == [[2, 2, 1], [1, 1, 1], [1, 1, 0]]
    assert out.sum(1).tolist() == [5, 3, 2]


def test_top_k_mask_per_row_k_and_ties():
    conf = np.array([[0.1, 0.5, 0.5, -np.inf], [0.3, 0.2, 0.9, 0.9]])
    sel = P.top_k_mask(conf, np.array([2, 1]), ops)
    assert sel.tolist() == [[False, True, True, False], [False, False, True, False]]


def test_top_p_filter_keeps_the_crossing_token():
    z = np.log(np.array([[0.5, 0.3, 0.15, 0.05], [0.05, 0.15, 0.3, 0.5]]))
    kept = np.isfinite(P.top_p_filter(z, 0.7, ops))
    assert kept.tolist() == [[True, True, False, False], [False, False, True, True]]
    only_top = np.isfinite(P.top_p_filter(z, 0.4, ops))
    assert only_top.sum(1).tolist() == [1, 1]  # the first token is always kept


def test_top_k_filter_keeps_ties_at_threshold():
    z = np.array([[1.0, 1.0, 1.0, 0.0], [3.0, 2.0, 1.0, 0.0]])
    kept = np.isfinite(P.top_k_filter(z, 2, ops))
    assert kept.tolist() == [[True, True, True, False], [True, True, False, False]]


def test_categorical_frequencies_and_zero_probabilities():
    probs = np.array([0.0, 0.2, 0.0, 0.5, 0.3, 0.0])
    n = 40_000
    draws = np.concatenate([
        P.categorical(np.broadcast_to(probs, (n // 4, 6)), np.arange(n // 4), seed, 0, ops)
        for seed in range(4)])
    freq = np.bincount(draws, minlength=6) / n
    assert freq[[0, 2, 5]].sum() == 0
    np.testing.assert_allclose(freq, probs, atol=0.012)


def test_gumbel_top_k_matches_sampling_without_replacement():
    """P(pair) for k = 2 of 3 equals sequential draws without replacement."""
    conf = np.array([1.0, 0.0, -1.0])
    alg_temp = 0.7
    w = np.exp(conf / alg_temp)
    w /= w.sum()
    exact = {}
    for a, b in itertools.permutations(range(3), 2):
        exact[frozenset((a, b))] = exact.get(frozenset((a, b)), 0) + w[a] * w[b] / (1 - w[a])
    n = 6000
    conf_b = np.broadcast_to(np.append(conf, -np.inf), (n, 4))  # a -inf column never drawn
    sel = P.sampled_top_k_mask(conf_b, np.full(n, 2), alg_temp, 9, 0, ops)
    assert not sel[:, 3].any()
    for pair, p in exact.items():
        hit = sel[:, sorted(pair)].all(1).mean()
        assert abs(hit - p) < 0.025, (pair, hit, p)


def test_rng_range_independence_and_subset_consistency():
    u = uniform_grid((64, 1000), 1, 2, Stream.GUMBEL)
    assert u.dtype == np.float64 and 0 < u.min() and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.005 and abs(u.var() - 1 / 12) < 0.002
    hist = np.histogram(u, bins=20, range=(0, 1))[0] / u.size
    assert np.abs(hist - 0.05).max() < 0.004
    assert abs(np.corrcoef(u.ravel()[:-1], u.ravel()[1:])[0, 1]) < 0.02
    idx = np.array([[5, 999], [63 * 1000 + 7, 0]])
    np.testing.assert_array_equal(uniform(idx, 1, 2, Stream.GUMBEL), u.ravel()[idx])
    assert not np.array_equal(u, uniform_grid((64, 1000), 1, 3, Stream.GUMBEL))
    assert not np.array_equal(u, uniform_grid((64, 1000), 2, 2, Stream.GUMBEL))
    assert not np.array_equal(u, uniform_grid((64, 1000), 1, 2, Stream.CATEGORICAL))
    big = uniform(np.array([2**32 + 5, 5]), 1, 2, Stream.GUMBEL)  # high bits count too
    assert big[0] != big[1]


def test_dream_k_schedule_matches_float32_reference():
    torch = pytest.importorskip("torch")

    def reference(k_total, steps):  # Dream's arithmetic, verbatim in torch float32
        ts, left, out = torch.linspace(1, 1e-3, steps + 1), k_total, []
        for i in range(steps):
            num = torch.tensor(left) / 1
            k = int(num * (1 - ts[i + 1] / ts[i])) if i < steps - 1 else int(num)
            out.append(k)
            left -= k
        return out

    for k_total, steps in itertools.product([3, 64, 256, 512], [2, 16, 64, 128, 256, 512]):
        ts, left, ours = P.dream_timesteps(steps, 1e-3), k_total, []
        for i in range(steps):
            ours.append(P.dream_transfer_count(left, 1, ts, i))
            left -= ours[-1]
        assert ours == reference(k_total, steps), (k_total, steps)
        assert sum(ours) == k_total


def test_config_roundtrip_and_validation():
    for cfg in (LLaDAConfig(gen_length=8, block_length=4, steps=4, remasking="random",
                            mask_id=9, eos_ids=[1, 2]),
                DreamConfig(alg="topk_margin", alg_temp=0.5, top_p=0.9, mask_id=9, eos_ids=1),
                RandomCommitConfig(window_length=16, steps=8, mask_id=9, eos_ids=[1],
                                   padding_style="attention+positions")):
        d = cfg.to_dict()
        assert d["policy"] == cfg.policy and d["version"] == 1
        assert PolicyConfig.from_dict(d) == cfg
    with pytest.raises(PolicyConfigError, match="alg="):
        DreamConfig(alg="greedy", mask_id=9, eos_ids=[1])
    with pytest.raises(PolicyConfigError, match="unknown field"):
        PolicyConfig.from_dict({"policy": "dream", "mask_id": 9, "eos_ids": [1], "foo": 1})
    with pytest.raises(PolicyConfigError, match="unknown policy"):
        PolicyConfig.from_dict({"policy": "nope"})
    with pytest.raises(PolicyConfigError, match="top_p"):
        DreamConfig(top_p=0.0, mask_id=9, eos_ids=[1])
    with pytest.raises(PolicyConfigError, match="mask_id"):
        LLaDAConfig(mask_id=1, eos_ids=[1])
    with pytest.raises(ValueError, match="positive"):
        RandomCommitConfig(window_length=0, mask_id=9, eos_ids=[1])


def test_llada_gumbel_max_samples_softmax_at_temperature():
    logits = np.array([1.0, 0.0, -1.0, 2.0, 0.5])
    temperature, n = 0.8, 40_000
    rows = np.arange(n)
    x0 = P.llada_tokens(np.broadcast_to(logits, (n, 5)), rows, 5, temperature, 4, 0, ops)
    expected = np.exp(logits / temperature) / np.exp(logits / temperature).sum()
    np.testing.assert_allclose(np.bincount(x0, minlength=5) / n, expected, atol=0.01)
