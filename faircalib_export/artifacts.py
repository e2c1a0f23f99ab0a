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
from dataclasses import dataclass
from pathlib import Path

from faircalib_runtime.onnx import RUNTIME_JSON  # exported graphs: what the runtime reads

from . import __version__
from .errors import ConfigError

MANIFEST = "manifest.json"
DEPLOY_JSON = "deploy.json"  # folded models
TENSORRT_VARIANT = "tensorrt-plugins"  # int W4A4: the plugin graph (trt/plugin_graph.py)
TENSORRT_FP4_VARIANT = "tensorrt-nvfp4"  # nvfp4: TensorRT's native FP4 ops (trt/native_fp4.py)
TENSORRT_VARIANTS = (TENSORRT_VARIANT, TENSORRT_FP4_VARIANT)
BUILD_JSON = "build.json"  # a build directory's record of its stages

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
        return "tensorrt" if variant in TENSORRT_VARIANTS else "onnx"
    if (path / DEPLOY_JSON).is_file():
        return "folded"
    if (path / MANIFEST).is_file() and read_json(path / MANIFEST).get("kind") == "calibrated":
        return "calibrated"
    if (path / "config.json").is_file():
        return "checkpoint"
    return None


class OutputError(ConfigError):
    """An output path this command may not write: it would lose a user's file."""


def artifact_kind(path: Path) -> str | None:
    """The kind this toolchain wrote into `path` (its manifest; build.json for a build)."""
    if (path / MANIFEST).is_file():
        try:
            return read_json(path / MANIFEST).get("kind")
        except ConfigError:
            return None
    if (path / BUILD_JSON).is_file():
        return "build"
    return None


def foreign_entries(path: Path) -> list[str]:
    """Entries of an artifact directory that its manifest does not list as its own (a
    user's notes, say): replacing the artifact must not delete them. A manifest without
    a file list (older artifacts) owns nothing but itself."""
    try:
        owned = read_json(path / MANIFEST).get("files")
    except ConfigError:
        owned = None
    owned = set(owned) if isinstance(owned, list) else set()
    return sorted(p.name for p in path.iterdir() if p.name not in owned | {MANIFEST})


def check_output(path: str | Path, kind: str, inputs: tuple = (), overwrite: bool = False
                 ) -> None:
    """Refuse an output that would destroy something: the input, a file, a foreign directory.

    OUT may be absent, an empty directory, or an artifact of the same `kind` (replaced);
    a non-empty directory of anything else only with `overwrite`, and then it is moved
    aside, never deleted.
    """
    path = Path(path)
    resolved = path.resolve()
    for item in inputs:
        source = Path(item).resolve()
        if resolved == source or source in resolved.parents:
            where = "the input" if resolved == source else "inside the input"
            raise OutputError(f"-o {path} is {where} {item}: choose an output outside it")
        if resolved in source.parents:
            raise OutputError(f"-o {path} contains the input {item}: choose another output")
    for parent in resolved.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"-o {path}: {parent} is a file, not a directory")
            break
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise OutputError(f"-o {path} is an existing file; choose a directory path")
    if path.is_dir() and any(path.iterdir()) and artifact_kind(path) != kind and not overwrite:
        raise OutputError(f"-o {path} is a non-empty directory that is not a {kind} artifact; "
                          f"choose another output, or pass --overwrite (the directory is then "
                          f"moved aside to {path.name}.replaced-TIME, not deleted)")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _stale(entry: Path, marker: str) -> bool:
    """A `.NAME.tmp-PID` / `.NAME.old-PID` left by a process that is gone."""
    pid = entry.name.rsplit(marker, 1)[-1]
    return pid.isdigit() and not _pid_alive(int(pid))


def clean_stale(path: Path, log=None) -> list[Path]:
    """Remove temp dirs of `path` left by killed runs; returns what was removed."""
    removed = []
    if not path.parent.is_dir():
        return removed
    for marker in (".tmp-", ".old-"):
        for entry in path.parent.glob(f".{path.name}{marker}*"):
            if _stale(entry, marker):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
                if log is not None:
                    log(f"removed {entry}, left by a killed run")
    return removed


@dataclass
class Output:
    """A claimed output directory: checked, locked, and replaced only by `commit`."""

    path: Path
    kind: str

    def commit(self, tmp: Path) -> Path:
        """Rename the finished `tmp` onto the output (see `check_output` for the rules)."""
        path = self.path
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
        if not path.exists():
            tmp.rename(path)
        elif artifact_kind(path) == self.kind and not foreign_entries(path):
            old = path.parent / f".{path.name}.old-{os.getpid()}"  # ours alone: replace it
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:  # --overwrite of a foreign directory, or user files in ours: keep it beside
            aside = path.parent / f"{path.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
            path.rename(aside)
            tmp.rename(path)
            print(f"note: the previous {path} held files that are not part of a {self.kind} "
                  f"artifact; it was moved to {aside}", file=sys.stderr)
        return path


@contextmanager
def claim_output(path: str | Path, kind: str, *, inputs: tuple = (), overwrite: bool = False
                 ) -> Iterator[Output]:
    """Check OUT, clean stale temp dirs, and hold `.OUT.lock` while the command writes.

    A second writer of the same OUT fails at once, naming the process that holds it.
    """
    path = Path(path)
    check_output(path, kind, inputs, overwrite)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"-o {path}: cannot create {path.parent} ({err.strerror})") from None
    clean_stale(path)
    lock = path.parent / f".{path.name}.lock"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            text = lock.read_text().strip() if lock.is_file() else ""
            if text.isdigit() and _pid_alive(int(text)) and int(text) != os.getpid():
                raise OutputError(f"{path} is being written by PID {text} "
                                  f"(lock {lock})") from None
            lock.unlink(missing_ok=True)  # left by a killed run
        except OSError as err:
            raise OutputError(f"-o {path}: cannot write in {path.parent} "
                              f"({err.strerror})") from None
    else:
        raise OutputError(f"{path}: cannot take the lock {lock}")
    with os.fdopen(fd, "w") as f:
        f.write(f"{os.getpid()}\n")
    try:
        yield Output(path, kind)
    finally:
        lock.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path: str | Path, kind: str, *, inputs: tuple = (), overwrite: bool = False
               ) -> Iterator[Path]:
    """A temp sibling to write into, renamed onto `path` only if the block succeeds."""
    path = Path(path)
    with claim_output(path, kind, inputs=inputs, overwrite=overwrite) as out:
        tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        out.commit(tmp)


def write_output_file(path: str | Path, text: str, *, inputs: tuple = (),
                      overwrite: bool = False) -> Path:
    """Write a single output file (a JSON result, a plot's numbers) without losing one.

    Refused: a path inside an input, a directory, an existing file (unless `overwrite`).
    The text goes to a temp sibling first, then is renamed into place.
    """
    path = Path(path)
    check_output_file(path, inputs=inputs, overwrite=overwrite)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    tmp.write_text(text)
    tmp.replace(path)
    return path


def check_output_file(path: str | Path, *, inputs: tuple = (), overwrite: bool = False) -> None:
    path = Path(path)
    resolved = path.resolve()
    for item in inputs:
        source = Path(item).resolve()
        if resolved == source or source in resolved.parents:
            raise OutputError(f"-o {path} is inside the input {item}: choose an output "
                              f"outside it")
    if path.is_dir():
        raise OutputError(f"-o {path} is a directory; give a file path")
    if path.exists() and not overwrite:
        raise OutputError(f"-o {path} exists; pass --overwrite to replace it, or choose "
                          f"another path")
    for parent in resolved.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"-o {path}: {parent} is a file, not a directory")
            break
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"-o {path}: cannot create {path.parent} ({err.strerror})") from None


@contextmanager
def claim_workdir(path: str | Path, kind: str, *, inputs: tuple = (), overwrite: bool = False
                  ) -> Iterator[Path]:
    """A directory a long command fills over several runs (build, compare), claimed like
    an artifact: marked with a manifest of its kind at once, so a rerun after a crash
    recognizes its own work and resumes; a foreign one is moved aside with `overwrite`."""
    path = Path(path)
    with claim_output(path, kind, inputs=inputs, overwrite=overwrite) as claim:
        if path.is_dir() and any(path.iterdir()) and artifact_kind(path) != kind:
            fresh = path.parent / f".{path.name}.tmp-{os.getpid()}"
            fresh.mkdir()
            claim.commit(fresh)  # --overwrite: the old contents move aside, kept
        created = not path.exists() or not any(path.iterdir())
        path.mkdir(parents=True, exist_ok=True)
        if artifact_kind(path) != kind:
            write_manifest(path, kind, {})
        try:
            yield path
        except BaseException:
            # failed before writing anything (bad input): leave no empty marked directory
            if created and {p.name for p in path.iterdir()} <= {MANIFEST}:
                shutil.rmtree(path, ignore_errors=True)
            raise


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
    """Write `manifest.json`; `inputs` maps a role to a file whose hash is recorded.

    `files` lists what the directory holds now: the artifact's own files, which a later
    replacement may delete (anything else found there then is kept).
    """
    directory = Path(directory)
    manifest = {
        "kind": kind,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": package_versions(),
        "config": config,
        "inputs": {role: {"path": str(p), "sha256": file_sha256(p)}
                   for role, p in (inputs or {}).items()},
        "files": sorted(p.name for p in directory.iterdir() if p.name != MANIFEST),
        **extra,
    }
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    return manifest
