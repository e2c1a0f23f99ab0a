"""Open any model artifact: one registry from kind to reader, one protocol for consumers.

    checkpoint  config.json + safetensors: the full-precision model, in PyTorch
    calibrated  manifest.json of kind "calibrated": fake-quant W4A4 blocks over the base model
    folded      deploy.json: packed int4 weights, run by their PyTorch reference
    onnx        runtime.json: the exported graph on ONNX Runtime (torch-free)
    tensorrt    runtime.json of variant "tensorrt-plugins": the engine (needs tensorrt)

`open_model(path)` detects the kind (`artifacts.detect_kind`) and calls its reader.
Every consumer (generate, eval, validate, diagnose, compare, probe, build) takes the
result as an `OpenedModel` and asks it for a backend, a policy and a text decoder; the
exported kinds come from the torch-free runtime and satisfy the same protocol.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from . import checks
from .artifacts import KIND_READERS_ORDER, detect_kind, read_json
from .errors import CheckpointError, ConfigError
from .models.families import END_OF_TURN

TORCH_KINDS = ("checkpoint", "calibrated", "folded")
EXPORTED_KINDS = ("onnx", "tensorrt")  # run by their own runtimes, without torch


@runtime_checkable
class OpenedModel(Protocol):
    """What every consumer may use of an opened model, whatever its kind."""

    kind: str
    path: Path | None

    @property
    def family(self) -> str: ...
    @property
    def mask_id(self) -> int: ...
    @property
    def vocab_size(self) -> int: ...
    @property
    def eos_ids(self) -> tuple[int, ...]: ...
    @property
    def max_length(self) -> int: ...

    def model_config(self) -> dict: ...
    def vocab(self) -> dict[str, int]: ...
    def backend(self, device: str | None = None) -> Any: ...
    def text_decoder(self, chat: bool = True) -> Any: ...
    def policy(self, seed: int = 0, **overrides: Any) -> Any: ...
    def generate(self, prompts: Sequence[Sequence[int]], config: Any, **kwargs: Any) -> Any: ...


def read_generation_config(directory: Path) -> dict:
    file = Path(directory) / "generation_config.json"
    return read_json(file) if file.is_file() else {}


@dataclass
class TorchModel:
    """A checkpoint, calibrated artifact or folded model, run by PyTorch."""

    kind: str  # checkpoint | calibrated | folded
    model: Any  # DiffusionLM (position-aligned logits)
    cfg: Any  # models.config.ModelConfig
    tokenizer: Any  # transformers tokenizer
    generation_config: dict
    base_path: Path | None = None  # the original checkpoint directory, when known
    path: Path | None = None  # what was opened

    @property
    def family(self) -> str:
        return self.cfg.family

    @property
    def mask_id(self) -> int:
        return self.cfg.mask_token_id

    @property
    def vocab_size(self) -> int:
        return self.cfg.vocab_size

    @property
    def max_length(self) -> int:
        return self.cfg.max_position_embeddings

    @property
    def eos_ids(self) -> tuple[int, ...]:
        ids = [self.cfg.eos_token_id]
        vocab = self.tokenizer.get_vocab()
        ids += [vocab[t] for t in END_OF_TURN if t in vocab]
        return tuple(dict.fromkeys(i for i in ids if i is not None))

    def model_config(self) -> dict:
        return self.cfg.to_dict()

    def vocab(self) -> dict[str, int]:
        return dict(self.tokenizer.get_vocab())

    def backend(self, device: str | None = None):
        from .decoding.torch_backend import TorchBackend

        return TorchBackend(self.model, device=device)

    def text_decoder(self, chat: bool = True):
        from faircalib_runtime import TextDecoder

        return TextDecoder(self.tokenizer, chat=chat)

    def policy(self, seed: int = 0, **overrides):
        from faircalib_runtime.defaults import family_defaults, policy_config, with_overrides

        settings = with_overrides(family_defaults(self.cfg.family, self.generation_config),
                                  **overrides)
        config = policy_config(settings, mask_id=self.cfg.mask_token_id, eos_ids=self.eos_ids,
                               pad_id=self.cfg.pad_token_id, seed=seed)
        if config.window >= self.max_length:
            raise ConfigError(f"a generation window of {config.window} tokens leaves no room "
                              f"for a prompt: the model takes at most {self.max_length}")
        return config

    def generate(self, prompts, config, **kwargs):
        """The runtime's loop with state and policy math on the model's device."""
        from .decoding import generate_torch

        return generate_torch(self.model, prompts, config, shift=False, **kwargs)


# --- readers, one per kind -------------------------------------------------------------

def _open_checkpoint(path: Path, device: str) -> TorchModel:
    from .models.loading import load_model, load_tokenizer

    model = load_model(path, device=device)
    return TorchModel("checkpoint", model, model.cfg, load_tokenizer(path),
                      read_generation_config(path), path, path)


def _open_calibrated(path: Path, device: str) -> TorchModel:
    from .calibrate.artifact import load_quantized, read_manifest
    from .models.loading import load_tokenizer

    base = Path(read_manifest(path)["config"]["base_model"])
    model = load_quantized(path, device=device)
    return TorchModel("calibrated", model, model.cfg, load_tokenizer(base),
                      read_generation_config(base), base, path)


def _open_folded(path: Path, device: str) -> TorchModel:
    from .fold.deployed import load_deployed
    from .models.families import get_family
    from .models.loading import load_tokenizer

    model = load_deployed(path)
    return TorchModel("folded", model.to(device), model.cfg,
                      load_tokenizer(path, get_family(model.cfg.family)),
                      read_generation_config(path), _source_checkpoint(path), path)


def _source_checkpoint(deploy: Path) -> Path | None:
    """The FP checkpoint a folded model descends from, through its calibrated artifact's
    manifest (None when the chain is not on this machine)."""
    from .artifacts import MANIFEST
    from .errors import FaircalibError

    try:
        source = read_json(deploy / MANIFEST)["inputs"]["artifact_manifest"]["path"]
        base = Path(read_json(source)["config"]["base_model"])
    except (FaircalibError, KeyError, TypeError):
        return None
    return base if (base / "config.json").is_file() else None


def _open_onnx(path: Path, device: str):
    from faircalib_runtime.onnx import ExportError, open_exported

    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else None
    try:
        return open_exported(path, providers)
    except ExportError as err:
        raise CheckpointError(str(err)) from err


def _open_tensorrt(path: Path, device: str):
    from .trt.backend import open_tensorrt  # needs tensorrt and the plugin library

    return open_tensorrt(path)


READERS: dict[str, Callable[[Path, str], OpenedModel]] = {
    "checkpoint": _open_checkpoint,
    "calibrated": _open_calibrated,
    "folded": _open_folded,
    "onnx": _open_onnx,
    "tensorrt": _open_tensorrt,
}
assert set(READERS) == set(KIND_READERS_ORDER) == {*TORCH_KINDS, *EXPORTED_KINDS}


def open_model(name_or_path: str | Path, device: str = "cpu", *,
               kinds: Sequence[str] | None = None) -> OpenedModel:
    """Open a built-in model name or a directory of any kind (or only of `kinds`)."""
    from .models.builtin import resolve_model

    path = resolve_model(name_or_path)
    if device != "cpu":  # the check imports torch, which exported models never need
        checks.device(device)
    kind = detect_kind(path)
    if kind is None:
        raise CheckpointError(f"{path}: not a model this toolchain reads (a checkpoint, "
                              f"calibrated artifact, folded model, or ONNX / TensorRT export)")
    if kinds is not None and kind not in kinds:
        raise CheckpointError(f"{path} is a {kind} model; expected {' or '.join(kinds)}")
    return READERS[kind](path, device)


def torch_forward(opened: OpenedModel) -> Callable:
    """`(input_ids, attention_mask=, position_ids=) -> aligned logits` on torch tensors.

    PyTorch kinds call their module; exported kinds go through their backend on numpy.
    """
    if isinstance(opened, TorchModel):
        return opened.model
    import torch

    backend = opened.backend()

    def forward(input_ids, attention_mask=None, position_ids=None):
        def host(t):
            return None if t is None else t.detach().cpu().numpy()

        out = backend.forward(host(input_ids), host(attention_mask), host(position_ids),
                              "logits")
        return torch.from_numpy(out.logits.astype("float32")).to(input_ids.device)

    return forward


__all__ = ["END_OF_TURN", "EXPORTED_KINDS", "OpenedModel", "READERS", "TORCH_KINDS",
           "TorchModel", "open_model",
           "read_generation_config", "torch_forward"]
