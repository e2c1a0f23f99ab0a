"""JSON Lines input files (GSM8K-style prompts, calibration documents, benchmark rows)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from .errors import ConfigError


def jsonl_rows(path: Path) -> Iterator[tuple[int, object]]:
    """(line number, parsed value) per non-blank line; invalid JSON is a ConfigError naming
    the file and line."""
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}:{lineno}: invalid JSON ({err})") from err
