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
