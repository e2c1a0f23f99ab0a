"""The normalized model description every stage works from.

Checkpoints name their hyper-parameters differently (LLaDA: `d_model`, `n_layers`, ...;
Dream: `hidden_size`, `num_hidden_layers`, ...). Each family's parser in
`faircalib_export.models.families` turns its `config.json` into one `ModelConfig`, so no
code past the loader ever looks at raw config field names.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ..errors import ConfigError

MAX_PARAMETERS = 10**13  # a config beyond this is a typo, not a model


@dataclass(frozen=True)
class ModelConfig:
    family: str  # registry key: "llada" or "dream"
    vocab_size: int  # rows of the embedding table and of the LM head
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int  # < num_heads means grouped-query attention
    rope_theta: float
    rms_norm_eps: float
    mask_token_id: int
    eos_token_id: int | None
    pad_token_id: int | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    # Architecture traits that differ between families, kept as data.
    qkv_bias: bool  # Dream (Qwen2) has q/k/v biases, LLaDA none
    logit_shift: bool  # Dream predicts token i from the hidden state at i - 1
    rope_fp32: bool  # LLaDA rotates q/k in fp32 whatever the model dtype

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers",
                     "num_heads", "num_kv_heads", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        for name in ("rope_theta", "rms_norm_eps"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ConfigError(f"{name} must be a positive number, got {value!r}")
        if self.num_parameters_estimate() > MAX_PARAMETERS:
            raise ConfigError(f"this config describes {self.num_parameters_estimate():.3g} "
                              f"parameters, more than any real checkpoint "
                              f"({MAX_PARAMETERS:.0e}); check its sizes")
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
            )
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}"
            )
        if self.head_dim % 2:
            raise ConfigError(f"head_dim {self.head_dim} must be even for RoPE")
        for name in ("mask_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(self, name)
            if value is None and name != "mask_token_id":
                continue
            if not isinstance(value, int) or isinstance(value, bool) or \
                    not 0 <= value < self.vocab_size:
                raise ConfigError(f"{name} {value!r} is outside the vocabulary "
                                  f"(size {self.vocab_size})")

    def num_parameters_estimate(self) -> int:
        """Parameters the shapes imply (embedding, head, attention and MLP weights)."""
        e, f, v = self.hidden_size, self.intermediate_size, self.vocab_size
        per_block = 2 * e * e + 2 * e * self.num_kv_heads * self.head_dim + 3 * e * f
        return 2 * v * e + self.num_layers * per_block

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    def to_dict(self) -> dict:
        return asdict(self)
