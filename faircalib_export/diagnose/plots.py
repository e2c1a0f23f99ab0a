"""Figures of a diagnose report (matplotlib `Figure` on the Agg canvas, no pyplot).

    flips.png            teacher-forced commit-step flips per sequence (mean ± std)
    margin.png           frontier margin at teacher commit steps (teacher and students)
    post_commit.png      never_agree_rate and mean_disagree_rate (mean ± std)
    stability_lag.png    CCDF of the stability lag, own trajectories
    divergence.png       mse_prob vs step (first false commit marked) and aligned on it
    per_position.png     flip rate and KL by window position (prior overlaid if given)
    prior_correlation.png  w̄ against per-position flip rate and KL (with --prior)
    seed_groups.png      per-group means with std over calibration seeds (groups of 2+)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

TEACHER = "teacher"
COLORS = ["tab:gray", "tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple",
          "tab:brown", "tab:pink", "tab:olive", "tab:cyan"]


def _color(i: int) -> str:
    return COLORS[i % len(COLORS)]


def _num(v) -> float:
    return float("nan") if v is None else float(v)


def _bars(ax, names: list[str], stats: list[dict], colors: list[str], ylabel: str) -> None:
    means = [_num(s["mean"]) for s in stats]
    stds = [_num(s["std"]) for s in stats]
    x = np.arange(len(names))
    ax.bar(x, means, yerr=stds, capsize=4, color=colors)
    ax.set_xticks(x, names, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    for xi, m, s in zip(x, means, stds, strict=True):
        if np.isfinite(m):
            ax.annotate(f"{m:.3g}±{s:.2g}", (xi, m), ha="center", va="bottom", fontsize=7,
                        xytext=(0, 3), textcoords="offset points")


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    return path


def plot_all(report: dict, directory: str | Path) -> list[Path]:
    d = Path(directory)
    students = [m["name"] for m in report["models"] if m["name"] != TEACHER]
    color = {name: _color(i + 1) for i, name in enumerate(students)} | {TEACHER: _color(0)}
    n = report["n_sequences"]
    out = []

    tf = report["teacher_forced"]
    fig = Figure(figsize=(max(4, 1.3 * len(students) + 2), 3.6), layout="constrained")
    ax = fig.add_subplot()
    _bars(ax, students, [tf[s]["flips_per_seq"] for s in students],
          [color[s] for s in students], "flips per sequence")
    ax.set_title(f"Teacher-forced commit-step flips (mean ± std over N={n})", fontsize=9)
    out.append(_save(fig, d / "flips.png"))

    names = [TEACHER, *students]
    fig = Figure(figsize=(max(4, 1.3 * len(names) + 2), 3.6), layout="constrained")
    ax = fig.add_subplot()
    _bars(ax, names, [report["teacher_margin"]] + [tf[s]["margin"] for s in students],
          [color[s] for s in names], "logit margin of the teacher's token")
    ax.set_title("Frontier margin at teacher commit steps (teacher states)", fontsize=9)
    out.append(_save(fig, d / "margin.png"))

    pc = report["post_commit"]
    fig = Figure(figsize=(max(7, 2.4 * len(names)), 3.6), layout="constrained")
    for j, key in enumerate(("never_agree_rate", "mean_disagree_rate")):
        ax = fig.add_subplot(1, 2, j + 1)
        _bars(ax, names, [pc[m][key] for m in names], [color[m] for m in names], key)
    fig.suptitle("Post-commit mismatch on own trajectories (mean ± std over sequences)",
                 fontsize=9)
    out.append(_save(fig, d / "post_commit.png"))

    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    for m in names:
        cc = report["stability_lag"][m]["ccdf"]
        ax.step(cc["x"], cc["p"], where="post", color=color[m], label=m)
    ax.set_yscale("log")
    ax.set_xlabel("stability lag (states after commit)")
    ax.set_ylabel("P(lag ≥ x)")
    ax.set_title("Stability-lag CCDF (own trajectories)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    out.append(_save(fig, d / "stability_lag.png"))

    div = report["divergence"]
    fig = Figure(figsize=(11, 4), layout="constrained")
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for s in students:
        mp = div[s].get("mse_prob")
        if not mp:
            continue
        mean = np.array([_num(v) for v in mp["mean"]])
        std = np.array([_num(v) for v in mp["std"]])
        x = np.arange(len(mean))
        ax1.plot(x, mean, color=color[s], label=s)
        ax1.fill_between(x, mean - std, mean + std, color=color[s], alpha=0.15)
        step = div[s]["first_false_commit"]["step"]["mean"]
        if step is not None:
            ax1.axvline(step, color=color[s], ls="--", lw=1)
        aligned = np.array([_num(v) for v in mp.get("since_first_false", [])])
        if len(aligned):
            ax2.plot(np.arange(len(aligned)), aligned, color=color[s], label=s)
    ax1.set_xlabel("decoding step")
    ax1.set_ylabel("mse_prob vs FP teacher")
    ax1.set_title("Divergence trace (dashed: mean first false commit)", fontsize=9)
    ax2.set_xlabel("steps since the first false commit")
    ax2.set_title("Aligned on the first false commit (sequences with one)", fontsize=9)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no false commit", transform=ax.transAxes, ha="center")
    out.append(_save(fig, d / "divergence.png"))

    prior = report.get("prior", {}).get("weights")
    fig = Figure(figsize=(9, 6), layout="constrained")
    axes = [fig.add_subplot(2, 1, j + 1) for j in range(2)]
    for ax, key in zip(axes, ("flip_rate", "kl_masked"), strict=True):
        for s in students:
            v = np.array([_num(x) for x in tf[s]["by_position"].get(key, [])])
            ax.plot(np.arange(len(v)), v, color=color[s], label=s, marker=".")
        ax.set_ylabel(key.replace("_", " "))
        ax.grid(alpha=0.3)
        if prior is not None:
            twin = ax.twinx()
            twin.plot(np.arange(len(prior)), prior, color="black", ls=":", label="prior w̄")
            twin.set_ylabel("prior w̄")
            twin.legend(fontsize=8, loc="upper right")
        ax.legend(fontsize=8, loc="upper left")
    axes[0].set_title("Per window position, teacher states (flip rate at commits; KL at "
                      "masked positions)", fontsize=9)
    axes[1].set_xlabel("generation window position")
    out.append(_save(fig, d / "per_position.png"))

    if prior is not None:
        corr = report["prior_correlation"]
        fig = Figure(figsize=(10, 4), layout="constrained")
        for j, key in enumerate(("flip_rate", "kl_masked")):
            ax = fig.add_subplot(1, 2, j + 1)
            for s in students:
                v = np.array([_num(x) for x in tf[s]["by_position"].get(key, [])])
                c = corr[s].get(key, {})
                ax.scatter(prior, v, s=12, color=color[s],
                           label=f"{s}: ρ={_num(c.get('spearman')):.2f}, "
                                 f"r={_num(c.get('pearson')):.2f}")
            ax.set_xlabel("prior w̄")
            ax.set_ylabel(key.replace("_", " "))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle("Does w̄ predict where students fail? (Spearman ρ, Pearson r)",
                     fontsize=9)
        out.append(_save(fig, d / "prior_correlation.png"))

    groups = {g: v for g, v in report.get("seed_groups", {}).items() if len(v["members"]) > 1}
    if groups:
        keys = list(next(iter(groups.values()))["metrics"])
        cols = min(4, len(keys))
        rows = -(-len(keys) // cols)
        fig = Figure(figsize=(3.2 * cols, 3.2 * rows), layout="constrained")
        gnames = list(groups)
        for j, key in enumerate(keys):
            ax = fig.add_subplot(rows, cols, j + 1)
            _bars(ax, gnames, [groups[g]["metrics"][key] for g in gnames],
                  [_color(i + 1) for i in range(len(gnames))], "")
            ax.set_title(key.split(".")[-1], fontsize=8)
        fig.suptitle("Seed groups: mean ± std over calibration seeds", fontsize=9)
        out.append(_save(fig, d / "seed_groups.png"))
    return out
