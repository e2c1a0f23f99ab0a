"""Diagnostic metrics on recorded trajectories: pure numpy, one batch at a time.

Array conventions (window positions only; B sequences, K window positions):

    committed  (T, B, K) bool   the commit set C_t of each loop step (tokens written)
    written    (T, B, K) int64  the token written at committed positions, -1 elsewhere
    top1       (T, B, K) int64  a model's argmax at every window position, per step
    obs        (O, B, K) int64  a model's argmax on the states of ITS OWN trajectory:
                                obs[s] on the state before step s, obs[O-1] on the final
                                state (O = steps run + 1)
    commit_step (B, K)   int64  loop step that wrote each position, -1 never
    tokens      (B, K)   int64  the final window tokens of that trajectory

Definitions (paper 5.4 and appendix D; where the paper is loose, the choice is stated):

- Commit-step flip at (t, i): i ∈ C_t of the TEACHER's trajectory and the student's
  argmax on the teacher's state S_t differs from the teacher's written token.
- Post-commit observations of a position committed at step c: the model's argmax at that
  position on every later state of its own trajectory, obs[c+1 .. O-1] (the committed
  token is in the input there). Including the final state gives every committed
  position at least one observation.
  mean_disagree_rate: per position, the fraction of its observations whose argmax differs
  from the committed token, averaged over the sequence's committed positions.
  never_agree_rate: the fraction of the sequence's committed positions whose argmax
  never equals the committed token in any observation.
- Stability lag of a committed position: the number of post-commit observations before
  the argmax agrees with the final token at every remaining observation, i.e. the index
  (1-based) of the last disagreeing observation, 0 if none. A position whose last
  observation still disagrees never stabilized: its lag equals its observation count
  and it is counted as censored.
- First false commit of a student trajectory: the first loop step at which the student
  writes, at some position, a token that differs from the teacher's final token there.
"""

from __future__ import annotations

import numpy as np


def flip_mask(committed: np.ndarray, written: np.ndarray, top1: np.ndarray) -> np.ndarray:
    """(T, B, K) bool: teacher commits where the student's argmax differs."""
    return committed.astype(bool) & (top1 != written)


def flips_per_sequence(committed, written, top1) -> np.ndarray:
    """(B,) flip counts over all steps and positions."""
    return flip_mask(committed, written, top1).sum(axis=(0, 2))


def nanmean_per_sequence(values: np.ndarray) -> np.ndarray:
    """(B,) mean over steps and positions of (T, B, K) values, ignoring NaN (NaN if none)."""
    finite = np.isfinite(values)
    total = np.where(finite, values, 0.0).sum(axis=(0, 2))
    count = finite.sum(axis=(0, 2))
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def position_sum_count(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(K,) sum and count of the finite (T, B, K) values at each window position."""
    finite = np.isfinite(values)
    return np.where(finite, values, 0.0).sum(axis=(0, 1)), finite.sum(axis=(0, 1))


def post_commit(obs: np.ndarray, commit_step: np.ndarray, tokens: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """(O, B, K) masks: `post` marks post-commit observations, `disagree` those among them
    whose argmax differs from the committed token."""
    s = np.arange(obs.shape[0])[:, None, None]  # (O, 1, 1)
    c = commit_step[None]  # (1, B, K)
    post = (c >= 0) & (s > c)
    return post, post & (obs != tokens[None])


def post_commit_mismatch(obs, commit_step, tokens) -> tuple[np.ndarray, np.ndarray]:
    """(B,) mean_disagree_rate and never_agree_rate (NaN for a sequence without commits)."""
    post, disagree = post_commit(obs, commit_step, tokens)
    n_obs = post.sum(axis=0)  # (B, K)
    n_dis = disagree.sum(axis=0)
    has = n_obs > 0  # committed positions (the final state is always an observation)
    rate = np.where(has, n_dis / np.maximum(n_obs, 1), 0.0)
    never = has & (n_dis == n_obs)
    n_pos = has.sum(axis=1)  # (B,)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_disagree = np.where(n_pos > 0, rate.sum(axis=1) / n_pos, np.nan)
        never_agree = np.where(n_pos > 0, never.sum(axis=1) / n_pos, np.nan)
    return mean_disagree, never_agree


def stability_lags(obs, commit_step, tokens) -> tuple[np.ndarray, np.ndarray]:
    """(B, K) lag (-1 where never committed) and (B, K) censored flags."""
    post, disagree = post_commit(obs, commit_step, tokens)
    s = np.arange(obs.shape[0])[:, None, None]
    offset = s - commit_step[None]  # observation index after the commit, 1-based
    lag = np.where(disagree, offset, 0).max(axis=0)
    n_obs = post.sum(axis=0)
    committed = commit_step >= 0
    lag = np.where(committed, lag, -1)
    censored = committed & (n_obs > 0) & (lag == n_obs)
    return lag, censored


def ccdf(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x = 0 .. max and P(value >= x) over the given non-negative integers."""
    values = np.asarray(values, dtype=np.int64).ravel()
    if not len(values):
        return np.zeros(1, np.int64), np.zeros(1)
    x = np.arange(values.max() + 1)
    counts = np.bincount(values, minlength=len(x))
    at_least = counts[::-1].cumsum()[::-1]  # number >= x
    return x, at_least / len(values)


def first_false_commit(commit_step: np.ndarray, tokens: np.ndarray,
                       reference: np.ndarray) -> np.ndarray:
    """(B,) first loop step writing a token that differs from `reference`, -1 if none."""
    wrong = (commit_step >= 0) & (tokens != reference)
    big = np.iinfo(np.int64).max
    first = np.where(wrong, commit_step, big).min(axis=1)
    return np.where(first == big, -1, first)


def mean_std(values) -> dict:
    """{"mean", "std", "n"} of the finite values; std is the sample std (ddof 1)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if not len(v):
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "n": int(len(v))}
