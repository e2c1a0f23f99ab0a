"""Students under diagnosis: anything that maps a token state to aligned logits.

`load_student(path)` opens a model of any kind through `opener.open_model`: a
calibrated artifact (the fake-quant W4A4 model), a folded deployment (its PyTorch
reference), a plain checkpoint, or an exported ONNX / TensorRT directory, whose backend
is called on host arrays (`opener.torch_forward`).

The seed group of a student (for error bars over calibration seeds) is given explicitly
or inferred from its manifests: the calibration method, so students calibrated with the
same method and different seeds form one group.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..artifacts import MANIFEST


@dataclass
class Student:
    name: str
    path: Path
    kind: str  # an opener kind: checkpoint | calibrated | folded | onnx | tensorrt
    forward: Callable[..., torch.Tensor]  # (input_ids, attention_mask=, position_ids=)
    vocab_size: int
    family: str
    method: str | None = None  # calibration method, from the manifests
    seed: int | None = None  # calibration seed, from the manifests
    group: str = ""  # seed group label

    def describe(self) -> dict:
        return {"name": self.name, "path": str(self.path), "kind": self.kind,
                "method": self.method, "seed": self.seed, "group": self.group}


def _read_json(file: Path) -> dict:
    try:
        return json.loads(file.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def calibration_origin(path: Path) -> tuple[str | None, int | None]:
    """(method, seed) recorded by a calibrated artifact or the folded model made from it."""
    manifest = _read_json(path / MANIFEST)
    if manifest.get("kind") == "calibrated":
        calib = manifest.get("config", {}).get("calib", {})
        return calib.get("method"), calib.get("seed")
    deploy = _read_json(path / "deploy.json")
    if deploy:
        seed = None
        source = manifest.get("inputs", {}).get("artifact_manifest", {}).get("path")
        if source:
            seed = _read_json(Path(source)).get("config", {}).get("calib", {}).get("seed")
        return deploy.get("method"), seed
    return None, None


def base_weights_sha256(path: Path) -> str | None:
    """The hash of the checkpoint weights a calibrated artifact (or the folded model made
    from it) was calibrated from, as its manifest records it; None when not recorded."""
    manifest = _read_json(path / MANIFEST)
    if manifest.get("kind") == "folded":
        source = manifest.get("inputs", {}).get("artifact_manifest", {}).get("path")
        manifest = _read_json(Path(source)) if source else {}
    if manifest.get("kind") != "calibrated":
        return None
    inputs = manifest.get("inputs", {})
    entry = inputs.get("model_weights") or inputs.get("model_weights_index") or {}
    return entry.get("sha256")


def load_student(path: str | Path, device: str = "cpu", name: str | None = None) -> Student:
    from ..opener import open_model, torch_forward

    path = Path(path)
    opened = open_model(path, device)
    method, seed = calibration_origin(path)
    return Student(name=name or path.name, path=path, kind=opened.kind,
                   forward=torch_forward(opened), vocab_size=opened.vocab_size,
                   family=opened.family, method=method, seed=seed, group=method or opened.kind)


def unique_names(paths: list[Path]) -> list[str]:
    """Directory names, suffixed with the parent's name (then an index) where they clash."""
    names = [p.name for p in paths]
    for i, p in enumerate(paths):
        if names.count(p.name) > 1:
            names[i] = f"{p.parent.name}/{p.name}"
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if names.count(n) == 1 else f"{n}#{seen[n]}")
    return out
