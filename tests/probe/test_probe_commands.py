"""probe / probe-compare end to end on a random tiny checkpoint, through a typer app."""

from __future__ import annotations

import json

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from faircalib_export.models.loading import load_tokenizer
from faircalib_export.models.tiny import write_tiny_checkpoint
from faircalib_export.probe.commands import probe_cmd, probe_compare_cmd
from faircalib_export.probe.prior import Prior
from faircalib_export.probe.prompts import COT_INSTRUCTION, load_prompts

app = typer.Typer()
app.command("probe")(probe_cmd)
app.command("probe-compare")(probe_compare_cmd)
runner = CliRunner()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ck") / "llada", "llada",
                                 init_std=0.2, hidden_size=32, num_layers=1, num_heads=2)


def invoke(*args: str):
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def test_probe_writes_the_prior_directory(tiny, tmp_path):
    out = tmp_path / "prior"
    invoke("probe", str(tiny), "-o", str(out), "--data", "task:chain", "--samples", "5",
           "--window", "8", "--steps", "8", "--batch-size", "3", "--seed", "1")
    files = {p.name for p in out.iterdir()}
    assert files == {"prior.json", "prior_frontier.json", "prior_reliability.json",
                     "per_sample.npz", "prior.png", "manifest.json"}
    prior = Prior.load(out)
    assert prior.weights.shape == (8,) and prior.weights.max() == 1.0
    assert prior.settings["n_samples"] == 5 and prior.settings["schedule"] == "early-boost"
    assert Prior.load(out / "prior_frontier.json").settings["component"] == "frontier"
    with np.load(out / "per_sample.npz") as data:
        assert data["per_sample"].shape == (5, 8)
        np.testing.assert_allclose(data["per_sample"].max(axis=1), 1.0)
        np.testing.assert_allclose(data["combined_mean"] / data["combined_mean"].max(),
                                   prior.weights)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "prior" and manifest["config"]["data"] == "task:chain"
    assert "model_config" in manifest["inputs"]
    assert not list(tmp_path.glob(".prior.tmp*"))  # atomic: no leftovers


def test_probe_ablation_settings_and_compare(tiny, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    common = ["--data", "task:chain", "--samples", "4", "--window", "8", "--steps", "8"]
    invoke("probe", str(tiny), "-o", str(a), *common)
    invoke("probe", str(tiny), "-o", str(b), *common, "--seed", "2", "--schedule", "none",
           "--score", "margin", "--floor", "0.1")
    assert not (b / "prior_frontier.json").exists()  # no frontier term to save
    assert Prior.load(b).floor == 0.1 and Prior.load(b).settings["score"] == "margin"
    png = tmp_path / "cmp" / "compare.png"
    result = invoke("probe-compare", str(a), str(b), "-o", str(png))
    assert png.is_file()
    numbers = json.loads(png.with_suffix(".json").read_text())
    assert -1 <= numbers["spearman"] <= 1 and numbers["n"] == 8
    assert set(numbers["components"]) == {"combined", "reliability"}
    assert "spearman" in result.output


def test_probe_rejects_a_bad_schedule(tiny, tmp_path):
    result = runner.invoke(app, ["probe", str(tiny), "-o", str(tmp_path / "p"), "--data",
                                 "task:chain", "--schedule", "sideways"])
    assert result.exit_code != 0 and "sideways" in str(result.exception)
    assert not (tmp_path / "p").exists()


def test_prompt_sources(tiny, tmp_path):
    tok = load_tokenizer(tiny)
    gsm = tmp_path / "gsm.jsonl"
    gsm.write_text(json.dumps({"question": "How many apples?", "answer": "#### 3"}) + "\n\n"
                   + json.dumps({"question": "Two?", "answer": "#### 2"}) + "\n")
    ids = load_prompts(str(gsm), tiny, 5, tokenizer=tok)
    assert len(ids) == 2
    text = tok.decode(ids[0])
    assert "How many apples?\n" + COT_INSTRUCTION in text
    assert "<|start_header_id|>assistant" in text  # chat template applied
    lines = tmp_path / "wiki.txt"
    lines.write_text("first line\n\n second line \nthird\n")
    ids = load_prompts(str(lines), tiny, 2, tokenizer=tok, max_tokens=4)
    assert len(ids) == 2 and all(len(p) <= 4 for p in ids)
    assert tok.decode(load_prompts(str(lines), tiny, 1, tokenizer=tok)[0]).endswith("first line")
    task = load_prompts("task:chain", tiny, 3, tokenizer=tok)
    assert len(task) == 3 and "start" in tok.decode(task[0])
