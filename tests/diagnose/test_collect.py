"""Recording passes on scripted models: flips, margins, KL, mismatch, lag, divergence.

Models whose logits at a masked window position come from a fixed table (so the LLaDA
policy's commit order and every number below follow by hand), and whose prediction at
a committed position either repeats the input token ("copy") or names another one
("shift", which never agrees after a commit).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from faircalib_export.diagnose import metrics as M
from faircalib_export.diagnose.collect import kl_div, margin, own_pass, teacher_pass
from faircalib_export.diagnose.report import ForcedTally, OwnTally
from faircalib_export.diagnose.run import own_from_teacher
from faircalib_runtime import LLaDAConfig

V, MASK, EOS, K = 8, 7, 6, 4
CONF = [1.0, 3.0, 2.0, 4.0]  # teacher: position i writes token i with logit CONF[i]
# Commit order by confidence: pos 3 (step 0), pos 1 (1), pos 2 (2), pos 0 (3).
COMMIT_STEP = [3, 1, 2, 0]


def table(flip_pos2: bool) -> torch.Tensor:
    t = torch.zeros(K, V)
    for i, c in enumerate(CONF):
        t[i, i] = c
    t[:, MASK] = -1e4
    if flip_pos2:
        t[2, 5] = 2.5  # the student prefers token 5 over the teacher's token 2
    return t


class Scripted:
    def __init__(self, window_table: torch.Tensor, committed: str):
        self.table, self.committed = window_table, committed
        self.calls = 0

    def __call__(self, input_ids, attention_mask=None, position_ids=None):
        self.calls += 1
        b, s = input_ids.shape
        out = torch.zeros(b, s, V)
        out[:, s - K:] = self.table
        window = input_ids[:, s - K:]
        written = window != MASK
        shift = 1 if self.committed == "shift" else 0
        hot = torch.nn.functional.one_hot((window + shift) % 6, V).float() * 5.0
        out[:, s - K:] = torch.where(written[..., None], hot, out[:, s - K:])
        return out


POLICY = LLaDAConfig(mask_id=MASK, eos_ids=(EOS,), gen_length=K, block_length=K, steps=K)
PROMPTS = [[1, 2, 3], [4, 5]]


@pytest.fixture(scope="module")
def passes():
    teacher = Scripted(table(False), "copy")
    student = Scripted(table(True), "shift")
    tp = teacher_pass(teacher, [student], PROMPTS, POLICY, "cpu")
    op = own_pass(student, PROMPTS, POLICY, "cpu", teacher=teacher, teacher_states=tp.states)
    return teacher, student, tp, op


def test_teacher_trajectory(passes):
    _, _, tp, _ = passes
    np.testing.assert_array_equal(tp.commit_step, [COMMIT_STEP] * 2)
    np.testing.assert_array_equal(tp.tokens, [[0, 1, 2, 3]] * 2)
    assert tp.committed.shape == (K, 2, K) and tp.obs.shape == (K + 1, 2, K)
    assert tp.states.shape == (K + 1, 2, 3 + K)
    np.testing.assert_array_equal(tp.committed.sum(axis=(0, 2)), [K, K])


def test_teacher_forced_flips_margin_and_kl(passes):
    _, _, tp, _ = passes
    tally = ForcedTally(K)
    tally.add(tp, tp.students[0])
    rep = tally.report()
    assert rep["flips_per_seq"]["values"] == [1, 1]  # position 2, at step 2
    assert rep["flip_rate"] == pytest.approx(1 / 4)
    np.testing.assert_allclose(rep["by_position"]["flip_rate"], [0, 0, 1, 0])
    # Student margin of the teacher's token: c_i, except 2.0 - 2.5 at position 2.
    assert rep["margin"]["mean"] == pytest.approx((4 + 3 - 0.5 + 1) / 4)
    np.testing.assert_allclose(rep["by_position"]["margin"], [1.0, 3.0, -0.5, 4.0])
    teacher_margin = M.nanmean_per_sequence(tp.margin)
    np.testing.assert_allclose(teacher_margin, [2.5, 2.5])
    # KL only at position 2, masked before steps 0, 1, 2: 3 of the 10 masked entries.
    logp = torch.log_softmax(table(False)[2].double(), -1)
    logq = torch.log_softmax(table(True)[2].double(), -1)
    kl2 = float((logp.exp() * (logp - logq)).sum())
    assert kl2 > 0.01
    assert rep["kl_masked"]["mean"] == pytest.approx(3 * kl2 / 10, rel=1e-5)
    assert rep["kl_commit"]["mean"] == pytest.approx(kl2 / 4, rel=1e-5)
    np.testing.assert_allclose(rep["by_position"]["kl_masked"], [0, 0, kl2, 0], atol=1e-6)


def test_post_commit_mismatch_and_lag(passes):
    _, _, tp, op = passes
    teacher = OwnTally()
    teacher.add(own_from_teacher(tp))
    rep = teacher.own_report()  # "copy": agrees after every commit
    assert rep["post_commit"]["mean_disagree_rate"]["mean"] == 0.0
    assert rep["post_commit"]["never_agree_rate"]["mean"] == 0.0
    assert rep["stability_lag"]["lag"]["mean"] == 0.0
    assert rep["stability_lag"]["ccdf"] == {"x": [0], "p": [1.0]}
    student = OwnTally()
    student.add(op, reference=tp.tokens)
    rep = student.own_report()  # "shift": never agrees; lag = observations after commit
    assert rep["post_commit"]["mean_disagree_rate"]["mean"] == 1.0
    assert rep["post_commit"]["never_agree_rate"]["mean"] == 1.0
    lags = sorted(K - c for c in COMMIT_STEP)  # O - 1 - c with O = K + 1
    assert rep["stability_lag"]["lag"]["mean"] == pytest.approx(np.mean(lags))
    assert rep["stability_lag"]["censored_rate"] == 1.0
    assert rep["stability_lag"]["ccdf"]["p"] == [1.0, 1.0, 0.75, 0.5, 0.25]


def test_divergence_trace_and_first_false_commit(passes):
    teacher, student, tp, op = passes
    np.testing.assert_array_equal(op.tokens, [[0, 1, 5, 3]] * 2)
    tally = OwnTally()
    tally.add(op, reference=tp.tokens)
    div = tally.divergence_report()
    assert div["first_false_commit"]["values"] == [2, 2]
    assert div["final_disagreement"]["mean"] == 0.25
    # By hand, per step s: positions committed before s are unmasked in both states
    # (the same ones: identical commit order); masked ones differ only at position 2.
    expected = []
    for s in range(K):
        x = torch.full((1, 3 + K), MASK)
        for i, c in enumerate(COMMIT_STEP):
            if c < s:
                x[0, 3 + i] = i if i != 2 else 5
        xt = x.clone()
        xt[0, 3 + 2] = 2 if COMMIT_STEP[2] < s else MASK
        ps = torch.softmax(student(x)[0, 3:], -1)
        pt = torch.softmax(teacher(xt)[0, 3:], -1)
        expected.append(float(((ps - pt) ** 2).sum(-1).mean()))
    np.testing.assert_allclose(op.mse_prob[:, 0], expected, rtol=1e-5)
    np.testing.assert_allclose(div["mse_prob"]["mean"], expected, rtol=1e-5)
    assert div["mse_prob"]["since_first_false"][0] == pytest.approx(expected[2], rel=1e-5)


def test_margin_and_kl_helpers():
    z = torch.tensor([[[1.0, 3.0, 2.0]]])
    assert margin(z, torch.tensor([[1]])).item() == pytest.approx(1.0)
    assert margin(z, torch.tensor([[0]])).item() == pytest.approx(-2.0)
    assert kl_div(z, z).item() == pytest.approx(0.0, abs=1e-7)
