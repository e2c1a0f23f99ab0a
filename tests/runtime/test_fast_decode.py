"""Fast decoding modes of the runtime on a numpy attention model with a real KV cache."""

from __future__ import annotations

import numpy as np
import pytest
from cached_mock import ToyCachedModel

from faircalib_runtime import DreamConfig, LLaDAConfig, PolicyConfigError, generate
from faircalib_runtime.fast import FastResult, generate_fast

V, MASK, EOS, EOT = 48, 47, 0, 1
PROMPTS = [[5, 6, 7, 8, 9], [10, 11, 12], [13, 14, 15, 16]]  # left padding in the batch


def llada(**kw):
    base = dict(gen_length=16, block_length=4, steps=16, mask_id=MASK, eos_ids=[EOS, EOT])
    return LLaDAConfig(**{**base, **kw})


def dream(**kw):
    base = dict(max_new_tokens=16, steps=16, mask_id=MASK, eos_ids=[EOS])
    return DreamConfig(**{**base, **kw})


def model(cfg, **kw):
    return ToyCachedModel(V, mask_id=MASK, shift=isinstance(cfg, DreamConfig), **kw)


def fast(cfg, mode, **kw):
    """The same policy run in another decode mode."""
    return cfg.__class__.from_dict({**cfg.to_dict(), "decode": mode, **kw})


@pytest.mark.parametrize("cache", ["prefix", "dual"])
@pytest.mark.parametrize("cfg", [llada(), llada(remasking="random"), llada(temperature=0.7),
                                 dream(), dream(alg="maskgit_plus", temperature=0.5)],
                         ids=["llada", "llada-random", "llada-T", "dream", "dream-T"])
def test_cache_refreshed_every_step_gives_the_exact_tokens(cfg, cache):
    """With K/V recomputed at every step, the cached loop is the exact loop."""
    exact = generate(model(cfg), PROMPTS, cfg)
    dream_block = {"block_length": cfg.window} if isinstance(cfg, DreamConfig) else {}
    # Dream in one block: its own global schedule
    out = generate_fast(model(cfg), PROMPTS, fast(cfg, "cached", cache=cache, **dream_block),
                        refresh="step")
    assert isinstance(out, FastResult)
    np.testing.assert_array_equal(out.window, exact.window)
    # without early stopping the commit steps agree too; stopped samples keep theirs
    written = out.commit_step >= 0
    np.testing.assert_array_equal(out.commit_step[written], exact.commit_step[written])


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_stale_cache_computes_fewer_positions(cache):
    cfg = llada(gen_length=32, block_length=8, steps=32)
    toy = model(cfg)
    out = generate(toy, PROMPTS, fast(cfg, "cached", cache=cache))
    exact_positions = 32 * len(PROMPTS) * (5 + 32)  # steps x rows x sequence length
    assert out.positions_computed == toy.query_positions
    assert out.positions_computed < exact_positions * (0.5 if cache == "dual" else 0.8)
    assert (out.window != MASK).all()
    # one boundary forward per block, the rest are cached steps over the queries
    assert toy.calls["full"] == 0 and toy.calls["cached"] == out.forward_calls
    assert out.steps_per_block == [8, 8, 8, 8]


def test_stale_cache_is_an_approximation_not_a_copy():
    """Block-wise refresh must differ somewhere from per-step refresh on a model whose
    predictions depend on context, or the cache would not be used at all."""
    cfg = llada(gen_length=32, block_length=16, steps=32)
    prompts = [[i + 2, i + 3, i + 4] for i in range(0, 30, 3)]
    diffs = 0
    for seed in range(3):
        a = generate_fast(model(cfg, seed=seed), prompts, fast(cfg, "cached"), refresh="step")
        b = generate_fast(model(cfg, seed=seed), prompts, fast(cfg, "cached"))
        diffs += int((a.window != b.window).sum())
    assert diffs > 0


def test_threshold_above_one_is_one_commit_per_step():
    """tau > 1 commits only the single most confident position: LLaDA low-confidence
    decoding with steps = gen length."""
    cfg_one = llada(steps=16)
    exact = generate(model(cfg_one), PROMPTS, cfg_one)
    parallel = fast(cfg_one, "parallel")
    object.__setattr__(parallel, "threshold", 1.5)  # beyond what users may set: the limit
    out = generate(model(cfg_one), PROMPTS, parallel)
    np.testing.assert_array_equal(out.window, exact.window)
    assert out.steps_per_block == [4, 4, 4, 4]


def test_parallel_commits_every_confident_position_and_at_least_one():
    cfg = llada(gen_length=32, block_length=8, steps=32)
    toy = model(cfg, sharp=30.0)  # a confident model: most positions are above tau
    committed = []
    out = generate(toy, PROMPTS, fast(cfg, "parallel", threshold=0.6),
                   on_step=lambda e: committed.append(int(e.committed.sum())))
    assert all(c >= 1 for c in committed)
    assert max(committed) > len(PROMPTS)  # more than one commit per sample in some step
    assert sum(out.steps_per_block) == out.steps_run < 32
    assert (out.window != MASK).all()


def test_parallel_steps_fall_as_the_threshold_falls():
    cfg = llada(gen_length=32, block_length=8, steps=32)
    steps = [generate(model(cfg), PROMPTS, fast(cfg, "fast", threshold=t)).steps_run
             for t in (1.0, 0.9, 0.5, 0.1)]
    assert steps == sorted(steps, reverse=True) and steps[0] > steps[-1]


class EosAfter:
    """Wraps a backend: position p_eos of each row predicts EOS with certainty."""

    def __init__(self, inner, stop: dict[int, int], prompt_width: int):
        self.inner, self.stop, self.p = inner, stop, prompt_width
        self.rows_seen: list[int] = []

    def _patch(self, out, rows_ids, offset):
        logits = out.logits.copy()
        for r in range(logits.shape[0]):
            for row, pos in self.stop.items():
                # identify rows by their first prompt token
                if rows_ids[r] == row:
                    col = self.p + pos - offset
                    if 0 <= col < logits.shape[1]:
                        logits[r, col] = -20.0
                        logits[r, col, EOS] = 20.0
        return out.__class__(logits=logits)

    def forward(self, input_ids, attention_mask, position_ids, want):
        self.rows_seen.append(input_ids.shape[0])
        out = self.inner.forward(input_ids, attention_mask, position_ids, "logits")
        return self._patch(out, self._first_token(input_ids), 0)

    @staticmethod
    def _first_token(ids):
        return [int(next(t for t in row if t not in (EOS, MASK))) for row in ids]


def test_finished_samples_leave_the_batch():
    """A sample whose text is final (everything up to its first EOS committed) stops
    costing compute, and its output text is what the full batch gives."""
    cfg = llada(gen_length=32, block_length=8, steps=32)
    first_tokens = {5: 2, 10: 30, 13: 30}  # sample 0 writes EOS at window position 2
    inner = model(cfg)
    backend = EosAfter(inner, first_tokens, prompt_width=5)
    out = generate(backend, PROMPTS, fast(cfg, "parallel"))
    assert out.generated[0] == out.window[0, :2].tolist()
    assert EOS not in out.generated[0]
    assert min(backend.rows_seen) < len(PROMPTS)  # sample 0 left the batch
    assert (out.window[0] != MASK).all()
    assert (out.window[0, 8:] == EOS).all()  # blocks it never decoded read as EOS
    assert (out.commit_step[0, 8:] == -1).all()


def test_bad_fast_settings_are_refused():
    for tau in (0, -0.5, 1.2, float("nan"), True):
        with pytest.raises(PolicyConfigError, match="threshold"):
            llada(decode="parallel", threshold=tau)
    with pytest.raises(PolicyConfigError, match="cache"):
        llada(decode="cached", cache="suffix")
    with pytest.raises(PolicyConfigError, match="decode"):
        llada(decode="turbo")
    with pytest.raises(PolicyConfigError, match="does not divide"):
        dream(decode="fast", block_length=5)
    dream(block_length=5)  # exact Dream has no blocks: not its business
    assert dream(decode="fast", block_length=64).blocks_of == 16  # at most the window
    with pytest.raises(PolicyConfigError, match="random remasking"):
        llada(remasking="random", decode="parallel")
    llada(remasking="random", decode="cached")  # the schedule needs no confidence
    with pytest.raises(PolicyConfigError, match="origin"):
        dream(alg="origin", decode="cached")
    with pytest.raises(PolicyConfigError, match="guidance"):
        llada(cfg_scale=1.0, decode="parallel")

    class NoCache:
        def forward(self, *a):  # pragma: no cover - never called
            raise AssertionError

    with pytest.raises(PolicyConfigError, match="cached graph"):
        generate(NoCache(), PROMPTS, llada(decode="cached"))
    with pytest.raises(PolicyConfigError, match="hooks"):
        generate(model(dream()), PROMPTS, dream(decode="parallel"),
                 tokens_hook=lambda step, x, logits: x)


@pytest.mark.parametrize("cache", ["prefix", "dual"])
@pytest.mark.parametrize("cfg", [llada(), dream()], ids=["llada", "dream"])
def test_a_cached_step_on_a_fresh_cache_equals_the_full_forward(cfg, cache):
    """Right after the boundary forward the cached K/V are exact, so a cached step must
    reproduce the boundary's predictions at the block positions: this checks the query
    range (Dream's one-early start), the key mask over padded rows and the positions."""
    from faircalib_runtime.batch import left_pad
    from faircalib_runtime.fast import _BlockRun

    batch = left_pad(PROMPTS, cfg.window, pad_id=cfg.pad_token, mask_id=MASK,
                     padding=cfg.padding)
    cfg = fast(cfg, "cached", cache=cache, block_length=4)
    run = _BlockRun(model(cfg), batch, cfg, "block", None, None)
    rows = np.arange(len(PROMPTS))
    for start in (run.p, run.p + 8):
        run.x[:, run.p:start] = 7  # earlier blocks finished
        run.block_range = (start, start + 4)
        full, _ = run.boundary(rows)
        step, offset = run.cached(rows)
        assert offset == (start - 1 if isinstance(cfg, DreamConfig) else start)
        np.testing.assert_allclose(step.summary.prob[:, start - offset:start + 4 - offset],
                                   full.summary.prob[:, start:start + 4], atol=1e-5)
        np.testing.assert_array_equal(step.summary.token[:, start - offset:start + 4 - offset],
                                      full.summary.token[:, start:start + 4])


def test_parallel_blocks_end_even_when_the_model_writes_the_mask_id():
    """A position whose chosen token is the mask id stays masked (as in the exact loops);
    the threshold loop must still end: at most block-length steps per block."""

    class WritesMask(ToyCachedModel):
        def _run(self, ids, key_mask, positions, past):
            logits, present = super()._run(ids, key_mask, positions, past)
            logits[..., MASK] = 50.0  # the mask id is always the surest token
            return logits, present

    cfg = llada(gen_length=8, block_length=4, steps=8, decode="fast")
    out = generate(WritesMask(V, mask_id=MASK), PROMPTS, cfg)
    assert out.steps_per_block == [4, 4] and (out.window == MASK).all()
