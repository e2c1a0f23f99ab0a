"""Calibration token sequences for Stage II (teacher forcing on fully observed text).

Sources: `task:NAME` (the tiny models' calibration split), a plain text file
(WikiText-2 style; blank lines separate nothing in particular), or JSONL with a `text`
field or GSM8K `question`/`answer` pairs. Documents are tokenized, joined with EOS, and
`n` windows of `seq_len` tokens are drawn at seeded random offsets (GPTQ/FlatQuant
practice).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ConfigError
from ..jsonl import jsonl_rows, read_text


def read_documents(source: str) -> list[str]:
    if source.startswith("task:"):
        from ..tiny.tasks import calibration_texts

        try:
            return calibration_texts(source[len("task:"):], n=256, seq_len=256, seed=0)
        except KeyError as err:
            raise ConfigError(str(err.args[0])) from None
    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"calibration data {path} not found")
    if path.suffix == ".jsonl":
        docs = []
        for n, row in jsonl_rows(path):
            if "text" in row:
                docs.append(str(row["text"]))
            elif "question" in row and "answer" in row:
                docs.append(f"{row['question']}\n{row['answer']}")
            else:
                raise ConfigError(f"{path}:{n}: expected a 'text' field or 'question'/'answer'")
    else:
        docs = [d for d in read_text(path).split("\n") if d.strip()]
    if not docs:
        raise ConfigError(f"calibration data {path} is empty")
    return docs


def calibration_tokens(tokenizer, source: str, n: int, seq_len: int, seed: int = 0,
                       eos_id: int | None = None) -> torch.Tensor:
    """(n, seq_len) int64 token windows drawn from the source's token stream."""
    docs = read_documents(source)
    stream: list[int] = []
    for doc in docs:
        stream.extend(tokenizer(doc, add_special_tokens=False)["input_ids"])
        if eos_id is not None:
            stream.append(eos_id)
        if len(stream) > 64 * n * seq_len:  # plenty to draw from
            break
    if len(stream) < seq_len:
        raise ConfigError(f"calibration data {source} has only {len(stream)} tokens; "
                          f"need at least seq_len={seq_len}")
    ids = torch.tensor(stream, dtype=torch.long, device="cpu")  # stage 2 moves each batch
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(stream) - seq_len + 1, (n,), generator=gen, device="cpu")
    return torch.stack([ids[s:s + seq_len] for s in starts.tolist()])
