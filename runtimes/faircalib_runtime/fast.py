"""Fast decoding: parallel commits by confidence threshold and a block-wise approximate
KV cache, beside the exact reference loops of `decode.py`.

Modes (the `decode` field of the LLaDA and Dream configs):

    exact     the reference policies of decode.py, step for step (the default)
    parallel  Fast-dLLM's threshold rule inside each block: every masked position of the
              current block whose confidence is at least tau commits, and always the most
              confident one; the number of steps per block is adaptive. Full forwards.
    cached    the policy's own schedule, with the block-wise approximate KV cache
    fast      both

Blocks: LLaDA decodes its semi-autoregressive blocks (`block_length` of its config);
Dream, which has none, is decoded in blocks of its config's `block_length`, its schedule
run inside each block (steps / blocks steps, the time grid per block, k from the block's
masked count), as Fast-dLLM's Dream loop does. With one block spanning the window that is
Dream's own schedule.

The cache (`cache`): at each block boundary one full forward computes every position and
returns the keys and values of all of them (`forward_cached` with no past). Inside the
block each step computes only
    prefix: the block and everything after it; the prompt's and finished blocks' K/V are
            reused from the boundary forward;
    dual:   the block alone; the K/V of the masked suffix are reused too.
Reused K/V are stale: they were computed before this block's commits. That is the
approximation, and it is refreshed at every block boundary (`refresh="step"` refreshes at
every step instead, which reproduces the exact predictions: a test knob).
For Dream, whose prediction for position i comes from position i - 1, a cached step's
queries start one position before the block.

Confidence for the threshold is the policy's own score mapped into (0, 1]: the chosen
token's probability (LLaDA low_confidence, Dream maskgit_plus), the top-2 margin (Dream
topk_margin), exp(negative entropy) (Dream entropy; monotone in the policy's score, so
the order of commits is the policy's). LLaDA's random remasking has no model score, so it
has the cached mode only; Dream's origin and alg_temp, which choose positions at random,
and classifier-free guidance have no fast mode (the configs refuse them).

Batches stop per sample: a sample is finished once every window position up to and
including its first EOS is committed (nothing it has written can change any more, since
commits are final); its remaining masks are filled with EOS and it leaves the batch, so it
costs no further compute. The generated text is unchanged by this.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from . import policies as P
from .backend import Backend, StepOutput, Summary, summarize, supports_cache, token_probability
from .batch import (
    Batch,
    DecodeResult,
    StepEvent,
    expand_prompts,
    generated_text_ids,
    left_pad,
)
from .config import (
    CacheMode,
    ConfidencePolicy,
    DreamAlg,
    DreamConfig,
    LLaDAConfig,
    PolicyConfigError,
    Remasking,
)
from .rng import Stream
from .trajectory import TrajectoryRecorder
from .xp import NUMPY

REFRESH = ("block", "step")
NEG_INF = float("-inf")


@dataclass(frozen=True)
class FastResult(DecodeResult):
    """A decode result with what the adaptive loop did."""

    steps_per_block: list[int] = field(default_factory=list)  # model steps in each block
    forward_calls: int = 0  # backend calls, boundary forwards included
    positions_computed: int = 0  # sum over calls of batch rows x query positions


def generate_fast(backend: Backend, prompts: Sequence[Sequence[int]], config: ConfidencePolicy,
                  *, recorder: TrajectoryRecorder | None = None,
                  on_step: Callable[[StepEvent], None] | None = None,
                  refresh: str = "block", stop_finished: bool = True) -> FastResult:
    """Decode with `config.decode` (parallel, cached or fast); `decode.generate` calls this
    for those modes. `refresh="step"` recomputes the cache at every step (a test knob:
    the predictions are then the exact loop's). `stop_finished=False` keeps finished
    samples in the batch (for callers that need every row at every step)."""
    if refresh not in REFRESH:
        raise PolicyConfigError(f"refresh {refresh!r} is not one of {', '.join(REFRESH)}")
    if config.cached and not supports_cache(backend):
        raise PolicyConfigError(
            f"decode={config.decode.value} needs a backend with the cached graph; "
            f"{type(backend).__name__} has none (re-export the model with this version of "
            "faircalib-export), or use decode=parallel")
    batch = left_pad(expand_prompts(prompts, config), config.window, pad_id=config.pad_token,
                     mask_id=config.mask_id, padding=config.padding)
    run = _BlockRun(backend, batch, config, refresh, recorder, on_step)
    run.stop_finished = stop_finished
    run.decode()
    return run.result()


def block_length(config: ConfidencePolicy) -> int:
    """LLaDA's own blocks; Dream's fast-mode blocks (at most the window)."""
    return config.blocks_of if isinstance(config, DreamConfig) else config.block_length


def threshold_score(config: ConfidencePolicy, confidence: np.ndarray) -> np.ndarray:
    """The policy's confidence mapped into [0, 1] for the threshold (see module doc)."""
    if isinstance(config, DreamConfig) and config.alg is DreamAlg.ENTROPY:
        return np.exp(confidence)
    return confidence


class _BlockRun:
    def __init__(self, backend: Backend, batch: Batch, config: ConfidencePolicy, refresh: str,
                 recorder: TrajectoryRecorder | None, on_step: Callable | None):
        self.backend, self.config, self.refresh = backend, config, refresh
        self.block, self.recorder, self.on_step = block_length(config), recorder, on_step
        self.x = batch.input_ids.copy()  # (B, S)
        self.b, self.s = self.x.shape
        self.p, self.pad = batch.prompt_width, batch.pad
        self.real = batch.attention_mask  # (B, S) bool or None
        self.position_ids = batch.position_ids  # what the exact loop passes (or None)
        self.positions = (batch.position_ids if batch.position_ids is not None
                          else np.broadcast_to(np.arange(self.s), (self.b, self.s)))
        self.shift = isinstance(config, DreamConfig)  # Dream models predict i from i - 1
        self.greedy = config.temperature == 0 and not getattr(config, "filters_logits", False)
        self.float64 = config.float64_confidence
        self.eos = np.asarray(config.eos_ids, dtype=np.int64)
        self.active = np.arange(self.b)  # rows still decoding
        self.commit_step = np.full((self.b, self.s), -1, dtype=np.int64)
        self.step = 0
        self.steps_per_block: list[int] = []
        self.calls = self.computed = 0
        if recorder is not None:
            recorder.start(self.b, self.s - self.p)

    # -- model calls ---------------------------------------------------------------------
    def want(self):
        needs_logits = (self.recorder is not None and self.recorder.needs_logits
                        or getattr(self.config, "logits_eos_inf", False)
                        or getattr(self.config, "confidence_eos_eot_inf", False))
        if not self.greedy or needs_logits:
            return "logits"
        return "summary64" if self.float64 else "summary"

    def _mask(self, rows: np.ndarray, cols: np.ndarray | slice) -> np.ndarray | None:
        return None if self.real is None else self.real[rows][:, cols]

    # Each call returns its output and the position of the output's column 0.
    def full(self, rows: np.ndarray) -> tuple[StepOutput, int]:
        """An uncached forward of the whole state of `rows` (what the exact loop runs)."""
        self.calls += 1
        self.computed += len(rows) * self.s
        mask = None if self.real is None else self.real[rows]
        pos = None if self.position_ids is None else self.position_ids[rows]
        return self.backend.forward(self.x[rows], mask, pos, self.want()), 0

    def boundary(self, rows: np.ndarray) -> tuple[StepOutput, int]:
        """The full cached forward at a block boundary: outputs for every position, and
        the keys and values of all of them, kept as this block's cache."""
        self.calls += 1
        self.computed += len(rows) * self.s
        step = self.backend.forward_cached(self.x[rows], self._mask(rows, slice(None)),
                                           self.positions[rows], None, self.want())
        start, end = self.block_range
        q0 = start - 1 if self.shift else start
        q1 = end if self.config.cache is CacheMode.DUAL else self.s
        kept = np.r_[0:q0, q1:self.s]  # positions whose K/V are reused
        self.cache_rows = rows
        self.queries = (q0, q1)
        self.cache_positions = kept
        self.past = np.ascontiguousarray(step.present[:, :, :, :, kept])
        return step.output, 0

    def cached(self, rows: np.ndarray) -> tuple[StepOutput, int]:
        """A step over the block's queries only, attending to the cached K/V."""
        q0, q1 = self.queries
        if not np.array_equal(rows, self.cache_rows):  # samples left the batch mid-block
            keep = np.flatnonzero(np.isin(self.cache_rows, rows))
            self.past, self.cache_rows = self.past[:, :, keep], rows
        self.calls += 1
        self.computed += len(rows) * (q1 - q0)
        key_mask = None if self.real is None else np.concatenate(
            [self.real[rows][:, self.cache_positions], self.real[rows, q0:q1]], axis=1)
        step = self.backend.forward_cached(self.x[rows, q0:q1], key_mask,
                                           np.ascontiguousarray(self.positions[rows, q0:q1]),
                                           self.past, self.want())
        return step.output, q0

    # -- decisions -----------------------------------------------------------------------
    def decide(self, out: StepOutput, offset: int, rows: np.ndarray, start: int, end: int):
        """Tokens, confidences and statistics of the block positions (R, L); the output's
        column 0 is position `offset`."""
        cfg = self.config
        lo, hi = start - offset, end - offset
        masked = self.x[rows, start:end] == cfg.mask_id  # (R, L)
        if out.summary is not None:
            s = out.summary
            take = lambda a: np.asarray(a)[:, lo:hi]
            token = take(s.token)
            conf = take(P.select_confidence(s, cfg.alg) if isinstance(cfg, DreamConfig)
                        else s.prob)
            stats = Summary(token, take(s.prob), take(s.margin), take(s.neg_entropy))
            if cfg.temperature == 0 and isinstance(cfg, LLaDAConfig) \
                    and cfg.remasking is Remasking.RANDOM:
                conf = self._uniform(rows, start, end)
            return token, np.where(masked, conf, NEG_INF), stats, None
        logits = np.asarray(out.logits)[:, lo:hi]  # (R, L, V)
        r_idx, c_idx = np.nonzero(masked)
        z = logits[r_idx, c_idx]  # (N, V)
        counters = rows[r_idx] * self.s + start + c_idx  # the exact loop's RNG counters
        if isinstance(cfg, LLaDAConfig):
            if cfg.logits_eos_inf:
                z = P.suppress(z, cfg.eos_ids[:1], NUMPY)
            x0 = P.llada_tokens(z, counters, z.shape[-1], cfg.temperature, cfg.seed,
                                self.step, NUMPY)
            if cfg.confidence_eos_eot_inf:  # after x0, as generate.py does
                z = P.suppress(z, P.llada_confidence_suppressed(cfg.eos_ids, cfg.temperature),
                               NUMPY)
            c = P.llada_confidence(z, x0, counters, cfg.remasking, cfg.seed, self.step, NUMPY,
                                   float64=self.float64)
        else:
            c, x0 = P.sample_tokens(z, counters, temperature=cfg.temperature, top_p=cfg.top_p,
                                    top_k=cfg.top_k, alg=cfg.alg, seed=cfg.seed,
                                    step=self.step, ops=NUMPY, float64=self.float64)
        token = np.zeros(masked.shape, dtype=np.int64)
        conf = np.full(masked.shape, NEG_INF, dtype=np.asarray(c).dtype)
        token[r_idx, c_idx], conf[r_idx, c_idx] = x0, c
        stats = summarize(logits) if self.recorder is not None else None
        ref = None
        if self.recorder is not None and self.recorder.reference_tokens is not None:
            ref_tok = self.recorder.reference_tokens[rows][:, start - self.p:end - self.p]
            ref = token_probability(logits, ref_tok)
        return token, conf, stats, ref

    def _uniform(self, rows, start, end):
        counters = rows[:, None] * self.s + np.arange(start, end)[None, :]
        return NUMPY.uniform(counters, self.config.seed, self.step, Stream.REMASK_RANDOM)

    def select(self, conf: np.ndarray, count: np.ndarray | None) -> np.ndarray:
        """(R, L) commit set: by threshold (at least the best one) or the top `count`."""
        if count is None:
            best = P.top_k_mask(conf, np.ones(len(conf), dtype=np.int64), NUMPY)
            pick = (threshold_score(self.config, conf) >= self.config.threshold) | best
        else:
            pick = P.top_k_mask(conf, count, NUMPY)
        return pick & (conf > NEG_INF)

    # -- the loop ------------------------------------------------------------------------
    def decode(self) -> None:
        cfg = self.config
        blocks = cfg.window // self.block
        steps_per_block = cfg.steps // blocks
        for index in range(blocks):
            start = self.p + index * self.block
            end = start + self.block
            self.block_range = (start, end)
            self.finish_done_rows()
            if not len(self.active):
                break
            schedule = self.schedule(start, end, steps_per_block)
            taken = 0
            # The threshold rule commits at least one position per step, so a block takes
            # at most block-length steps; only a model that writes the mask id itself (the
            # position stays masked, as in the exact loops) could ask for more.
            for j in range(self.block if schedule is None else steps_per_block):
                rows = self.active
                if not (self.x[rows, start:end] == cfg.mask_id).any():
                    break
                if cfg.cached:
                    refresh = j == 0 or self.refresh == "step"
                    out, offset = self.boundary(rows) if refresh else self.cached(rows)
                else:
                    out, offset = self.full(rows)
                token, conf, stats, ref = self.decide(out, offset, rows, start, end)
                count = None if schedule is None else schedule(rows, j, conf > NEG_INF)
                select = self.select(conf, count)
                self.commit(rows, start, end, select, token, stats, ref, index)
                taken += 1
                self.finish_done_rows()
                if not len(self.active):
                    break
            self.steps_per_block.append(taken)

    def schedule(self, start: int, end: int, steps: int):
        """None for the threshold rule, else a function giving this step's counts (R,)."""
        cfg = self.config
        if cfg.parallel:
            return None
        masks = (self.x[:, start:end] == cfg.mask_id).sum(axis=1)  # (B,)
        if isinstance(cfg, LLaDAConfig):
            counts = P.even_schedule(masks, steps, NUMPY)  # (B, steps)
            return lambda rows, j, masked: counts[rows, j]
        ts = P.dream_timesteps(steps, cfg.eps)

        def dream_k(rows, j, masked):
            total = int(np.count_nonzero(masked))
            k = P.dream_transfer_count(total, len(rows), ts, j)
            return np.full(len(rows), k, dtype=np.int64)
        return dream_k

    def commit(self, rows, start, end, select, token, stats, ref, index) -> None:
        cfg = self.config
        window = slice(start, end)
        masked_before = self.x[:, self.p:] == cfg.mask_id
        written = select & (token != cfg.mask_id)
        block = self.x[rows, window]
        self.x[rows, window] = np.where(select, token, block)
        cs = self.commit_step[rows, window]
        self.commit_step[rows, window] = np.where(written, self.step, cs)
        if self.recorder is not None:
            self._record(rows, start, end, select, token, stats, ref, masked_before)
        if self.on_step is not None:
            full = np.zeros((self.b, self.s), dtype=bool)
            full[rows, window] = select
            self.on_step(StepEvent(self.step, index, self.x, full))
        self.step += 1

    def _record(self, rows, start, end, select, token, stats, ref, masked_before) -> None:
        k = self.s - self.p
        lo, hi = start - self.p, end - self.p

        def spread(values, fill, dtype):
            out = np.full((self.b, k), fill, dtype=dtype)
            if values is not None:
                out[rows[:, None], np.arange(lo, hi)[None, :]] = values
            return out

        nan = float("nan")
        self.recorder.record(
            masked=masked_before, committed=spread(select, False, bool),
            written=spread(token, -1, np.int64),
            top1_prob=spread(stats.prob if stats else None, nan, np.float64),
            margin=spread(stats.margin if stats else None, nan, np.float64),
            neg_entropy=spread(stats.neg_entropy if stats else None, nan, np.float64),
            ref_prob=None if ref is None else spread(ref, nan, np.float64))

    stop_finished = True

    def finish_done_rows(self) -> None:
        """Rows whose text is final leave the batch; their masks become EOS."""
        cfg = self.config
        if not self.stop_finished:
            return
        window = self.x[self.active, self.p:]
        is_eos = np.isin(window, self.eos)
        has_eos = is_eos.any(axis=1)
        first = np.where(has_eos, is_eos.argmax(axis=1), window.shape[1])
        before = np.arange(window.shape[1])[None, :] < first[:, None]
        done = has_eos & ~((window == cfg.mask_id) & before).any(axis=1)
        for row in self.active[done]:
            tail = self.x[row, self.p:]
            tail[tail == cfg.mask_id] = cfg.eos_ids[0]
        self.active = self.active[~done]

    def result(self) -> FastResult:
        return FastResult(tokens=self.x.copy(), prompt_width=self.p, pad=self.pad,
                          commit_step=self.commit_step[:, self.p:],
                          generated=generated_text_ids(self.x[:, self.p:], self.config),
                          steps_run=self.step, steps_per_block=self.steps_per_block,
                          forward_calls=self.calls, positions_computed=self.computed)

