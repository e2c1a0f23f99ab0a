"""Figures for Stage I: the prior with its across-sample band, and a two-prior comparison.

Figures are built on `matplotlib.figure.Figure` directly (the Agg canvas, no pyplot), so
plotting never touches global backend state.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

COMPONENT_STYLE = {"frontier": ("frontier-hit only", "tab:orange"),
                   "reliability": ("reliability only", "tab:green")}


def plot_prior(curves: dict[str, tuple[np.ndarray, np.ndarray]], out: str | Path,
               title: str = "") -> Path:
    """Mean of the per-sample max-normalized curves (± std band); components dashed."""
    fig = Figure(figsize=(8, 4), layout="constrained")
    ax = fig.add_subplot()
    mean, std = curves["combined"]
    x = np.arange(len(mean))
    ax.fill_between(x, mean - std, mean + std, color="tab:blue", alpha=0.2,
                    label="± std over samples")
    ax.plot(x, mean, color="tab:blue", lw=2, label="w (frontier + reliability)")
    for name, (label, color) in COMPONENT_STYLE.items():
        if name in curves and curves[name][0].max() > 0:
            ax.plot(x, curves[name][0], ls="--", color=color, label=label)
    ax.set_xlabel("generation window position i")
    ax.set_ylabel("mean of per-sample max-normalized w")
    ax.set_xlim(0, max(len(mean) - 1, 1))
    ax.set_title(title or "Stage I position prior")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(out, dpi=120)
    return Path(out)


def plot_comparison(comparison: dict, out: str | Path,
                    bands: tuple[np.ndarray | None, np.ndarray | None] = (None, None)) -> Path:
    """Both priors (max-normalized) with the correlations in the title."""
    fig = Figure(figsize=(8, 4), layout="constrained")
    ax = fig.add_subplot()
    combined = comparison["components"]["combined"]
    for key, color, band in (("a", "tab:blue", bands[0]), ("b", "tab:orange", bands[1])):
        w = np.asarray(combined[key])
        x = np.arange(len(w))
        if band is not None and len(band) == len(w):
            ax.fill_between(x, w - band, w + band, color=color, alpha=0.15)
        ax.plot(x, w, color=color, label=Path(comparison[key]).name or comparison[key])
    extra = "".join(
        f"\n{name}: Spearman {c['spearman']:.3f}, Pearson {c['pearson']:.3f}"
        for name, c in comparison["components"].items() if name != "combined")
    ax.set_title(f"Spearman {comparison['spearman']:.3f}, Pearson {comparison['pearson']:.3f}"
                 + extra, fontsize=9)
    ax.set_xlabel("generation window position i")
    ax.set_ylabel("prior weight (max 1)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(out, dpi=120)
    return Path(out)
