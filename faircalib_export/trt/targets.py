"""Deployment targets: one JSON file per GPU in `configs/targets/`.

    {"name": "rtx4090", "display_name": ..., "compute_capability": "8.9",
     "memory_gib": 23.99, "kernel_path": "int4-mma", "max_batch": 4, "max_seq": 1024,
     "notes": ...}

`kernel_path` names the GEMM plugin's path on that GPU: "int4-mma" (mma.sync m16n8k64 s4)
on compute capability 8.x, "int8-mma" (int4 unpacked to int8, m16n8k32 s8) on 9.0, where
Hopper has no int4 tensor-core MMA. `max_batch` / `max_seq` are the engine's default
optimization-profile maxima. `memory_gib` is the total the driver reports.

The directory is `$FAIRCALIB_TARGETS_DIR` when set, else the shipped `configs/targets`
(package data: see `faircalib_export.configs_data`); `load_target` also accepts a path to
a JSON file of the same form.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .. import configs_data
from ..errors import ConfigError
from .errors import UnknownTargetError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

KERNEL_PATHS = ("int4-mma", "int8-mma", "dp4a")


def targets_dir() -> Traversable:
    """`$FAIRCALIB_TARGETS_DIR` when set, else the shipped targets (a Traversable)."""
    return configs_data.targets_dir()


def expected_kernel_path(compute_capability: str) -> str:
    major = int(compute_capability.split(".")[0])
    return "int4-mma" if major == 8 else "int8-mma" if major >= 9 else "dp4a"


@dataclass(frozen=True)
class Target:
    name: str
    display_name: str
    compute_capability: str  # "major.minor"
    memory_gib: float
    kernel_path: str
    max_batch: int
    max_seq: int
    notes: str = ""

    def __post_init__(self) -> None:
        where = f"target {self.name!r}"
        try:
            major, minor = (int(v) for v in self.compute_capability.split("."))
        except ValueError:
            raise ConfigError(f"{where}: compute_capability must look like '8.9', "
                              f"got {self.compute_capability!r}") from None
        if self.kernel_path not in KERNEL_PATHS:
            raise ConfigError(f"{where}: kernel_path must be one of {', '.join(KERNEL_PATHS)}")
        if self.kernel_path != expected_kernel_path(self.compute_capability):
            raise ConfigError(f"{where}: compute capability {major}.{minor} runs "
                              f"{expected_kernel_path(self.compute_capability)!r}, "
                              f"not {self.kernel_path!r}")
        if self.memory_gib <= 0 or self.max_batch <= 0 or self.max_seq <= 0:
            raise ConfigError(f"{where}: memory_gib, max_batch and max_seq must be positive")

    @property
    def sm(self) -> str:
        return "sm_" + self.compute_capability.replace(".", "")

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gib * 2**30)

    def to_dict(self) -> dict:
        return asdict(self)


def list_targets() -> list[str]:
    return list(configs_data.targets())


def _from_file(file: Path | Traversable) -> Target:
    try:
        data = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"{file}: cannot read target: {err}") from err
    fields = set(Target.__dataclass_fields__)
    unknown = sorted(set(data) - fields)
    missing = sorted(f for f in fields - set(data) if f != "notes")
    if unknown or missing:
        raise ConfigError(f"{file}: " + "; ".join(
            part for part in (f"unknown field(s) {', '.join(unknown)}" if unknown else "",
                              f"missing field(s) {', '.join(missing)}" if missing else "")
            if part))
    return Target(**data)


def load_target(name_or_path: str | Path | Target) -> Target:
    """A target by name (`configs/targets/NAME.json`, shipped) or by JSON file path."""
    if isinstance(name_or_path, Target):
        return name_or_path
    path = Path(name_or_path)
    if path.suffix == ".json" and path.is_file():
        return _from_file(path)
    known = configs_data.targets()
    if str(name_or_path) not in known:
        names = ", ".join(known) or f"none (no files in {targets_dir()})"
        raise UnknownTargetError(f"unknown target {str(name_or_path)!r}; known targets: {names}")
    return _from_file(known[str(name_or_path)])
