"""`faircalib-export tiny train` and `faircalib-export eval` through the real CLI entry point
(`faircalib_export.cli.main`): exit status, what is printed and the files written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from faircalib_export.cli import main


def _cli(capsys, *args: str) -> tuple[int, str]:
    """(exit status, stdout + stderr) of `faircalib-export ARGS`."""
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    captured = capsys.readouterr()
    return exc.value.code or 0, captured.out + captured.err


def test_train_cmd_writes_a_checkpoint_and_can_resume(tmp_path: Path, capsys):
    out, state = tmp_path / "m", tmp_path / "state"
    args = ["tiny", "train", "--family", "dream", "--out", str(out), "--steps", "3",
            "--eval-examples", "2", "--batch-size", "4", "--state-dir", str(state)]
    code, text = _cli(capsys, *args, "--stop-after", "2")
    assert code == 0, text
    assert (state / "train_state.safetensors").is_file() and not out.exists()
    code, text = _cli(capsys, *args, "--resume")
    assert code == 0, text
    record = json.loads((out / "training.json").read_text())
    assert record["steps"] == 3 and record["config"]["seed"] == 2  # dream's default seed
    assert (out / "vocab.json").is_file() and (out / "merges.txt").is_file()
    assert "held-out accuracy" in text


def test_eval_cmd_prints_a_table_and_writes_json(tmp_path: Path, capsys):
    out = tmp_path / "res" / "eval.json"  # parent created by the command
    code, text = _cli(capsys, "eval", "llada-chain", "--task", "chain", "--limit", "5",
                      "-o", str(out))
    assert code == 0, text
    data = json.loads(out.read_text())
    assert data["n"] == 5 and data["family"] == "llada" and data["task"] == "chain"
    assert data["accuracy"] == pytest.approx(data["correct"] / 5)
    assert data["correct"] >= 3  # the shipped model is trained: most of 5 are right
    # the results table: its accuracy column with this run's value
    assert "accuracy" in text and f"{data['accuracy']:.1%}" in text, text
