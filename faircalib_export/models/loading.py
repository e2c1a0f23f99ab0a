"""Load LLaDA / Dream checkpoints from a local Hugging Face style directory.

Reads `config.json`, then `model.safetensors` or the shards named by
`model.safetensors.index.json`. The model is built on the meta device and each tensor
is assigned as it is read, so peak memory is about one copy of the weights. Python files
shipped in the directory (modeling_*.py, tokenization_*.py) are never imported.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from .config import ModelConfig
from .families import Family, family_for_model_type, parse_config
from .transformer import Block, DiffusionLM

log = logging.getLogger(__name__)

ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}

ST_NAMES = {dtype: name for name, dtype in ST_DTYPES.items()}

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    try:
        return DTYPES[name.lower()]
    except KeyError:
        choices = ", ".join(DTYPES)
        raise ConfigError(f"unsupported dtype {name!r}; choose one of {choices}") from None


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path} not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def _checkpoint_dir(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint directory {path} does not exist")
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a directory (expected a checkpoint directory)")
    return path


def read_config(path: str | Path) -> tuple[Family, ModelConfig]:
    """Family and normalized config of a checkpoint dir, or of a bare config.json file."""
    path = Path(path)
    cfg_file = path if path.suffix == ".json" else _checkpoint_dir(path) / "config.json"
    raw = _read_json(cfg_file)
    return family_for_model_type(raw.get("model_type"), str(cfg_file)), parse_config(
        raw, str(cfg_file)
    )


def read_header(file: Path) -> dict[str, dict]:
    """The tensor table of a safetensors file, checked to cover the file exactly.

    Format: 8-byte little-endian header length N, N bytes of JSON mapping each key to
    {dtype, shape, data_offsets}, then the data. A truncated or padded file, or a header
    that does not parse, raises `CheckpointError` naming the file.
    """
    try:
        size = file.stat().st_size
        with open(file, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if size < 8 or n > size - 8:
                raise CheckpointError(f"{file} is corrupt or truncated: header runs past the end")
            header = json.loads(f.read(n))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{file} is corrupt or truncated: {err}") from err
    if not isinstance(header, dict):
        raise CheckpointError(f"{file} is corrupt: its header is not a JSON object")
    header.pop("__metadata__", None)
    for key, entry in header.items():
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(isinstance(o, int) and o >= 0 for o in offsets)
                and offsets[0] <= offsets[1] and isinstance(entry.get("shape"), list)):
            raise CheckpointError(f"{file} is corrupt: tensor {key!r} has no valid "
                                  f"shape / data_offsets")
    end = max((t["data_offsets"][1] for t in header.values()), default=0)
    if 8 + n + end != size:
        raise CheckpointError(
            f"{file} is corrupt or truncated: header describes {8 + n + end} bytes, "
            f"file has {size}"
        )
    return header


class TensorFile(Mapping):
    """A safetensors file as a read-only mapping that reads a tensor from disk on each
    access into fresh memory: nothing is mapped or cached, so a caller that walks the
    tensors one at a time (export) holds one at a time, whatever the file's size."""

    def __init__(self, file: str | Path):
        self.file = Path(file)
        self.header = read_header(self.file)  # validated: covers the file exactly
        with open(self.file, "rb") as f:
            self._base = 8 + int.from_bytes(f.read(8), "little")

    def __getitem__(self, key: str) -> torch.Tensor:
        meta = self.header[key]
        dtype = ST_DTYPES.get(meta["dtype"])
        if dtype is None:
            raise CheckpointError(f"{self.file}: tensor {key} has unsupported dtype "
                                  f"{meta['dtype']!r}")
        begin, end = meta["data_offsets"]
        t = torch.empty(meta["shape"], dtype=dtype, device="cpu")  # the host read buffer
        if t.numel():
            with open(self.file, "rb") as f:
                f.seek(self._base + begin)
                if f.readinto(t.view(-1).view(torch.uint8).numpy()) != end - begin:
                    raise CheckpointError(f"{self.file} is truncated inside tensor {key}")
        return t

    def __iter__(self) -> Iterator[str]:
        return iter(self.header)

    def __len__(self) -> int:
        return len(self.header)


class TensorFileWriter:
    """Writes a safetensors file one tensor at a time, holding none of them.

    The format puts the header (every tensor's offsets) first, so the data goes to a
    sibling `.data` file as tensors arrive and `close()` writes the header, then appends
    the data in chunks. The header is padded with spaces to a multiple of 8 bytes, as
    safetensors does, and tensors follow each other with no gaps (the format allows none).
    """

    CHUNK = 64 << 20

    def __init__(self, file: str | Path):
        self.file = Path(file)
        self._spool = self.file.with_name(self.file.name + ".data")
        self._data = open(self._spool, "wb")
        self.header: dict[str, dict] = {}

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if name in self.header:
            raise ValueError(f"tensor {name} written twice")
        t = tensor.detach().cpu().contiguous()
        begin = self._data.tell()
        if t.numel():
            self._data.write(memoryview(t.view(-1).view(torch.uint8).numpy()))
        self.header[name] = {"dtype": ST_NAMES[t.dtype], "shape": list(t.shape),
                             "data_offsets": [begin, self._data.tell()]}

    def close(self) -> None:
        if self._data.closed:  # closed already (close() is idempotent)
            return
        self._data.close()
        head = json.dumps(self.header, separators=(",", ":")).encode()
        head += b" " * (-len(head) % 8)
        try:
            with open(self.file, "wb") as out, open(self._spool, "rb") as data:
                out.write(len(head).to_bytes(8, "little") + head)
                shutil.copyfileobj(data, out, self.CHUNK)
        finally:
            self._spool.unlink(missing_ok=True)

    def __enter__(self) -> TensorFileWriter:
        return self

    def __exit__(self, kind, value, tb) -> None:
        if kind is None:
            self.close()
        else:
            self._data.close()
            self._spool.unlink(missing_ok=True)


def weight_files(path: Path) -> dict[str, Path]:
    """Checkpoint key -> the safetensors file that holds it (validated to exist)."""
    index = path / INDEX_FILE
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index} has no 'weight_map'")
        root = path.resolve()
        outside = sorted({f for f in weight_map.values() if not isinstance(f, str)
                          or root not in (root / f).resolve().parents})
        if outside:
            raise CheckpointError(f"{index}: weight_map names file(s) outside the checkpoint "
                                  f"directory: {', '.join(map(str, outside[:3]))}")
        missing = sorted({f for f in weight_map.values() if not (path / f).is_file()})
        if missing:
            raise CheckpointError(f"missing shard(s) listed in {index}: {', '.join(missing)}")
        return {key: path / f for key, f in weight_map.items()}
    single = path / SINGLE_FILE
    if not single.is_file():
        raise CheckpointError(f"{path} has neither {SINGLE_FILE} nor {INDEX_FILE}")
    return dict.fromkeys(read_header(single), single)


@dataclass(frozen=True)
class CheckpointPlan:
    """What `inspect_checkpoint` found: every tensor located, shapes checked."""

    path: Path
    family: Family
    cfg: ModelConfig
    mapping: dict[str, str]  # canonical parameter name -> checkpoint key
    files: dict[str, Path]  # checkpoint key -> safetensors file

    @property
    def shards(self) -> list[Path]:
        return sorted(set(self.files.values()))


def meta_model(cfg: ModelConfig) -> DiffusionLM:
    with torch.device("meta"):  # shapes only, no memory
        return DiffusionLM(cfg)


def inspect_checkpoint(path: str | Path) -> CheckpointPlan:
    """Validate a checkpoint without reading tensor data.

    Checks config.json, that every shard exists and has a readable header covering the
    whole file (a truncated file fails here), that every tensor the architecture needs is
    present, and that each stored shape matches the config. Errors name the file and key.
    """
    path = _checkpoint_dir(path)
    family, cfg = read_config(path)
    mapping = family.keys.mapping(cfg)
    files = weight_files(path)
    missing = [key for key in mapping.values() if key not in files]
    if missing:
        more = f" (+{len(missing) - 5} more)" if len(missing) > 5 else ""
        shown = ", ".join(missing[:5]) + more
        raise CheckpointError(f"{path}: checkpoint lacks tensor(s) {shown}")
    unexpected = set(files) - set(mapping.values())
    if unexpected:
        log.warning("%s: ignoring %d unexpected tensor(s), e.g. %s", path, len(unexpected),
                    sorted(unexpected)[0])
    expected = {name: tuple(p.shape) for name, p in meta_model(cfg).named_parameters()}
    by_file: dict[Path, list[tuple[str, str]]] = defaultdict(list)
    for canon, key in mapping.items():
        by_file[files[key]].append((canon, key))
    for file, entries in sorted(by_file.items()):
        header = read_header(file)
        for canon, key in entries:
            if key not in header:
                raise CheckpointError(f"{file.name}: index lists {key} but the file lacks it")
            meta = header[key]
            if meta.get("dtype") not in ST_DTYPES:
                raise CheckpointError(f"{file.name}: tensor {key} has unsupported dtype "
                                      f"{meta.get('dtype')!r}")
            shape = tuple(meta["shape"])
            if shape != expected[canon]:
                raise CheckpointError(
                    f"{file.name}: tensor {key} has shape {shape}, "
                    f"expected {expected[canon]} from config.json"
                )
    return CheckpointPlan(path, family, cfg, mapping, files)




def all_finite(t: torch.Tensor, chunk: int = 1 << 24) -> bool:
    """No NaN or Inf in a tensor, checked a chunk at a time (a boolean mask of a whole
    embedding table would cost half the table again)."""
    if not t.is_floating_point():
        return True
    flat = t.reshape(-1)
    return all(bool(torch.isfinite(flat[i:i + chunk]).all()) for i in range(0, len(flat), chunk))


def read_tensors(
    file: Path,
    entries: list[tuple[str, str]],  # (name to return it under, key in the file)
    dtype: torch.dtype,
    device: str | torch.device,
) -> dict[str, torch.Tensor]:
    """Read tensors from one safetensors file straight into freshly allocated memory.

    safetensors' own reader maps the file, and mapped pages count as resident memory, so
    peak RSS would be about twice the weights; reading each tensor's bytes into its final
    buffer keeps it at one copy (plus one tensor when the dtype is converted).
    """
    out = {}
    try:
        with open(file, "rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(header_len))
            base = 8 + header_len
            for name, key in entries:
                meta = header[key]
                begin, end = meta["data_offsets"]
                t = torch.empty(meta["shape"], dtype=ST_DTYPES[meta["dtype"]],
                                device="cpu")  # the host read buffer
                buf = t.view(-1).view(torch.uint8).numpy() if t.numel() else None
                f.seek(base + begin)
                if buf is not None and f.readinto(buf) != end - begin:
                    raise CheckpointError(f"{file} is truncated inside tensor {key}")
                if not t.is_floating_point():
                    raise CheckpointError(f"{file}: tensor {key} is {meta['dtype']}, "
                                          f"a weight must be a float tensor")
                if not all_finite(t):  # one pass over data already in memory
                    raise CheckpointError(f"{file}: tensor {key} holds NaN or Inf values")
                out[name] = t.to(device=device, dtype=dtype)
    except (OSError, KeyError, ValueError) as err:
        raise CheckpointError(f"{file} is corrupt or truncated: {err}") from err
    return out


def load_module(
    plan: CheckpointPlan,
    build: Callable[[], nn.Module],
    prefix: str = "",
    dtype: str | torch.dtype = "fp32",
    device: str | torch.device = "cpu",
) -> nn.Module:
    """Build a module on the meta device and load the checkpoint tensors under `prefix`.

    `prefix` is a canonical name prefix: "" for the whole model, "blocks.3." for one
    block, "embed." for the embedding table. Layer-wise stages load one block at a time
    this way, so the whole model never needs to be in memory.
    """
    dtype = parse_dtype(dtype)
    with torch.device("meta"):
        module = build()
    by_file: dict[Path, list[tuple[str, str]]] = defaultdict(list)
    for canon, key in plan.mapping.items():
        if canon.startswith(prefix):
            by_file[plan.files[key]].append((canon[len(prefix):], key))
    state: dict[str, torch.Tensor] = {}
    for file, entries in sorted(by_file.items()):
        state.update(read_tensors(file, entries, dtype, device))
    tied = prefix == "" and plan.cfg.tie_word_embeddings
    if tied:
        state["lm_head.weight"] = state["embed.weight"]
    module.load_state_dict(state, strict=True, assign=True)
    if tied:
        module.lm_head.weight = module.embed.weight
    return module


def load_model(
    path: str | Path,
    dtype: str | torch.dtype = "fp32",
    device: str | torch.device = "cpu",
) -> DiffusionLM:
    """Build the model for a checkpoint directory and load its weights.

    The model is created on the meta device and tensors are assigned as they are read,
    so peak memory is about one copy of the weights in the target dtype.
    """
    plan = inspect_checkpoint(path)
    return load_module(plan, lambda: DiffusionLM(plan.cfg), "", dtype, device).eval()


def load_block(plan: CheckpointPlan, index: int, dtype="fp32", device="cpu") -> Block:
    return load_module(plan, lambda: Block(plan.cfg), f"blocks.{index}.", dtype, device)


def load_tensors(plan: CheckpointPlan, names: list[str], dtype="fp32",
                 device="cpu") -> dict[str, torch.Tensor]:
    """Whole-model tensors by canonical name ("embed.weight", "norm.weight",
    "lm_head.weight": the embedding table when the checkpoint ties them)."""
    dtype = parse_dtype(dtype)
    by_file: dict[Path, list[tuple[str, str]]] = defaultdict(list)
    for name in names:
        tied = name == "lm_head.weight" and plan.cfg.tie_word_embeddings
        key = plan.mapping["embed.weight" if tied else name]
        by_file[plan.files[key]].append((name, key))
    out: dict[str, torch.Tensor] = {}
    for file, entries in sorted(by_file.items()):
        out.update(read_tensors(file, entries, dtype, device))
    return out


def load_tokenizer(path: str | Path, family: Family | None = None):
    """The checkpoint's tokenizer via transformers, never running remote code.

    Real Dream checkpoints name a remote-code tokenizer class (`DreamTokenizer`); its
    files are a plain Qwen2 byte-level BPE, so the family's fallback class reads them.
    """
    import warnings

    import transformers
    from transformers import AutoTokenizer

    path = _checkpoint_dir(path)
    if family is None:
        family, _ = read_config(path)
    # AutoTokenizer reads config.json, whose model_type transformers does not know: that
    # is expected here, so keep its warnings about it off the user's terminal.
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # tokenizers and transformers raise bare Exception, ValueError, OSError, ...
            # for unreadable files: each becomes a CheckpointError quoting the original.
            try:
                return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
            except Exception as err:  # noqa: BLE001 - the fallback class may still read it
                first = err
            try:
                return getattr(transformers, family.tokenizer_fallback).from_pretrained(str(path))
            except Exception as err2:  # noqa: BLE001 - reported with its message
                reason = _one_line(err2)
                # a remote-code tokenizer class (Dream) always fails the first way: only
                # the fallback's failure says what is wrong with the files then
                if "trust_remote_code" not in str(first) and _one_line(first) != reason:
                    reason = (f"{_one_line(first)}; fallback {family.tokenizer_fallback} "
                              f"failed too: {reason}")
                raise CheckpointError(f"{path}: cannot load the tokenizer ({reason})") from err2
    finally:
        transformers.logging.set_verbosity(verbosity)


def _one_line(err: BaseException) -> str:
    """An exception's message on one line (library messages span several)."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 300 else text[:297] + "..."
