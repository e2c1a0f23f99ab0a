"""Hand-worked decodes: each policy commits exactly the positions and tokens computed here."""

from __future__ import annotations

import numpy as np
import pytest
from runtime_mocks import LOW, ScriptedBackend, logits_from_probs

from faircalib_runtime import (
    DreamConfig,
    LLaDAConfig,
    RandomCommitConfig,
    RawLogitsBackend,
    align_logits,
    generate,
)
from faircalib_runtime.rng import Stream, uniform


def commits_per_step(backend, prompts, config):
    """[(step, window positions committed)] for sample 0, plus the result."""
    steps = []
    res = generate(backend, prompts, config,
                   on_step=lambda e: steps.append(np.flatnonzero(e.committed[0]).tolist()))
    p = res.prompt_width
    return [[i - p for i in s] for s in steps], res


# --- LLaDA ------------------------------------------------------------------------------
V, MASK, EOS = 8, 7, 0


def llada_table():
    """Prompt [5, 6] then window positions 0..3 (sequence positions 2..5)."""
    rows = [
        logits_from_probs({1: 1.0}, V),  # prompt
        logits_from_probs({1: 1.0}, V),  # prompt
        logits_from_probs({1: 0.5, 2: 0.3, 3: 0.2}, V),  # w0: token 1, conf 0.5
        logits_from_probs({2: 0.9, 1: 0.1}, V),  # w1: token 2, conf 0.9
        logits_from_probs({3: 0.99, 4: 0.01}, V),  # w2: token 3, conf 0.99 (block 2)
        logits_from_probs({4: 0.6, 5: 0.4}, V),  # w3: token 4, conf 0.6
    ]
    return np.stack(rows)


def test_llada_one_commit_per_step_respects_blocks():
    cfg = LLaDAConfig(gen_length=4, block_length=2, steps=4, mask_id=MASK, eos_ids=[EOS])
    steps, res = commits_per_step(ScriptedBackend(llada_table()), [[5, 6]], cfg)
    # Block 1 (w0, w1): w1 first (0.9 > 0.5) even though w2 (0.99) is surer: it lies
    # beyond the block end and gets -inf.
    assert steps == [[1], [0], [2], [3]]
    assert res.window.tolist() == [[1, 2, 3, 4]]
    assert res.commit_step.tolist() == [[1, 0, 2, 3]]
    assert res.generated == [[1, 2, 3, 4]]


def test_llada_gen4_block2_steps2_commits_whole_blocks():
    cfg = LLaDAConfig(gen_length=4, block_length=2, steps=2, mask_id=MASK, eos_ids=[EOS])
    steps, res = commits_per_step(ScriptedBackend(llada_table()), [[5, 6]], cfg)
    assert steps == [[0, 1], [2, 3]]
    assert res.commit_step.tolist() == [[0, 0, 1, 1]]


def test_llada_ties_pick_lowest_index():
    table = llada_table()
    table[2] = table[3] = logits_from_probs({2: 0.5, 1: 0.5}, V)  # equal confidence
    cfg = LLaDAConfig(gen_length=4, block_length=4, steps=4, mask_id=MASK, eos_ids=[EOS])
    steps, res = commits_per_step(ScriptedBackend(table), [[5, 6]], cfg)
    # w2 (0.99) and w3 (0.6) first; then w0 and w1 tie at 0.5: the lower index wins
    assert steps == [[2], [3], [0], [1]]
    assert res.window[0, :2].tolist() == [1, 1]  # argmax tie: the lower token id


def test_llada_schedule_counts_sum_to_block_masks():
    table = np.zeros((2 + 12, V), np.float32)
    table[:, MASK] = LOW
    cfg = LLaDAConfig(gen_length=12, block_length=6, steps=8, mask_id=MASK, eos_ids=[EOS])
    steps, res = commits_per_step(ScriptedBackend(table), [[5, 6]], cfg)
    counts = [len(s) for s in steps]
    assert counts == [2, 2, 1, 1, 2, 2, 1, 1]  # 6 masks over 4 steps per block
    assert sum(counts[:4]) == 6 and sum(counts[4:]) == 6
    assert all(0 <= p < 6 for s in steps[:4] for p in s)
    assert (res.commit_step >= 0).all()


def test_llada_random_remasking_follows_uniforms():
    cfg = LLaDAConfig(gen_length=4, block_length=4, steps=4, remasking="random", seed=11,
                      mask_id=MASK, eos_ids=[EOS])
    steps, _ = commits_per_step(ScriptedBackend(llada_table()), [[5, 6]], cfg)
    s, p = 6, 2
    remaining, expected = [0, 1, 2, 3], []
    for step in range(4):
        u = uniform(np.arange(s), 11, step, Stream.REMASK_RANDOM)[p:]
        best = max(remaining, key=lambda i: u[i])
        expected.append([best])
        remaining.remove(best)
    assert steps == expected


def test_llada_rejects_bad_block_and_step_counts():
    with pytest.raises(ValueError, match="multiple of block_length"):
        LLaDAConfig(gen_length=5, block_length=2, steps=4, mask_id=MASK, eos_ids=[EOS])
    with pytest.raises(ValueError, match="number of blocks"):
        LLaDAConfig(gen_length=4, block_length=2, steps=3, mask_id=MASK, eos_ids=[EOS])


class GuidedBackend(ScriptedBackend):
    """Conditional rows see `cond`, rows whose first prompt token is masked see `uncond`."""

    def __init__(self, cond, uncond):
        super().__init__(cond)
        self.uncond = np.asarray(uncond, np.float32)

    def logits(self, input_ids):
        out = super().logits(input_ids)
        is_uncond = input_ids[:, 0] == MASK
        out[is_uncond] = self.uncond[None, : input_ids.shape[1]]
        return out


def test_llada_cfg_combines_conditional_and_unconditional():
    cond = np.full((4, V), LOW, np.float32)
    uncond = cond.copy()
    cond[2, [1, 2]] = [1.0, 1.5]  # alone: token 2
    uncond[2, [1, 2]] = [-1.0, 2.0]
    cond[3, 3] = uncond[3, 3] = 1.0
    cond[:2, 1] = uncond[:2, 1] = 0.0
    backend = GuidedBackend(cond, uncond)
    cfg = LLaDAConfig(gen_length=2, block_length=2, steps=1, cfg_scale=1.0, mask_id=MASK,
                      eos_ids=[EOS])
    res = generate(backend, [[5, 6]], cfg)
    # un + 2 (cond - un) = [.., 3.0, 1.0] at position 2: token 1
    assert res.window.tolist() == [[1, 3]]
    (call,) = backend.calls
    assert call["want"] == "logits"
    assert call["input_ids"].tolist() == [[5, 6, MASK, MASK], [MASK, MASK, MASK, MASK]]


def test_llada_cfg_masks_pads_and_doubles_attention_mask():
    table = np.zeros((5, V), np.float32)
    backend = GuidedBackend(table, table)
    cfg = LLaDAConfig(gen_length=2, block_length=2, steps=1, cfg_scale=0.5, mask_id=MASK,
                      eos_ids=[EOS])
    generate(backend, [[5, 6, 4], [3]], cfg)
    call = backend.calls[0]
    assert call["input_ids"][:, :3].tolist() == [[5, 6, 4], [EOS, EOS, 3], [MASK] * 3,
                                                 [MASK] * 3]
    assert call["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]] * 2
    assert call["position_ids"] is None


# --- Dream ------------------------------------------------------------------------------
DV, DMASK = 24, 23


def dream_table():
    """Prompt [5] then window w0 = X, w1 = Y, w2 = Z.

    X: top1 .62 (highest), margin .26, neg-entropy -0.742
    Y: top1 .60, margin .58 (highest), neg-entropy -1.871
    Z: top1 .58, margin .16, neg-entropy -0.680 (highest)
    """
    y = {2: 0.6} | {t: 0.02 for t in range(3, 23)}
    return np.stack([
        logits_from_probs({5: 1.0}, DV),
        logits_from_probs({1: 0.62, 4: 0.36, 5: 0.02}, DV),
        logits_from_probs(y, DV),
        logits_from_probs({3: 0.58, 4: 0.42}, DV),
    ])


@pytest.mark.parametrize("top_k", [None, DV])  # top_k = V: same distribution, logits path
@pytest.mark.parametrize("alg, first", [("maskgit_plus", 0), ("topk_margin", 1), ("entropy", 2)])
def test_dream_confidence_algs(alg, first, top_k):
    cfg = DreamConfig(max_new_tokens=3, steps=2, alg=alg, top_k=top_k, mask_id=DMASK,
                      eos_ids=[0])
    backend = ScriptedBackend(dream_table())
    steps, res = commits_per_step(backend, [[5]], cfg)
    # ts = [1, .5005, .001]: k0 = int(3 * (1 - .5005)) = 1, then the remaining 2
    assert steps[0] == [first]
    assert sorted(steps[1]) == sorted({0, 1, 2} - {first})
    assert res.window.tolist() == [[1, 2, 3]]
    assert {c["want"] for c in backend.calls} == {"summary" if top_k is None else "logits"}


def test_dream_k_schedule():
    cfg = DreamConfig(max_new_tokens=3, steps=3, alg="maskgit_plus", mask_id=DMASK,
                      eos_ids=[0])
    steps, _ = commits_per_step(ScriptedBackend(dream_table()), [[5]], cfg)
    # ts = [1, .667, .334, .001]: int(3 * .333) = 0, int(3 * .49925) = 1, then all (2)
    assert [len(s) for s in steps] == [0, 1, 2]
    assert steps[1] == [0]


def test_dream_origin_transfers_where_uniform_below_ratio():
    seed, s, p = 3, 4, 1
    cfg = DreamConfig(max_new_tokens=3, steps=2, alg="origin", seed=seed, mask_id=DMASK,
                      eos_ids=[0])
    steps, res = commits_per_step(ScriptedBackend(dream_table()), [[5]], cfg)
    u = uniform(np.arange(s), seed, 0, Stream.TRANSFER)[p:]
    ratio = np.float32(1) - np.float32(0.5005) / np.float32(1.0)
    assert steps[0] == [i for i in range(3) if u[i] < ratio]
    assert sorted(steps[0] + steps[1]) == [0, 1, 2]  # last step transfers everything left
    assert res.window.tolist() == [[1, 2, 3]]


def test_dream_left_padding_mask_and_positions():
    table = np.zeros((3 + 2, DV), np.float32)
    backend = ScriptedBackend(table)
    cfg = DreamConfig(max_new_tokens=2, steps=2, mask_id=DMASK, eos_ids=[0], pad_id=9)
    generate(backend, [[5, 6, 7], [8]], cfg)
    call = backend.calls[0]
    assert call["input_ids"].tolist() == [[5, 6, 7, DMASK, DMASK], [9, 9, 8, DMASK, DMASK]]
    assert call["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]]
    assert call["position_ids"].tolist() == [[0, 1, 2, 3, 4], [1, 1, 0, 1, 2]]


def test_no_padding_passes_no_mask():
    backend = ScriptedBackend(np.zeros((4, DV), np.float32))
    cfg = DreamConfig(max_new_tokens=2, steps=1, mask_id=DMASK, eos_ids=[0])
    generate(backend, [[5, 6], [7, 8]], cfg)
    assert backend.calls[0]["attention_mask"] is None
    assert backend.calls[0]["position_ids"] is None


def test_llada_left_padding_mask_only():
    backend = ScriptedBackend(np.zeros((4, V), np.float32))
    cfg = LLaDAConfig(gen_length=2, block_length=2, steps=2, mask_id=MASK, eos_ids=[EOS, 3])
    generate(backend, [[5, 6], [4]], cfg)
    call = backend.calls[0]
    assert call["input_ids"][1, :2].tolist() == [EOS, 4]  # pad = first EOS id
    assert call["attention_mask"].tolist() == [[1, 1, 1, 1], [0, 1, 1, 1]]
    assert call["position_ids"] is None


# --- shift --------------------------------------------------------------------------------

def test_align_logits_shift():
    raw = np.arange(2 * 4 * 3, dtype=np.float32).reshape(2, 4, 3)
    out = align_logits(raw, shift=True)
    assert (out[:, 0] == raw[:, 0]).all()
    assert (out[:, 1:] == raw[:, :-1]).all()
    assert align_logits(raw, shift=False) is raw


def test_raw_logits_backend_applies_dream_shift():
    def raw_fn(ids, mask, pos):  # hidden state at i predicts token i + 1
        b, s = ids.shape
        out = np.full((b, s, DV), LOW, np.float32)
        out[:, np.arange(s), np.minimum(np.arange(s) + 1, 20)] = 0.0
        return out

    cfg = DreamConfig(max_new_tokens=3, steps=3, alg="entropy", mask_id=DMASK, eos_ids=[0])
    shifted = generate(RawLogitsBackend(raw_fn, shift=True), [[9, 9]], cfg)
    assert shifted.window.tolist() == [[2, 3, 4]]  # aligned: position i holds token i
    unshifted = generate(RawLogitsBackend(raw_fn, shift=False), [[9, 9]], cfg)
    assert unshifted.window.tolist() == [[3, 4, 5]]


# --- random commit --------------------------------------------------------------------------

def test_random_commit_subsets_follow_uniforms():
    seed, s, p = 5, 6, 2
    cfg = RandomCommitConfig(window_length=4, steps=2, temperature=0, seed=seed,
                             mask_id=MASK, eos_ids=[EOS])
    steps, res = commits_per_step(ScriptedBackend(llada_table()), [[5, 6]], cfg)
    remaining, expected = [0, 1, 2, 3], []
    for step in range(2):
        u = uniform(np.arange(s), seed, step, Stream.COMMIT_ORDER)[p:]
        chosen = sorted(sorted(remaining, key=lambda i: -u[i])[:2])
        expected.append(chosen)
        remaining = [i for i in remaining if i not in chosen]
    assert steps == expected
    assert res.window.tolist() == [[1, 2, 3, 4]]  # temperature 0: argmax tokens
