"""Mock backends for the runtime tests (numpy only; no torch import here)."""

from __future__ import annotations

import numpy as np

from faircalib_runtime.backend import step_output

LOW = -1e4  # logit of an impossible token: its float64 softmax probability is exactly 0


def logits_from_probs(probs: dict[int, float], vocab: int) -> np.ndarray:
    """(V,) float32 logits whose softmax is `probs` (token -> probability)."""
    row = np.full(vocab, LOW, dtype=np.float64)
    for tok, p in probs.items():
        row[tok] = np.log(p)
    return row.astype(np.float32)


class ScriptedBackend:
    """Position-aligned logits from a fixed (S, V) table, or one table per call.

    Records every call so tests can inspect what the loop sent and asked for.
    """

    def __init__(self, table: np.ndarray | list[np.ndarray]):
        self.tables = table if isinstance(table, list) else None
        self.table = None if isinstance(table, list) else np.asarray(table, np.float32)
        self.calls: list[dict] = []

    def logits(self, input_ids: np.ndarray) -> np.ndarray:
        call = len(self.calls)
        table = self.table if self.tables is None else self.tables[call]
        b, s = input_ids.shape
        return np.broadcast_to(table[None, :s], (b, s, table.shape[-1])).copy()

    def forward(self, input_ids, attention_mask, position_ids, want):
        logits = self.logits(np.asarray(input_ids))
        self.calls.append(dict(input_ids=np.array(input_ids), want=want,
                               attention_mask=None if attention_mask is None
                               else np.array(attention_mask),
                               position_ids=None if position_ids is None
                               else np.array(position_ids)))
        return step_output(logits, want)


def hashed_logits(input_ids: np.ndarray, vocab: int, mask_id: int | None = None,
                  scale: float = 3.0) -> np.ndarray:
    """Pseudo-random logits (B, S, V) float32 that depend on the whole row's state.

    Each row's logits change whenever any of its tokens changes, like a bidirectional
    model's, and they are a pure function of the ids, so two decodes that reach the same
    state see the same logits.
    """
    ids = np.asarray(input_ids, dtype=np.int64)
    b, s = ids.shape
    out = np.empty((b, s, vocab), dtype=np.float32)
    for r in range(b):
        key = int(np.bitwise_xor.reduce(ids[r] * (np.arange(s) + 1) * 2654435761 % 2**31))
        gen = np.random.default_rng([key, s])
        out[r] = scale * gen.standard_normal((s, vocab))
    if mask_id is not None:
        out[..., mask_id] = LOW  # real models essentially never predict the mask token
    return out


class HashedBackend:
    """numpy backend over `hashed_logits`; counts requests by kind."""

    def __init__(self, vocab: int, mask_id: int):
        self.vocab, self.mask_id = vocab, mask_id
        self.wants: list[str] = []

    def forward(self, input_ids, attention_mask, position_ids, want):
        self.wants.append(want)
        return step_output(hashed_logits(input_ids, self.vocab, self.mask_id), want)


class SummaryOnlyBackend(HashedBackend):
    """Fails the test if the loop ever asks for full logits."""

    def forward(self, input_ids, attention_mask, position_ids, want):
        assert want != "logits", "a greedy loop requested full-vocabulary logits"
        return super().forward(input_ids, attention_mask, position_ids, want)
