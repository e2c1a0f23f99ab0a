"""Torch side of decoding: the runtime's policies on tensors and torch-module backends.

The torch-free loop lives in `faircalib_runtime`; this package supplies the torch array
namespace (`TorchOps`), backends over a `DiffusionLM` (or any module returning aligned
logits) and `generate_torch`, which decodes without leaving the device.
"""

from .torch_backend import (
    TorchBackend,
    TorchDeviceBackend,
    generate_torch,
    summarize_torch,
)
from .torch_policy import TorchOps, uniform

__all__ = [
    "TorchBackend", "TorchDeviceBackend", "TorchOps", "generate_torch", "summarize_torch",
    "uniform",
]
