"""A small numpy attention model that implements the runtime's cached backend contract.

One bidirectional attention layer with RoPE-free position embeddings, so that a cached
step really reuses stale keys and values (the approximation fast decoding makes), and so
that the loop can be tested without torch. Logits are position-aligned; `shift=True`
models Dream (prediction for i made at i - 1).
"""

from __future__ import annotations

import numpy as np

from faircalib_runtime.backend import CachedStep, StepOutput, summarize


class ToyCachedModel:
    supports_cache = True

    def __init__(self, vocab: int, *, mask_id: int, max_len: int = 256, dim: int = 16,
                 layers: int = 2, shift: bool = False, seed: int = 0, sharp: float = 6.0):
        rng = np.random.default_rng(seed)
        self.vocab, self.mask_id, self.shift, self.layers = vocab, mask_id, shift, layers
        self.embed = rng.standard_normal((vocab, dim)).astype(np.float32)
        self.pos = rng.standard_normal((max_len, dim)).astype(np.float32) * 0.5
        self.w = [rng.standard_normal((3, dim, dim)).astype(np.float32) / np.sqrt(dim)
                  for _ in range(layers)]
        self.out = rng.standard_normal((dim, vocab)).astype(np.float32) * sharp / np.sqrt(dim)
        self.calls = {"full": 0, "cached": 0}
        self.query_positions = 0  # total (rows x queries) computed

    def _run(self, ids, key_mask, positions, past):
        b, q = ids.shape
        h = self.embed[ids] + self.pos[positions]  # (B, Q, d)
        presents = []
        k_past = 0 if past is None else past.shape[4]
        for i, (wq, wk, wv) in enumerate(self.w):
            qh, kh, vh = h @ wq, h @ wk, h @ wv
            presents.append(np.stack([kh, vh])[:, :, None])  # (2, B, 1, Q, d)
            keys, values = kh, vh
            if past is not None:
                keys = np.concatenate([past[i, 0, :, 0], kh], axis=1)
                values = np.concatenate([past[i, 1, :, 0], vh], axis=1)
            scores = qh @ keys.transpose(0, 2, 1) / np.sqrt(h.shape[-1])  # (B, Q, K+Q)
            allowed = np.ones(scores.shape, dtype=bool)
            if key_mask is not None:
                real_q = key_mask[:, k_past:]
                allowed = real_q[:, :, None] & key_mask[:, None, :]
                allowed |= np.eye(q, k_past + q, k_past, dtype=bool)[None]
            scores = np.where(allowed, scores, -np.inf)
            weights = np.exp(scores - scores.max(-1, keepdims=True))
            weights /= weights.sum(-1, keepdims=True)
            h = h + np.tanh(weights @ values)
        logits = (h @ self.out).astype(np.float32)
        logits[..., self.mask_id] = -30.0  # never predicts the mask
        if self.shift:
            logits = np.concatenate([logits[:, :1], logits[:, :-1]], axis=1)
        return logits, np.stack(presents).astype(np.float32)  # (L, 2, B, 1, Q, d)

    @staticmethod
    def _output(logits, want):
        if want == "logits":
            return StepOutput(logits=logits)
        return StepOutput(summary=summarize(logits))

    def forward(self, input_ids, attention_mask, position_ids, want):
        b, s = input_ids.shape
        self.calls["full"] += 1
        self.query_positions += b * s
        pos = np.broadcast_to(np.arange(s), (b, s)) if position_ids is None else position_ids
        logits, _ = self._run(input_ids, attention_mask, pos, None)
        return self._output(logits, want)

    def forward_cached(self, input_ids, key_mask, position_ids, past, want):
        self.calls["cached"] += 1
        self.query_positions += input_ids.size
        logits, present = self._run(input_ids, key_mask, position_ids, past)
        return CachedStep(output=self._output(logits, want), present=present)
