"""Helpers shared by several test packages (imported by name: tests/ is on sys.path)."""

from __future__ import annotations

import sys

import pytest


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One torch thread per test: the micro models gain nothing from more, and OpenMP
    spin-waits make them slow on a shared machine. Never imports torch itself (the
    runtime tests prove the runtime works without it); restores the setting after."""
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def padded_batch():
    """(input_ids, attention_mask, position_ids): 3 x 17 tokens, rows 2 and 3 left-padded."""
    import torch

    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 256, (3, 17), generator=gen)
    mask = torch.ones(3, 17, dtype=torch.long)
    mask[1, :4] = 0
    mask[2, :9] = 0
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def chain_export(root, onnx_name: str = "onnx", model: str = "llada-chain"):
    """`model`'s rtn calibration, its fold and their w4a4-int export under `root`:
    (calibrated, deploy, onnx) directories."""
    from faircalib_export.calibrate.config import CalibConfig
    from faircalib_export.calibrate.entry import calibrate_checkpoint
    from faircalib_export.export.onnx_export import ExportOptions, export_onnx
    from faircalib_export.fold.fold import fold_artifact

    calibrated = calibrate_checkpoint(model, root / "cal", CalibConfig("rtn"),
                                      samples=4, seq_len=32)
    deploy = fold_artifact(calibrated, root / "deploy")
    return calibrated, deploy, export_onnx(deploy, root / onnx_name,
                                           ExportOptions(variant="w4a4-int"))
