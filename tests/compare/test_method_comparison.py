"""`compare`: entry parsing, aggregation over seeds, the report, and an end-to-end run that
reuses its finished work."""

from __future__ import annotations

import json

import pytest

from faircalib_export.compare.report import markdown, summarize, targets
from faircalib_export.compare.run import (
    CompareConfig,
    Entry,
    parse_entries,
    run_compare,
    seeds_for,
)
from faircalib_export.errors import ConfigError


def test_entries_parse_methods_variants_and_budgets():
    entries = parse_entries(["rtn", " fair-calib@frontier-only", "fair-calib@probe8", "rtn"])
    assert [e.label for e in entries] == ["rtn", "fair-calib@frontier-only", "fair-calib@probe8"]
    assert entries[1].prior_settings() == {"lambda1": 0.0}
    assert entries[2].prior_settings() == {"samples": 8}
    assert Entry("fair-calib").prior_settings() == {} and Entry("fair-calib").prior_name == "both"


@pytest.mark.parametrize("spec, words", [
    (["nope"], "unknown method"),
    (["flatquant@frontier-only"], "weighted methods only"),
    (["fair-calib@sideways"], "unknown prior variant"),
    ([], "at least one method"),
])
def test_bad_entries_are_named(spec, words):
    with pytest.raises(ConfigError, match=words):
        parse_entries(spec)


def test_rtn_runs_once_the_others_once_per_seed():
    assert seeds_for(Entry("rtn"), [3, 4, 5]) == [3]
    assert seeds_for(Entry("quarot"), [3, 4, 5]) == [3, 4, 5]


def _stat(mean, std=0.0, n=4):
    return {"mean": mean, "std": std, "n": n}


def _diag(students: dict[str, tuple[float, float]]) -> dict:
    """A diagnose report with (flips, kl) per student path."""
    models = [{"name": "teacher", "path": "fp"}] + [{"name": p.split("/")[-1], "path": p}
                                                   for p in students]
    tf = {p.split("/")[-1]: {"flips_per_seq": _stat(f), "kl_masked": _stat(k),
                             "margin": _stat(5.0)} for p, (f, k) in students.items()}
    pc = {p.split("/")[-1]: {"never_agree_rate": _stat(0.1), "mean_disagree_rate": _stat(0.2)}
          for p in students} | {"teacher": {"never_agree_rate": _stat(0.05)}}
    div = {p.split("/")[-1]: {"final_disagreement": _stat(0.0)} for p in students}
    return {"models": models, "teacher_forced": tf, "post_commit": pc, "divergence": div,
            "teacher_margin": _stat(6.0), "policy": {"policy": "llada", "remasking": "x",
                                                      "gen_length": 8, "steps": 4,
                                                      "block_length": 4}}


def test_summary_averages_over_seeds_and_checks_the_targets():
    runs = [{"entry": "flatquant", "method": "flatquant", "seed": s, "path": f"r/fq{s}",
             "prior": None, "accuracy": {"accuracy": a}} for s, a in ((0, 0.8), (1, 0.6))]
    runs += [{"entry": "fair-calib", "method": "fair-calib", "seed": s, "path": f"r/fc{s}",
              "prior": "p", "accuracy": {"accuracy": a}} for s, a in ((0, 0.7), (1, 0.9))]
    diag = _diag({"r/fq0": (2.0, 0.1), "r/fq1": (4.0, 0.3),
                  "r/fc0": (1.0, 0.1), "r/fc1": (2.0, 0.1)})
    config = CompareConfig(entries=(Entry("flatquant"), Entry("fair-calib")), seeds=(0, 1))
    res = summarize("m", "chain", config, {"accuracy": 1.0, "n": 10}, runs, diag)
    fq, fc = res["entries"]["flatquant"], res["entries"]["fair-calib"]
    assert fq["accuracy"]["mean"] == pytest.approx(0.7)
    assert fq["accuracy"]["std"] == pytest.approx(0.1414213, rel=1e-5)  # ddof 1
    assert fq["flips_per_seq"]["mean"] == 3.0 and fc["flips_per_seq"]["mean"] == 1.5
    t = res["targets"]
    assert t["accuracy_fair_ge_flatquant"] is True
    assert t["flips_ratio_fair_over_flatquant"] == pytest.approx(0.5)
    assert t["flips_ratio_le_0.8"] is True
    assert t["kl_ratio_fair_over_flatquant"] == pytest.approx(0.5)
    text = markdown(res)
    assert "| fair-calib | 80.0 ± 14.1% | 0.1 ± 0 | 1.5 ± 0.707 |" in text
    assert "ratio 0.50 (target <= 0.8: met)" in text


def test_targets_say_when_they_are_missed():
    e = {"flatquant": {"accuracy": _stat(0.9), "flips_per_seq": _stat(1.0),
                       "kl_masked": _stat(0.1)},
         "fair-calib": {"accuracy": _stat(0.8), "flips_per_seq": _stat(0.9),
                        "kl_masked": _stat(0.2)}}
    t = targets(e)
    assert t["accuracy_fair_ge_flatquant"] is False and t["flips_ratio_le_0.8"] is False
    assert targets({"rtn": e["flatquant"]}) == {}


@pytest.fixture(scope="module")
def shipped_llada():
    from faircalib_export.models.builtin import resolve_model

    try:
        return resolve_model("llada-chain")
    except Exception as err:  # the shipped models are package data of the checkout
        pytest.skip(f"llada-chain not available: {err}")


def test_window_flat_control_is_ones_over_the_window_and_the_floor_before(shipped_llada,
                                                                         tmp_path):
    from faircalib_export.compare.run import _probe
    from faircalib_export.probe.prior import DEFAULT_FLOOR, Prior

    entry = parse_entries(["fair-calib@window-flat"])[0]
    config = CompareConfig(entries=(entry,), seeds=(0,))
    steps: list[str] = []
    _probe(shipped_llada, config, entry, 0, tmp_path / "flat", steps.append)
    prior = Prior.load(tmp_path / "flat")
    assert steps == []  # no probing rollouts
    assert prior.weights.tolist() == [1.0] * 32 and prior.floor == DEFAULT_FLOOR
    w = prior.position_weights(128)
    assert w[:96].unique().numel() == 1 and w[96:].unique().numel() == 1
    assert float(w[96] / w[0]) == pytest.approx(1 / DEFAULT_FLOOR)


def test_compare_end_to_end_reuses_finished_work(shipped_llada, tmp_path):
    config = CompareConfig(entries=tuple(parse_entries(["rtn", "fair-calib@probe4"])),
                           seeds=(0,), epochs=1, calib_samples=4, limit=4, diag_samples=2)
    steps: list[str] = []
    res = run_compare(shipped_llada, tmp_path, config, steps.append)
    assert any(s.startswith("probing") for s in steps)
    assert sum(s.startswith("calibrating") for s in steps) == 2
    assert set(res["entries"]) == {"rtn", "fair-calib@probe4"}
    for run in res["runs"]:
        assert (tmp_path / "runs" / run["student"] / "manifest.json").is_file()
        assert 0.0 <= run["accuracy"] <= 1.0 and run["kl_masked"] >= 0.0
    prior = json.loads((tmp_path / "priors" / "probe4-s0" / "manifest.json").read_text())
    assert prior["config"]["n_samples"] == 4
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["entries"].keys() == res["entries"].keys()

    again: list[str] = []
    res2 = run_compare(shipped_llada, tmp_path, config, again.append)
    assert again == []  # nothing recomputed
    assert res2["entries"] == res["entries"]

    more = CompareConfig(**{**config.__dict__, "epochs": 2})
    third: list[str] = []
    run_compare(shipped_llada, tmp_path, more, third.append)
    assert [s for s in third if s.startswith("calibrating")] == \
        ["calibrating rtn-s0", "calibrating fair-calib_probe4-s0"]
    assert not any(s.startswith("probing") for s in third)  # the prior is reused


def test_cli_names_a_bad_method_and_writes_nothing(tmp_path, capsys):
    from faircalib_export.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "llada-chain", "--methods", "rtn,flatquant@late-boost",
              "-o", str(tmp_path / "rep")])
    assert exit_info.value.code == 2
    assert "weighted methods only" in capsys.readouterr().err
    assert not (tmp_path / "rep").exists()


def test_formats_parse_with_int4_as_int():
    from faircalib_export.compare.run import format_skip_reason, parse_formats

    assert parse_formats("int4, nvfp4,mxfp4,nvfp4") == ("int", "nvfp4", "mxfp4")
    assert CompareConfig(entries=(Entry("rtn"),), formats=("int4",)).formats == ("int",)
    with pytest.raises(ConfigError, match="unknown quantization format"):
        parse_formats("int4,fp8")
    with pytest.raises(ConfigError, match="4-bit format"):
        CompareConfig(entries=(Entry("rtn"),), w_bits=3, formats=("nvfp4",))
    assert "integer grids only" in format_skip_reason(Entry("quarot"), "nvfp4", 4, 4)
    assert format_skip_reason(Entry("quarot"), "int", 4, 4) is None
    assert format_skip_reason(Entry("fair-calib"), "mxfp4", 4, 4) is None
    for bad in ({"limit": 0}, {"diag_samples": 0}):
        with pytest.raises(ConfigError, match="must be positive"):
            CompareConfig(entries=(Entry("rtn"),), **bad)


def _format_runs(table: dict) -> tuple[list[dict], dict]:
    """Runs and a diagnose report from {(method, format): [(accuracy, flips, kl), ...]}."""
    runs, students = [], {}
    for (method, fmt), per_seed in table.items():
        for seed, (acc, flips, kl) in enumerate(per_seed):
            path = f"r/{method}-{fmt}-s{seed}"
            runs.append({"entry": f"{method}:{fmt}", "method": method, "variant": None,
                         "format": fmt, "seed": seed, "path": path,
                         "prior": "p" if method == "fair-calib" else None,
                         "accuracy": {"accuracy": acc}})
            students[path] = (flips, kl)
    return runs, _diag(students)


def test_prior_effect_per_format_answers_fp4_against_int():
    """The report's answer comes from the numbers: fair-calib minus flatquant per format,
    and the FP4 gain against the int gain beyond two standard errors. (Mutants: the gains
    taken with the wrong sign, or the formats' rows pooled.)"""
    from faircalib_export.compare.report import prior_effect, prior_fp4_vs_int

    runs, diag = _format_runs({
        # int: the prior gains 1 point and 0.1 flips, within noise of nothing
        ("flatquant", "int"): [(0.80, 1.0, 0.10), (0.82, 1.1, 0.10), (0.81, 0.9, 0.10)],
        ("fair-calib", "int"): [(0.81, 0.9, 0.09), (0.83, 1.0, 0.09), (0.82, 0.8, 0.09)],
        # nvfp4: the prior gains 10 points and halves the flips
        ("flatquant", "nvfp4"): [(0.60, 2.0, 0.30), (0.62, 2.1, 0.30), (0.61, 1.9, 0.30)],
        ("fair-calib", "nvfp4"): [(0.70, 1.0, 0.20), (0.72, 1.1, 0.20), (0.71, 0.9, 0.20)],
        # mxfp4: the prior costs accuracy
        ("flatquant", "mxfp4"): [(0.70, 1.5, 0.2), (0.72, 1.6, 0.2), (0.71, 1.4, 0.2)],
        ("fair-calib", "mxfp4"): [(0.60, 1.5, 0.2), (0.62, 1.6, 0.2), (0.61, 1.4, 0.2)],
    })
    config = CompareConfig(entries=(Entry("flatquant"), Entry("fair-calib")), seeds=(0, 1, 2),
                           formats=("int", "nvfp4", "mxfp4"))
    res = summarize("m", "chain", config, {"accuracy": 1.0, "n": 10}, runs, diag)
    assert res["settings"]["formats"] == ["int", "nvfp4", "mxfp4"]
    assert res["entries"]["fair-calib:nvfp4"]["format"] == "nvfp4"
    effect = res["prior_effect"]
    assert effect == prior_effect(res["entries"])
    assert effect["int"]["accuracy"]["diff"] == pytest.approx(0.01)
    assert effect["nvfp4"]["accuracy"]["diff"] == pytest.approx(0.10)
    assert effect["nvfp4"]["flips_per_seq"]["diff"] == pytest.approx(-1.0)
    assert effect["mxfp4"]["accuracy"]["diff"] == pytest.approx(-0.10)
    se = (2 * 0.01 ** 2 / 3) ** 0.5  # both accuracies: sample std 0.01 over 3 seeds
    assert effect["int"]["accuracy"]["se"] == pytest.approx(se)
    v = prior_fp4_vs_int(effect)
    assert v == res["prior_fp4_vs_int"] and set(v) == {"nvfp4", "mxfp4"}
    assert v["nvfp4"]["accuracy"]["verdict"] == "larger"
    assert v["nvfp4"]["flips_per_seq"]["verdict"] == "larger"
    assert v["mxfp4"]["accuracy"]["verdict"] == "smaller"
    assert v["mxfp4"]["flips_per_seq"]["verdict"] == "no clear difference"
    text = markdown(res)
    assert "| fair-calib | nvfp4 | 71.0 ± 1.0% |" in text
    assert "| nvfp4 | +10.0 ± 0.8 |" in text
    assert "- nvfp4 against int: accuracy gain larger (+9.0 points)" in text
    assert "- mxfp4 against int: accuracy gain smaller (-11.0 points)" in text


def test_compare_formats_end_to_end_skips_gptq_in_fp4(shipped_llada, tmp_path):
    """--formats nvfp4 with quarot and rtn: one calibration, in nvfp4 (quarot's GPTQ has no
    FP4 grid: skipped with a note, not an error), rows labelled by format. The int path
    and the cross-format report are covered above; one FP4 run keeps this fast."""
    from faircalib_export.compare.commands import summary_table

    config = CompareConfig(entries=tuple(parse_entries(["quarot", "rtn"])), seeds=(0,),
                           calib_samples=4, limit=4, diag_samples=2, formats=("nvfp4",))
    steps: list[str] = []
    res = run_compare(shipped_llada, tmp_path, config, steps.append)
    assert [s for s in steps if s.startswith("calibrating")] == ["calibrating rtn-nvfp4-s0"]
    assert any(s.startswith("skipping quarot in nvfp4") for s in steps)
    assert list(res["entries"]) == ["rtn:nvfp4"] and res["settings"]["formats"] == ["nvfp4"]
    assert [(s["entry"], s["format"]) for s in res["skipped"]] == [("quarot", "nvfp4")]
    manifest = json.loads((tmp_path / "runs" / "rtn-nvfp4-s0" / "manifest.json").read_text())
    assert manifest["config"]["calib"]["format"] == "nvfp4"
    run = res["runs"][0]
    assert 0.0 <= run["accuracy"] <= 1.0 and run["kl_masked"] > 0.0  # FP4 is not FP
    text = markdown(res)
    assert "| rtn | nvfp4 |" in text and "quarot in nvfp4: not run" in text
    from faircalib_export.calibrate.config import TINY_RECIPE

    # the report names the recipe that ran (no --epochs: the model's), not "None"
    assert f"4 sequences, {TINY_RECIPE.epochs} epochs per block" in text
    assert summary_table(res).columns[1].header == "format"
    with pytest.raises(ConfigError, match="no method can calibrate"):
        run_compare(shipped_llada, tmp_path / "none", CompareConfig(
            entries=(Entry("quarot"),), seeds=(0,), formats=("mxfp4",)))
