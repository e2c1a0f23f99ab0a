"""Evaluation harness and the shipped trained checkpoints."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from tiny_helpers import MICRO

from faircalib_export.models.builtin import ASSETS, resolve_model
from faircalib_export.models.loading import read_config
from faircalib_export.opener import open_model
from faircalib_export.tiny.evaluate import evaluate, policy_for, tiny_decoding
from faircalib_export.tiny.tasks import Split, get_task
from faircalib_export.tiny.train import build_model

SHIPPED = {"llada": "llada-chain", "dream": "dream-chain"}


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_shipped_models_record_the_tiny_decoding(family):
    """One definition of the tiny decoding shape: what training writes is what ships."""
    record = json.loads((_shipped(family) / "generation_config.json").read_text())
    assert record["faircalib_decoding"] == tiny_decoding(family, 32)
    policy = open_model(SHIPPED[family]).policy()
    assert policy.window == 32 and policy.steps == 16  # two commits per step
    if family == "llada":
        assert policy.block_length == 8


def test_policy_for_an_in_memory_model_carries_the_tiny_shape():
    model, enc = build_model("llada", MICRO)
    llada = policy_for(model, enc)
    assert (llada.gen_length, llada.steps, llada.block_length) == (enc.window, enc.window // 2,
                                                                   enc.window // 4)
    assert llada.temperature == 0 and llada.remasking.value == "low_confidence"
    model, enc = build_model("dream", MICRO)
    dream = policy_for(model, enc, steps=8)
    assert (dream.max_new_tokens, dream.steps, dream.alg.value) == (enc.window, 8, "entropy")
    assert dream.mask_id == enc.mask_id and dream.eos_ids == (enc.eos_id,)


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_decode_is_deterministic_and_stops_at_eos(family):
    from faircalib_export.decoding import generate_torch

    model, enc = build_model(family, replace(MICRO, seed=5))
    model.eval()
    prompts = enc.prompt_ids(get_task("chain").examples(Split.HELDOUT, 4))
    policy = policy_for(model, enc)
    a = generate_torch(model, prompts, policy).generated
    assert a == generate_torch(model, prompts, policy).generated
    assert len(a) == 4
    for ids in a:
        assert len(ids) <= policy.window
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
    assert result["kind"] == "checkpoint"
    json.dumps(result)
    # a trained model writes answers; 8 problems at >= 60% should get several right
    assert result["answered"] == 1.0 and result["correct"] >= 3


def test_bf16_weights_still_decode(monkeypatch):
    """`dtype="bf16"` decodes with the checkpoint's weights loaded in bf16 (not fp32 with a
    bf16 label), and the trained model still answers."""
    import torch

    from faircalib_export.models.loading import load_model
    from faircalib_export.models.transformer import DiffusionLM

    path = _shipped("llada")
    seen = {"weights": set(), "logits": set(), "models": []}
    real_forward = DiffusionLM.forward

    def spy(self, *args, **kwargs):  # every forward pass the decode loop makes
        out = real_forward(self, *args, **kwargs)
        seen["weights"] |= {p.dtype for p in self.parameters()}
        seen["logits"].add(out.dtype)
        if not any(m is self for m in seen["models"]):
            seen["models"].append(self)
        return out

    monkeypatch.setattr(DiffusionLM, "forward", spy)
    result = evaluate(path, "chain", limit=8, batch_size=8, dtype="bf16", console=False)
    monkeypatch.undo()
    assert result["dtype"] == "bf16" and result["n"] == 8
    # the model that decoded holds bf16 weights, and its forward passes ran in bf16
    assert len(seen["models"]) == 1, "one model decodes every batch"
    assert seen["weights"] == {torch.bfloat16} and seen["logits"] == {torch.bfloat16}
    # ... and they are the checkpoint's weights rounded to bf16, not some other model
    ids = torch.tensor([[5, 9, 13, 2, 7, 11]])
    with torch.no_grad():
        used = seen["models"][0](ids)
        assert torch.equal(used, load_model(path, dtype="bf16")(ids))
        assert not torch.equal(used.float(), load_model(path)(ids))
    # bf16 rounding must not break decoding: the trained model still writes answers
    assert result["answered"] == 1.0 and result["correct"] >= 3


def test_unknown_checkpoint_reports_the_path(tmp_path):
    from faircalib_export.errors import CheckpointError

    with pytest.raises(CheckpointError):
        evaluate(tmp_path / "missing", "chain", limit=1, console=False)
