"""Tiny random-init checkpoints in the exact LLaDA / Dream layouts.

Tests and examples use these in place of the unreachable 7-8B checkpoints: same config
field names, same tensor keys, same sharding scheme, a working tokenizer with the
family's special tokens, and the remote-code Python files the real repositories ship
(which our loader must never execute: each one raises if it is imported).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .. import checks
from .checkpoint import save_checkpoint
from .config import ModelConfig
from .families import get_family
from .tokenizer_files import SPECIALS, byte_level_tokenizer, write_tokenizer
from .transformer import DiffusionLM

# The remote-code files of the real repositories, by family.
REMOTE_CODE_FILES = {
    "llada": ("configuration_llada.py", "modeling_llada.py"),
    "dream": ("configuration_dream.py", "modeling_dream.py", "generation_utils.py",
              "tokenization_dream.py"),
}
TRAP = (
    '"""Stand-in for the remote code a real checkpoint ships: never to be executed."""\n'
    'raise RuntimeError("faircalib-export must not execute code from a checkpoint directory")\n'
)


def tiny_config(
    family: str,
    vocab_size: int,
    mask_token_id: int,
    eos_token_id: int,
    *,
    hidden_size: int = 64,
    intermediate_size: int | None = None,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int | None = None,
    max_position_embeddings: int = 2048,
    tie_word_embeddings: bool = False,
) -> ModelConfig:
    """The ModelConfig of a tiny model; intermediate_size and num_kv_heads default (None)
    to 3 x hidden_size and num_heads, and 0 is an error, never the default."""
    for name, value in (("hidden_size", hidden_size), ("intermediate_size", intermediate_size),
                        ("num_layers", num_layers), ("num_heads", num_heads),
                        ("num_kv_heads", num_kv_heads)):
        checks.count(name, value)
    fam = get_family(family)
    is_dream = fam.name == "dream"
    return ModelConfig(
        family=fam.name,
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=3 * hidden_size if intermediate_size is None else intermediate_size,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_heads if num_kv_heads is None else num_kv_heads,
        rope_theta=1_000_000.0 if is_dream else 500_000.0,
        rms_norm_eps=1e-6 if is_dream else 1e-5,
        mask_token_id=mask_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=eos_token_id,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        qkv_bias=is_dream,
        logit_shift=is_dream,
        rope_fp32=not is_dream,
    )


def init_weights(model: DiffusionLM, seed: int, std: float = 0.02) -> DiffusionLM:
    """Deterministic random init; norms at 1 (+ noise so tests see them), biases small."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(std * torch.randn(p.shape, generator=gen))
    return model


def write_tiny_checkpoint(
    out: str | Path,
    family: str = "llada",
    *,
    shards: int = 1,
    seed: int = 0,
    dtype: str = "fp32",
    words: list[str] = (),
    init_std: float = 0.02,
    overwrite: bool = False,
    **shape,
) -> Path:
    """Write a random-init checkpoint; `shape` takes `tiny_config`'s keyword arguments.

    `shards` must be 1..the number of tensors; every count is checked before anything is
    written (ConfigError).
    """
    from .loading import parse_dtype

    checks.count("shards", shards)
    fam = get_family(family)
    specials = SPECIALS[fam.name]
    tok = byte_level_tokenizer(specials, list(words))
    vocab = -(-tok.get_vocab_size() // 16) * 16  # pad the table like the real models do
    cfg = tiny_config(fam.name, vocab, tok.token_to_id(specials.mask),
                      tok.token_to_id(specials.eos), **shape)
    model = init_weights(DiffusionLM(cfg), seed, init_std)
    traps = {name: TRAP for name in REMOTE_CODE_FILES[fam.name]}
    return save_checkpoint(
        model, out, lambda d: write_tokenizer(d, tok, fam.name),
        shards=shards, dtype=parse_dtype(dtype), extra_files=traps, overwrite=overwrite,
    )
