"""faircalib_runtime.chat: the chat template of an export, rendered in jinja2's sandbox."""

from __future__ import annotations

import json

import pytest

from faircalib_runtime.chat import ChatTemplate, ChatTemplateError

pytest.importorskip("jinja2")

LLAMA3 = ("{{ bos_token }}{% for message in messages %}{{ '<|h|>' + message['role'] + "
          "'<|/h|>' + message['content'] | trim + '<|eot|>' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|h|>assistant<|/h|>' }}{% endif %}")


def write(tmp_path, **config):
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    return tmp_path


def test_renders_every_turn_and_opens_the_assistant_turn(tmp_path):
    t = ChatTemplate.from_dir(write(tmp_path, chat_template=LLAMA3,
                                    bos_token={"content": "<s>", "lstrip": False}))
    text = t.render([{"role": "system", "content": "sys"}, {"role": "user", "content": " hi "},
                     {"role": "assistant", "content": "yo"}, {"role": "user", "content": "q"}])
    assert text == ("<s><|h|>system<|/h|>sys<|eot|><|h|>user<|/h|>hi<|eot|>"
                    "<|h|>assistant<|/h|>yo<|eot|><|h|>user<|/h|>q<|eot|><|h|>assistant<|/h|>")


def test_named_templates_and_missing_ones(tmp_path):
    assert ChatTemplate.from_dir(tmp_path) is None  # no tokenizer_config.json
    assert ChatTemplate.from_dir(write(tmp_path, bos_token="<s>")) is None
    named = [{"name": "tool_use", "template": "x"}, {"name": "default", "template": "{{ 1 }}"}]
    assert ChatTemplate.from_dir(write(tmp_path, chat_template=named)).render([]) == "1"


def test_template_errors_and_the_sandbox(tmp_path):
    refuse = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('user first') }}{% endif %}"
    t = ChatTemplate(refuse)
    with pytest.raises(ChatTemplateError, match="user first"):
        t.render([{"role": "system", "content": "s"}])
    with pytest.raises(ChatTemplateError, match="does not parse"):
        ChatTemplate("{% for %}")
    # the sandbox keeps a template away from Python internals
    escape = "{{ messages.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(ChatTemplateError):
        ChatTemplate(escape).render([])
    (tmp_path / "tokenizer_config.json").write_text("{broken")
    with pytest.raises(ChatTemplateError, match="unreadable"):
        ChatTemplate.from_dir(tmp_path)
