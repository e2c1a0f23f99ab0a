"""Exact mode against the official loops, step by step (transcribed in official_loops.py),
and the float64 option against the runtime's frozen pre-change decodes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import official_loops as ref  # noqa: E402
from float64_fixture import FIXTURE, Hashed, cases, decode, float64  # noqa: E402
from runtime_mocks import LOW, HashedBackend, hashed_logits  # noqa: E402

from faircalib_export.decoding import TorchOps, generate_torch  # noqa: E402
from faircalib_runtime import (  # noqa: E402
    DreamConfig,
    FunctionBackend,
    LLaDAConfig,
    PolicyConfig,
    PolicyConfigError,
    RawLogitsBackend,
    generate,
)
from faircalib_runtime import policies as P  # noqa: E402
from faircalib_runtime.backend import step_output  # noqa: E402
from faircalib_runtime.defaults import FAMILY_DEFAULTS  # noqa: E402

V, MASK, EOS, EOT = 8, 7, 0, 6
PROMPT = [5, 4]


def table(rows: list[dict[int, float]]) -> np.ndarray:
    """(S, V) float32 logits: LOW everywhere but the given entries; prompt rows first."""
    out = np.full((len(PROMPT) + len(rows), V), LOW, np.float32)
    out[: len(PROMPT), 1] = 0.0
    for i, entries in enumerate(rows):
        for tok, value in entries.items():
            out[len(PROMPT) + i, tok] = value
    return out


class Table(torch.nn.Module):
    """A model whose logits for position i are row i of a fixed table, in `dtype`."""

    def __init__(self, rows: np.ndarray, dtype=torch.float32):
        super().__init__()
        self.rows = torch.from_numpy(rows).to(dtype)

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        b, s = input_ids.shape
        return self.rows[:s].expand(b, s, -1).clone()


def ours(cfg, logits_table, dtype=None, prompts=(PROMPT,), shift=False, **kwargs):
    """The runtime's states after every step: numpy loop (dtype None) or generate_torch."""
    states = []
    on_step = lambda e: states.append(np.array(TorchOps().to_numpy(e.x) if dtype else e.x))
    if dtype is None:
        fn = lambda x, m, p: np.broadcast_to(logits_table[None, : x.shape[1]],
                                             x.shape + (V,)).copy()
        backend = RawLogitsBackend(fn, shift) if shift else FunctionBackend(fn)
        res = generate(backend, list(prompts), cfg, on_step=on_step, **kwargs)
    else:
        res = generate_torch(Table(logits_table, dtype), list(prompts), cfg, shift=shift,
                             on_step=on_step, **kwargs)
    return res, states


def official_llada(cfg, logits_table, dtype=torch.float32, topk=ref.check_topk, prompts=(PROMPT,)):
    model = lambda x, attention_mask=None: Table(logits_table, dtype)(x)
    _, history = ref.llada_generate(
        model, torch.tensor(prompts), steps=cfg.steps, gen_length=cfg.gen_length,
        block_length=cfg.block_length, temperature=cfg.temperature, cfg_scale=cfg.cfg_scale,
        mask_id=MASK, logits_eos_inf=cfg.logits_eos_inf,
        confidence_eos_eot_inf=cfg.confidence_eos_eot_inf, eos_id=EOS, eot_id=EOT, topk=topk)
    return [h.numpy() for h in history]


def same_history(a, b) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


# --- (a) float64 reproduces the runtime as it was --------------------------------------

class TorchHashed(Hashed):
    def forward(self, input_ids, attention_mask, position_ids, want):
        logits = torch.from_numpy(hashed_logits(input_ids.numpy(), 40, 39, scale=self.scale))
        return step_output(logits, want, TorchOps())


def test_float64_mode_reproduces_frozen_decodes():
    frozen = np.load(FIXTURE)
    changed = 0
    for name, scale, cfg, force_logits in cases():
        for kwargs in ({}, {"backend": TorchHashed(scale), "ops": TorchOps()}):
            res = decode(scale, float64(cfg), force_logits, **kwargs)
            np.testing.assert_array_equal(res.tokens, frozen[f"{name}/tokens"], err_msg=name)
            np.testing.assert_array_equal(res.commit_step, frozen[f"{name}/commit_step"],
                                          err_msg=name)
        model = decode(scale, cfg, force_logits)  # the default: the model's dtype
        changed += not np.array_equal(model.commit_step, frozen[f"{name}/commit_step"])
    assert changed >= 10  # the fixture does tell the two precisions apart


# --- (b) ties in the model's dtype -------------------------------------------------------

# Window rows whose confidences are equal in float32 but not in float64 (p = 1.0 and 0.5
# ties): float64 orders them w2 > w1 > w0 and w4 > w3, float32 by index.
LLADA_TIES = table([
    {1: 0.0, 2: -20.0},  # w0: p 1 - 2e-9    -> 1.0 in float32
    {2: 0.0, 3: -30.0},  # w1: p 1 - 9e-14   -> 1.0
    {3: 0.0},  # w2: p = 1 exactly
    {1: 0.0, 2: 0.0, 3: -20.0},  # w3: p 0.5 - 5e-10 -> 0.5
    {4: 0.0, 5: 0.0},  # w4: p = 0.5 exactly
    {4: 0.0, 5: -1.0},  # w5: p 0.731
])


def assert_llada_matches_official(cfg: LLaDAConfig) -> None:
    """Model-dtype decoding equals the official loop step by step (numpy, torch fp32, and
    bfloat16 on the device against the official loop in bf16); float64 differs."""
    expected = official_llada(cfg, LLADA_TIES)
    for dtype in (None, torch.float32):
        assert same_history(ours(cfg, LLADA_TIES, dtype)[1], expected), dtype
    assert same_history(ours(cfg, LLADA_TIES, torch.bfloat16)[1],
                        official_llada(cfg, LLADA_TIES, torch.bfloat16))
    f64 = dataclasses.replace(cfg, confidence_dtype="float64")
    assert not same_history(ours(f64, LLADA_TIES)[1], expected)


@pytest.mark.parametrize("block_length, steps", [(6, 3), (3, 4), (6, 6)])
def test_llada_model_dtype_ties_match_official(block_length, steps):
    assert_llada_matches_official(LLaDAConfig(gen_length=6, block_length=block_length,
                                              steps=steps, mask_id=MASK, eos_ids=[EOS, EOT]))


def test_llada_first_step_by_hand():
    cfg = LLaDAConfig(gen_length=6, block_length=6, steps=3, mask_id=MASK, eos_ids=[EOS])
    res, _ = ours(cfg, LLADA_TIES)
    assert res.commit_step.tolist() == [[0, 0, 1, 2, 2, 1]]  # w0, w1 tie with w2 at 1.0
    f64 = ours(dataclasses.replace(cfg, confidence_dtype="float64"), LLADA_TIES)[0]
    assert f64.commit_step.tolist() == [[1, 0, 0, 2, 2, 1]]


def test_llada_cfg_in_model_dtype_matches_official():
    """Guidance in the logits' dtype: cond = uncond here, so the guided logits are the tie
    table itself (in float64 they would reach a float64 softmax)."""
    assert_llada_matches_official(LLaDAConfig(gen_length=6, block_length=6, steps=3,
                                              cfg_scale=0.7, mask_id=MASK, eos_ids=[EOS]))


DREAM_TIES = {  # rows of the ALIGNED logits; float64 prefers the later of tied rows
    "maskgit_plus": [{1: 0.0, 2: -20.0}, {2: 0.0, 3: -30.0}, {3: 0.0}, {4: 0.0, 5: -1.0}],
    "topk_margin": [{1: 0.0, 2: -20.0}, {2: 0.0, 3: -30.0}, {3: 0.0}, {4: 0.0, 5: -1.0}],
    "entropy": [{1: 0.0, 2: 0.0, 3: -20.0}, {4: 0.0, 5: 0.0, 3: -30.0}, {2: 0.0, 3: 0.0},
                {1: 0.0, 2: 0.0, 4: 0.0}],  # -log 2 each in float32 (w3: -log 3)
}


def raw(aligned: np.ndarray) -> np.ndarray:
    """Raw Dream logits whose shifted (aligned) view is `aligned`."""
    return np.concatenate([aligned[1:], aligned[-1:]], axis=0)


def official_dream(cfg, raw_table, dtype=torch.float32, prompts=(PROMPT,), **kwargs):
    model = lambda x, attention_mask, tok_idx: Table(raw_table, dtype)(x)
    _, history = ref.dream_generate(
        model, torch.tensor(prompts), max_new_tokens=cfg.max_new_tokens, mask_token_id=MASK,
        steps=cfg.steps, eps=cfg.eps, alg=cfg.alg.value, num_return_sequences=(
            cfg.num_return_sequences), topk=ref.check_topk, **kwargs)
    return [h.numpy() for h in history]


@pytest.mark.parametrize("alg", sorted(DREAM_TIES))
@pytest.mark.parametrize("steps", [2, 3])
def test_dream_model_dtype_ties_match_official(alg, steps):
    cfg = DreamConfig(max_new_tokens=4, steps=steps, alg=alg, mask_id=MASK, eos_ids=[EOS])
    logits = raw(table(DREAM_TIES[alg]))
    expected = official_dream(cfg, logits)
    for dtype in (None, torch.float32):
        assert same_history(ours(cfg, logits, dtype, shift=True)[1], expected), dtype
    assert same_history(ours(cfg, logits, torch.bfloat16, shift=True)[1],
                        official_dream(cfg, logits, torch.bfloat16))
    f64 = dataclasses.replace(cfg, confidence_dtype="float64")
    assert not same_history(ours(f64, logits, shift=True)[1], expected)


def test_dream_token_is_first_of_tied_probabilities():
    """Dream's x0 is probs.max(-1): logits 0 and 1e-9 tie at p = 0.5 in float32 and the
    lower id wins. The logits path does the same; the summary path's token is the argmax
    of the logits (documented deviation: same confidence, so the same commits)."""
    rows = [{1: 0.0, 2: 1e-9}, {3: 0.0, 4: -2.0}]
    logits = raw(table(rows))
    cfg = DreamConfig(max_new_tokens=2, steps=2, alg="maskgit_plus", top_k=V, mask_id=MASK,
                      eos_ids=[EOS])  # top_k = V: the full-logits path, nothing filtered
    expected = official_dream(cfg, logits, top_k=V)
    res, states = ours(cfg, logits, shift=True)
    assert same_history(states, expected) and res.window[0].tolist() == [1, 3]
    summary = ours(dataclasses.replace(cfg, top_k=None), logits, shift=True)[0]
    assert summary.window[0].tolist() == [2, 3]
    np.testing.assert_array_equal(summary.commit_step, res.commit_step)


def test_summary_path_keeps_the_model_dtype():
    backend = HashedBackend(V, MASK)
    out = backend.forward(np.arange(6)[None] % 7, None, None, "summary").summary
    assert out.prob.dtype == out.margin.dtype == out.neg_entropy.dtype == np.float32
    out64 = backend.forward(np.arange(6)[None] % 7, None, None, "summary64").summary
    assert out64.prob.dtype == np.float64
    cfg = DreamConfig(max_new_tokens=4, steps=2, mask_id=MASK, eos_ids=[EOS])
    generate(backend, [PROMPT], cfg)
    generate(backend, [PROMPT], dataclasses.replace(cfg, confidence_dtype="float64"))
    assert backend.wants == ["summary", "summary64"] + ["summary"] * 2 + ["summary64"] * 2
    with pytest.raises(ValueError, match="want"):
        step_output(np.zeros((1, 2, V), np.float32), "summary32")


def test_torch_topk_ties_are_not_lowest_index():
    """What the docs (docs/decoding.md) say about torch.topk: on CPU, equal values come
    back in an order set by std::nth_element / partial_sort, not by index."""
    row = torch.zeros(1, 64)
    assert sorted(torch.topk(row, 3).indices[0].tolist()) != [0, 1, 2]
    assert ref.stable_topk(row, 3)[1][0].tolist() == [0, 1, 2]


# --- (c) Dream's time grid ---------------------------------------------------------------

def test_dream_timesteps_equal_torch_linspace():
    for eps in (1e-3, 1e-2, 0.05, 1e-4):
        for steps in [*range(1, 700), *range(700, 3001, 37)]:
            expected = torch.linspace(1, eps, steps + 1).numpy()
            got = P.dream_timesteps(steps, eps)
            assert got.dtype == np.float32
            assert np.array_equal(got, expected), (steps, eps)


# --- (d) LLaDA's EOS options -------------------------------------------------------------

EOS_TABLE = table([
    {EOS: 0.0, 1: -2.2},  # w0: x0 = EOS, p 0.9
    {EOT: 0.0, 2: -1.5},  # w1: x0 = EOT, p 0.82
    {3: 0.0, EOS: -0.5, EOT: -1.0},  # w2: p 0.51, 0.62 without EOT, 1.0 without both
    {4: 0.0, 5: -1.2},  # w3: p 0.77
    {EOS: 0.3, 5: 0.0},  # w4: x0 = EOS (p 0.57), or 5 (p 1.0) with logits_eos_inf
    {1: 0.0, 2: -0.4},  # w5: p 0.60
])


@pytest.mark.parametrize("temperature", [0.0, 1e-3])  # 1e-3: Gumbel noise cannot flip x0
@pytest.mark.parametrize("logits_eos_inf, confidence_eos_eot_inf",
                         [(False, False), (True, False), (False, True), (True, True)])
def test_llada_eos_options_match_official(temperature, logits_eos_inf, confidence_eos_eot_inf):
    cfg = LLaDAConfig(gen_length=6, block_length=6, steps=6, temperature=temperature,
                      logits_eos_inf=logits_eos_inf,
                      confidence_eos_eot_inf=confidence_eos_eot_inf, mask_id=MASK,
                      eos_ids=[EOS, EOT])
    expected = official_llada(cfg, EOS_TABLE)
    for dtype in (None, torch.float32):
        res, states = ours(cfg, EOS_TABLE, dtype)
        assert same_history(states, expected), dtype
    if logits_eos_inf:
        assert EOS not in res.window[0].tolist()


def test_confidence_eos_eot_quirk_by_hand():
    order = lambda cfg: ours(cfg, EOS_TABLE)[0].commit_step[0].tolist()
    cfg = LLaDAConfig(gen_length=6, block_length=6, steps=6, confidence_eos_eot_inf=True,
                      mask_id=MASK, eos_ids=[EOS, EOT])
    # temperature 0: EOS and EOT out of the softmax: w2 has p = 1, and w0, w1, w4 (x0 EOS,
    # EOT, EOS) get p = 0, so they come last, in index order
    assert order(cfg) == [3, 4, 0, 1, 5, 2]
    # temperature > 0: only EOT: w0 and w4 keep p 0.9 and 0.57, w2 has 0.62
    assert order(dataclasses.replace(cfg, temperature=1e-3)) == [0, 5, 2, 1, 4, 3]
    assert P.llada_confidence_suppressed((EOS, EOT), 0.0) == (EOS, EOT)
    assert P.llada_confidence_suppressed((EOS, EOT), 0.5) == (EOT,)


def test_eos_options_fetch_full_logits():
    backend = HashedBackend(V, MASK)
    cfg = LLaDAConfig(gen_length=4, block_length=4, steps=2, logits_eos_inf=True,
                      mask_id=MASK, eos_ids=[EOS, EOT])
    generate(backend, [PROMPT], cfg)
    assert set(backend.wants) == {"logits"}


# --- (e) Dream hooks and num_return_sequences -------------------------------------------

def hashed_raw(x, mask=None, positions=None):
    return hashed_logits(np.asarray(x), V, MASK)


def make_hooks(log):
    def tokens_hook(step, x, logits):
        log.append(("tokens", step, logits is None))
        if step is None:
            x[:, len(PROMPT) + 1] = 3  # force a token before the first step
        return x

    def logits_hook(step, x, logits):
        log.append(("logits", step, logits.shape))
        if step == 1:
            logits[:, :, 4] += 4.0  # push token 4 at this step
        return logits

    return tokens_hook, logits_hook


def test_dream_hooks_and_num_return_sequences_match_official():
    prompts = [PROMPT, [3, 2]]
    cfg = DreamConfig(max_new_tokens=6, steps=4, alg="entropy", num_return_sequences=2,
                      mask_id=MASK, eos_ids=[EOS])
    log_ref, log_ours = [], []
    t_ref, l_ref = make_hooks(log_ref)
    model = lambda x, attention_mask, tok_idx: torch.from_numpy(hashed_raw(x.numpy()))
    _, history = ref.dream_generate(
        model, torch.tensor(prompts), max_new_tokens=6, mask_token_id=MASK, steps=4,
        alg="entropy", num_return_sequences=2, generation_tokens_hook_func=t_ref,
        generation_logits_hook_func=l_ref, topk=ref.check_topk)
    t_ours, l_ours = make_hooks(log_ours)
    states = []
    recorded = lambda step, x, logits: states.append(np.array(t_ours(step, x, logits))) or x
    res = generate(RawLogitsBackend(hashed_raw, shift=True), prompts, cfg,
                   tokens_hook=recorded, logits_hook=l_ours)
    assert log_ours == log_ref
    assert [s.shape for s in states[1:]] == [(4, 8)] * 4
    assert same_history(states[1:], [h.numpy() for h in history])
    assert res.tokens.shape == (4, 8) and (res.tokens[:, 3] == 3).all()
    np.testing.assert_array_equal(res.tokens[0], res.tokens[1])  # greedy: copies agree
    assert res.tokens[:2, :2].tolist() == [PROMPT] * 2 and res.tokens[2, :2].tolist() == [3, 2]


def test_hooks_run_every_step_and_force_logits():
    backend = HashedBackend(V, MASK)
    calls = []

    def fill_at_step_0(step, x, logits):  # no masks left after step 0
        calls.append(step)
        if step == 0:
            x[x == MASK] = 1
        return x

    cfg = DreamConfig(max_new_tokens=2, steps=5, mask_id=MASK, eos_ids=[EOS])
    generate(backend, [PROMPT], cfg, tokens_hook=fill_at_step_0)
    assert calls == [None, 0, 1, 2, 3, 4]  # every step, as the reference (no early stop)
    assert backend.wants == ["logits"] * 5
    llada = LLaDAConfig(gen_length=4, block_length=4, steps=2, mask_id=MASK, eos_ids=[EOS])
    with pytest.raises(PolicyConfigError, match="Dream's generation hooks"):
        generate(backend, [PROMPT], llada, logits_hook=lambda s, x, lg: lg)


def test_num_return_sequences_rows_and_sampling():
    cfg = DreamConfig(max_new_tokens=6, steps=3, temperature=1.0, num_return_sequences=3,
                      seed=4, mask_id=MASK, eos_ids=[EOS])
    res = generate(HashedBackend(V, MASK), [[1, 2, 3], [4]], cfg)
    assert res.tokens.shape == (6, 9) and res.pad.tolist() == [0, 0, 0, 2, 2, 2]
    assert len({tuple(r) for r in res.window[:3].tolist()}) > 1  # independent draws
    one = dataclasses.replace(cfg, num_return_sequences=1)
    assert generate(HashedBackend(V, MASK), [[1, 2, 3], [4]], one).tokens.shape == (2, 9)


# --- (f) configs ---------------------------------------------------------------------------

def test_new_fields_validate_and_roundtrip():
    common = dict(mask_id=MASK, eos_ids=[EOS, EOT])
    for cfg in (LLaDAConfig(confidence_dtype="float64", logits_eos_inf=True,
                            confidence_eos_eot_inf=True, **common),
                DreamConfig(confidence_dtype="float64", num_return_sequences=3, **common)):
        assert PolicyConfig.from_dict(cfg.to_dict()) == cfg
        assert cfg.to_dict()["confidence_dtype"] == "float64" and cfg.float64_confidence
    assert not LLaDAConfig(**common).float64_confidence
    for family in ("llada", "dream"):
        assert FAMILY_DEFAULTS[family]["confidence_dtype"] == "model"
    bad = [(LLaDAConfig, {"confidence_dtype": "float32"}, "confidence_dtype='float32'"),
           (DreamConfig, {"confidence_dtype": "bf16"}, "confidence_dtype"),
           (LLaDAConfig, {"logits_eos_inf": 1}, "logits_eos_inf must be true or false"),
           (LLaDAConfig, {"confidence_eos_eot_inf": "yes"}, "confidence_eos_eot_inf"),
           (DreamConfig, {"num_return_sequences": 0}, "num_return_sequences must be a positive"),
           (DreamConfig, {"num_return_sequences": 2.0}, "num_return_sequences"),
           (DreamConfig, {"num_return_sequences": True}, "num_return_sequences")]
    for cls, fields, message in bad:
        with pytest.raises(PolicyConfigError, match=message):
            cls(**fields, **common)
    with pytest.raises(PolicyConfigError, match="unknown field"):
        PolicyConfig.from_dict({"policy": "llada", "num_return_sequences": 2, **common})
