"""Fixtures of the TensorRT tests: folded tiny models, and what the machine can do.

Markers: `tensorrt` (needs the tensorrt package, a GPU and the plugin library) and `gpu`
(needs a CUDA device) are deselected by default; `slow` marks the all-architecture builds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from trt_env import nvcc_path

from faircalib_export.calibrate.artifact import run_calibration
from faircalib_export.calibrate.config import CalibConfig
from faircalib_export.fold.fold import fold_artifact
from faircalib_export.models.tiny import write_tiny_checkpoint
from faircalib_export.probe.prior import Prior

# Dream with grouped-query attention, q/k/v biases and odd sizes; LLaDA plain (QuaRot).
SHAPES = {
    "dream": dict(hidden_size=48, intermediate_size=136, num_layers=2, num_heads=4,
                  num_kv_heads=2),
    "llada": dict(hidden_size=40, intermediate_size=120, num_layers=2, num_heads=2),
}
METHOD = {"dream": "fair-calib", "llada": "quarot"}


@pytest.fixture(scope="session", params=["dream", "llada"])
def deployed(request, tmp_path_factory) -> Path:
    """A folded (deployable) tiny model per family."""
    family = request.param
    root = tmp_path_factory.mktemp(f"trt-{family}")
    base = write_tiny_checkpoint(root / "base", family, init_std=0.1, **SHAPES[family])
    tokens = torch.randint(0, 256, (8, 24), generator=torch.Generator().manual_seed(0))
    art = run_calibration(base, root / "calibrated", CalibConfig(method=METHOD[family], epochs=2),
                          tokens, Prior(np.linspace(1, .2, 16)), "random")
    return fold_artifact(art, root / "deploy")


@pytest.fixture
def nvcc() -> str:
    path = nvcc_path()
    if path is None:
        pytest.skip("nvcc is not installed")
    return path
