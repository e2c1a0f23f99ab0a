"""The comparison's numbers (results.json), its Markdown report and its accuracy figure.

Per entry, every metric is the mean ± sample std over calibration seeds of the per-run
value (a run's value is itself a mean over held-out problems or diagnosed sequences).
With several formats, `prior_effect` compares FAIR-Calib with FlatQuant (the same
transforms and losses without the prior) in each format, and `prior_fp4_vs_int` says
whether the prior's gain is larger in an FP4 format than in int, from those numbers.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..diagnose.metrics import mean_std

# (results key, diagnose section, diagnose metric, column title)
DIAG_METRICS = (
    ("kl_masked", "teacher_forced", "kl_masked", "KL masked"),
    ("flips_per_seq", "teacher_forced", "flips_per_seq", "flips/seq"),
    ("never_agree_rate", "post_commit", "never_agree_rate", "never-agree"),
    ("mean_disagree_rate", "post_commit", "mean_disagree_rate", "mean-disagree"),
    ("margin", "teacher_forced", "margin", "frontier margin"),
    ("final_disagreement", "divergence", "final_disagreement", "final disagree"),
)


def _student_name(diag: dict, run_path: str) -> str:
    return next(m["name"] for m in diag["models"] if m["path"] == run_path)


def summarize(model: Path, task: str, config, fp_acc: dict, runs: list[dict],
              diag: dict, skipped: list[dict] | None = None) -> dict:
    per_run = []
    for r in runs:
        name = _student_name(diag, r["path"])
        row = {**r, "student": name, "accuracy": r["accuracy"]["accuracy"]}
        for key, section, metric, _ in DIAG_METRICS:
            row[key] = (diag[section].get(name, {}).get(metric) or {}).get("mean")
        per_run.append(row)
    entries = {}
    for label in dict.fromkeys(r["entry"] for r in per_run):
        rows = [r for r in per_run if r["entry"] == label]
        entries[label] = {"method": rows[0].get("method"), "variant": rows[0].get("variant"),
                          "format": rows[0].get("format", "int"),
                          "seeds": [r["seed"] for r in rows],
                          "accuracy": mean_std([r["accuracy"] for r in rows])}
        for key, *_ in DIAG_METRICS:
            entries[label][key] = mean_std([r[key] for r in rows if r[key] is not None])
    effect = prior_effect(entries)
    return {
        "model": str(model), "task": task,
        "settings": {"w_bits": config.w_bits, "a_bits": config.a_bits,
                     "formats": list(getattr(config, "formats", ("int",))),
                     "epochs": config.epochs, "calib_samples": config.calib_samples,
                     "seeds": list(config.seeds),
                     "calibration_data": config.data or f"task:{task} (calibration split)",
                     "eval_problems": config.limit, "diagnosed_sequences": config.diag_samples},
        "fp": {"accuracy": fp_acc["accuracy"], "n": fp_acc["n"],
               "margin": diag["teacher_margin"],
               "never_agree_rate": diag["post_commit"]["teacher"]["never_agree_rate"]},
        "entries": entries, "runs": per_run, "targets": targets(entries),
        "skipped": skipped or [],
        "prior_effect": effect, "prior_fp4_vs_int": prior_fp4_vs_int(effect),
        "prior_correlation": diag.get("prior_correlation", {}),
        "policy": diag["policy"],
    }


def targets(entries: dict) -> dict:
    """The issue's targets, FAIR-Calib vs FlatQuant, as measured (None if either is absent)."""
    fc, fq = entries.get("fair-calib"), entries.get("flatquant")
    if not fc or not fq:
        return {}
    acc_ok = fc["accuracy"]["mean"] >= fq["accuracy"]["mean"]
    f_fc, f_fq = fc["flips_per_seq"]["mean"], fq["flips_per_seq"]["mean"]
    ratio = None if not f_fq else f_fc / f_fq
    return {"accuracy_fair_ge_flatquant": acc_ok,
            "flips_ratio_fair_over_flatquant": ratio,
            "flips_ratio_le_0.8": None if ratio is None else ratio <= 0.8,
            "kl_ratio_fair_over_flatquant": (fc["kl_masked"]["mean"] / fq["kl_masked"]["mean"]
                                             if fq["kl_masked"]["mean"] else None)}


def _gain(fc: dict, fq: dict, key: str) -> dict | None:
    """fair-calib minus flatquant on `key`, with the standard error of that difference
    (None where either has no value)."""
    a, b = fc[key], fq[key]
    if a.get("mean") is None or b.get("mean") is None:
        return None
    se = math.sqrt(sum(x["std"] ** 2 / x["n"] for x in (a, b) if x.get("n")))
    return {"diff": a["mean"] - b["mean"], "se": se}


def prior_effect(entries: dict) -> dict:
    """Per format: FAIR-Calib minus FlatQuant (prior variant `both` only) on accuracy, KL
    and flips; negative KL / flips differences are the prior helping."""
    by = {(e.get("method"), e.get("format", "int")): e for e in entries.values()
          if e.get("variant") is None}
    out = {}
    for (method, fmt), fc in by.items():
        fq = by.get(("flatquant", fmt))
        if method != "fair-calib" or fq is None:
            continue
        out[fmt] = {"accuracy": _gain(fc, fq, "accuracy"),
                    "kl_masked": _gain(fc, fq, "kl_masked"),
                    "flips_per_seq": _gain(fc, fq, "flips_per_seq")}
    return out


def prior_fp4_vs_int(effect: dict) -> dict:
    """For each FP4 format: is the prior's gain (accuracy up, flips down) larger than in
    int? `larger` / `smaller` when the difference of gains exceeds two standard errors,
    else `no clear difference`."""
    base = effect.get("int")
    if base is None:
        return {}
    verdicts = {}
    for fmt, e in effect.items():
        if fmt == "int":
            continue
        row = {}
        for key, sign in (("accuracy", 1), ("flips_per_seq", -1), ("kl_masked", -1)):
            if e[key] is None or base[key] is None:
                row[key] = None
                continue
            delta = sign * (e[key]["diff"] - base[key]["diff"])  # > 0: helps more in FP4
            se = math.sqrt(e[key]["se"] ** 2 + base[key]["se"] ** 2)
            verdict = ("larger" if delta > 2 * se else "smaller" if delta < -2 * se
                       else "no clear difference")
            row[key] = {"delta": delta, "se": se, "verdict": verdict}
        verdicts[fmt] = row
    return verdicts


def describe_policy(p: dict) -> str:
    if p.get("policy") == "llada":
        return (f"LLaDA {p['remasking']}, {p['gen_length']} tokens in {p['steps']} steps, "
                f"blocks of {p['block_length']}")
    if p.get("policy") == "dream":
        return f"Dream {p.get('alg')}, {p.get('max_new_tokens')} tokens in {p.get('steps')} steps"
    return str(p.get("policy"))


def _ms(stat: dict, fmt: str = ".3g", pct: bool = False) -> str:
    if not stat or stat.get("mean") is None:
        return "-"
    scale = 100 if pct else 1
    mean, std = stat["mean"] * scale, stat["std"] * scale
    unit = "%" if pct else ""
    return f"{mean:{fmt}}{unit}" if stat["n"] < 2 else f"{mean:{fmt}} ± {std:{fmt}}{unit}"


def _samples(settings: dict) -> str:
    n = settings.get("calib_samples")  # absent in reports written before it was recorded
    return f"{n} sequences, " if n else ""


def markdown(results: dict) -> str:
    s = results["settings"]
    fp = results["fp"]
    formats = s.get("formats", ["int"])
    with_format = formats != ["int"]
    fcol = lambda v: f" {v} |" if with_format else ""  # noqa: E731
    lines = [
        f"# Method comparison: {Path(results['model']).name}, W{s['w_bits']}A{s['a_bits']}",
        "",
        f"- accuracy: exact match on {s['eval_problems']} held-out `{results['task']}` "
        f"problems, greedy, the model's default policy ({describe_policy(results['policy'])})",
        f"- diagnostics: {s['diagnosed_sequences']} held-out sequences, teacher-forced on "
        f"the FP teacher's trajectory (flips, KL, margin) and on each model's own trajectory "
        f"(never-agree, mean-disagree, final disagreement with the teacher)",
        f"- calibration: {s['calibration_data']}, "
        f"{_samples(s)}{s['epochs']} epochs per block, seeds "
        f"{s['seeds']}; mean ± std over seeds (rtn is deterministic: one run)",
    ]
    if with_format:
        lines.append(f"- formats: {', '.join(formats)} (int: the int4 grid, one scale per "
                     f"row; nvfp4 / mxfp4: docs/fp4.md)")
    lines += [
        "",
        "| model |" + fcol("format") + " accuracy | "
        + " | ".join(t for *_, t in DIAG_METRICS) + " |",
        "|---" * (2 + with_format + len(DIAG_METRICS)) + "|",
        "| FP |" + fcol("-") + f" {fp['accuracy']:.1%} | 0 | 0 | "
        f"{_ms(fp['never_agree_rate'])} | - | {_ms(fp['margin'])} | 0 |",
    ]
    for label, e in results["entries"].items():
        cells = [_ms(e["accuracy"], ".1f", pct=True)]
        cells += [_ms(e[key]) for key, *_ in DIAG_METRICS]
        name = label.rsplit(":", 1)[0] if with_format else label
        lines.append(f"| {name} |" + fcol(e.get("format", "int")) + " "
                     + " | ".join(cells) + " |")
    for skip in results.get("skipped", []):
        lines.append(f"\n{skip['entry']} in {skip['format']}: not run ({skip['reason']}).")
    lines += _prior_lines(results)
    t = results["targets"]
    if t:
        ratio = t["flips_ratio_fair_over_flatquant"]
        lines += ["", "Targets (FAIR-Calib vs FlatQuant, averaged over seeds): accuracy "
                  f"{'>=' if t['accuracy_fair_ge_flatquant'] else '<'} FlatQuant's; flips "
                  + ("ratio undefined (FlatQuant has no flips)" if ratio is None else
                     f"ratio {ratio:.2f} (target <= 0.8: "
                     f"{'met' if t['flips_ratio_le_0.8'] else 'not met'})")
                  + (f"; teacher-forced KL ratio {t['kl_ratio_fair_over_flatquant']:.2f}"
                     if t["kl_ratio_fair_over_flatquant"] else "") + "."]
    corr = results.get("prior_correlation") or {}
    if corr:
        lines += ["", "Prior vs observed per-position errors (Spearman ρ):", ""]
        for name, c in corr.items():
            parts = ", ".join(f"{k} {v['spearman']:.2f}" for k, v in c.items()
                              if v.get("spearman") is not None)
            lines.append(f"- {name}: {parts or 'undefined (no errors observed)'}")
    lines += ["", "## Per run", "", "| run | seed | accuracy | KL masked | flips/seq |",
              "|---|---|---|---|---|"]
    for r in results["runs"]:
        kl = "-" if r["kl_masked"] is None else f"{r['kl_masked']:.4g}"
        fl = "-" if r["flips_per_seq"] is None else f"{r['flips_per_seq']:.3g}"
        lines.append(f"| {r['student']} | {r['seed']} | {r['accuracy']:.1%} | {kl} | {fl} |")
    lines += ["", "## Figures", "", "![accuracy](accuracy.png)",
              "![flips and other metrics over seeds](diagnose/seed_groups.png)",
              "![divergence](diagnose/divergence.png)",
              "![stability lag](diagnose/stability_lag.png)",
              "![per position](diagnose/per_position.png)", ""]
    return "\n".join(lines)


def _prior_lines(results: dict) -> list[str]:
    effect = results.get("prior_effect") or {}
    if len(effect) < 2:
        return []
    lines = ["", "Prior effect per format (FAIR-Calib minus FlatQuant, ± standard error "
             "over seeds; accuracy in points, negative KL / flips = the prior helps):", "",
             "| format | Δ accuracy | Δ KL masked | Δ flips/seq |", "|---|---|---|---|"]
    def cell(g: dict | None, scale: float = 1, fmt: str = "+.3g", se: str = ".2g") -> str:
        return "-" if g is None else f"{scale * g['diff']:{fmt}} ± {scale * g['se']:{se}}"

    for fmt, e in effect.items():
        lines.append(f"| {fmt} | {cell(e['accuracy'], 100, '+.1f', '.1f')} | "
                     f"{cell(e['kl_masked'])} | {cell(e['flips_per_seq'])} |")
    verdicts = results.get("prior_fp4_vs_int") or {}
    if verdicts:
        lines += ["", "Does the prior help more for FP4 than for INT4? (a difference of "
                  "gains beyond two standard errors counts)", ""]
        for fmt, v in verdicts.items():
            if any(x is None for x in v.values()):
                lines.append(f"- {fmt} against int: undefined (a metric is missing)")
                continue
            lines.append(f"- {fmt} against int: accuracy gain {v['accuracy']['verdict']} "
                         f"({100 * v['accuracy']['delta']:+.1f} points), flips reduction "
                         f"{v['flips_per_seq']['verdict']} ({v['flips_per_seq']['delta']:+.3g} "
                         f"per sequence), KL reduction {v['kl_masked']['verdict']} "
                         f"({v['kl_masked']['delta']:+.3g})")
    return lines


def plot_accuracy(results: dict, file: Path) -> Path:
    from matplotlib.figure import Figure

    labels = ["FP"] + list(results["entries"])
    means = [results["fp"]["accuracy"]] + [e["accuracy"]["mean"]
                                           for e in results["entries"].values()]
    stds = [0.0] + [e["accuracy"]["std"] for e in results["entries"].values()]
    fig = Figure(figsize=(max(4, 1.1 * len(labels) + 1.5), 3.4), layout="constrained")
    ax = fig.add_subplot()
    ax.bar(range(len(labels)), [100 * m for m in means], yerr=[100 * s for s in stds],
           capsize=3, color=["#555555"] + ["#4c72b0"] * (len(labels) - 1))
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("held-out accuracy (%)")
    s = results["settings"]
    ax.set_title(f"{Path(results['model']).name} W{s['w_bits']}A{s['a_bits']}: accuracy "
                 f"(mean ± std over seeds)", fontsize=9)
    fig.savefig(file, dpi=110)
    return file


def write_report(results: dict, out: Path) -> Path:
    plot_accuracy(results, out / "accuracy.png")
    file = out / "report.md"
    file.write_text(markdown(results))
    return file
