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
              "--validate-prompts", "2", *extra])
    captured = capsys.readouterr()
    return exc.value.code, captured.out + captured.err


def test_build_runs_then_skips(llada_dir, tmp_path, capsys, shared_data):
    out = tmp_path / "build"
    code, text = _build(capsys, llada_dir, out, shared_data)
    assert code in (0, 2), text  # 2: validation thresholds failed (random weights)
    record = json.loads((out / "build.json").read_text())
    assert set(record["stages"]) == {"calibrate", "fold", "onnx"}
    assert (out / "onnx" / "model.onnx").is_file()
    assert (out / "validation" / "report.md").is_file()
    assert "tensorrt" in text  # reported as unavailable here, not a traceback
    if code == 2:
        assert "validation failed" in text

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
