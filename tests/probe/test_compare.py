"""Spearman (average ranks for ties) and Pearson against hand values; prior comparison."""

from __future__ import annotations

import math

import numpy as np
import pytest

from faircalib_export.errors import ConfigError
from faircalib_export.probe.compare import average_ranks, compare_priors, pearson, spearman
from faircalib_export.probe.prior import Prior


def test_average_ranks_share_ties():
    np.testing.assert_allclose(average_ranks([10, 20, 20, 30]), [1, 2.5, 2.5, 4])
    np.testing.assert_allclose(average_ranks([3, 1, 3, 3, 0]), [4, 2, 4, 4, 1])


def test_pearson_by_hand():
    # a = [1 2 3], b = [2 4 7]: Σ da db = 5, Σ da² = 2, Σ db² = 114 / 9
    assert pearson([1, 2, 3], [2, 4, 7]) == pytest.approx(5 / math.sqrt(2 * 114 / 9))
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3]))


def test_spearman_by_hand_with_ties():
    # ranks b = [1 2 3.5 5 3.5]: Σ da db = 8, Σ da² = 10, Σ db² = 9.5
    assert spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(8 / math.sqrt(95))
    assert spearman([1, 2, 3, 4], [1, 10, 100, 1000]) == pytest.approx(1.0)  # monotone
    assert spearman([1, 2, 3, 4], [9, 5, 2, 0]) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="one length"):
        spearman([1, 2], [1, 2, 3])


def test_compare_priors_with_components(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d, w, f in ((a, [1, .5, .2, .9], [1, 1, .5, .1]), (b, [.8, .4, .3, 1], [.1, .5, 1, 1])):
        d.mkdir()
        Prior(np.array(w)).save(d)
        Prior(np.array(f)).save(d, "prior_frontier.json")
    out = compare_priors(a, b)
    assert out["spearman"] == pytest.approx(spearman([1, .5, .2, .9], [.8, .4, .3, 1]))
    assert out["pearson"] == pytest.approx(pearson([1, .5, .2, .9], [.8, .4, .3, 1]))
    assert set(out["components"]) == {"combined", "frontier"}
    assert out["components"]["frontier"]["spearman"] < 0
    Prior(np.ones(3)).save(b)
    with pytest.raises(ConfigError, match="different windows"):
        compare_priors(a, b)
    with pytest.raises(ConfigError, match="no prior"):
        compare_priors(a, tmp_path / "missing")
