"""Masked-diffusion objective, optimization and exact resume of the tiny trainer."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from tiny_helpers import MICRO

from faircalib_export.errors import CheckpointError, ConfigError
from faircalib_export.models.loading import load_model
from faircalib_export.tiny.card import refresh_card
from faircalib_export.tiny.data import Batch
from faircalib_export.tiny.train import (
    TrainState,
    add_noise,
    build_model,
    diffusion_loss,
    lr_at,
    make_optimizer,
    model_logits,
    step_batch,
    step_generator,
    train,
    train_steps,
)


def _batch(family="llada", cfg=MICRO, step=0):
    _, enc = build_model(family, cfg)
    return enc, step_batch(cfg, enc, step)


def test_prompt_is_never_masked_and_rate_follows_t():
    enc, batch = _batch(cfg=replace(MICRO, batch_size=64))
    gen = torch.Generator().manual_seed(0)
    rates = []
    for _ in range(20):
        noised = add_noise(batch, enc.mask_id, 1e-3, gen)
        assert not (noised.masked & ~batch.answer_mask).any()
        changed = noised.input_ids != batch.input_ids
        assert torch.equal(changed, noised.masked)
        assert (noised.input_ids[noised.masked] == enc.mask_id).all()
        assert ((noised.t >= 1e-3) & (noised.t <= 1)).all()
        rates.append((noised.masked.sum(1) / batch.answer_mask.sum(1), noised.t))
    got = torch.cat([r for r, _ in rates])
    want = torch.cat([t for _, t in rates])
    assert (got - want).abs().mean() < 0.08  # per-sample masking rate tracks t


def test_loss_weights_each_masked_token_by_one_over_t_and_window():
    enc, batch = _batch()
    b, s = batch.input_ids.shape
    vocab = 64
    batch = Batch(batch.input_ids % vocab, batch.attention_mask, batch.position_ids,
                  batch.answer_mask)
    noised = add_noise(batch, 0, 1e-3, torch.Generator().manual_seed(1))
    # Uniform logits: every masked token costs log(V), so the loss is known in closed form.
    logits = torch.zeros(b, s, vocab, requires_grad=True)
    loss = diffusion_loss(logits, batch, noised)
    window = batch.answer_mask.sum(1).float()
    expected = (noised.masked.sum(1) * math.log(vocab) / (noised.t * window)).mean()
    torch.testing.assert_close(loss, expected)
    loss.backward()
    # unmasked positions get no gradient at all
    assert logits.grad[~noised.masked].abs().max() == 0
    assert logits.grad[noised.masked].abs().max() > 0


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    cfg = replace(MICRO, steps=100, warmup_steps=10, lr=1e-3, min_lr_ratio=0.1)
    assert lr_at(cfg, 0) == pytest.approx(1e-4)
    assert lr_at(cfg, 9) == pytest.approx(1e-3)
    assert lr_at(cfg, 55) < lr_at(cfg, 20)
    assert lr_at(cfg, 99) == pytest.approx(1e-4, rel=0.01)


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_a_few_steps_reduce_the_loss(family):
    torch.set_num_threads(1)
    cfg = replace(MICRO, steps=40, warmup_steps=5)
    model, enc = build_model(family, cfg)
    probe = step_batch(cfg, enc, 10_000)
    noised = add_noise(probe, enc.mask_id, cfg.mask_eps, torch.Generator().manual_seed(0))

    def probe_loss():
        with torch.no_grad():
            logits = model_logits(model, probe, noised.input_ids)
            return diffusion_loss(logits, probe, noised).item()

    before = probe_loss()
    train_steps(model, enc, make_optimizer(model, cfg), cfg, TrainState(), cfg.steps)
    after = probe_loss()
    assert after < 0.7 * before, (before, after)


def test_steps_are_pure_functions_of_seed_and_step():
    enc, a = _batch(step=3)
    _, b = _batch(step=3)
    _, c = _batch(step=4)
    assert torch.equal(a.input_ids, b.input_ids) and not torch.equal(a.input_ids, c.input_ids)
    assert torch.equal(torch.rand(4, generator=step_generator(MICRO, 3)),
                       torch.rand(4, generator=step_generator(MICRO, 3)))


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_resume_continues_exactly(family, tmp_path: Path):
    straight = train(family, tmp_path / "straight", MICRO, state_dir=tmp_path / "s1",
                     console=False)
    part = train(family, tmp_path / "resumed", MICRO, state_dir=tmp_path / "s2",
                 stop_after=3, console=False)
    assert part["step"] == 3 and not (tmp_path / "resumed").exists()
    resumed = train(family, tmp_path / "resumed", MICRO, state_dir=tmp_path / "s2",
                    resume=True, console=False)
    a, b = load_model(tmp_path / "straight"), load_model(tmp_path / "resumed")
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(pa, pb), name
    assert [h["loss"] for h in straight["history"]] == [h["loss"] for h in resumed["history"]]
    # the checkpoint carries its model card and training record
    record = json.loads((tmp_path / "resumed" / "training.json").read_text())
    assert record["steps"] == MICRO.steps and record["heldout"]["n"] == MICRO.eval_examples
    card = (tmp_path / "resumed" / "README.md").read_text()
    assert "Held-out accuracy" in card and f"{MICRO.steps} steps" in card
    assert refresh_card(tmp_path / "resumed").read_text() == card  # rendered from the record


def test_resume_refuses_state_from_a_different_config(tmp_path: Path):
    train("llada", tmp_path / "m", MICRO, state_dir=tmp_path / "s", stop_after=2, console=False)
    with pytest.raises(CheckpointError, match="different run"):
        train("llada", tmp_path / "m", replace(MICRO, lr=1e-2), state_dir=tmp_path / "s",
              resume=True, console=False)


class _Payload:
    """Unpickling this calls os.system: what a malicious pickle state file does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_state_file_runs_nothing(tmp_path: Path):
    """Resume reads safetensors + JSON only: a pickle in the state's place is refused,
    and the code inside it never runs (a torch.load(weights_only=False) would run it)."""
    import pickle

    from faircalib_export.tiny.train import STATE_FILE

    marker = tmp_path / "pwned"
    state = tmp_path / "s"
    state.mkdir()
    (state / STATE_FILE).write_bytes(pickle.dumps(_Payload(marker)))
    torch.save({"x": _Payload(marker)}, state / "train_state.pt")  # the old file name too
    with pytest.raises(CheckpointError, match="not a training state"):
        train("llada", tmp_path / "m", MICRO, state_dir=state, resume=True, console=False)
    assert not marker.exists()
    # the payload is live: unpickling it the old way does run it
    torch.load(state / "train_state.pt", weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("field", ["steps", "batch_size", "threads", "eval_examples",
                                   "log_every", "checkpoint_every"])
def test_config_counts_refuse_zero(field):
    with pytest.raises(ConfigError, match=f"{field} must be an integer >= 1, got 0"):
        replace(MICRO, **{field: 0})


def test_stop_after_zero_is_an_error_not_a_full_run(tmp_path: Path):
    with pytest.raises(ConfigError, match="stop_after must be an integer >= 1, got 0"):
        train("llada", tmp_path / "m", MICRO, state_dir=tmp_path / "s", stop_after=0,
              console=False)
    assert not (tmp_path / "s").exists() and not (tmp_path / "m").exists()


def test_resume_refuses_a_state_whose_optimizer_slot_is_missing(tmp_path: Path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from faircalib_export.tiny.train import STATE_FILE

    train("llada", tmp_path / "m", MICRO, state_dir=tmp_path / "s", stop_after=2, console=False)
    file = tmp_path / "s" / STATE_FILE
    with safe_open(str(file), "pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys() if k != "optimizer.0.exp_avg"}
    save_file(tensors, str(file), metadata=metadata)
    with pytest.raises(CheckpointError, match="damaged training state.*optimizer.0.exp_avg"):
        train("llada", tmp_path / "m", MICRO, state_dir=tmp_path / "s", resume=True,
              console=False)
