"""Deployment targets: one JSON file per GPU in `configs/targets/`.

    {"name": "rtx4090", "display_name": ..., "compute_capability": "8.9",
     "memory_gib": 23.99, "kernel_path": "int4-mma", "max_batch": 4, "max_seq": 1024,
     "default_format": "int", "notes": ...}

`default_format` is the quantization format `build` calibrates in for this target (absent:
"int"). `kernel_path` names the W4A4 GEMM path of that format on that GPU: for "int", the
plugin's "int4-mma" (mma.sync m16n8k64 s4) on compute capability 8.x and "int8-mma" (int4
unpacked to int8, m16n8k32 s8) on 9.0 and later, which have no int4 tensor-core MMA; for
an FP4 format, "fp4-native": TensorRT's own FP4 GEMMs, no plugin, on compute capability
10.0 and later (Blackwell: B200 sm_100, RTX 50 sm_120). TensorRT's dynamic activation
quantization (IDynamicQuantizeLayer) takes 16-element blocks with FP8 scales only, so
"nvfp4" is the one FP4 format TensorRT runs natively; "mxfp4" is a calibration / ONNX
format there. `max_batch` / `max_seq` are the engine's default optimization-profile maxima.
`memory_gib` is the total the driver reports.

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
from ..quant.formats import QuantFormat
from .errors import UnknownTargetError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

KERNEL_PATHS = ("int4-mma", "int8-mma", "dp4a", "fp4-native")
FP4_MIN_MAJOR = 10  # FP4 tensor cores: Blackwell (sm_100, sm_120) and later
TRT_NATIVE_FP4 = (QuantFormat.NVFP4,)  # TensorRT's dynamic FP4 quantization: 16-blocks, E4M3


def targets_dir() -> Traversable:
    """`$FAIRCALIB_TARGETS_DIR` when set, else the shipped targets (a Traversable)."""
    return configs_data.targets_dir()


def expected_kernel_path(compute_capability: str, format: str = "int") -> str:
    """The GEMM path of `format` on a GPU of this compute capability."""
    major = int(compute_capability.split(".")[0])
    if QuantFormat(format).is_fp4:
        return "fp4-native"
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
    default_format: str = QuantFormat.INT.value  # what `build` calibrates in (formats.py)

    def __post_init__(self) -> None:
        where = f"target {self.name!r}"
        try:
            major, minor = (int(v) for v in self.compute_capability.split("."))
        except ValueError:
            raise ConfigError(f"{where}: compute_capability must look like '8.9', "
                              f"got {self.compute_capability!r}") from None
        formats = [f.value for f in QuantFormat]
        if self.default_format not in formats:
            raise ConfigError(f"{where}: default_format must be one of {', '.join(formats)}, "
                              f"got {self.default_format!r}")
        if QuantFormat(self.default_format).is_fp4 and major < FP4_MIN_MAJOR:
            raise ConfigError(f"{where}: compute capability {major}.{minor} has no FP4 tensor "
                              f"cores (they need {FP4_MIN_MAJOR}.0 or later); default_format "
                              f"{self.default_format!r} is not deployable there")
        if self.default_format not in self.formats:
            raise ConfigError(f"{where}: default_format {self.default_format!r} has no "
                              f"TensorRT path; TensorRT runs {', '.join(self.formats)} here")
        if self.kernel_path not in KERNEL_PATHS:
            raise ConfigError(f"{where}: kernel_path must be one of {', '.join(KERNEL_PATHS)}")
        expected = expected_kernel_path(self.compute_capability, self.default_format)
        if self.kernel_path != expected:
            raise ConfigError(f"{where}: compute capability {major}.{minor} runs "
                              f"{self.default_format} with {expected!r}, "
                              f"not {self.kernel_path!r}")
        if self.memory_gib <= 0 or self.max_batch <= 0 or self.max_seq <= 0:
            raise ConfigError(f"{where}: memory_gib, max_batch and max_seq must be positive")

    @property
    def sm(self) -> str:
        return "sm_" + self.compute_capability.replace(".", "")

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gib * 2**30)

    @property
    def fp4(self) -> bool:
        """Whether the GPU has FP4 tensor cores."""
        return int(self.compute_capability.split(".")[0]) >= FP4_MIN_MAJOR

    @property
    def formats(self) -> tuple[str, ...]:
        """The formats a TensorRT deployment runs on this GPU: int (the W4A4 plugin), and
        on FP4 GPUs the formats of TensorRT's native FP4 path."""
        return (QuantFormat.INT.value,) + tuple(f.value for f in TRT_NATIVE_FP4 if self.fp4)

    def kernel_path_for(self, format: str) -> str:
        """The GEMM path of `format` here; ConfigError where the GPU cannot run it."""
        if QuantFormat(format).is_fp4 and not self.fp4:
            raise ConfigError(f"target {self.name!r} (sm {self.compute_capability}) has no FP4 "
                              f"tensor cores; {format} deploys on compute capability "
                              f"{FP4_MIN_MAJOR}.0 or later")
        return expected_kernel_path(self.compute_capability, format)

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
    missing = sorted(f for f in fields - set(data) if f not in ("notes", "default_format"))
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
