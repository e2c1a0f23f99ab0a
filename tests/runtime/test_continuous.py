"""Continuous batching (faircalib_runtime.continuous): rows that join a running batch at
any step decode exactly as they would alone."""

from __future__ import annotations

import numpy as np
import pytest
from runtime_mocks import LOW, hashed_logits

from faircalib_runtime import DreamConfig, LLaDAConfig, generate
from faircalib_runtime.backend import step_output
from faircalib_runtime.continuous import Continuous, supports

V, MASK, EOS = 40, 39, 0
COMMON = dict(mask_id=MASK, eos_ids=[EOS])


class RowBackend:
    """Hashed logits of each row's REAL tokens only (left pads dropped), so a row's
    predictions do not depend on how much padding its batch gives it; records the rows
    of every call."""

    def __init__(self):
        self.calls: list[int] = []

    def forward(self, input_ids, attention_mask, position_ids, want):
        ids = np.asarray(input_ids)
        real = np.ones(ids.shape, bool) if attention_mask is None else np.asarray(attention_mask)
        out = np.full((*ids.shape, V), LOW, dtype=np.float32)
        for r in range(ids.shape[0]):
            out[r, real[r]] = hashed_logits(ids[r, real[r]][None], V, MASK)[0]
        self.calls.append(ids.shape[0])
        return step_output(out, want)


GREEDY = [
    LLaDAConfig(gen_length=12, block_length=4, steps=6, **COMMON),
    LLaDAConfig(gen_length=8, block_length=8, steps=8, confidence_dtype="float64", **COMMON),
    DreamConfig(max_new_tokens=10, steps=5, alg="entropy", **COMMON),
    DreamConfig(max_new_tokens=10, steps=4, alg="maskgit_plus", **COMMON),
    DreamConfig(max_new_tokens=9, steps=9, alg="topk_margin", **COMMON),
]
PROMPTS = [[5, 6, 7, 8], [9], [11, 12, 13], [14, 15, 16, 17, 18, 19], [20, 21], [22, 23, 24]]


def staggered(config, joins: list[int]):
    """Decode PROMPTS continuously, prompt j joining before step joins[j]; the rows and
    the number of rows in each backend call."""
    backend = RowBackend()
    batch = Continuous(backend, config)
    rows, events, step = {}, {}, 0
    while len(rows) < len(PROMPTS) or len(batch):
        for j, at in enumerate(joins):
            if at == step:
                rows[j] = batch.add(PROMPTS[j])
        for e in batch.step():
            events.setdefault(id(e.row), []).append(e)
        step += 1
    return [rows[j] for j in range(len(PROMPTS))], backend.calls, events


@pytest.mark.parametrize("config", GREEDY, ids=lambda c: f"{c.policy}-{c.window}")
def test_rows_joining_at_any_step_decode_as_alone(config):
    alone = [generate(RowBackend(), [p], config) for p in PROMPTS]
    rows, calls, events = staggered(config, joins=[0, 0, 1, 3, 4, 7])
    for row, ref in zip(rows, alone, strict=True):
        assert row.done
        assert row.generated == ref.generated[0]
        np.testing.assert_array_equal(row.window, ref.window[0])
        # the step events rebuild the window: every written position once, in order
        written = np.full(config.window, MASK)
        for e in events[id(row)]:
            assert (written[e.positions] == MASK).all()
            written[e.positions] = e.tokens
        np.testing.assert_array_equal(written, ref.window[0])
    # rows shared backend calls: fewer calls than decoding one at a time, and more than
    # one row in some of them
    assert len(calls) < sum(ref.steps_run for ref in alone)
    assert max(calls) > 2


def test_llada_rows_in_different_blocks_share_a_step():
    config = GREEDY[0]  # 3 blocks of 2 steps
    rows, calls, _ = staggered(config, joins=[0, 2, 2, 4, 5, 5])
    assert max(calls) == 6  # rows in blocks 0, 1 and 2 together
    assert len(calls) == 5 + 6  # the last rows join at step 5 and take 6 steps


def test_removed_row_leaves_the_batch():
    backend = RowBackend()
    batch = Continuous(backend, GREEDY[2])
    a, b = batch.add(PROMPTS[0]), batch.add(PROMPTS[1])
    batch.step()
    batch.remove(a)
    while len(batch):
        batch.step()
    assert not a.done and b.done
    assert backend.calls[0] == 2 and set(backend.calls[1:]) == {1}


def test_bad_prompt_is_refused_and_the_batch_goes_on():
    batch = Continuous(RowBackend(), GREEDY[0])
    ok = batch.add(PROMPTS[0])
    with pytest.raises(ValueError, match="mask id"):
        batch.add([5, MASK])
    with pytest.raises(ValueError, match="empty"):
        batch.add([])
    while len(batch):
        batch.step()
    assert ok.done and len(batch) == 0


def test_supports_only_deterministic_full_forward_configs():
    assert all(supports(c) for c in GREEDY)
    refused = [
        LLaDAConfig(gen_length=8, block_length=4, steps=4, temperature=1.0, **COMMON),
        LLaDAConfig(gen_length=8, block_length=4, steps=4, remasking="random", **COMMON),
        LLaDAConfig(gen_length=8, block_length=4, steps=4, decode="parallel", **COMMON),
        LLaDAConfig(gen_length=8, block_length=4, steps=4, logits_eos_inf=True, **COMMON),
        DreamConfig(max_new_tokens=8, steps=4, alg="origin", **COMMON),
        DreamConfig(max_new_tokens=8, steps=4, alg="entropy", alg_temp=0.5, **COMMON),
        DreamConfig(max_new_tokens=8, steps=4, alg="entropy", decode="cached", **COMMON),
    ]
    for config in refused:
        assert not supports(config), config
        with pytest.raises(ValueError, match="continuous batching"):
            Continuous(RowBackend(), config)
