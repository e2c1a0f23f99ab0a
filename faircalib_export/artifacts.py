"""Artifact directories: written atomically, described by a manifest.

`atomic_dir(path)` yields a temporary sibling directory and renames it onto `path` only
when the block finishes without error, so a crash or a bad input never leaves a
half-written artifact that looks complete. `write_manifest` records what made an
artifact (command, config, package versions, input hashes). `detect_kind(path)` names
the kind of an artifact directory from its files alone; `opener.READERS` maps each kind
to its reader.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from faircalib_runtime.onnx import RUNTIME_JSON  # exported graphs: what the runtime reads

from . import __version__
from .errors import ConfigError

MANIFEST = "manifest.json"
DEPLOY_JSON = "deploy.json"  # folded models
TENSORRT_VARIANT = "tensorrt-plugins"

# Artifact kinds, in the order they are recognized (exported before folded before
# calibrated before plain checkpoint: a later kind's marker file may sit in an earlier one).
KIND_READERS_ORDER = ("tensorrt", "onnx", "folded", "calibrated", "checkpoint")


def read_json(file: str | Path, expect: type = dict):
    """A JSON file's contents, or a ConfigError naming the file and what is wrong."""
    file = Path(file)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{file}: not found") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{file}: not UTF-8 text") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{file}: invalid JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(data, expect):
        raise ConfigError(f"{file}: expected a JSON {expect.__name__}, "
                          f"found {type(data).__name__}")
    return data


def detect_kind(path: str | Path) -> str | None:
    """The artifact kind of a directory, from its marker files; None if it is no model."""
    path = Path(path)
    if not path.is_dir():
        return None
    if (path / RUNTIME_JSON).is_file():
        variant = read_json(path / RUNTIME_JSON).get("variant")
        return "tensorrt" if variant == TENSORRT_VARIANT else "onnx"
    if (path / DEPLOY_JSON).is_file():
        return "folded"
    if (path / MANIFEST).is_file() and read_json(path / MANIFEST).get("kind") == "calibrated":
        return "calibrated"
    if (path / "config.json").is_file():
        return "checkpoint"
    return None


@contextmanager
def atomic_dir(path: str | Path, overwrite: bool = True) -> Iterator[Path]:
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        old = path.parent / f".{path.name}.old-{os.getpid()}"
        path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(path)


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0], "faircalib-export": __version__}
    for name in ("torch", "transformers", "onnx", "onnxruntime", "tensorrt", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def write_manifest(directory: Path, kind: str, config: dict, inputs: dict[str, str] | None = None,
                   **extra) -> dict:
    """Write `manifest.json`; `inputs` maps a role to a file whose hash is recorded."""
    manifest = {
        "kind": kind,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": package_versions(),
        "config": config,
        "inputs": {role: {"path": str(p), "sha256": file_sha256(p)}
                   for role, p in (inputs or {}).items()},
        **extra,
    }
    (Path(directory) / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    return manifest
