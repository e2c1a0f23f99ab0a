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


# The variants faircalib-export writes (export/onnx_export.py VARIANTS and the TensorRT
# exporter's plugin graph); kept here because the runtime never imports faircalib_export.
KNOWN_VARIANTS = ("w4a4", "w4a4-int", "weight-only", "tensorrt-plugins")
FORMAT = "faircalib-onnx"
SUPPORTED_VERSIONS = (1,)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_runtime_config(config: Any, file: str | Path) -> dict:
    """Check runtime.json's fields and types; raises ExportError naming the field."""

    def bad(field: str, why: str) -> ExportError:
        return ExportError(f"{file}: field {field!r} {why}")

    if not isinstance(config, dict):
        raise ExportError(f"{file}: expected a JSON object")
    if config.get("format") != FORMAT:
        raise bad("format", f"is {config.get('format')!r}, expected {FORMAT!r}")
    required = ("version", "variant", "family", "vocab_size", "mask_token_id",
                "eos_token_ids", "decoding", "deploy_config", "outputs", "model_file")
    missing = [key for key in required if key not in config]
    if missing:
        raise ExportError(f"{file}: missing field{'s' if len(missing) > 1 else ''} "
                          f"{', '.join(repr(k) for k in missing)}")
    if not _is_int(config["version"]) or config["version"] not in SUPPORTED_VERSIONS:
        raise bad("version", f"is {config['version']!r}; this runtime reads version "
                             f"{', '.join(map(str, SUPPORTED_VERSIONS))}")
    if config["variant"] not in KNOWN_VARIANTS:
        raise bad("variant", f"is {config['variant']!r}, not one of "
                             f"{', '.join(KNOWN_VARIANTS)}")
    if not isinstance(config["family"], str) or not config["family"]:
        raise bad("family", "must be a non-empty string")
    vocab = config["vocab_size"]
    if not _is_int(vocab) or vocab <= 0:
        raise bad("vocab_size", f"must be a positive integer, not {vocab!r}")

    def check_id(field: str, value: Any) -> None:
        if not _is_int(value) or not 0 <= value < vocab:
            raise bad(field, f"is {value!r}, not a token id in [0, vocab_size={vocab})")

    check_id("mask_token_id", config["mask_token_id"])
    if config.get("pad_token_id") is not None:
        check_id("pad_token_id", config["pad_token_id"])
    eos = config["eos_token_ids"]
    if not isinstance(eos, list) or not eos:
        raise bad("eos_token_ids", f"must be a non-empty list of token ids, not {eos!r}")
    for value in eos:
        check_id("eos_token_ids", value)
    special = config.get("special_token_ids", [])
    if not isinstance(special, list) or not all(_is_int(i) for i in special):
        raise bad("special_token_ids", "must be a list of integers")
    if not isinstance(config["decoding"], dict):
        raise bad("decoding", "must be a JSON object")
    deploy = config["deploy_config"]
    if not isinstance(deploy, dict):
        raise bad("deploy_config", "must be a JSON object")
    max_pos = deploy.get("max_position_embeddings")
    if not _is_int(max_pos) or max_pos <= 0:
        raise bad("deploy_config.max_position_embeddings",
                  f"must be a positive integer, not {max_pos!r}")
    chat = config.get("chat")
    if chat is not None and not (isinstance(chat, list) and len(chat) == 2
                                 and all(isinstance(a, str) for a in chat)):
        raise bad("chat", "must be null or a [prefix, suffix] pair of strings")
    outputs = config["outputs"]
    if not (isinstance(outputs, dict) and isinstance(outputs.get("logits"), str)
            and isinstance(outputs.get("summary"), list) and len(outputs["summary"]) == 4
            and all(isinstance(n, str) for n in outputs["summary"])):
        raise bad("outputs", "must name the logits output and the four summary outputs")
    if not isinstance(config["model_file"], str) or not config["model_file"]:
        raise bad("model_file", "must be a file name")
    external = config.get("external_data")
    if external is not None and not isinstance(external, str):
        raise bad("external_data", "must be null or a file name")
    session_config = config.get("ort_session_config", {})
    if not (isinstance(session_config, dict)
            and all(isinstance(v, str) for v in session_config.values())):
        raise bad("ort_session_config", "must map setting names to strings")
    return config


def read_runtime_config(directory: str | Path) -> dict:
    directory = Path(directory)
    file = directory / RUNTIME_JSON
    if not file.is_file():
        raise ExportError(f"{directory} is not an exported model (no {RUNTIME_JSON})")
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ExportError(f"{file}: invalid JSON ({err})") from None
    validate_runtime_config(config, file)
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
        self._check_outputs()
        self.calls = {"logits": 0, "summary": 0}

    def _check_outputs(self) -> None:
        """The graph has the outputs runtime.json names, its logits vocab_size wide."""
        file = self.directory / RUNTIME_JSON
        shapes = {o.name: o.shape for o in self.session.get_outputs()}
        logits = self.config["outputs"]["logits"]
        for name in [logits, *self.summary_names]:
            if name not in shapes:
                raise ExportError(f"{file}: field 'outputs' names {name!r}, which "
                                  f"{self.config['model_file']} does not output")
        width = (shapes[logits] or [None])[-1]
        if isinstance(width, int) and width != self.config["vocab_size"]:
            raise ExportError(f"{file}: field 'vocab_size' is {self.config['vocab_size']} "
                              f"but {self.config['model_file']}'s logits have {width} columns")

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
        try:
            self.tokenizer = Tokenizer.from_file(str(file))
        except Exception as err:  # tokenizers raises its own exception types
            raise ExportError(f"{file}: cannot load the tokenizer ({err})") from err
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
                               pad_id=self.config.get("pad_token_id"), seed=seed)
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
