"""Prompt sources for probing (Stage I) and diagnostics, as token ids.

    task:NAME    the tiny task's prompts (CALIB split unless asked otherwise), rendered
                 exactly as the tiny models were trained and are evaluated
                 (`tiny.data.Encoder.prompt_ids`: the family's chat template around the
                 user turn); `seed` picks the stream
    FILE.jsonl   GSM8K format: each row's `question`, with the zero-shot chain-of-thought
                 instruction appended on a new line, in the tokenizer's chat template when
                 it has one (the paper's probing set); the first `n` rows
    FILE (other) plain text: each non-empty line is one prompt, tokenized as is (no chat
                 template), e.g. WikiText-2 for the cross-corpus check; the first `n` lines

Prompts longer than `max_tokens` keep their LAST `max_tokens` tokens, so a chat
template's generation header (and the text nearest the window) survives.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from ..jsonl import jsonl_rows, read_text

COT_INSTRUCTION = "Let's think step by step."
TASK_PREFIX = "task:"


def source_file(source: str) -> Path | None:
    """The file behind a prompt source (for manifests), or None for task sources."""
    return None if source.startswith(TASK_PREFIX) else Path(source)


def load_prompts(source: str, model_path: str | Path, n: int, *, seed: int = 0,
                 max_tokens: int | None = None, tokenizer=None,
                 split: str = "calib") -> list[list[int]]:
    """`n` prompts (fewer if a file holds fewer) as token ids for the model at `model_path`.

    `split` picks the tiny task's split (probing: calib; diagnostics: heldout).
    """
    from ..models.loading import load_tokenizer, read_config

    if n <= 0:
        raise ConfigError(f"need at least one prompt, got n={n}")
    family, _ = read_config(model_path)
    tok = tokenizer if tokenizer is not None else load_tokenizer(model_path, family)
    if source.startswith(TASK_PREFIX):
        ids = _task_prompts(source[len(TASK_PREFIX):], family.name, tok, n, seed, split)
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"prompt data {path} not found (expected task:NAME, a GSM8K "
                              f".jsonl file or a text file)")
        ids = _file_prompts(path, tok, n)
    if max_tokens is not None:
        ids = [p[-max_tokens:] for p in ids]
    empty = [i for i, p in enumerate(ids) if not p]
    if empty:
        raise ConfigError(f"{source}: prompt {empty[0]} is empty after tokenization")
    return ids


def _task_prompts(name: str, family: str, hf_tok, n: int, seed: int,
                  split: str) -> list[list[int]]:
    from ..tiny.data import Encoder, backend_tokenizer
    from ..tiny.tasks import Split, get_task

    try:
        task = get_task(name)
    except KeyError as err:
        raise ConfigError(str(err.args[0])) from None
    try:
        split = Split(split)
    except ValueError:
        raise ConfigError(f"unknown split {split!r}; choose one of "
                          f"{', '.join(s.value for s in Split)}") from None
    examples = task.examples(split, n, seed=seed)
    # The window only matters for targets; prompts are rendered independently of it.
    enc = Encoder(family, backend_tokenizer(hf_tok), window=0)
    return enc.prompt_ids(examples)


def _file_prompts(path: Path, tok, n: int) -> list[list[int]]:
    from faircalib_runtime import TextDecoder

    if path.suffix == ".jsonl":
        texts = []
        for lineno, row in jsonl_rows(path):
            if not isinstance(row, dict) or "question" not in row:
                raise ConfigError(f"{path}:{lineno}: expected a 'question' field (GSM8K format)")
            texts.append(f"{str(row['question']).strip()}\n{COT_INSTRUCTION}")
            if len(texts) == n:
                break
        decoder = TextDecoder(tok, chat=True)
    else:
        lines = read_text(path).splitlines()
        texts = [line.strip() for line in lines if line.strip()][:n]
        decoder = TextDecoder(tok, chat=False)
    if not texts:
        raise ConfigError(f"prompt data {path} holds no prompts")
    return [decoder.encode(t) for t in texts]
