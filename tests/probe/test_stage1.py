"""Stage I accumulation against hand computations: schedules, scores, normalization."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from faircalib_export.decoding import generate_torch
from faircalib_export.errors import ConfigError
from faircalib_export.probe.config import ProbeConfig, lambda0_values
from faircalib_export.probe.prior import DEFAULT_FLOOR
from faircalib_export.probe.stage1 import (
    PriorAccumulator,
    aggregate,
    batch_seed,
    minmax_over_masked,
    probe,
    probe_shape,
)
from faircalib_runtime import RandomCommitConfig, TrajectoryRecorder

NAN = float("nan")


# --- λ0(t) ------------------------------------------------------------------------------

@pytest.mark.parametrize("schedule, at_1, at_mid, at_T", [
    # T = 5, α = 1.5, ρ = 0.1; t = 3 is the midpoint: ratio 1/2, 0.5^1.5 = 0.353553
    ("early-boost", 0.1, 0.5 ** 1.5, 1.0),
    ("late-boost", 1.0, 0.5 ** 1.5, 0.1),
    ("uniform", 1.0, 1.0, 1.0),
    ("none", 0.0, 0.0, 0.0),
])
def test_lambda0_at_1_mid_T(schedule, at_1, at_mid, at_T):
    lam = lambda0_values(schedule, 5, lambda0=1.0, alpha=1.5, rho=0.1)
    assert lam.shape == (5,)
    assert lam[0] == pytest.approx(at_1)
    assert lam[2] == pytest.approx(at_mid)
    assert lam[4] == pytest.approx(at_T)


def test_lambda0_scale_floor_and_single_step():
    lam = lambda0_values("early-boost", 256, lambda0=2.0, alpha=1.5, rho=0.1)
    assert lam[0] == pytest.approx(0.2)  # t = 1: ρ floor, times λ0
    assert lam[255] == pytest.approx(2.0)
    assert lam[128] == pytest.approx(2.0 * (128 / 255) ** 1.5)  # t = 129, above ρ
    assert np.all(np.diff(lam) >= 0)  # early steps (large t) weigh more
    assert lambda0_values("early-boost", 1)[0] == 1.0
    assert lambda0_values("late-boost", 1)[0] == 1.0


def test_config_validation():
    with pytest.raises(ConfigError, match="schedule"):
        ProbeConfig(schedule="sideways")
    with pytest.raises(ConfigError, match="score"):
        ProbeConfig(score="entropy")
    with pytest.raises(ConfigError, match="both terms"):
        ProbeConfig(schedule="none", lambda1=0.0)
    assert ProbeConfig(lambda1=0.0).has_frontier


# --- per-step normalization ---------------------------------------------------------------

def test_minmax_over_masked_rows():
    score = np.array([[0.2, 0.8, 0.5, 9.0],    # the unmasked 9.0 is ignored
                      [0.4, 0.4, 0.1, 0.4],    # masked entries all equal -> 1
                      [0.3, 0.0, 0.0, 0.0]])   # a single masked entry -> 1
    masked = np.array([[1, 1, 1, 0], [1, 1, 0, 1], [1, 0, 0, 0]], bool)
    out = minmax_over_masked(score, masked)
    np.testing.assert_allclose(out, [[0.0, 1.0, 0.5, 0.0],
                                     [1.0, 1.0, 0.0, 1.0],
                                     [1.0, 0.0, 0.0, 0.0]])
    assert minmax_over_masked(score, np.zeros_like(masked)).sum() == 0


# --- the accumulator on a scripted rollout -------------------------------------------------
# One sample, K = T = 3. Steps (t = 3, 2, 1):
#   s=0: masked 111, commit pos 1, top1 [.2 .8 .5]   -> c~ [0 1 .5]
#   s=1: masked 101, commit pos 0, top1 [.4 - .4]     -> c~ [1 0 1] (flat step)
#   s=2: masked 001, commit pos 2, top1 [- - .9]      -> c~ [0 0 1] (single position)
SCRIPT = [
    dict(masked=[1, 1, 1], committed=[0, 1, 0], written=[-1, 4, -1],
         top1=[.2, .8, .5], margin=[.1, .0, .3], neg_entropy=[-1., -2., -3.]),
    dict(masked=[1, 0, 1], committed=[1, 0, 0], written=[5, -1, -1],
         top1=[.4, NAN, .4], margin=[.5, NAN, .1], neg_entropy=[-1., NAN, -1.]),
    dict(masked=[0, 0, 1], committed=[0, 0, 1], written=[-1, -1, 6],
         top1=[NAN, NAN, .9], margin=[NAN, NAN, .2], neg_entropy=[NAN, NAN, -.5]),
]
MASK_ID = 9


def run_script(config: ProbeConfig, script=SCRIPT) -> tuple[np.ndarray, np.ndarray]:
    acc = PriorAccumulator(config.lambda0_schedule(), config.lambda1, config.score, MASK_ID)
    acc.start(1, 3)
    for step in script:
        def row(key, step=step):
            return np.array([step[key]], dtype=np.float64)

        acc.record(masked=row("masked").astype(bool), committed=row("committed").astype(bool),
                   written=row("written").astype(np.int64), top1_prob=row("top1"),
                   margin=row("margin"), neg_entropy=row("neg_entropy"))
    hit, rel = acc.result()
    return hit[0], rel[0]


L2 = 0.5 ** 1.5  # λ0(t = 2) with T = 3, α = 1.5


@pytest.mark.parametrize("schedule, hit", [
    ("early-boost", [L2, 1.0, 0.1]),  # commits at t = 2, 3, 1
    ("late-boost", [L2, 0.1, 1.0]),
    ("uniform", [1.0, 1.0, 1.0]),
    ("none", [0.0, 0.0, 0.0]),
])
def test_accumulated_frontier_hits_by_schedule(schedule, hit):
    got_hit, got_rel = run_script(ProbeConfig(steps=3, window=3, schedule=schedule))
    np.testing.assert_allclose(got_hit, hit)
    np.testing.assert_allclose(got_rel, [0 + 1, 1 + 0, 0.5 + 1 + 1])


@pytest.mark.parametrize("score, rel", [
    ("top1_prob", [1.0, 1.0, 2.5]),
    # margin: s0 [.1 0 .3] -> [1/3, 0, 1]; s1 [.5 - .1] -> [1, 0, 0]; s2 -> [0, 0, 1]
    ("margin", [1 / 3 + 1, 0.0, 2.0]),
    # neg_entropy: s0 [-1 -2 -3] -> [1, .5, 0]; s1 flat -> [1, 0, 1]; s2 -> [0, 0, 1]
    ("neg_entropy", [2.0, 0.5, 2.0]),
])
def test_accumulated_reliability_by_score(score, rel):
    _, got_rel = run_script(ProbeConfig(steps=3, window=3, score=score, lambda1=0.5))
    np.testing.assert_allclose(got_rel, 0.5 * np.array(rel))


def test_written_mask_id_is_not_a_hit():
    script = [dict(s) for s in SCRIPT]
    script[0] = {**script[0], "written": [-1, MASK_ID, -1]}
    hit, _ = run_script(ProbeConfig(steps=3, window=3, schedule="uniform"), script)
    np.testing.assert_allclose(hit, [1.0, 0.0, 1.0])


def test_more_steps_than_the_schedule_is_an_error():
    with pytest.raises(ValueError, match="more than"):
        run_script(ProbeConfig(steps=2, window=3))


# --- aggregation: per-sample max normalization, averaging, floor ------------------------

def test_aggregate_by_hand():
    hit = np.array([[1.0, 0.0, 1.0], [0.0, 2.0, 0.0]])
    rel = np.array([[1.0, 1.0, 3.0], [2.0, 2.0, 0.0]])
    res = aggregate(hit, rel, ProbeConfig(steps=3, window=3))
    # totals [2 1 4] -> [.5 .25 1]; [2 4 0] -> [.5 1 0]; mean [.5 .625 .5]
    np.testing.assert_allclose(res.per_sample, [[.5, .25, 1.], [.5, 1., 0.]])
    mean, std = res.curves["combined"]
    np.testing.assert_allclose(mean, [.5, .625, .5])
    np.testing.assert_allclose(std, [0.0, .375, .5])
    np.testing.assert_allclose(res.prior.weights, [.8, 1.0, .8])
    assert res.prior.floor == DEFAULT_FLOOR
    assert res.prior.settings["mean_max"] == pytest.approx(.625)
    # components: hit [1 0 1], [0 1 0] -> mean [.5 .5 .5]; rel [1/3 1/3 1], [1 1 0]
    np.testing.assert_allclose(res.frontier.weights, [1, 1, 1])
    np.testing.assert_allclose(res.curves["reliability"][0], [2 / 3, 2 / 3, .5])
    np.testing.assert_allclose(res.reliability.weights, [1, 1, .75])
    assert res.frontier.settings["component"] == "frontier"


def test_aggregate_floor_and_missing_component():
    hit = np.zeros((2, 3))
    rel = np.array([[1.0, 2.0, 4.0], [4.0, 2.0, 1.0]])
    res = aggregate(hit, rel, ProbeConfig(steps=3, window=3, schedule="none", floor=0.2))
    assert res.frontier is None and res.reliability is not None
    assert res.prior.floor == 0.2
    # rows [1 2 4] / 4 and [4 2 1] / 4 -> mean [.625 .5 .625] -> w [1 .8 1]
    np.testing.assert_allclose(res.prior.weights, [1.0, 0.8, 1.0])
    raw = np.array([0.2, 0.2, 1.0, 0.8, 1.0])  # the floor before the window, then w
    np.testing.assert_allclose(res.prior.position_weights(5).numpy(), raw / raw.mean(),
                               rtol=1e-6)
    with pytest.raises(ConfigError, match="zero"):
        aggregate(hit, np.zeros((2, 3)), ProbeConfig(steps=3, window=3))


# --- probe() through the real decode loop -------------------------------------------------

class FixedLogits:
    """A 'model' whose logits depend on the position only (known sharpness per position)."""

    def __init__(self, window_logits: torch.Tensor):
        self.table = window_logits  # (K, V)

    def __call__(self, input_ids, attention_mask=None, position_ids=None):
        b, s = input_ids.shape
        k, v = self.table.shape
        out = torch.zeros(b, s, v)
        out[:, s - k:] = self.table
        return out


def test_probe_matches_hand_accumulation_along_the_recorded_commits():
    k, t, v, mask_id, eos = 6, 4, 10, 9, 8
    gen = torch.Generator().manual_seed(0)
    table = torch.randn(k, v, generator=gen) * 2
    table[:, mask_id] = -1e4
    model = FixedLogits(table)
    prompts = [[1, 2, 3], [4, 5], [6]]
    config = ProbeConfig(steps=t, window=k, batch_size=2, seed=3)
    res = probe(model, prompts, config, mask_id=mask_id, eos_id=eos, family="llada")

    p = torch.softmax(table.double(), -1).numpy()
    top1 = p.max(-1)  # (K,) sharpness per position, identical at every step
    lam = config.lambda0_schedule()
    expected_hit, expected_rel = [], []
    for index, lo in enumerate(range(0, len(prompts), 2)):
        batch = prompts[lo:lo + 2]
        rc = RandomCommitConfig(mask_id=mask_id, eos_ids=(eos,), window_length=k, steps=t,
                                seed=batch_seed(config.seed, index))
        rec = TrajectoryRecorder()
        out = generate_torch(model, batch, rc, device="cpu", recorder=rec)
        commit_step = out.commit_step  # (B, K)
        for b in range(len(batch)):
            hit, rel = np.zeros(k), np.zeros(k)
            for s in range(t):
                masked = commit_step[b] >= s  # still masked before step s
                hit[commit_step[b] == s] += lam[t - s - 1]
                c = top1[masked]
                if c.max() > c.min():
                    rel[masked] += (c - c.min()) / (c.max() - c.min())
                else:
                    rel[masked] += 1.0
            expected_hit.append(hit)
            expected_rel.append(rel)
    np.testing.assert_allclose(res.hit, expected_hit)
    np.testing.assert_allclose(res.rel, expected_rel)
    assert res.prior.weights.max() == 1.0 and len(res.prior.weights) == k
    assert res.info["prompt_lengths"] == [3, 2, 1]
    # Different batches draw different commit orders.
    assert batch_seed(3, 0) != batch_seed(3, 1)


def test_probe_shape_defaults():
    class Cfg:
        hidden_size, family = 64, "llada"

    assert probe_shape(Cfg) == (128, 32, 32)
    assert probe_shape(Cfg, {"faircalib_decoding": {"gen_length": 48}}) == (128, 48, 48)
    Cfg.hidden_size = 4096
    assert probe_shape(Cfg) == (512, 256, 256)
    assert math.isclose(ProbeConfig().alpha, 1.5) and ProbeConfig().steps == 256
