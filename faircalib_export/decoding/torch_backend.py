"""Backends over a torch module, and the decode loop run entirely on its device.

The wrapped module is called as `model(input_ids, attention_mask=..., position_ids=...)`
and must return POSITION-ALIGNED logits (B, S, V) (`DiffusionLM.forward` does; pass
`shift=True` for a module that returns Dream's raw logits).

- `TorchDeviceBackend`: tensors in, tensors out (logits in the model's dtype); summaries
  computed on the device, in the logits' dtype ("summary") or float64 ("summary64"), in
  row chunks to bound memory. Used by `generate_torch`.
- `TorchBackend`: numpy in, numpy out, for the torch-free runtime loop; with
  want="summary" only (B, S) statistics cross to the host.
Both run cached calls (`forward_cached`, see faircalib_runtime.backend) over a module
whose forward takes `past_key_values` and `return_present` (every model of this package).
- `generate_torch`: the runtime's loop with `TorchOps`, so state, logits, policy math
  and random draws all stay on the device; only small per-step arrays (the masked count
  Dream's schedule needs, and recorder rows when recording) come back to the host.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import numpy as np
import torch

from faircalib_runtime.backend import (
    SUMMARY_CHUNK_ROWS,
    CachedStep,
    StepOutput,
    Summary,
    Want,
    summarize,
)
from faircalib_runtime.batch import DecodeResult, StepEvent
from faircalib_runtime.config import DecodeMode, PolicyConfig
from faircalib_runtime.decode import generate
from faircalib_runtime.trajectory import TrajectoryRecorder

from .torch_policy import TorchOps


def _device_of(model: torch.nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


GPU_CHUNK_ROWS = 512  # larger chunks on accelerators: fewer kernel launches per step


def summarize_torch(logits: torch.Tensor, chunk_rows: int | None = None,
                    float64: bool = True) -> Summary:
    """`faircalib_runtime.backend.summarize` on the logits' device, in row chunks."""
    if chunk_rows is None:
        chunk_rows = SUMMARY_CHUNK_ROWS if logits.device.type == "cpu" else GPU_CHUNK_ROWS
    return summarize(logits, TorchOps(logits.device), chunk_rows, float64)


def takes_cache(model: Callable) -> bool:
    """Whether `model`'s forward takes the cache arguments (`past_key_values`)."""
    try:
        return "past_key_values" in inspect.signature(getattr(model, "forward", model)).parameters
    except (TypeError, ValueError):  # no signature to read
        return False


def _with_past(model: Callable, past: torch.Tensor | None, present: list) -> Callable:
    """`model` as a plain forward that attends to `past` too and leaves its keys and values
    in `present`: a cached call then goes through `forward`'s own output handling."""
    if not takes_cache(model):
        raise TypeError(f"{type(model).__name__} has no cached forward (no past_key_values "
                        f"argument); check `supports_cache` before a cached call")

    def forward(input_ids, attention_mask=None, position_ids=None):
        logits, kv = model(input_ids, attention_mask=attention_mask, position_ids=position_ids,
                           past_key_values=past, return_present=True)
        present.append(kv.float())
        return logits

    return forward


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
        if want == "logits":
            return StepOutput(logits=logits)
        return StepOutput(summary=summarize_torch(logits, float64=want == "summary64"))

    @property
    def supports_cache(self) -> bool:
        return takes_cache(self.model)

    def forward_cached(self, input_ids: torch.Tensor, key_mask: torch.Tensor | None,
                       position_ids: torch.Tensor, past: torch.Tensor | None,
                       want: Want) -> CachedStep:
        """The queries (B, Q) attending to `past` (L, 2, B, G, K, D) and to themselves."""
        present: list[torch.Tensor] = []
        out = TorchDeviceBackend(_with_past(self.model, past, present), shift=self.shift
                                 ).forward(input_ids, key_mask, position_ids, want)
        return CachedStep(out, present[0])


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
        if out.summary is not None:  # bfloat16 statistics arrive as float32 (exact)
            s = out.summary
            return StepOutput(summary=Summary(*(ops.to_numpy(v) for v in (
                s.token, s.prob, s.margin, s.neg_entropy))))
        return StepOutput(logits=ops.to_numpy(out.logits))

    @property
    def supports_cache(self) -> bool:
        return self.inner.supports_cache

    def forward_cached(self, input_ids: np.ndarray, key_mask: np.ndarray | None,
                       position_ids: np.ndarray, past: np.ndarray | None,
                       want: Want) -> CachedStep:
        """numpy in and out (`present` float32); `past` moves to the device per call."""
        present: list[torch.Tensor] = []
        past = None if past is None else self.ops.asarray(past).float()
        out = TorchBackend(_with_past(self.inner.model, past, present), device=self.device,
                           shift=self.inner.shift
                           ).forward(input_ids, key_mask, position_ids, want)
        return CachedStep(out, self.ops.to_numpy(present[0]))


def generate_torch(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    config: PolicyConfig,
    *,
    device: str | torch.device | None = None,
    shift: bool = False,
    recorder: TrajectoryRecorder | None = None,
    on_step: Callable[[StepEvent], None] | None = None,
    stop_finished: bool = True,
) -> DecodeResult:
    """Decode on the model's device with the runtime's loop and policies (see module doc).

    The fast modes (`config.decode` other than exact) run the runtime's numpy block loop
    over a `TorchBackend`: per step only the block's statistics cross to the host; their
    step events are handed on as tensors on `device`. `stop_finished=False` keeps every
    sample in the batch to the end (callers that read whole-batch states per step)."""
    device = torch.device(device) if device is not None else _device_of(model)
    if getattr(config, "decode", DecodeMode.EXACT) is not DecodeMode.EXACT:
        def on_device(event: StepEvent) -> None:
            on_step(StepEvent(event.step, event.block, torch.as_tensor(event.x, device=device),
                              torch.as_tensor(event.committed, device=device)))

        from faircalib_runtime.fast import generate_fast

        return generate_fast(TorchBackend(model, device=device, shift=shift), prompts, config,
                             recorder=recorder, on_step=on_step and on_device,
                             stop_finished=stop_finished)
    return generate(TorchDeviceBackend(model, shift=shift), prompts, config,
                    recorder=recorder, on_step=on_step, ops=TorchOps(device))
