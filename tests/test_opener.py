"""One opener for every artifact kind, and every consumer takes every kind.

The shipped `llada-chain` is calibrated (rtn, seconds), folded and exported once; then
eval, generate, validate and diagnose run on each kind through the CLI, and the exported
graph scores exactly what its calibrated artifact scores.
"""

from __future__ import annotations

import json

import pytest

from faircalib_export.artifacts import detect_kind
from faircalib_export.cli import main
from faircalib_export.errors import CheckpointError
from faircalib_export.opener import READERS, OpenedModel, open_model

KINDS = ("checkpoint", "calibrated", "folded", "onnx")


@pytest.fixture(scope="module")
def chain_kinds(tmp_path_factory):
    """kind -> directory: llada-chain and its rtn calibration, fold and w4a4-int export."""
    from helpers import chain_export

    from faircalib_export.models.builtin import resolve_model

    calibrated, deploy, onnx = chain_export(tmp_path_factory.mktemp("kinds"))
    return {"checkpoint": resolve_model("llada-chain"), "calibrated": calibrated,
            "folded": deploy, "onnx": onnx}


def _run(capsys, *argv):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    captured = capsys.readouterr()
    return (exc.value.code or 0), captured.out + captured.err


def test_detect_and_open_every_kind(chain_kinds):
    for kind, path in chain_kinds.items():
        assert detect_kind(path) == kind
        opened = open_model(path)
        assert isinstance(opened, OpenedModel), kind
        assert opened.kind == kind and opened.family == "llada"
        assert opened.vocab_size == 320 and opened.mask_id == 309
        policy = opened.policy()
        assert (policy.window, policy.steps) == (32, 16)  # the model's own decoding shape
    assert set(READERS) == {*KINDS, "tensorrt"}


def test_open_refuses_what_is_not_a_model(tmp_path, chain_kinds):
    with pytest.raises(CheckpointError, match="not a model"):
        open_model(tmp_path)
    with pytest.raises(CheckpointError, match="onnx model; expected checkpoint"):
        open_model(chain_kinds["onnx"], kinds=("checkpoint",))


def test_eval_on_the_export_equals_eval_on_its_calibrated_artifact(chain_kinds, tmp_path,
                                                                   capsys):
    results = {}
    for kind in ("calibrated", "onnx"):
        out = tmp_path / f"{kind}.json"
        code, text = _run(capsys, "eval", chain_kinds[kind], "--task", "chain", "--limit", 24,
                          "-o", out)
        assert code == 0, text
        results[kind] = json.loads(out.read_text())
    assert results["onnx"]["kind"] == "onnx"
    assert results["onnx"]["n"] == results["calibrated"]["n"] == 24
    assert results["onnx"]["correct"] == results["calibrated"]["correct"] >= 20  # of 24
    assert [s["generated"] for s in results["onnx"]["samples"]] == \
        [s["generated"] for s in results["calibrated"]["samples"]]


@pytest.mark.parametrize("kind", KINDS)
def test_generate_on_every_kind(chain_kinds, kind, capsys):
    code, text = _run(capsys, "generate", chain_kinds[kind], "-p",
                      "start 12 then +2 then -1 then +1 then -2")
    assert code == 0, text
    assert "+2=14 -1=13 +1=14 -2=12 answer 12" in text


def test_validate_takes_any_kind_on_both_sides(chain_kinds, tmp_path, capsys):
    # folded reference vs exported graph: the usual check, passes
    code, text = _run(capsys, "validate", "--reference", chain_kinds["folded"], "--exported",
                      chain_kinds["onnx"], "-n", 4, "-o", tmp_path / "v1")
    assert code == 0, text
    # exported graph as the reference, the calibrated model as the one checked
    code, text = _run(capsys, "validate", "--reference", chain_kinds["onnx"], "--exported",
                      chain_kinds["calibrated"], "-n", 4, "-o", tmp_path / "v2")
    assert code == 0, text
    report = json.loads((tmp_path / "v2" / "report.json").read_text())
    assert report["exported"]["kind"] == "calibrated" and report["passed"]


def test_diagnose_takes_an_exported_student(chain_kinds, tmp_path, capsys):
    code, text = _run(capsys, "diagnose", "--teacher", "llada-chain", "--student",
                      chain_kinds["onnx"], "--student", chain_kinds["calibrated"],
                      "--samples", 4, "-o", tmp_path / "diag")
    assert code == 0, text
    report = json.loads((tmp_path / "diag" / "diagnose.json").read_text())
    kinds = {m["name"]: m["kind"] for m in report["models"]}
    assert set(kinds.values()) >= {"onnx", "calibrated"}
    # the export computes what its calibrated artifact computes: the same KL to the teacher
    kl = {name: report["teacher_forced"][name]["kl_masked"]["mean"] for name in kinds
          if name in report["teacher_forced"]}
    assert set(kl) == {"onnx", "cal"} and kl["cal"] > 0
    assert kl["onnx"] == pytest.approx(kl["cal"], rel=1e-3)


def test_diagnose_refuses_a_student_of_another_family(tmp_path, capsys):
    code, text = _run(capsys, "diagnose", "--teacher", "llada-chain", "--student",
                      "dream-chain", "--samples", 2, "-o", tmp_path / "diag")
    assert code == 2 and "dream model cannot be diagnosed against a llada teacher" in text
