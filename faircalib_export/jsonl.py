"""User text input files: plain text and JSON Lines (prompts, calibration documents,
benchmark rows), read as UTF-8 with errors that name the file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from .errors import ConfigError


def read_text(path: Path) -> str:
    """A UTF-8 text file's contents; a ConfigError naming the file if it is not UTF-8."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason}); "
                          f"convert it, e.g. iconv -f latin1 -t utf-8") from None


def jsonl_rows(path: Path) -> Iterator[tuple[int, object]]:
    """(line number, parsed value) per non-blank line; invalid JSON is a ConfigError naming
    the file and line."""
    for lineno, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}:{lineno}: invalid JSON ({err})") from err
