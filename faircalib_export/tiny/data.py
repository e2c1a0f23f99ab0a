"""Tokenizer and instruct-format batches for the tiny task models.

Format (as in LLaDA SFT): the user prompt rendered with the family's chat template,
then an answer window of `window` tokens holding the target followed by EOS padding.
Batches are left-padded with EOS under an attention mask, with position ids
cumsum(mask) - 1 (Dream's convention), so training sees exactly what batched decoding
sees. Only window positions are ever masked by the diffusion objective.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from ..models.tokenizer_files import SPECIALS, byte_level_tokenizer, write_tokenizer
from .tasks import ChainTask, Example

# Chat-template words, kept whole so a formatted prompt stays short.
TEMPLATE_WORDS = ["user", "assistant", "system", "\n\n", "\n"]


def build_tokenizer(family: str, task: ChainTask) -> Tokenizer:
    """Byte-level BPE where every word of `task` (and of the chat template) is one token.

    BPE applies merges by rank, so a word's chain of merges can be pre-empted by an
    earlier word's merge of the same pair ("start" before "assistant" turns "st" into a
    token that "assistant"'s chain never merges). Longer words go first, and the result
    is checked word by word.
    """
    words = sorted(dict.fromkeys(task.words() + TEMPLATE_WORDS), key=lambda w: (-len(w), w))
    tok = byte_level_tokenizer(SPECIALS[family], words)
    split = [w for w in words if len(tok.encode(w, add_special_tokens=False).ids) != 1]
    if split:
        raise ValueError(f"tokenizer splits task words {split[:5]}")
    return tok


def task_tokenizer(family: str, task: ChainTask) -> Tokenizer:
    """The tokenizer a saved checkpoint of `family` will load with, built for `task`.

    The files are written in the family's layout and read back through the toolchain's
    own loader, so training encodes text exactly as every later stage will. For Dream
    that means Qwen2's pre-tokenizer, which splits digits, as the real model does; LLaDA
    keeps every number 0..99 as one token.
    """
    from ..models.families import get_family
    from ..models.loading import load_tokenizer

    tok = build_tokenizer(family, task)
    with tempfile.TemporaryDirectory() as tmp:
        write_tokenizer(Path(tmp), tok, family)
        return backend_tokenizer(load_tokenizer(tmp, get_family(family)))


def backend_tokenizer(hf) -> Tokenizer:
    """The `tokenizers.Tokenizer` behind a transformers fast tokenizer."""
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None:
        raise TypeError(f"tokenizer {type(hf).__name__} has no tokenizers backend")
    return backend


def padded_vocab_size(tok: Tokenizer, multiple: int = 64) -> int:
    """Embedding rows: the vocabulary rounded up, as the real models pad their tables."""
    return -(-tok.get_vocab_size() // multiple) * multiple


@cache
def _chat_template(family: str):
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(SPECIALS[family].chat_template)


def render_prompt(family: str, prompt: str) -> str:
    """The family's chat template applied to one user turn, with the generation prompt.

    Rendered the way transformers renders `apply_chat_template` (sandboxed Jinja with
    trim_blocks / lstrip_blocks), so the text matches what the saved tokenizer produces.
    """
    specials = SPECIALS[family]
    return _chat_template(family).render(messages=[{"role": "user", "content": prompt}],
                           add_generation_prompt=True, bos_token=specials.bos,
                           eos_token=specials.eos)


@dataclass(frozen=True)
class Encoder:
    """Turns examples into token ids for one family and task."""

    family: str
    tok: Tokenizer
    window: int  # answer window length in tokens

    @property
    def eos_id(self) -> int:
        return self.tok.token_to_id(SPECIALS[self.family].eos)

    @property
    def mask_id(self) -> int:
        return self.tok.token_to_id(SPECIALS[self.family].mask)

    def prompt_ids(self, examples: list[Example]) -> list[list[int]]:
        texts = [render_prompt(self.family, ex.prompt) for ex in examples]
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def target_ids(self, examples: list[Example]) -> list[list[int]]:
        """Target ids padded with EOS to the window; raises if a target does not fit."""
        out = []
        encoded = self.tok.encode_batch([ex.target for ex in examples], add_special_tokens=False)
        for ex, enc in zip(examples, encoded, strict=True):
            ids = enc.ids
            if len(ids) >= self.window:  # keep at least one EOS so the model learns to stop
                raise ValueError(f"target of {len(ids)} tokens does not fit a window of "
                                 f"{self.window}: {ex.target!r}")
            out.append(ids + [self.eos_id] * (self.window - len(ids)))
        return out


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, S) prompt + window, left-padded with EOS
    attention_mask: torch.Tensor  # (B, S) 1 for real tokens
    position_ids: torch.Tensor  # (B, S) cumsum(mask) - 1, pads at 0
    answer_mask: torch.Tensor  # (B, S) bool, True on the answer window

    @property
    def window(self) -> int:
        return int(self.answer_mask[0].sum())


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, P) ids and (B, P) mask for prompts left-padded to the longest one."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p):] = 1
    return ids, mask


def make_batch(enc: Encoder, examples: list[Example]) -> Batch:
    prompt, prompt_mask = left_pad(enc.prompt_ids(examples), enc.eos_id)  # (B, P)
    target = torch.tensor(enc.target_ids(examples), dtype=torch.long)  # (B, W)
    input_ids = torch.cat([prompt, target], dim=1)  # (B, P + W)
    attention_mask = torch.cat([prompt_mask, torch.ones_like(target)], dim=1)
    position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)
    answer_mask = torch.zeros_like(input_ids, dtype=torch.bool)
    answer_mask[:, prompt.shape[1]:] = True
    return Batch(input_ids, attention_mask, position_ids, answer_mask)
