"""Rank and linear correlation of two curves, and the cross-corpus check of two priors.

`spearman` is Pearson's r on average ranks (ties share the mean of the ranks they
span), as in the usual definition; either coefficient is NaN when a curve is constant.
`compare_priors` correlates two probed priors over the generation window (paper D.2)
and, where both directories hold them, their frontier-hit and reliability components.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ConfigError


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of a 1-D array; tied values get the mean of their ranks."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    ranks = np.empty(len(x), dtype=np.float64)
    start = 0
    while start < len(x):
        end = start + 1
        while end < len(x) and sorted_x[end] == sorted_x[start]:
            end += 1
        ranks[order[start:end]] = (start + 1 + end) / 2.0  # mean of ranks start+1 .. end
        start = end
    return ranks


def pearson(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"need two 1-D arrays of one length, got {a.shape} and {b.shape}")
    if len(a) < 2:
        return float("nan")
    da, db = a - a.mean(), b - b.mean()
    denom = np.sqrt((da * da).sum() * (db * db).sum())
    return float((da * db).sum() / denom) if denom > 0 else float("nan")


def spearman(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"need two 1-D arrays of one length, got {a.shape} and {b.shape}")
    return pearson(average_ranks(a), average_ranks(b))


def correlations(a, b, *, finite_only: bool = True) -> dict:
    """{"spearman", "pearson", "n"} over the entries where both are finite."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    keep = np.isfinite(a) & np.isfinite(b) if finite_only else np.ones(len(a), bool)
    return {"spearman": spearman(a[keep], b[keep]), "pearson": pearson(a[keep], b[keep]),
            "n": int(keep.sum())}


COMPONENT_FILES = {"combined": "prior.json", "frontier": "prior_frontier.json",
                   "reliability": "prior_reliability.json"}


def _component_paths(path: Path) -> dict[str, Path]:
    if path.is_file():
        return {"combined": path}
    return {name: path / f for name, f in COMPONENT_FILES.items() if (path / f).is_file()}


def compare_priors(prior_a: str | Path, prior_b: str | Path) -> dict:
    """Spearman and Pearson between two priors (and their shared components)."""
    from .prior import Prior

    paths_a, paths_b = _component_paths(Path(prior_a)), _component_paths(Path(prior_b))
    if "combined" not in paths_a or "combined" not in paths_b:
        missing = prior_a if "combined" not in paths_a else prior_b
        raise ConfigError(f"no prior at {missing} (a probe directory or a prior .json)")
    out: dict = {"a": str(prior_a), "b": str(prior_b), "components": {}}
    for name in COMPONENT_FILES:
        if name not in paths_a or name not in paths_b:
            continue
        wa, wb = Prior.load(paths_a[name]).weights, Prior.load(paths_b[name]).weights
        if len(wa) != len(wb):
            raise ConfigError(f"the priors cover different windows ({len(wa)} vs {len(wb)} "
                              f"positions); probe both with the same --window")
        out["components"][name] = {**correlations(wa, wb), "a": wa.tolist(), "b": wb.tolist()}
    out.update({k: out["components"]["combined"][k] for k in ("spearman", "pearson", "n")})
    return out
