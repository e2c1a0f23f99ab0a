"""Serve an exported ONNX directory with ONNX Runtime: numpy and onnxruntime only.

`open_exported(dir)` reads `runtime.json` (written by `faircalib-export export`) and
returns the backend, a tokenizer adapter and the decoding defaults, so an edge machine
needs nothing but this package, numpy, onnxruntime and tokenizers. Greedy steps fetch
only the summary outputs (token, prob, margin, neg_entropy), never the logits. Exports
whose runtime.json has a "cache" field also run cached steps (`forward_cached`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .backend import PAST_LAYOUT, CachedStep, StepOutput, Summary, Want, step_output
from .config import PolicyConfig, PolicyConfigError
from .defaults import policy_config, with_overrides

RUNTIME_JSON = "runtime.json"


class ExportError(RuntimeError):
    """An exported directory is incomplete, corrupt or from an unknown format."""


# The variants faircalib-export writes (export/onnx_export.py VARIANTS and the TensorRT
# exporter's plugin and native-FP4 graphs); kept here because the runtime never imports
# faircalib_export.
KNOWN_VARIANTS = ("w4a4", "w4a4-int", "weight-only", "tensorrt-plugins", "tensorrt-nvfp4",
                  "w4a4-fp4", "w4a4-fp4-emu")
# FLOAT4E2M1 Q/DQ at opset 23: ONNX Runtime's CPU provider has no kernels for it
FP4_QDQ_VARIANT = "w4a4-fp4"
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
    if config.get("cache") is not None:
        _validate_cache(config["cache"], deploy, bad)
    return config


def _validate_cache(cache: Any, deploy: dict, bad) -> None:
    """runtime.json's "cache": {"input", "output": tensor names, "layout": PAST_LAYOUT,
    "shape": [layers, 2, null, kv_heads, null, head_dim]} (null: varies per call)."""
    if not (isinstance(cache, dict) and all(isinstance(cache.get(k), str) and cache[k]
                                            for k in ("input", "output"))):
        raise bad("cache", "must name the graph's past and present tensors ('input', 'output')")
    if cache.get("layout") != list(PAST_LAYOUT):
        raise bad("cache.layout", f"is {cache.get('layout')!r}, expected {list(PAST_LAYOUT)}")
    shape = cache.get("shape")
    if not (isinstance(shape, list) and len(shape) == 6 and shape[1] == 2
            and shape[2] is None and shape[4] is None
            and all(_is_int(shape[i]) and shape[i] > 0 for i in (0, 3, 5))):
        raise bad("cache.shape", f"is {shape!r}, expected [layers, 2, null, kv_heads, null, "
                                 f"head_dim] with positive integers")
    for i, key in ((0, "num_layers"), (3, "num_kv_heads")):
        if _is_int(deploy.get(key)) and deploy[key] != shape[i]:
            raise bad("cache.shape", f"has {shape[i]} {PAST_LAYOUT[i]}, but deploy_config's "
                                     f"{key} is {deploy[key]}")


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
            hint = (f" (the {FP4_QDQ_VARIANT} graph needs FP4 Q/DQ kernels; run it with "
                    f"onnx.reference.ReferenceEvaluator or an FP4 runtime, or export "
                    f"--variant w4a4-fp4-emu for ONNX Runtime on CPU)"
                    if self.config["variant"] == FP4_QDQ_VARIANT else "")
            raise ExportError(f"{self.directory}: ONNX Runtime cannot load the graph: {err}"
                              f"{hint}") from err
        self.summary_names = list(self.config["outputs"]["summary"])
        self._check_outputs()
        self.cache = self.config.get("cache")  # None: an export without the KV cache
        self._check_cache()
        self.calls = {"logits": 0, "summary": 0, "summary64": 0}

    @property
    def supports_cache(self) -> bool:
        return self.cache is not None

    def _check_cache(self) -> None:
        """The graph has the cache tensors runtime.json names, of its recorded shape."""
        if self.cache is None:
            return
        graph = {t.name: t.shape for t in [*self.session.get_inputs(),
                                           *self.session.get_outputs()]}
        for role in ("input", "output"):
            name = self.cache[role]
            if name not in graph:
                raise ExportError(f"{self.directory / RUNTIME_JSON}: field 'cache' names the "
                                  f"{role} {name!r}, which {self.config['model_file']} lacks")
            dims = graph[name] or []
            if len(dims) != 6 or any(isinstance(d, int) and w is not None and d != w
                                     for d, w in zip(dims, self.cache["shape"], strict=True)):
                raise ExportError(f"{self.directory / RUNTIME_JSON}: field 'cache' gives the "
                                  f"shape {self.cache['shape']}, but {name} is {dims}")

    def _past(self, batch: int, past: np.ndarray | None) -> np.ndarray:
        """The past (L, 2, B, G, K, D) float32 fed to the graph; K = 0 when None."""
        layers, two, _, kv_heads, _, head_dim = self.cache["shape"]
        if past is None:
            return np.zeros((layers, two, batch, kv_heads, 0, head_dim), np.float32)
        past = np.ascontiguousarray(past, dtype=np.float32)
        if past.ndim != 6 or past.shape[:4] != (layers, two, batch, kv_heads) \
                or past.shape[5] != head_dim:
            raise ValueError(f"past has shape {past.shape}, expected ({layers}, 2, {batch}, "
                             f"{kv_heads}, keys, {head_dim}) ({', '.join(PAST_LAYOUT)})")
        return past

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
        if self.cache is not None:  # a graph with the cache: no past, a plain forward
            feeds[self.cache["input"]] = self._past(b, None)
        self.calls[want] += 1
        return self._output(self.session.run(self._names(want), feeds), want)

    def _names(self, want: Want) -> list[str]:
        """The graph outputs `want` needs: its summaries are float32 (the model's dtype),
        so float64 summaries ("summary64") are computed on the host from the logits."""
        return self.summary_names if want == "summary" else [self.config["outputs"]["logits"]]

    def _output(self, outputs: list[np.ndarray], want: Want) -> StepOutput:
        if want == "summary":  # kept float32: the top-k runs on the graph's own values
            token, prob, margin, neg_entropy = outputs
            return StepOutput(summary=Summary(token.astype(np.int64), prob, margin,
                                              neg_entropy))
        return step_output(outputs[0], want)

    def forward_cached(self, input_ids: np.ndarray, key_mask: np.ndarray | None,
                       position_ids: np.ndarray, past: np.ndarray | None,
                       want: Want) -> CachedStep:
        """The queries (B, Q) attending to `past` (L, 2, B, G, K, D) and to themselves; see
        the cached contract in `backend`."""
        if self.cache is None:
            raise ExportError(f"{self.directory} was exported without the KV cache (its "
                              f"{RUNTIME_JSON} has no 'cache' field), so it runs uncached "
                              f"only; re-export it with this version of faircalib-export "
                              f"for cached decoding")
        b, q = input_ids.shape
        past = self._past(b, past)
        keys = past.shape[4] + q
        if key_mask is not None and key_mask.shape != (b, keys):
            raise ValueError(f"key_mask has shape {key_mask.shape}, expected ({b}, {keys}): "
                             f"past keys then queries")
        feeds = {
            "input_ids": np.ascontiguousarray(input_ids, dtype=np.int64),
            "attention_mask": (np.ones((b, keys), np.int64) if key_mask is None
                               else key_mask.astype(np.int64)),
            "position_ids": np.ascontiguousarray(position_ids, dtype=np.int64),
            self.cache["input"]: past,
        }
        *outputs, present = self.session.run([*self._names(want), self.cache["output"]],
                                             feeds)
        self.calls[want] += 1
        return CachedStep(self._output(outputs, want), present)


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
