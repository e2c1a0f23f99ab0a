"""Evaluation harness and the shipped trained checkpoints."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from tiny_helpers import MICRO

from faircalib_export.models.builtin import ASSETS, resolve_model
from faircalib_export.models.loading import read_config
from faircalib_export.tiny.evaluate import DecodeSettings, decode, evaluate, runtime_config
from faircalib_export.tiny.tasks import Split, get_task
from faircalib_export.tiny.train import build_model

SHIPPED = {"llada": "llada-chain", "dream": "dream-chain"}


def test_settings_follow_the_family_defaults():
    assert DecodeSettings.for_family("llada").policy == "low_confidence"
    assert DecodeSettings.for_family("dream").policy == "entropy"
    for family in ("llada", "dream"):
        s = DecodeSettings.for_family(family)
        assert s.window >= 32 and s.steps < s.window  # several tokens per step
    with pytest.raises(ValueError):
        DecodeSettings("low_confidence", window=32, steps=6, block_length=8)


def test_runtime_config_carries_the_settings():
    llada = runtime_config(DecodeSettings.for_family("llada"), mask_id=7, eos_id=3)
    assert (llada.gen_length, llada.steps, llada.block_length) == (32, 16, 8)
    assert llada.temperature == 0 and llada.remasking.value == "low_confidence"
    dream = runtime_config(DecodeSettings.for_family("dream", steps=8), mask_id=7, eos_id=3)
    assert (dream.max_new_tokens, dream.steps, dream.alg.value) == (32, 8, "entropy")
    assert dream.mask_id == 7 and dream.eos_ids == (3,)


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_decode_is_deterministic_and_stops_at_eos(family):
    model, enc = build_model(family, replace(MICRO, seed=5))
    model.eval()
    prompts = enc.prompt_ids(get_task("chain").examples(Split.HELDOUT, 4))
    settings = DecodeSettings.for_family(family)
    a = decode(model, prompts, enc, settings)
    assert a == decode(model, prompts, enc, settings)
    assert len(a) == 4
    for ids in a:
        assert len(ids) <= settings.window
        assert enc.eos_id not in ids and enc.mask_id not in ids


def _shipped(family: str) -> Path:
    path = ASSETS / SHIPPED[family]
    if not (path / "config.json").is_file():
        pytest.skip(f"{path} not present")
    return path


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_shipped_checkpoint_layout_and_size(family):
    path = _shipped(family)
    fam, cfg = read_config(path)
    assert fam.name == family
    size = sum(f.stat().st_size for f in path.iterdir())
    assert size <= 20 * 2**20
    card = (path / "README.md").read_text()
    record = json.loads((path / "training.json").read_text())
    assert record["heldout"]["accuracy"] >= 0.6
    assert f"{record['heldout']['accuracy']:.1%}" in card
    assert resolve_model(SHIPPED[family]) == path


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_eval_on_a_shipped_model_returns_the_json_fields(family):
    result = evaluate(_shipped(family), "chain", limit=8, batch_size=8, console=False)
    for key in ("model", "family", "task", "split", "n", "correct", "accuracy", "stderr",
                "answered", "decoding", "time_s", "samples"):
        assert key in result, key
    assert result["n"] == 8 and result["family"] == family
    assert result["decoding"]["steps"] < result["decoding"]["window"]
    json.dumps(result)
    # a trained model writes answers; 8 problems at >= 60% should get several right
    assert result["answered"] == 1.0 and result["correct"] >= 3


def test_bf16_weights_still_decode(tmp_path):
    path = _shipped("llada")
    result = evaluate(path, "chain", limit=8, batch_size=8, dtype="bf16", console=False)
    assert result["dtype"] == "bf16" and result["n"] == 8


def test_unknown_checkpoint_reports_the_path(tmp_path):
    from faircalib_export.errors import CheckpointError

    with pytest.raises(CheckpointError):
        evaluate(tmp_path / "missing", "chain", limit=1, console=False)
