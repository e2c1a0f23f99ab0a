"""The loop: determinism, seeds, what it asks the backend for, recording, results."""

from __future__ import annotations

import numpy as np
import pytest
from runtime_mocks import HashedBackend, SummaryOnlyBackend

from faircalib_runtime import (
    DreamConfig,
    FunctionBackend,
    LLaDAConfig,
    RandomCommitConfig,
    TextDecoder,
    Trajectory,
    TrajectoryRecorder,
    generate,
)

V, MASK, EOS = 40, 39, 0
PROMPTS = [[5, 6, 7, 8], [9, 10], [11, 12, 13]]


def configs(sampling: bool):
    t = 1.0 if sampling else 0.0
    common = dict(mask_id=MASK, eos_ids=[EOS], seed=1)
    out = [
        LLaDAConfig(gen_length=8, block_length=4, steps=8, temperature=t, **common),
        LLaDAConfig(gen_length=8, block_length=4, steps=4, temperature=t, remasking="random",
                    **common),
        RandomCommitConfig(window_length=8, steps=4, temperature=t, **common),
    ]
    for alg in ("origin", "maskgit_plus", "topk_margin", "entropy"):
        out.append(DreamConfig(max_new_tokens=8, steps=4, alg=alg, temperature=t, **common))
    if sampling:
        out += [
            LLaDAConfig(gen_length=8, block_length=8, steps=4, temperature=1.5, cfg_scale=0.2,
                        **common),
            DreamConfig(max_new_tokens=8, steps=4, alg="entropy", temperature=0.8, top_p=0.9,
                        top_k=10, alg_temp=0.5, **common),
        ]
    return out


def ids(cfg):
    return f"{cfg.policy}-{getattr(cfg, 'alg', getattr(cfg, 'remasking', ''))}"


@pytest.mark.parametrize("cfg", configs(sampling=False), ids=ids)
def test_greedy_requests_only_summaries_and_is_deterministic(cfg):
    backend = SummaryOnlyBackend(V, MASK)
    a = generate(backend, PROMPTS, cfg)
    b = generate(SummaryOnlyBackend(V, MASK), PROMPTS, cfg)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    # float64 summaries for policies pinned to float64 (random_commit has no confidence)
    assert backend.wants and set(backend.wants) == {
        "summary64" if cfg.float64_confidence else "summary"}
    assert (a.window != MASK).all()
    # The full-logits path (forced here by asking for reference-token probabilities)
    # makes the same decisions as the summary path.
    logits_backend = HashedBackend(V, MASK)
    recorder = TrajectoryRecorder(reference_tokens=np.zeros((3, cfg.window), np.int64))
    full = generate(logits_backend, PROMPTS, cfg, recorder=recorder)
    assert set(logits_backend.wants) == {"logits"}
    np.testing.assert_array_equal(a.tokens, full.tokens)


@pytest.mark.parametrize("cfg", configs(sampling=True), ids=ids)
def test_sampling_seeds(cfg):
    backend = HashedBackend(V, MASK)
    a = generate(backend, PROMPTS, cfg)
    assert "logits" in backend.wants
    b = generate(HashedBackend(V, MASK), PROMPTS, cfg)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.commit_step, b.commit_step)
    other = generate(HashedBackend(V, MASK), PROMPTS, type(cfg).from_dict(
        cfg.to_dict() | {"seed": 2}))
    assert not np.array_equal(a.tokens, other.tokens)


def test_result_cuts_at_first_eos_and_reports_layout():
    def fn(x, m, p):  # window position j of every row predicts token j + 1, w2 predicts EOS
        logits = np.full(x.shape + (V,), -10.0, np.float32)
        for j in range(6):
            logits[:, 3 + j, 1 + j] = 5.0
        logits[:, 5, :] = -10.0
        logits[:, 5, EOS] = 5.0
        return logits

    cfg = LLaDAConfig(gen_length=6, block_length=6, steps=3, mask_id=MASK, eos_ids=[EOS, 33])
    res = generate(FunctionBackend(fn), [[5, 6, 7], [8]], cfg)
    assert res.prompt_width == 3 and res.pad.tolist() == [0, 2]
    assert res.window.tolist() == [[1, 2, EOS, 4, 5, 6]] * 2
    assert res.generated == [[1, 2], [1, 2]]
    assert res.tokens[1, :3].tolist() == [EOS, EOS, 8]
    assert sorted(res.commit_step[0].tolist()) == [0, 0, 1, 1, 2, 2]
    assert res.steps_run == 3


def test_prompt_validation():
    cfg = LLaDAConfig(gen_length=4, block_length=4, steps=4, mask_id=MASK, eos_ids=[EOS])
    backend = HashedBackend(V, MASK)
    with pytest.raises(ValueError, match="mask id"):
        generate(backend, [[1, MASK]], cfg)
    with pytest.raises(ValueError, match="empty"):
        generate(backend, [[1], []], cfg)
    with pytest.raises(ValueError, match="no prompts"):
        generate(backend, [], cfg)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_trajectory_recorder(tmp_path, temperature):
    cfg = RandomCommitConfig(window_length=8, steps=4, temperature=temperature, seed=3,
                             mask_id=MASK, eos_ids=[EOS])
    rec = TrajectoryRecorder()
    res = generate(HashedBackend(V, MASK), PROMPTS, cfg, recorder=rec)
    traj = rec.result()
    assert traj.masked.shape == (4, 3, 8) and traj.ref_prob is None
    assert traj.masked[0].all() and traj.committed.sum(0).tolist() == [[1] * 8] * 3
    assert traj.committed.sum((1, 2)).tolist() == [6] * 4  # 2 per sample per step
    # Statistics only at masked positions, and they are probabilities.
    assert np.isnan(traj.top1_prob[~traj.masked]).all()
    top1 = traj.top1_prob[traj.masked]
    assert ((top1 > 0) & (top1 <= 1)).all()
    assert (traj.margin[traj.masked] >= 0).all() and (traj.neg_entropy[traj.masked] <= 0).all()
    pos, tok = traj.commit_set(0, 1)
    assert len(pos) == 2 and res.window[1, pos].tolist() == tok.tolist()
    # Reference tokens: the loop switches to logits and records their probabilities.
    ref = res.window
    backend = HashedBackend(V, MASK)
    rec_ref = TrajectoryRecorder(reference_tokens=ref)
    res2 = generate(backend, PROMPTS, cfg, recorder=rec_ref)
    np.testing.assert_array_equal(res.tokens, res2.tokens)
    assert set(backend.wants) == {"logits"}
    t2 = rec_ref.result()
    np.testing.assert_allclose(t2.top1_prob, traj.top1_prob, rtol=1e-6)
    committed = t2.committed
    if temperature == 0:  # the token written is the argmax: its probability is the top-1
        np.testing.assert_allclose(t2.ref_prob[committed], t2.top1_prob[committed], rtol=1e-6)
    assert (t2.ref_prob[committed] > 0).all()
    t2.save(tmp_path / "traj.npz")
    back = Trajectory.load(tmp_path / "traj.npz")
    np.testing.assert_array_equal(back.written, t2.written)
    np.testing.assert_array_equal(back.ref_prob, t2.ref_prob)


def test_recorder_checks_reference_shape():
    cfg = RandomCommitConfig(window_length=8, steps=4, mask_id=MASK, eos_ids=[EOS])
    with pytest.raises(ValueError, match="reference_tokens"):
        generate(HashedBackend(V, MASK), PROMPTS, cfg,
                 recorder=TrajectoryRecorder(np.zeros((3, 7), int)))


class CharTokenizer:
    def encode(self, text):
        return [ord(c) - 90 for c in text]

    def decode(self, ids):
        return "".join(chr(i + 90) for i in ids)


def test_text_decoder_plain_tokenizer():
    def fn(x, m, p):  # always predicts "a" (id 7)
        logits = np.zeros(x.shape + (V,), np.float32)
        logits[..., 7] = 5
        return logits

    cfg = DreamConfig(max_new_tokens=3, steps=3, mask_id=MASK, eos_ids=[EOS])
    texts, res = TextDecoder(CharTokenizer()).generate(FunctionBackend(fn), ["bcd"], cfg)
    assert texts == ["aaa"]
    assert res.tokens[0, :3].tolist() == [8, 9, 10]
