"""Text in, text out around the token-level decode loop.

`TextDecoder` owns everything about tokenization so the engine never sees it: it
applies the tokenizer's chat template (when `chat=True` and the tokenizer has one),
encodes, calls `generate`, and decodes the generated ids. Any object with
`encode(text) -> ids` and `decode(ids) -> text` works; Hugging Face tokenizers (with
`apply_chat_template`) and `tokenizers.Tokenizer` (whose encode returns an Encoding)
are recognized.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .backend import Backend
from .batch import DecodeResult
from .config import PolicyConfig
from .decode import generate


class TextDecoder:
    def __init__(self, tokenizer: Any, *, chat: bool = True):
        self.tokenizer = tokenizer
        self.chat = chat

    @property
    def _is_hf(self) -> bool:
        return hasattr(self.tokenizer, "apply_chat_template")

    def has_chat_template(self) -> bool:
        return self._is_hf and bool(getattr(self.tokenizer, "chat_template", None))

    @property
    def _templated(self) -> bool:
        return self.chat and self.has_chat_template()

    def format(self, text: str) -> str:
        """The prompt string: the chat template around a user turn, or the text itself."""
        if not self._templated:
            return text
        messages = [{"role": "user", "content": text}]
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                  tokenize=False)

    def encode(self, text: str) -> list[int]:
        formatted = self.format(text)
        if self._is_hf:
            # A chat template already writes BOS; plain text gets the tokenizer's specials.
            ids = self.tokenizer.encode(formatted, add_special_tokens=not self._templated)
        else:
            ids = self.tokenizer.encode(formatted)
        ids = getattr(ids, "ids", ids)  # tokenizers.Encoding
        return [int(i) for i in ids]

    def decode(self, ids: Sequence[int]) -> str:
        if self._is_hf:
            return self.tokenizer.decode(list(ids), skip_special_tokens=True)
        return self.tokenizer.decode(list(ids))

    def generate(self, backend: Backend, texts: Sequence[str], config: PolicyConfig,
                 **kwargs: Any) -> tuple[list[str], DecodeResult]:
        """Decode each text; returns the completions and the token-level result."""
        result = generate(backend, [self.encode(t) for t in texts], config, **kwargs)
        return [self.decode(ids) for ids in result.generated], result
