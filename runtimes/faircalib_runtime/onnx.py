"""Serve an exported ONNX directory with ONNX Runtime: numpy and onnxruntime only.

`open_exported(dir)` reads `runtime.json` (written by `faircalib-export export`) and
returns the backend, a tokenizer adapter and the decoding defaults, so an edge machine
needs nothing but this package, numpy, onnxruntime and tokenizers. Greedy steps fetch
only the summary outputs (token, prob, margin, neg_entropy), never the logits.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .backend import StepOutput, Summary, Want
from .config import PolicyConfig, PolicyConfigError
from .defaults import policy_config, with_overrides

RUNTIME_JSON = "runtime.json"


class ExportError(RuntimeError):
    """An exported directory is incomplete, corrupt or from an unknown format."""


def read_runtime_config(directory: str | Path) -> dict:
    directory = Path(directory)
    file = directory / RUNTIME_JSON
    if not file.is_file():
        raise ExportError(f"{directory} is not an exported model (no {RUNTIME_JSON})")
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ExportError(f"{file}: invalid JSON ({err})") from None
    if not isinstance(config, dict):
        raise ExportError(f"{file}: expected a JSON object")
    if config.get("format") != "faircalib-onnx":
        raise ExportError(f"{file}: unknown format {config.get('format')!r}")
    if not (directory / config["model_file"]).is_file():
        raise ExportError(f"{directory}: graph file {config['model_file']} is missing")
    if config.get("external_data") and not (directory / config["external_data"]).is_file():
        raise ExportError(f"{directory}: external-data file {config['external_data']} "
                          f"is missing (it must sit beside {config['model_file']})")
    return config


class OnnxBackend:
    """Runtime backend over an ONNX Runtime session (CPU by default, CUDA if asked)."""

    def __init__(self, directory: str | Path, providers: Sequence[str] | None = None,
                 threads: int | None = None):
        import onnxruntime as ort

        self.directory = Path(directory)
        self.config = read_runtime_config(self.directory)
        options = ort.SessionOptions()
        for key, value in self.config.get("ort_session_config", {}).items():
            options.add_session_config_entry(key, value)  # e.g. fp32 int4-matmul accumulation
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(
                str(self.directory / self.config["model_file"]), options,
                providers=list(providers or ["CPUExecutionProvider"]))
        except Exception as err:  # ORT raises its own exception types
            raise ExportError(f"{self.directory}: ONNX Runtime cannot load the graph: {err}"
                              ) from err
        self.summary_names = list(self.config["outputs"]["summary"])
        self.calls = {"logits": 0, "summary": 0}

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray | None,
                position_ids: np.ndarray | None, want: Want) -> StepOutput:
        b, s = input_ids.shape
        if attention_mask is not None and attention_mask.ndim != 2:
            raise ExportError("exported graphs take a (batch, seq) padding mask")
        feeds = {
            "input_ids": np.ascontiguousarray(input_ids, dtype=np.int64),
            "attention_mask": (np.ones((b, s), np.int64) if attention_mask is None
                               else attention_mask.astype(np.int64)),
            "position_ids": (np.broadcast_to(np.arange(s, dtype=np.int64), (b, s)).copy()
                             if position_ids is None else position_ids.astype(np.int64)),
        }
        self.calls[want] += 1
        if want == "summary":
            token, prob, margin, neg_entropy = self.session.run(self.summary_names, feeds)
            return StepOutput(summary=Summary(token.astype(np.int64), prob.astype(np.float64),
                                              margin.astype(np.float64),
                                              neg_entropy.astype(np.float64)))
        (logits,) = self.session.run([self.config["outputs"]["logits"]], feeds)
        return StepOutput(logits=logits)


class ExportedTokenizer:
    """encode/decode over tokenizer.json, with the chat template's fixed affixes."""

    def __init__(self, directory: Path, config: dict, chat: bool = True):
        from tokenizers import Tokenizer

        file = directory / "tokenizer.json"
        if not file.is_file():
            raise ExportError(f"{directory}: tokenizer.json is missing")
        self.tokenizer = Tokenizer.from_file(str(file))
        self.affixes = config.get("chat") if chat else None
        self.special = set(config.get("special_token_ids", []))

    def encode(self, text: str) -> list[int]:
        if self.affixes:
            text = self.affixes[0] + text + self.affixes[1]
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids if int(i) not in self.special],
                                     skip_special_tokens=False)


@dataclass
class Exported:
    """An exported model opened for decoding (faircalib_export's `OpenedModel` protocol)."""

    session: OnnxBackend
    tokenizer: ExportedTokenizer
    config: dict
    kind: str = "onnx"
    path: Path | None = None

    @property
    def family(self) -> str:
        return self.config["family"]

    @property
    def mask_id(self) -> int:
        return int(self.config["mask_token_id"])

    @property
    def vocab_size(self) -> int:
        return int(self.config["vocab_size"])

    @property
    def eos_ids(self) -> tuple[int, ...]:
        return tuple(int(i) for i in self.config["eos_token_ids"])

    @property
    def max_length(self) -> int:
        return int(self.config["deploy_config"]["max_position_embeddings"])

    def model_config(self) -> dict:
        return dict(self.config["deploy_config"])

    def vocab(self) -> dict[str, int]:
        return self.tokenizer.tokenizer.get_vocab(with_added_tokens=True)

    def backend(self, device: str | None = None) -> OnnxBackend:
        return self.session

    def generate(self, prompts, config: PolicyConfig, **kwargs: Any):
        from .decode import generate

        return generate(self.session, prompts, config, **kwargs)

    def text_decoder(self, chat: bool = True):
        from .text import TextDecoder

        self.tokenizer.affixes = self.config.get("chat") if chat else None
        return TextDecoder(self.tokenizer, chat=False)  # the adapter applies the affixes

    def policy(self, seed: int = 0, **overrides: Any) -> PolicyConfig:
        settings = with_overrides(self.config["decoding"], **overrides)
        config = policy_config(settings, mask_id=self.config["mask_token_id"],
                               eos_ids=self.config["eos_token_ids"],
                               pad_id=self.config["pad_token_id"], seed=seed)
        if config.window >= self.max_length:
            raise PolicyConfigError(f"a generation window of {config.window} tokens leaves no "
                                    f"room for a prompt: the model takes at most "
                                    f"{self.max_length}")
        return config


def open_exported(directory: str | Path, providers: Sequence[str] | None = None,
                  chat: bool = True, threads: int | None = None) -> Exported:
    directory = Path(directory)
    backend = OnnxBackend(directory, providers, threads)
    return Exported(backend, ExportedTokenizer(directory, backend.config, chat), backend.config,
                    path=directory)
