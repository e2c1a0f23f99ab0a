"""Backends over a torch module, and the decode loop run entirely on its device.

The wrapped module is called as `model(input_ids, attention_mask=..., position_ids=...)`
and must return POSITION-ALIGNED logits (B, S, V) (`DiffusionLM.forward` does; pass
`shift=True` for a module that returns Dream's raw logits).

- `TorchDeviceBackend`: tensors in, tensors out; summaries computed on the device, in
  float64, in row chunks to bound memory. Used by `generate_torch`.
- `TorchBackend`: numpy in, numpy out, for the torch-free runtime loop; with
  want="summary" only (B, S) statistics cross to the host.
- `generate_torch`: the runtime's loop with `TorchOps`, so state, logits, policy math
  and random draws all stay on the device; only small per-step arrays (the masked count
  Dream's schedule needs, and recorder rows when recording) come back to the host.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from faircalib_runtime.backend import SUMMARY_CHUNK_ROWS, StepOutput, Summary, Want, summarize
from faircalib_runtime.config import PolicyConfig
from faircalib_runtime.decode import DecodeResult, StepEvent, generate
from faircalib_runtime.trajectory import TrajectoryRecorder

from .torch_policy import TorchOps


def _device_of(model: torch.nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


GPU_CHUNK_ROWS = 512  # larger chunks on accelerators: fewer kernel launches per step


def summarize_torch(logits: torch.Tensor, chunk_rows: int | None = None) -> Summary:
    """`faircalib_runtime.backend.summarize` on the logits' device, in row chunks."""
    if chunk_rows is None:
        chunk_rows = SUMMARY_CHUNK_ROWS if logits.device.type == "cpu" else GPU_CHUNK_ROWS
    return summarize(logits, TorchOps(logits.device), chunk_rows)


class TorchDeviceBackend:
    """Backend on torch tensors (the array type of `TorchOps`)."""

    def __init__(self, model: Callable[..., torch.Tensor], *, shift: bool = False):
        self.model = model
        self.shift = shift

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                position_ids: torch.Tensor | None, want: Want) -> StepOutput:
        logits = self.model(input_ids, attention_mask=attention_mask,
                            position_ids=position_ids)  # (B, S, V)
        if self.shift:  # Dream: the prediction for position i is read at i - 1
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        if want == "summary":
            return StepOutput(summary=summarize_torch(logits))
        return StepOutput(logits=logits.float())


class TorchBackend:
    """numpy-facing backend for the runtime loop; the model runs on `device`."""

    def __init__(self, model: torch.nn.Module, *, device: str | torch.device | None = None,
                 shift: bool = False):
        self.device = torch.device(device) if device is not None else _device_of(model)
        self.ops = TorchOps(self.device)
        self.inner = TorchDeviceBackend(model, shift=shift)

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray | None,
                position_ids: np.ndarray | None, want: Want) -> StepOutput:
        ops = self.ops
        to_dev = lambda a: None if a is None else ops.asarray(a)
        out = self.inner.forward(to_dev(input_ids), to_dev(attention_mask),
                                 to_dev(position_ids), want)
        if want == "summary":
            s = out.summary
            return StepOutput(summary=Summary(*(ops.to_numpy(v) for v in (
                s.token, s.prob, s.margin, s.neg_entropy))))
        return StepOutput(logits=ops.to_numpy(out.logits))


def generate_torch(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    config: PolicyConfig,
    *,
    device: str | torch.device | None = None,
    shift: bool = False,
    recorder: TrajectoryRecorder | None = None,
    on_step: Callable[[StepEvent], None] | None = None,
) -> DecodeResult:
    """Decode on the model's device with the runtime's loop and policies (see module doc)."""
    device = torch.device(device) if device is not None else _device_of(model)
    return generate(TorchDeviceBackend(model, shift=shift), prompts, config,
                    recorder=recorder, on_step=on_step, ops=TorchOps(device))
