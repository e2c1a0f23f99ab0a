"""Chat templates of exported models, rendered without transformers.

An export keeps the tokenizer's `tokenizer_config.json`, whose `chat_template` is a Jinja
template. `ChatTemplate.render(messages)` renders a whole conversation the way
transformers' `apply_chat_template(..., add_generation_prompt=True)` does: in jinja2's
immutable sandbox (a template can format text, not reach Python objects), with
`trim_blocks` and `lstrip_blocks`, and `bos_token` / `eos_token` / `raise_exception` in
scope. A single user turn needs no template: runtime.json's chat affixes wrap it (see
onnx.ExportedTokenizer); this is for conversations with system or earlier turns.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

TOKENIZER_CONFIG = "tokenizer_config.json"


class ChatTemplateError(ValueError):
    """A template that cannot be read or rendered."""


def _token(value) -> str:
    if isinstance(value, Mapping):  # AddedToken serialized as {"content": ...}
        value = value.get("content")
    return value or ""


class ChatTemplate:
    def __init__(self, template: str, bos_token: str = "", eos_token: str = ""):
        try:
            from jinja2.exceptions import TemplateError
            from jinja2.sandbox import ImmutableSandboxedEnvironment
        except ImportError as err:
            raise ChatTemplateError(f"rendering a chat template needs jinja2 ({err}): "
                                    f"pip install 'faircalib-export[serve]'") from err

        def raise_exception(message):
            raise TemplateError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        try:
            self.template = env.from_string(template)
        except TemplateError as err:
            raise ChatTemplateError(f"the chat template does not parse: {err}") from err
        self.bos_token, self.eos_token = bos_token, eos_token

    @classmethod
    def from_dir(cls, directory: str | Path) -> ChatTemplate | None:
        """The template of a model directory's tokenizer_config.json; None without one."""
        file = Path(directory) / TOKENIZER_CONFIG
        if not file.is_file():
            return None
        try:
            config = json.loads(file.read_text())
        except (OSError, ValueError) as err:
            raise ChatTemplateError(f"{file}: unreadable ({err})") from err
        template = config.get("chat_template")
        if isinstance(template, list):  # named templates: the default one
            template = next((t.get("template") for t in template
                             if isinstance(t, Mapping) and t.get("name") == "default"), None)
        if not isinstance(template, str) or not template:
            return None
        return cls(template, _token(config.get("bos_token")), _token(config.get("eos_token")))

    def render(self, messages: Sequence[Mapping[str, str]]) -> str:
        """The conversation as the model's prompt text, ending with the assistant's turn
        opened (add_generation_prompt=True)."""
        from jinja2.exceptions import TemplateError

        try:
            return self.template.render(messages=[dict(m) for m in messages],
                                        add_generation_prompt=True,
                                        bos_token=self.bos_token, eos_token=self.eos_token)
        except TemplateError as err:
            raise ChatTemplateError(f"the chat template refused the conversation: {err}") \
                from err
