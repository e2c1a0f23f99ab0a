"""Model names that resolve without a path: shipped checkpoints and tiny test models.

`resolve_model("PATH_OR_NAME")` returns a checkpoint directory: an existing path as is, a
shipped model from `faircalib_export/assets/models/<name>`, or, for `tiny-llada` /
`tiny-dream`, a deterministic random-init checkpoint materialized once in the cache
directory (`$FAIRCALIB_CACHE`, default `~/.cache/faircalib-export`).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import CheckpointError

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "models"
TINY = {"tiny-llada": dict(family="llada", shards=2), "tiny-dream": dict(family="dream")}


def cache_dir() -> Path:
    return Path(os.environ.get("FAIRCALIB_CACHE", Path.home() / ".cache" / "faircalib-export"))


def shipped_models() -> list[str]:
    if not ASSETS.is_dir():
        return []
    return sorted(p.name for p in ASSETS.iterdir() if (p / "config.json").is_file())


def builtin_names() -> list[str]:
    return shipped_models() + sorted(TINY)


def resolve_model(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.exists():
        return path
    name = str(name_or_path)
    if (ASSETS / name / "config.json").is_file():
        return ASSETS / name
    if name in TINY:
        out = cache_dir() / "tiny" / name
        if not (out / "config.json").is_file():
            from .tiny import write_tiny_checkpoint

            write_tiny_checkpoint(out, **TINY[name])
        return out
    raise CheckpointError(
        f"{name}: no such checkpoint directory, and not a built-in model "
        f"({', '.join(builtin_names())})"
    )


def default_task(path: Path) -> str | None:
    """`task:NAME` for a checkpoint trained by `tiny train` (from its training.json)."""
    record = Path(path) / "training.json"
    if not record.is_file():
        return None

    from ..artifacts import read_json

    task = read_json(record).get("task")
    return f"task:{task}" if task else None
