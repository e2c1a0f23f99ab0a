"""Diagnostic metrics on scripted trajectories, against hand counts."""

from __future__ import annotations

import numpy as np
import pytest

from faircalib_export.diagnose import metrics as M
from faircalib_export.diagnose.report import prior_correlation, seed_groups


def test_flips_count_teacher_commits_where_the_student_disagrees():
    # T = 2, B = 2, K = 3. Sample 0: step 0 writes pos 1 (=5), step 1 writes pos 0 (=7)
    # and pos 2 (=9). Sample 1: step 0 writes pos 0 and 2, step 1 pos 1.
    committed = np.zeros((2, 2, 3), bool)
    written = np.full((2, 2, 3), -1)
    committed[0, 0, 1], written[0, 0, 1] = True, 5
    committed[1, 0, [0, 2]], written[1, 0, [0, 2]] = True, [7, 9]
    committed[0, 1, [0, 2]], written[0, 1, [0, 2]] = True, [1, 2]
    committed[1, 1, 1], written[1, 1, 1] = True, 3
    top1 = np.array([[[1, 5, 2], [1, 0, 0]],     # step 0: s0 agrees; s1 flips pos 2
                     [[8, 0, 9], [0, 4, 0]]])    # step 1: s0 flips pos 0; s1 flips pos 1
    # Disagreements off the commit set (e.g. step 0 pos 0 of s0) are not flips.
    np.testing.assert_array_equal(M.flips_per_sequence(committed, written, top1), [1, 2])
    flip = np.where(committed, M.flip_mask(committed, written, top1).astype(float), np.nan)
    s, c = M.position_sum_count(flip)
    np.testing.assert_array_equal(s, [1, 1, 1])
    np.testing.assert_array_equal(c, [2, 2, 2])


def test_post_commit_mismatch_and_stability_lag_by_hand():
    # O = 4 observations (3 steps + final state), one sequence, K = 3.
    # pos 0: committed at step 0 (token 3), later obs s=1..3: 3, 1, 3 -> 1 of 3 disagree
    # pos 1: committed at step 2 (token 4), later obs s=3: 0        -> never agrees
    # pos 2: committed at step 1 (token 6), later obs s=2, 3: 6, 6  -> always agrees
    obs = np.array([[[9, 9, 9]], [[3, 9, 9]], [[1, 9, 6]], [[3, 0, 6]]])
    commit_step = np.array([[0, 2, 1]])
    tokens = np.array([[3, 4, 6]])
    md, na = M.post_commit_mismatch(obs, commit_step, tokens)
    np.testing.assert_allclose(md, [(1 / 3 + 1 + 0) / 3])
    np.testing.assert_allclose(na, [1 / 3])
    lag, censored = M.stability_lags(obs, commit_step, tokens)
    np.testing.assert_array_equal(lag, [[2, 1, 0]])  # last disagreement 2nd / 1st / none
    np.testing.assert_array_equal(censored, [[False, True, False]])


def test_uncommitted_positions_are_ignored():
    obs = np.zeros((3, 1, 2), int)
    md, na = M.post_commit_mismatch(obs, np.array([[-1, 0]]), np.array([[5, 0]]))
    np.testing.assert_allclose([md[0], na[0]], [0.0, 0.0])
    lag, _ = M.stability_lags(obs, np.array([[-1, 0]]), np.array([[5, 0]]))
    np.testing.assert_array_equal(lag, [[-1, 0]])
    md, _ = M.post_commit_mismatch(obs, np.array([[-1, -1]]), np.array([[5, 0]]))
    assert np.isnan(md[0])


def test_ccdf_first_false_commit_and_mean_std():
    x, p = M.ccdf([0, 2, 2, 3])
    np.testing.assert_array_equal(x, [0, 1, 2, 3])
    np.testing.assert_allclose(p, [1.0, 0.75, 0.75, 0.25])
    commit_step = np.array([[2, 0, 1], [0, 1, 2], [0, -1, 1]])
    tokens = np.array([[5, 6, 7], [1, 2, 3], [1, 9, 3]])
    reference = np.array([[5, 0, 7], [1, 2, 0], [1, 2, 3]])
    np.testing.assert_array_equal(M.first_false_commit(commit_step, tokens, reference),
                                  [0, 2, -1])
    assert M.mean_std([1, 2, 3, np.nan]) == {"mean": 2.0, "std": 1.0, "n": 3}
    assert M.mean_std([]) == {"mean": None, "std": None, "n": 0}
    assert M.nanmean_per_sequence(np.array([[[1.0, np.nan]], [[3.0, np.nan]]]))[0] == 2.0


def test_prior_correlation_and_seed_groups():
    corr = prior_correlation(np.array([.1, .5, 1.]), {"flip_rate": [0., .2, .9],
                                                      "kl_masked": [3., 2., 1.]})
    assert corr["flip_rate"]["spearman"] == pytest.approx(1.0)
    assert corr["kl_masked"]["spearman"] == pytest.approx(-1.0)
    models = [{"name": "teacher", "group": "teacher"}, {"name": "a", "group": "fair"},
              {"name": "b", "group": "fair"}, {"name": "c", "group": "flat"}]
    stat = lambda v: {"mean": v, "std": 0.0, "n": 4}  # noqa: E731
    sections = {
        "teacher_forced": {n: {"flips_per_seq": stat(f), "margin": stat(1.0),
                               "kl_masked": stat(0.1)}
                           for n, f in zip("abc", (1., 3., 5.), strict=True)},
        "post_commit": {n: {"mean_disagree_rate": stat(.1), "never_agree_rate": stat(.0)}
                        for n in "abc"},
        "stability_lag": {n: {"lag": stat(2.0)} for n in "abc"},
        "divergence": {n: {"final_disagreement": stat(.5)} for n in "abc"},
    }
    groups = seed_groups(models, sections)
    assert groups["fair"]["members"] == ["a", "b"]
    flips = groups["fair"]["metrics"]["teacher_forced.flips_per_seq"]
    assert flips["mean"] == 2.0 and flips["std"] == pytest.approx(np.sqrt(2)) and flips["n"] == 2
    assert groups["flat"]["metrics"]["teacher_forced.flips_per_seq"]["std"] == 0.0
