"""Write models in the real LLaDA / Dream directory layouts.

`save_checkpoint` is the inverse of `loading.load_model`: config.json with the family's
real field names, `model.safetensors` or `model-0000i-of-0000n.safetensors` shards with
an index, tokenizer files and a generation config. The directory is written to a
temporary sibling and renamed, so an interrupted save never leaves a checkpoint that
looks complete.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file

from .. import checks
from ..artifacts import atomic_dir, write_manifest
from ..errors import ConfigError
from .families import get_family
from .loading import INDEX_FILE, SINGLE_FILE
from .transformer import DiffusionLM


def checkpoint_state(
    model: DiffusionLM, dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """Checkpoint key -> contiguous CPU tensor, in the family's key layout."""
    cfg = model.cfg
    params = dict(model.named_parameters(remove_duplicate=False))
    out = {}
    for canon, key in get_family(cfg.family).keys.mapping(cfg).items():
        t = params[canon].detach().to("cpu")
        out[key] = (t.to(dtype) if dtype is not None else t).contiguous().clone()
    return out


def check_shards(shards: int, tensors: int) -> None:
    """ConfigError unless 1 <= shards <= tensors (each shard holds at least one tensor)."""
    checks.count("shards", shards)
    if shards > tensors:
        raise ConfigError(f"shards {shards} is more than the {tensors} tensors of this model; "
                          f"choose 1..{tensors}")


def write_weights(state: Mapping[str, torch.Tensor], out: Path, shards: int = 1) -> None:
    """Write tensors as one file, or as `shards` files plus the HF index. Each shard's
    tensors are read from `state` when it is written, so a lazy mapping holds one shard."""
    check_shards(shards, len(state))
    if shards == 1:
        save_file(dict(state), str(out / SINGLE_FILE), metadata={"format": "pt"})
        return
    keys = list(state)
    weight_map, total = {}, 0
    for i in range(shards):
        part = {k: state[k] for k in keys[i * len(keys) // shards:(i + 1) * len(keys) // shards]}
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file(part, str(out / name), metadata={"format": "pt"})
        for k, t in part.items():
            weight_map[k] = name
            total += t.numel() * t.element_size()
        del part
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")


def save_checkpoint(
    model: DiffusionLM,
    out: str | Path,
    write_tokenizer,
    *,
    shards: int = 1,
    dtype: torch.dtype | None = None,
    extra_files: dict[str, str] | None = None,
    decoding: dict | None = None,
    overwrite: bool = False,
    state: Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """Save `model` to `out` in its family's real layout.

    `state` (checkpoint key -> tensor) replaces the model's weights, which may then live
    on the meta device: a lazy mapping writes a checkpoint larger than memory, a shard
    at a time (benchmarks/bench_real_scale.py makes full-depth 8B checkpoints so).

    `write_tokenizer(dir)` writes the tokenizer files; `extra_files` maps file names to
    text (a model card, say); `decoding` is the model's default decoding shape, recorded
    in generation_config.json for every later stage to read.
    """
    cfg = model.cfg
    family = get_family(cfg.family)
    check_shards(shards, len(family.keys.mapping(cfg)))  # before claiming the output
    with atomic_dir(out, "checkpoint", overwrite=overwrite) as tmp:
        (tmp / "config.json").write_text(json.dumps(family.write_config(cfg), indent=2) + "\n")
        generation = {"bos_token_id": cfg.eos_token_id, "eos_token_id": cfg.eos_token_id,
                      "pad_token_id": cfg.pad_token_id, "mask_token_id": cfg.mask_token_id}
        if decoding:
            from faircalib_runtime.defaults import GENERATION_KEY

            generation[GENERATION_KEY] = decoding
        (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
        write_weights(checkpoint_state(model, dtype) if state is None else state, tmp, shards)
        write_tokenizer(tmp)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        write_manifest(tmp, "checkpoint", {"family": cfg.family, "model_config": cfg.to_dict()})
    return Path(out)
