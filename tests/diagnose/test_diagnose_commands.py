"""diagnose end to end on a random tiny Dream checkpoint with calibrated and folded
students, through a typer app (as the CLI will register it)."""

from __future__ import annotations

import json

import pytest
import torch
import typer
from typer.testing import CliRunner

from faircalib_export.calibrate.artifact import run_calibration
from faircalib_export.calibrate.config import CalibConfig
from faircalib_export.diagnose.commands import diagnose_cmd
from faircalib_export.diagnose.students import calibration_origin, load_student
from faircalib_export.fold.fold import fold_artifact
from faircalib_export.models.tiny import write_tiny_checkpoint
from faircalib_export.probe.commands import probe_cmd

app = typer.Typer()
app.command("diagnose")(diagnose_cmd)
app.command("probe")(probe_cmd)
runner = CliRunner()


def invoke(*args: str):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("diag")
    teacher = write_tiny_checkpoint(root / "dream", "dream", init_std=0.2, hidden_size=32,
                                    num_layers=1, num_heads=2)
    tokens = torch.randint(0, 200, (4, 16), generator=torch.Generator().manual_seed(0))
    students = []
    for seed in (0, 1):
        out = root / f"rtn-s{seed}"
        run_calibration(teacher, out, CalibConfig(method="rtn", seed=seed), tokens, None,
                        "random tokens")
        students.append(out)
    folded = fold_artifact(students[0], root / "rtn-folded")
    return root, teacher, students, folded


def test_students_resolve_with_their_origin(setup):
    _, _, (s0, s1), folded = setup
    assert calibration_origin(s1) == ("rtn", 1)
    assert calibration_origin(folded) == ("rtn", 0)  # traced through the fold manifest
    st = load_student(folded)
    assert st.kind == "folded" and st.group == "rtn"
    assert load_student(s0).kind == "calibrated"


def test_diagnose_writes_report_and_figures(setup, tmp_path):
    root, teacher, (s0, s1), folded = setup
    prior = tmp_path / "prior"
    invoke("probe", teacher, "-o", prior, "--data", "task:chain", "--samples", "3",
           "--window", "8", "--steps", "8")
    out = tmp_path / "diag"
    result = invoke("diagnose", "--teacher", teacher, "--student", s0, "--student", s1,
                    "--student", folded, "-o", out, "--data", "task:chain",
                    "--samples", "3", "--batch-size", "2", "--window", "8", "--steps", "4",
                    "--prior", prior)
    assert "flips" in result.output
    files = {p.name for p in out.iterdir()}
    assert {"diagnose.json", "manifest.json", "flips.png", "margin.png", "post_commit.png",
            "stability_lag.png", "divergence.png", "per_position.png",
            "prior_correlation.png", "seed_groups.png"} <= files
    rep = json.loads((out / "diagnose.json").read_text())
    names = [m["name"] for m in rep["models"]]
    assert names == ["teacher", "rtn-s0", "rtn-s1", "rtn-folded"]
    assert rep["policy"]["policy"] == "dream" and rep["policy"]["max_new_tokens"] == 8
    tf = rep["teacher_forced"]["rtn-s0"]
    assert tf["flips_per_seq"]["n"] == 3 and len(tf["flips_per_seq"]["values"]) == 3
    assert tf["commits_per_seq"]["mean"] == 8  # every window position is written once
    assert len(tf["by_position"]["flip_rate"]) == 8
    assert set(rep["prior_correlation"]["rtn-s0"]) == {"flip_rate", "kl_masked", "kl_commit",
                                                      "margin"}
    assert len(rep["divergence"]["rtn-s1"]["mse_prob"]["mean"]) == 4
    group = rep["seed_groups"]["rtn"]
    assert group["members"] == ["rtn-s0", "rtn-s1", "rtn-folded"]
    assert group["metrics"]["teacher_forced.flips_per_seq"]["n"] == 3
    # The folded model computes what its calibrated artifact computes.
    assert rep["teacher_forced"]["rtn-folded"]["flips_per_seq"]["values"] == \
        tf["flips_per_seq"]["values"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "diagnostics" and "flips.png" in manifest["figures"]


def test_explicit_seed_groups_and_errors(setup, tmp_path):
    _, teacher, (s0, s1), _ = setup
    out = tmp_path / "diag"
    invoke("diagnose", "--teacher", teacher, "--student", s0, "--student", s1, "-o", out,
           "--data", "task:chain", "--samples", "2",
           "--window", "8", "--steps", "4", "--seed-group", "A", "--seed-group", "B")
    rep = json.loads((out / "diagnose.json").read_text())
    assert set(rep["seed_groups"]) == {"A", "B"}
    bad = runner.invoke(app, ["diagnose", "--teacher", str(teacher), "--student", str(s0),
                              "-o", str(tmp_path / "x"),
                              "--data", "task:chain", "--seed-group", "A", "--seed-group", "B"])
    assert bad.exit_code != 0 and "one label per student" in str(bad.exception)
    assert not (tmp_path / "x").exists()


def test_diagnose_under_parallel_commits(setup, tmp_path):
    """--decode parallel: the teacher commits several positions per step (threshold rule),
    every one of them is still a measured commit, and in fewer steps than exact decoding."""
    _, teacher, (s0, _), _ = setup
    out = tmp_path / "par"
    invoke("diagnose", "--teacher", teacher, "--student", s0, "-o", out, "--data",
           "task:chain", "--samples", "2", "--batch-size", "2", "--window", "8", "--steps",
           "8", "--decode", "parallel", "--threshold", "0.001")
    rep = json.loads((out / "diagnose.json").read_text())
    assert rep["policy"]["decode"] == "parallel" and rep["policy"]["threshold"] == 0.001
    tf = rep["teacher_forced"]["rtn-s0"]
    assert tf["commits_per_seq"]["mean"] == 8  # every position still written once
    # exp(-entropy) >= 1 / vocab > tau: the whole window (one block of 8) in one step
    assert len(rep["divergence"]["rtn-s0"]["mse_prob"]["mean"]) == 1


def test_diagnose_refuses_cached_modes(setup, tmp_path):
    _, teacher, (s0, _), _ = setup
    result = runner.invoke(app, ["diagnose", "--teacher", str(teacher), "--student", str(s0),
                                 "-o", str(tmp_path / "c"), "--data", "task:chain",
                                 "--decode", "cached"])
    assert result.exit_code != 0
    assert "full predictions" in str(result.exception)
