"""The decode loop: prompts in, committed tokens out, for any backend and array namespace.

`generate(backend, prompts, config)` lays out a left-padded batch (pads | prompt | K mask
tokens), then runs the policy named by the config's type, one backend call per step
(two rows per sample with classifier-free guidance). The loop knows nothing about
tokenization (see `text.py`) and imports no torch: `ops` defaults to numpy, and
`faircalib_export.decoding.generate_torch` runs this same loop on torch tensors.

Greedy configurations (temperature 0, confidences read from the unfiltered softmax,
no guidance, no EOS options, no hooks) only ask the backend for summaries ("summary" in
the model's dtype, "summary64" with confidence_dtype="float64"), never for full logits.

Deliberate deviations from the references (docs/decoding.md): ties among equal confidences
go to the lowest index (torch.topk leaves it open); Dream's batched top-k never writes
over a committed token (see `_dream`); random draws come from our counter-based RNG.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from . import policies as P
from .backend import Backend, StepOutput, Summary, Want, summarize, token_probability
from .batch import Batch, DecodeResult, StepEvent, expand_prompts, generated_text_ids, left_pad
from .config import (
    DecodeMode,
    DreamAlg,
    DreamConfig,
    LLaDAConfig,
    PolicyConfig,
    PolicyConfigError,
    RandomCommitConfig,
    Remasking,
)
from .rng import Stream
from .trajectory import TrajectoryRecorder
from .xp import NUMPY, Array, ArrayOps, softmax

NEG_INF = float("-inf")
LogitsHook = Callable[[int, Any, Any], Any]  # (step, x, logits) -> logits
TokensHook = Callable[[Any, Any, Any], Any]  # (step | None, x, logits | None) -> x


class _Run:
    """Decode state plus the bookkeeping every policy shares (commit, record, notify)."""

    def __init__(self, backend: Backend, batch: Batch, config: PolicyConfig, ops: ArrayOps,
                 recorder: TrajectoryRecorder | None, on_step: Callable | None, *,
                 logits_hook: LogitsHook | None = None, tokens_hook: TokensHook | None = None):
        self.backend, self.config, self.ops = backend, config, ops
        self.recorder, self.on_step = recorder, on_step
        self.logits_hook, self.tokens_hook = logits_hook, tokens_hook
        self.float64 = config.float64_confidence
        self.x = ops.asarray(batch.input_ids)  # (B, S)
        self.b, self.s = batch.input_ids.shape
        self.p, self.pad = batch.prompt_width, batch.pad
        self.attention_mask = _maybe(ops, batch.attention_mask)
        self.position_ids = _maybe(ops, batch.position_ids)
        self.flat_index = ops.arange(self.b * self.s).reshape(self.b, self.s)  # RNG counters
        self.positions = ops.arange(self.s)
        self.commit_step = ops.full((self.b, self.s), -1, "i64")
        self.step = 0
        self.reference = None
        if recorder is not None:
            recorder.start(self.b, self.s - self.p)
            if recorder.reference_tokens is not None:
                ref = np.zeros((self.b, self.s), dtype=np.int64)
                ref[:, self.p:] = recorder.reference_tokens
                self.reference = ops.asarray(ref)

    # -- model calls ---------------------------------------------------------------------
    def want(self, greedy: bool) -> Want:
        needs_logits = (self.recorder is not None and self.recorder.needs_logits
                        or self.logits_hook is not None or self.tokens_hook is not None)
        if not greedy or needs_logits:
            return "logits"
        return "summary64" if self.float64 else "summary"

    def forward(self, want: Want) -> StepOutput:
        return self.backend.forward(self.x, self.attention_mask, self.position_ids, want)

    def forward_guided(self, cfg_scale: float, prompt_index: Array) -> Array:
        """Guided logits (B, S, V) from one call on [x; x with the prompt masked]."""
        ops = self.ops
        uncond = ops.where(prompt_index, self.config.mask_id, self.x)
        both = lambda a: None if a is None else ops.concat([a, a])
        out = self.backend.forward(ops.concat([self.x, uncond]), both(self.attention_mask),
                                   both(self.position_ids), "logits")
        return P.cfg_combine(out.logits[: self.b], out.logits[self.b:], cfg_scale, ops,
                             self.float64)

    def masked(self) -> Array:
        return self.x == self.config.mask_id  # (B, S)

    def rows(self, mask: Array) -> Array:
        return self.ops.nonzero(mask.reshape(-1))  # (N,) flat b*S + i

    def take_rows(self, logits: Array, rows: Array) -> Array:
        return logits.reshape(self.b * self.s, -1)[rows]  # (N, V)

    def spread(self, values: Array, rows: Array, fill, dtype) -> Array:
        return P.scatter_rows(values, rows, (self.b, self.s), fill, dtype, self.ops)

    # -- commit --------------------------------------------------------------------------
    def commit(self, select: Array, tokens: Array, masked: Array, *, logits: Array | None,
               summary: Summary | None, block: int = 0) -> None:
        """Write tokens at `select` (B, S) bool; record and notify."""
        ops = self.ops
        if self.recorder is not None:
            self._record(select, tokens, masked, logits, summary)
        self.x = ops.where(select, tokens, self.x)
        # Like the references, a position whose chosen token is the mask id stays masked
        # (and may be chosen again); it is not counted as committed.
        written = select & (tokens != self.config.mask_id)
        self.commit_step = ops.where(written, self.step, self.commit_step)
        if self.on_step is not None:
            self.on_step(StepEvent(self.step, block, self.x, select))
        self.step += 1

    def _record(self, select, tokens, masked, logits, summary) -> None:
        ops, ref_prob = self.ops, None
        if summary is None:  # statistics of the masked rows only
            rows = self.rows(masked)
            logits_rows = self.take_rows(logits, rows)
            s = summarize(logits_rows, ops, float64=self.float64)
            nan = float("nan")
            top1, margin, neg_entropy = (self.spread(v, rows, nan, v.dtype)
                                         for v in (s.prob, s.margin, s.neg_entropy))
            if self.reference is not None:
                ref = self.reference.reshape(-1)[rows]
                ref_prob = self.spread(token_probability(logits_rows, ref, ops), rows, nan,
                                       "f64")
        else:
            top1, margin, neg_entropy = summary.prob, summary.margin, summary.neg_entropy
        win = lambda a: None if a is None else ops.to_numpy(a[:, self.p:])
        self.recorder.record(masked=win(masked), committed=win(select), written=win(tokens),
                             top1_prob=win(top1), margin=win(margin),
                             neg_entropy=win(neg_entropy), ref_prob=win(ref_prob))

    def result(self) -> DecodeResult:
        ops = self.ops
        tokens = ops.to_numpy(self.x).astype(np.int64)
        return DecodeResult(tokens=tokens, prompt_width=self.p, pad=self.pad,
                            commit_step=ops.to_numpy(self.commit_step)[:, self.p:],
                            generated=generated_text_ids(tokens[:, self.p:], self.config),
                            steps_run=self.step)


def _maybe(ops: ArrayOps, a: np.ndarray | None) -> Array | None:
    return None if a is None else ops.asarray(a)


# --- policy loops -----------------------------------------------------------------------

def _llada(run: _Run, cfg: LLaDAConfig) -> None:
    ops = run.ops
    eos_options = cfg.logits_eos_inf or cfg.confidence_eos_eot_inf  # need full logits
    greedy = cfg.temperature == 0 and cfg.cfg_scale == 0 and not eos_options
    prompt_index = run.x != cfg.mask_id  # pads count as prompt, as in the reference
    for block in range(cfg.num_blocks):
        start = run.p + block * cfg.block_length
        end = start + cfg.block_length
        in_block_masks = ops.sum(ops.i64(run.x[:, start:end] == cfg.mask_id))  # (B,)
        counts = P.even_schedule(in_block_masks, cfg.steps_per_block, ops)  # (B, steps)
        reachable = (run.positions < end)[None, :]  # nothing after the block commits
        for j in range(cfg.steps_per_block):
            masked = run.masked()
            candidates = masked & reachable  # (B, S)
            logits = summary = None
            if cfg.cfg_scale > 0:
                logits = run.forward_guided(cfg.cfg_scale, prompt_index)  # (B, S, V)
            else:
                out = run.forward(run.want(greedy))
                logits, summary = out.logits, out.summary
            if greedy and summary is not None:
                x0 = summary.token
                confidence = (summary.prob if cfg.remasking is Remasking.LOW_CONFIDENCE
                              else ops.uniform(run.flat_index, cfg.seed, run.step,
                                               Stream.REMASK_RANDOM))
            else:
                rows = run.rows(candidates)
                z = run.take_rows(logits, rows)  # (N, V)
                if cfg.logits_eos_inf:
                    z = P.suppress(z, cfg.eos_ids[:1], ops)
                x0_rows = P.llada_tokens(z, rows, z.shape[-1], cfg.temperature, cfg.seed,
                                         run.step, ops)
                if cfg.confidence_eos_eot_inf:  # after x0, as generate.py does
                    z = P.suppress(z, P.llada_confidence_suppressed(cfg.eos_ids,
                                                                    cfg.temperature), ops)
                conf_rows = P.llada_confidence(z, x0_rows, rows, cfg.remasking, cfg.seed,
                                               run.step, ops, run.float64)
                x0 = run.spread(x0_rows, rows, 0, "i64")
                confidence = run.spread(conf_rows, rows, NEG_INF, conf_rows.dtype)
            confidence = ops.where(candidates, confidence, NEG_INF)
            select = P.top_k_mask(confidence, counts[:, j], ops) & masked
            run.commit(select, x0, masked, logits=logits, summary=summary, block=block)


def _dream(run: _Run, cfg: DreamConfig) -> None:
    """Dream's `_sample` loop, hooks included (their call points and arguments are the
    reference's; any hook makes the loop fetch full logits)."""
    ops = run.ops
    ts = P.dream_timesteps(cfg.steps, cfg.eps)
    greedy = cfg.temperature == 0 and not cfg.filters_logits
    sample = dict(temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                  alg=cfg.alg, seed=cfg.seed, ops=ops, float64=run.float64)
    hooked = run.logits_hook is not None or run.tokens_hook is not None
    if run.tokens_hook is not None:
        run.x = run.tokens_hook(None, run.x, None)
    for i in range(cfg.steps):
        masked = run.masked()
        total = ops.count(masked)
        if total == 0 and not hooked:  # every later step of the reference would be a no-op
            break
        out = run.forward(run.want(greedy))
        logits, summary = out.logits, out.summary
        if run.logits_hook is not None:
            logits = run.logits_hook(i, run.x, logits)
        if cfg.alg is DreamAlg.ORIGIN:
            u = ops.uniform(run.flat_index, cfg.seed, run.step, Stream.TRANSFER)
            select = masked & (u < P.dream_transfer_probability(ts, i))
            if summary is not None:
                tokens = summary.token
            else:
                rows = run.rows(select)
                _, x0 = P.sample_tokens(run.take_rows(logits, rows), rows, step=run.step,
                                        **sample)
                tokens = run.spread(x0, rows, 0, "i64")
        else:
            if summary is not None:
                confidence, tokens = P.select_confidence(summary, cfg.alg), summary.token
            else:
                rows = run.rows(masked)
                conf_rows, x0 = P.sample_tokens(run.take_rows(logits, rows), rows,
                                                step=run.step, **sample)
                confidence = run.spread(conf_rows, rows, NEG_INF, conf_rows.dtype)
                tokens = run.spread(x0, rows, 0, "i64")
            confidence = ops.where(masked, confidence, NEG_INF)
            k = P.dream_transfer_count(total, run.b, ts, i)
            ks = ops.full((run.b,), k, "i64")
            if k == 0:
                select = ops.full((run.b, run.s), False, "bool")
            elif cfg.alg_temp:
                select = P.sampled_top_k_mask(confidence, ks, cfg.alg_temp, cfg.seed,
                                              run.step, ops)
            else:
                select = P.top_k_mask(confidence, ks, ops)
            # Deliberate deviation: k is the batch-mean count, so a row with fewer masks
            # than k has -inf positions among its top k; the reference then writes the mask
            # id over the (committed or prompt) tokens there. We leave them alone.
            select = select & masked
        run.commit(select, tokens, masked, logits=logits, summary=summary)
        if run.tokens_hook is not None:
            run.x = run.tokens_hook(i, run.x, logits)


def _random_commit(run: _Run, cfg: RandomCommitConfig) -> None:
    ops = run.ops
    greedy = cfg.temperature == 0
    counts = P.even_schedule(ops.sum(ops.i64(run.masked())), cfg.steps, ops)  # (B, T)
    for t in range(cfg.steps):
        masked = run.masked()
        out = run.forward(run.want(greedy))
        logits, summary = out.logits, out.summary
        u = ops.uniform(run.flat_index, cfg.seed, run.step, Stream.COMMIT_ORDER)
        select = P.top_k_mask(ops.where(masked, u, NEG_INF), counts[:, t], ops) & masked
        if summary is not None:
            tokens = summary.token
        else:
            rows = run.rows(select)
            z = ops.f64(run.take_rows(logits, rows))  # (N, V)
            if cfg.temperature == 0:
                x0 = ops.argmax(z)
            else:
                x0 = P.categorical(softmax(ops, z / cfg.temperature), rows, cfg.seed,
                                   run.step, ops)
            tokens = run.spread(x0, rows, 0, "i64")
        run.commit(select, tokens, masked, logits=logits, summary=summary)


_LOOPS: dict[type, Callable[[_Run, PolicyConfig], None]] = {
    LLaDAConfig: _llada,
    DreamConfig: _dream,
    RandomCommitConfig: _random_commit,
}


def generate(
    backend: Backend,
    prompts: Sequence[Sequence[int]],
    config: PolicyConfig,
    *,
    recorder: TrajectoryRecorder | None = None,
    on_step: Callable[[StepEvent], None] | None = None,
    ops: ArrayOps = NUMPY,
    logits_hook: LogitsHook | None = None,
    tokens_hook: TokensHook | None = None,
) -> DecodeResult:
    """Decode a batch of token-id prompts with the policy `config` describes.

    `backend` takes and returns arrays of `ops`' namespace (numpy by default). A Dream
    config with num_return_sequences = n returns n rows per prompt, adjacent.

    Hooks (Dream only, as in its generation_utils.py; arrays of `ops`' namespace):
    `tokens_hook(None, x, None) -> x` once before the first step, then after each step's
    commit `tokens_hook(step, x, logits) -> x`; `logits_hook(step, x, logits) -> logits`
    on each step's aligned (B, S, V) logits before anything is chosen. `commit_step`
    records only the loop's own commits. LLaDA's generate.py has no hooks: refused.
    """
    loop = _LOOPS.get(type(config))
    if loop is None:
        raise TypeError(f"no decode loop for {type(config).__name__}")
    if getattr(config, "decode", DecodeMode.EXACT) is not DecodeMode.EXACT:
        if logits_hook is not None or tokens_hook is not None or ops is not NUMPY:
            raise PolicyConfigError(f"decode={config.decode.value} runs on numpy arrays "
                                    "without hooks; hooks and device arrays are for decode=exact")
        from .fast import generate_fast

        return generate_fast(backend, prompts, config, recorder=recorder, on_step=on_step)
    if (logits_hook is not None or tokens_hook is not None) and loop is not _dream:
        raise PolicyConfigError(f"logits_hook / tokens_hook are Dream's generation hooks; "
                                f"the {config.policy} policy has none (LLaDA's reference "
                                f"generate.py takes no hooks)")
    batch = left_pad(expand_prompts(prompts, config), config.window,
                     pad_id=config.pad_token, mask_id=config.mask_id, padding=config.padding)
    run = _Run(backend, batch, config, ops, recorder, on_step, logits_hook=logits_hook,
               tokens_hook=tokens_hook)
    loop(run, config)
    return run.result()
