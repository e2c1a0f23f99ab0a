"""The typer commands, mounted on a throwaway app the way the CLI registers them."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from tiny_helpers import MICRO
from typer.testing import CliRunner

from faircalib_export.tiny.commands import eval_cmd, train_cmd
from faircalib_export.tiny.train import train

app = typer.Typer()
tiny = typer.Typer()
tiny.command("train")(train_cmd)
app.add_typer(tiny, name="tiny")
app.command("eval")(eval_cmd)
runner = CliRunner()


def test_train_cmd_writes_a_checkpoint_and_can_resume(tmp_path: Path):
    out, state = tmp_path / "m", tmp_path / "state"
    args = ["tiny", "train", "--family", "dream", "--out", str(out), "--steps", "3",
            "--eval-examples", "2", "--batch-size", "4", "--state-dir", str(state)]
    first = runner.invoke(app, [*args, "--stop-after", "2"])
    assert first.exit_code == 0, first.output
    assert (state / "train_state.pt").is_file() and not out.exists()
    second = runner.invoke(app, [*args, "--resume"])
    assert second.exit_code == 0, second.output
    record = json.loads((out / "training.json").read_text())
    assert record["steps"] == 3 and record["config"]["seed"] == 2  # dream's default seed
    assert (out / "vocab.json").is_file() and (out / "merges.txt").is_file()


def test_eval_cmd_prints_a_table_and_writes_json(tmp_path: Path):
    model = tmp_path / "micro"
    train("llada", model, MICRO, state_dir=tmp_path / "s", console=False)
    out = tmp_path / "res" / "eval.json"
    result = runner.invoke(app, ["eval", str(model), "--task", "chain", "--limit", "5",
                                 "--steps", "8", "-o", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["n"] == 5 and data["family"] == "llada"
    assert data["decoding"]["steps"] == 8 and data["decoding"]["policy"] == "low_confidence"
    assert "accuracy" in result.output
