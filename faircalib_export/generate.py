"""Open any model this toolchain produces as a decoding backend, and run `generate`.

MODEL may be a checkpoint directory (or built-in name), a calibrated artifact
(fake-quant W4A4 in PyTorch) or a folded deployment directory (its PyTorch reference).
Exported ONNX directories are served by the torch-free runtime instead (see cli.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from faircalib_runtime import TextDecoder
from faircalib_runtime.defaults import family_defaults, policy_config, with_overrides

from .decoding.torch_backend import TorchBackend
from .errors import CheckpointError
from .models.builtin import resolve_model
from .models.config import ModelConfig
from .models.families import get_family
from .models.loading import load_model, load_tokenizer

# Chat-turn terminators that end an answer like EOS does.
END_OF_TURN = ("<|eot_id|>", "<|im_end|>")


@dataclass
class OpenedModel:
    kind: str  # checkpoint | calibrated | folded
    model: torch.nn.Module
    cfg: ModelConfig
    tokenizer: Any
    generation_config: dict
    base_path: Path | None = None  # the original checkpoint directory, when known
    path: Path | None = None  # what was opened

    @property
    def eos_ids(self) -> tuple[int, ...]:
        ids = [self.cfg.eos_token_id]
        vocab = self.tokenizer.get_vocab()
        ids += [vocab[t] for t in END_OF_TURN if t in vocab]
        return tuple(dict.fromkeys(i for i in ids if i is not None))

    def backend(self, device: str | None = None) -> TorchBackend:
        return TorchBackend(self.model, device=device)

    def text_decoder(self, chat: bool = True) -> TextDecoder:
        return TextDecoder(self.tokenizer, chat=chat)

    def policy(self, seed: int = 0, **overrides):
        settings = with_overrides(family_defaults(self.cfg.family, self.generation_config),
                                  **overrides)
        return policy_config(settings, mask_id=self.cfg.mask_token_id, eos_ids=self.eos_ids,
                             pad_id=self.cfg.pad_token_id, seed=seed)


def read_generation_config(directory: Path) -> dict:
    file = directory / "generation_config.json"
    return json.loads(file.read_text()) if file.is_file() else {}


def open_model(name_or_path: str | Path, device: str = "cpu") -> OpenedModel:
    path = resolve_model(name_or_path)
    if (path / "deploy.json").is_file():
        from .fold.deployed import load_deployed

        model = load_deployed(path)
        tok = load_tokenizer(path, get_family(model.cfg.family))
        return OpenedModel("folded", model.to(device), model.cfg, tok, read_generation_config(path),
                           path=path)
    manifest = path / "manifest.json"
    if manifest.is_file() and json.loads(manifest.read_text()).get("kind") == "calibrated":
        from .calibrate.artifact import load_quantized, read_manifest

        base = Path(read_manifest(path)["config"]["base_model"])
        model = load_quantized(path, device=device)
        return OpenedModel("calibrated", model, model.cfg, load_tokenizer(base),
                           read_generation_config(base), base, path)
    if (path / "config.json").is_file():
        model = load_model(path, device=device)
        return OpenedModel("checkpoint", model, model.cfg, load_tokenizer(path),
                           read_generation_config(path), path, path)
    raise CheckpointError(f"{path}: not a checkpoint, calibrated artifact or folded model")


__all__ = ["OpenedModel", "TextDecoder", "open_model"]
