"""Per-batch passes -> per-sequence tallies -> the JSON report (see metrics.py for the
definitions). Error bars are sample std over sequences; with several students of one
seed group (same method, different calibration seeds), also over seeds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..probe.compare import correlations
from . import metrics as M
from .collect import OwnPass, TeacherPass

TEACHER = "teacher"
# Scalar per-student metrics summarized over seeds: (report section, key).
SEED_METRICS = (
    ("teacher_forced", "flips_per_seq"), ("teacher_forced", "margin"),
    ("teacher_forced", "kl_masked"), ("post_commit", "mean_disagree_rate"),
    ("post_commit", "never_agree_rate"), ("stability_lag", "lag"),
    ("divergence", "final_disagreement"),
)


def _cat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0)


@dataclass
class OwnTally:
    """A model on its own trajectories."""

    mean_disagree: list = field(default_factory=list)
    never_agree: list = field(default_factory=list)
    lags: list = field(default_factory=list)
    censored: list = field(default_factory=list)
    mse: list = field(default_factory=list)  # one (T,) trace per sequence
    first_false: list = field(default_factory=list)
    final_disagreement: list = field(default_factory=list)

    def add(self, own: OwnPass, reference: np.ndarray | None = None) -> None:
        md, na = M.post_commit_mismatch(own.obs, own.commit_step, own.tokens)
        lag, cens = M.stability_lags(own.obs, own.commit_step, own.tokens)
        committed = own.commit_step >= 0
        self.mean_disagree.append(md)
        self.never_agree.append(na)
        self.lags.append(lag[committed])
        self.censored.append(cens[committed])
        if reference is not None:
            self.first_false.append(M.first_false_commit(own.commit_step, own.tokens,
                                                         reference))
            self.final_disagreement.append((own.tokens != reference).mean(axis=1))
        if own.mse_prob is not None:
            self.mse.extend(own.mse_prob.T)  # (B, T) -> B traces

    def merge(self, other: OwnTally) -> None:
        """Append `other`'s sequences after this tally's (batches tallied apart, e.g. on
        other ranks, put back in batch order)."""
        for name in ("mean_disagree", "never_agree", "lags", "censored", "mse", "first_false",
                     "final_disagreement"):
            getattr(self, name).extend(getattr(other, name))

    def own_report(self) -> dict:
        lags, cens = _cat(self.lags).astype(np.int64), _cat(self.censored).astype(bool)
        x, p = M.ccdf(lags)
        return {
            "post_commit": {"mean_disagree_rate": M.mean_std(_cat(self.mean_disagree)),
                            "never_agree_rate": M.mean_std(_cat(self.never_agree))},
            "stability_lag": {
                "lag": M.mean_std(lags), "median": float(np.median(lags)) if len(lags) else None,
                "p90": float(np.percentile(lags, 90)) if len(lags) else None,
                "max": int(lags.max()) if len(lags) else None,
                "censored_rate": float(cens.mean()) if len(cens) else None,
                "ccdf": {"x": x.tolist(), "p": p.tolist()},
            },
        }

    def divergence_report(self) -> dict:
        first = _cat(self.first_false).astype(np.int64)
        steps = max((len(m) for m in self.mse), default=0)
        traces = np.full((len(self.mse), steps), np.nan)
        for i, m in enumerate(self.mse):
            traces[i, :len(m)] = m
        out = {
            "final_disagreement": M.mean_std(_cat(self.final_disagreement)),
            "first_false_commit": {
                "rate": float((first >= 0).mean()) if len(first) else None,
                "step": M.mean_std(first[first >= 0]), "values": first.tolist()},
        }
        if steps:
            with np.errstate(invalid="ignore"):
                mean = np.nanmean(traces, axis=0)
                std = np.nanstd(traces, axis=0, ddof=1) if len(traces) > 1 else 0 * mean
            out["mse_prob"] = {"mean": mean.tolist(), "std": np.nan_to_num(std).tolist(),
                               "overall": M.mean_std(traces)}
            # Discrepancy before vs after the first false commit, over sequences with one.
            before, after, aligned = [], [], []
            for trace, f in zip(traces, first, strict=True):
                if f < 0:
                    continue
                before.extend(trace[:f + 1][np.isfinite(trace[:f + 1])])
                after.extend(trace[f + 1:][np.isfinite(trace[f + 1:])])
                aligned.append(trace[f:])
            out["mse_prob"]["before_first_false"] = M.mean_std(before)
            out["mse_prob"]["after_first_false"] = M.mean_std(after)
            width = max((len(a) for a in aligned), default=0)
            rows = np.full((len(aligned), width), np.nan)
            for i, a in enumerate(aligned):
                rows[i, :len(a)] = a
            with np.errstate(invalid="ignore"):
                out["mse_prob"]["since_first_false"] = (
                    np.nanmean(rows, axis=0).tolist() if width else [])
        return out


@dataclass
class ForcedTally:
    """A student on the teacher's states."""

    k: int
    flips: list = field(default_factory=list)
    commits: list = field(default_factory=list)
    margin: list = field(default_factory=list)
    kl_masked: list = field(default_factory=list)
    kl_commit: list = field(default_factory=list)
    pos: dict = field(default_factory=dict)  # name -> [sum (K,), count (K,)]

    def _add_pos(self, name: str, values: np.ndarray) -> None:
        s, c = M.position_sum_count(values)
        if name in self.pos:
            self.pos[name][0] += s
            self.pos[name][1] += c
        else:
            self.pos[name] = [s, c]

    def add(self, tp: TeacherPass, student: dict[str, np.ndarray]) -> None:
        committed = tp.committed
        flip = M.flip_mask(committed, tp.written, student["top1"])
        self.flips.append(flip.sum(axis=(0, 2)))
        self.commits.append(committed.sum(axis=(0, 2)))
        self.margin.append(M.nanmean_per_sequence(student["margin"]))
        self.kl_masked.append(M.nanmean_per_sequence(student["kl"]))
        kl_commit = np.where(committed, student["kl"], np.nan)
        self.kl_commit.append(M.nanmean_per_sequence(kl_commit))
        self._add_pos("flip_rate", np.where(committed, flip.astype(np.float64), np.nan))
        self._add_pos("kl_masked", student["kl"])
        self._add_pos("kl_commit", kl_commit)
        self._add_pos("margin", student["margin"])

    def merge(self, other: ForcedTally) -> None:
        """Append `other`'s sequences after this tally's; position sums add up in the
        order the batches would have been added."""
        for name in ("flips", "commits", "margin", "kl_masked", "kl_commit"):
            getattr(self, name).extend(getattr(other, name))
        for name, (s, c) in other.pos.items():
            if name in self.pos:
                self.pos[name][0] += s
                self.pos[name][1] += c
            else:
                self.pos[name] = [s.copy(), c.copy()]

    def by_position(self) -> dict[str, list]:
        out = {}
        for name, (s, c) in self.pos.items():
            with np.errstate(invalid="ignore", divide="ignore"):
                out[name] = np.where(c > 0, s / np.maximum(c, 1), np.nan).tolist()
        return out

    def report(self) -> dict:
        flips, commits = _cat(self.flips), _cat(self.commits)
        return {
            "flips_per_seq": {**M.mean_std(flips), "values": flips.astype(int).tolist()},
            "commits_per_seq": M.mean_std(commits),
            "flip_rate": float(flips.sum() / commits.sum()) if commits.sum() else None,
            "margin": M.mean_std(_cat(self.margin)),
            "kl_masked": M.mean_std(_cat(self.kl_masked)),
            "kl_commit": M.mean_std(_cat(self.kl_commit)),
            "by_position": self.by_position(),
        }


def prior_correlation(prior_weights: np.ndarray, by_position: dict[str, list]) -> dict:
    """Spearman / Pearson between w̄ and each per-position statistic (finite entries)."""
    w = np.asarray(prior_weights, np.float64)
    return {name: correlations(w, np.asarray(v, np.float64))
            for name, v in by_position.items() if name in ("flip_rate", "kl_masked",
                                                           "kl_commit", "margin")}


def seed_groups(models: list[dict], sections: dict[str, dict]) -> dict:
    """Mean / std over the students of each group of the per-student means."""
    groups: dict[str, list[str]] = {}
    for m in models:
        if m["name"] != TEACHER:
            groups.setdefault(m["group"], []).append(m["name"])
    out = {}
    for group, names in groups.items():
        stats = {}
        for section, key in SEED_METRICS:
            values = [sections[section][n][key]["mean"] for n in names
                      if n in sections[section] and sections[section][n][key]["mean"] is not None]
            stats[f"{section}.{key}"] = M.mean_std(values)
        out[group] = {"members": names, "metrics": stats}
    return out
