"""Continuous batching: rows that join and leave a running batch between denoising steps.

`decode.generate` decodes a fixed batch from first step to last. A server wants more: a
request that arrives while others decode should start at once, and a finished one should
leave. `Continuous` keeps one state per row (its prompt, its window, and where it is in
its own schedule) and runs ONE backend call per `step()` over whatever rows are active:

    batch = Continuous(backend, config)
    row = batch.add(prompt_ids)            # any time; it starts at its own step 0
    events = batch.step()                  # one denoising step of every active row
    row.done, row.generated                # a finished row has left the batch

Each row follows exactly the schedule it would follow decoded alone by `decode.generate`:
  * LLaDA: its own block index and step within the block (per-row block ends, per-row
    commit counts from its own `even_schedule`), so a row joins at its own block 0 and a
    batch holds rows in different blocks;
  * Dream: its own step index, and k from its own masked count (`dream_transfer_count`
    with a batch of one), which is what the batch-mean count equals when rows decode in
    lockstep.
Rows are re-laid out at every step with `left_pad` (the same layout a batch of those
prompts gets), so a row sees only its own tokens: its results equal decoding it alone
(tests/runtime/test_continuous.py).

Only deterministic, full-forward configs take this path (`supports`): greedy confidence
policies with decode=exact. Sampling draws depend on a row's place in the batch, the
threshold and cache modes keep per-batch block state, and guidance and EOS suppression
need full logits; those decode a batch at a time with `decode.generate`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from . import policies as P
from .backend import Backend
from .batch import PromptError, generated_text_ids, left_pad
from .config import DecodeMode, DreamAlg, DreamConfig, LLaDAConfig, PolicyConfig, Remasking
from .xp import NUMPY

NEG_INF = float("-inf")


def supports(config: PolicyConfig) -> bool:
    """Whether `config` decodes row by row here (deterministic, full forwards)."""
    if getattr(config, "decode", None) is not DecodeMode.EXACT:
        return False
    if isinstance(config, LLaDAConfig):
        return (config.temperature == 0 and config.cfg_scale == 0
                and config.remasking is Remasking.LOW_CONFIDENCE
                and not config.logits_eos_inf and not config.confidence_eos_eot_inf)
    if isinstance(config, DreamConfig):
        return (config.temperature == 0 and not config.filters_logits
                and config.alg is not DreamAlg.ORIGIN and config.alg_temp is None
                and config.num_return_sequences == 1)
    return False


@dataclass(eq=False)
class Row:
    """One sequence in a continuous batch."""

    prompt: list[int]
    window: np.ndarray  # (K,) int64: the generation window, mask ids where not written
    step: int = 0  # the row's own step count (Dream's i; LLaDA's steps so far)
    block: int = 0  # LLaDA: the block being decoded
    counts: np.ndarray | None = None  # LLaDA: commit counts of the block's steps
    done: bool = False
    generated: list[int] | None = field(default=None)  # window ids cut at EOS, when done


@dataclass(frozen=True)
class RowStep:
    """What one row committed in one step: window positions and their tokens."""

    row: Row
    step: int
    block: int
    positions: list[int]
    tokens: list[int]


class Continuous:
    """Rows decoding under one config, one backend call per step for all of them."""

    def __init__(self, backend: Backend, config: PolicyConfig):
        if not supports(config):
            raise ValueError(f"continuous batching takes greedy decode=exact LLaDA or Dream "
                             f"configs; got {config!r}")
        self.backend, self.config = backend, config
        self.llada = isinstance(config, LLaDAConfig)
        self.want = "summary64" if config.float64_confidence else "summary"
        self.rows: list[Row] = []
        if not self.llada:
            self.ts = P.dream_timesteps(config.steps, config.eps)

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, prompt: Sequence[int]) -> Row:
        """A new row at its step 0; it takes part from the next `step()`."""
        cfg = self.config
        left_pad([prompt], cfg.window, pad_id=cfg.pad_token, mask_id=cfg.mask_id,
                 padding=cfg.padding)  # validates the prompt, as generate does
        row = Row(list(prompt), np.full(cfg.window, cfg.mask_id, dtype=np.int64))
        if self.llada:
            self._start_block(row)
        self.rows.append(row)
        return row

    def remove(self, row: Row) -> None:
        """Drop a row before it finishes (its client went away)."""
        if row in self.rows:
            self.rows.remove(row)

    def step(self) -> list[RowStep]:
        """One denoising step of every active row; finished rows leave the batch."""
        if not self.rows:
            return []
        cfg, rows = self.config, self.rows
        batch = left_pad([r.prompt for r in rows], cfg.window, pad_id=cfg.pad_token,
                         mask_id=cfg.mask_id, padding=cfg.padding)
        x, p = batch.input_ids, batch.prompt_width
        x[:, p:] = np.stack([r.window for r in rows])
        summary = self.backend.forward(x, batch.attention_mask, batch.position_ids,
                                       self.want).summary
        masked = x == cfg.mask_id
        if self.llada:
            ends = np.array([p + (r.block + 1) * cfg.block_length for r in rows])
            candidates = masked & (np.arange(x.shape[1])[None, :] < ends[:, None])
            confidence = summary.prob
            k = np.array([r.counts[r.step % cfg.steps_per_block] for r in rows])
        else:
            candidates = masked
            confidence = P.select_confidence(summary, cfg.alg)
            k = np.array([P.dream_transfer_count(int(m), 1, self.ts, r.step)
                          for r, m in zip(rows, masked.sum(1), strict=True)])
        confidence = np.where(candidates, confidence, NEG_INF)
        select = P.top_k_mask(confidence, k.astype(np.int64), NUMPY) & masked
        tokens = np.asarray(summary.token)
        events = []
        for i, row in enumerate(rows):
            chosen = np.flatnonzero(select[i, p:])
            row.window[chosen] = tokens[i, p + chosen]
            events.append(RowStep(row, row.step, row.block, chosen.tolist(),
                                  row.window[chosen].tolist()))
            row.step += 1
            if self.llada and row.step % cfg.steps_per_block == 0:
                row.block += 1
                if row.block < cfg.num_blocks:
                    self._start_block(row)
        self._retire()
        return events

    def _start_block(self, row: Row) -> None:
        cfg = self.config
        block = row.window[row.block * cfg.block_length:(row.block + 1) * cfg.block_length]
        row.counts = P.even_schedule(np.array([(block == cfg.mask_id).sum()]),
                                     cfg.steps_per_block, NUMPY)[0]

    def _finished(self, row: Row) -> bool:
        if self.llada:
            return row.block >= self.config.num_blocks
        # Dream's loop runs `steps` steps and stops early once nothing is masked
        return row.step >= self.config.steps or not (row.window == self.config.mask_id).any()

    def _retire(self) -> None:
        for row in [r for r in self.rows if self._finished(r)]:
            row.done = True
            row.generated = generated_text_ids(row.window[None], self.config)[0]
            self.rows.remove(row)


__all__ = ["Continuous", "PromptError", "Row", "RowStep", "supports"]
