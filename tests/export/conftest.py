"""Calibrated tiny artifacts shared by the fold / export / validate tests."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from faircalib_export.calibrate.artifact import run_calibration
from faircalib_export.calibrate.config import CalibConfig
from faircalib_export.models.tiny import write_tiny_checkpoint
from faircalib_export.probe.prior import Prior

# Dream with grouped-query attention (4 heads, 2 KV heads) and odd sizes; LLaDA plain.
SHAPES = {
    "dream": dict(hidden_size=48, intermediate_size=136, num_layers=2, num_heads=4,
                  num_kv_heads=2),
    "llada": dict(hidden_size=40, intermediate_size=120, num_layers=2, num_heads=2),
}
METHOD = {"dream": "fair-calib", "llada": "quarot"}


@pytest.fixture(scope="session", params=["dream", "llada"])
def calibrated(request, tmp_path_factory):
    """(base checkpoint, calibrated artifact) per family."""
    family = request.param
    root = tmp_path_factory.mktemp(family)
    base = write_tiny_checkpoint(root / "base", family, init_std=0.1, **SHAPES[family])
    tokens = torch.randint(0, 256, (8, 24), generator=torch.Generator().manual_seed(0))
    cfg = CalibConfig(method=METHOD[family], epochs=2)
    art = run_calibration(base, root / "calibrated", cfg, tokens, Prior(np.linspace(1, .2, 16)),
                          "random")
    return base, art
