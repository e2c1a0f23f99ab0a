"""build: stages run once, re-runs skip finished stages, failures exit non-zero."""

from __future__ import annotations

import json

import pytest

from faircalib_export.cli import main


def _build(capsys, model, out, data, *extra):
    with pytest.raises(SystemExit) as exc:
        main(["build", str(model), "--target", "rtx4090", "-o", str(out), "--method", "rtn",
              "--data", str(data / "wikitext2" / "tokenized" / "valid.txt"),
              "--samples", "4", "--seq-len", "32", "--gen-length", "8", "--steps", "4",
              "--validate-prompts", "2", "--quality-problems", "0", *extra])
    captured = capsys.readouterr()
    return exc.value.code, captured.out + captured.err


def test_build_runs_then_skips(llada_dir, tmp_path, capsys, shared_data):
    out = tmp_path / "build"
    code, text = _build(capsys, llada_dir, out, shared_data)
    assert code == 0, text  # the export reproduces its calibrated model: validation passes
    record = json.loads((out / "build.json").read_text())
    assert set(record["stages"]) == {"calibrate", "fold", "onnx"}
    assert record["validation_passed"] is True
    assert record["stages"]["onnx"]["settings"] == {"variant": "w4a4-int"}  # CPU: integer GEMMs
    runtime = json.loads((out / "onnx" / "runtime.json").read_text())
    assert runtime["variant"] == "w4a4-int"
    assert (out / "validation" / "report.md").is_file()
    assert "tensorrt" in text  # reported as unavailable here, not a traceback
    assert "validation passed" in text

    code2, text2 = _build(capsys, llada_dir, out, shared_data)
    assert code2 == code
    assert text2.count("skipped (up to date)") == 3

    # changing a calibration setting redoes calibration and everything after it
    _, text3 = _build(capsys, llada_dir, out, shared_data, "--seed", "1")
    assert "skipped (up to date)" not in text3


def test_build_unknown_target(llada_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["build", str(llada_dir), "--target", "gtx480", "-o", str(tmp_path / "b")])
    assert exc.value.code == 2
    assert "rtx4090" in capsys.readouterr().err  # lists the known targets


def test_build_exits_2_when_validation_fails(llada_dir, tmp_path, capsys, shared_data,
                                             monkeypatch):
    import faircalib_export.validate as v

    real = v.validate
    monkeypatch.setattr(v, "validate", lambda *a, **k: real(
        *a, **{**k, "thresholds": v.Thresholds(kl_max=-1.0)}))  # no export can pass this
    code, text = _build(capsys, llada_dir, tmp_path / "build", shared_data)
    assert code == 2 and "validation failed: kl_mean" in text
    assert json.loads((tmp_path / "build" / "build.json").read_text())[
        "validation_passed"] is False


def test_build_reports_quality_against_full_precision(tmp_path, capsys):
    """The summary says what quantization cost: held-out accuracy FP vs W4A4 and KL."""
    with pytest.raises(SystemExit) as exc:
        main(["build", "llada-chain", "--target", "rtx4090", "-o", str(tmp_path / "b"),
              "--method", "rtn", "--samples", "4", "--quality-problems", "16",
              "--validate-prompts", "4", "--no-tensorrt"])
    text = capsys.readouterr().out
    assert exc.value.code in (0, None), text
    quality = json.loads((tmp_path / "b" / "quality.json").read_text())
    held = quality["heldout"]
    assert held["task"] == "chain" and held["fp"]["n"] == held["w4a4"]["n"] == 16
    assert held["fp"]["accuracy"] == 1.0  # llada-chain solves its held-out problems
    tf = quality["teacher_forced"]
    assert 0 < tf["kl_mean"] < 0.1 and tf["top1_agreement"] > 0.9  # rtn W4A4 is not FP
    assert "held-out accuracy FP 100.0% -> W4A4" in text
    assert "teacher-forced KL(FP || W4A4)" in text and "validation passed" in text


def test_build_for_blackwell_defaults_to_nvfp4(llada_dir, tmp_path, capsys, shared_data,
                                              monkeypatch):
    """--target rtx5090 calibrates in the target's default format (nvfp4) with the
    activation clips frozen, exports the FP4 graph ONNX Runtime runs, validates it, and
    writes TensorRT's native NVFP4 graph, skipping only the engine (no TensorRT here) with
    the reason. (Mutants: build ignoring the target's format or not freezing the clips;
    the plugin graph written for the FP4 fold; the TensorRT stage skipped.)"""
    import sys

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # as on a machine without TensorRT

    def build(out, *extra):
        with pytest.raises(SystemExit) as exc:
            main(["build", str(llada_dir), "--target", "rtx5090", "-o", str(out), "--method",
                  "rtn", "--data", str(shared_data / "wikitext2" / "tokenized" / "valid.txt"),
                  "--samples", "2", "--seq-len", "32", "--gen-length", "8", "--steps", "4",
                  "--validate-prompts", "2", "--quality-problems", "0", *extra])
        captured = capsys.readouterr()
        return exc.value.code, captured.out + captured.err

    code, text = build(tmp_path / "fp4")
    assert code in (0, None), text
    record = json.loads((tmp_path / "fp4" / "build.json").read_text())
    assert record["format"] == "nvfp4" and record["validation_passed"] is True
    calib = record["stages"]["calibrate"]["settings"]["calib"]
    assert calib["format"] == "nvfp4" and calib["act_clips"] is False
    assert record["stages"]["onnx"]["settings"] == {"variant": "w4a4-fp4-emu"}
    deploy = json.loads((tmp_path / "fp4" / "deploy" / "deploy.json").read_text())
    assert deploy["quant_format"] == "nvfp4"
    runtime = json.loads((tmp_path / "fp4" / "tensorrt" / "runtime.json").read_text())
    assert runtime["variant"] == "tensorrt-nvfp4" and runtime["engine"] is None
    flat = " ".join(text.replace("│", " ").split())  # the table's wrapped cells, joined
    assert "graph only" in flat and "native NVFP4 graph, no engine" in flat, text
    assert "needs TensorRT 10.8+ on a Blackwell GPU" in flat
    assert "validation passed" in text

    # an explicit format wins over the target's; a variant of the other format is refused
    code, text = build(tmp_path / "int", "--format", "int", "--no-tensorrt")
    assert code in (0, None), text
    record = json.loads((tmp_path / "int" / "build.json").read_text())
    assert record["format"] == "int" and record["stages"]["onnx"]["settings"] == {
        "variant": "w4a4-int"}
    code, text = build(tmp_path / "bad", "--variant", "w4a4-int")
    assert code == 2 and "w4a4-fp4" in text and not (tmp_path / "bad" / "calibrated").exists()
