"""The normalized model description every stage works from.

Checkpoints name their hyper-parameters differently (LLaDA: `d_model`, `n_layers`, ...;
Dream: `hidden_size`, `num_hidden_layers`, ...). Each family's parser in
`faircalib_export.models.families` turns its `config.json` into one `ModelConfig`, so no
code past the loader ever looks at raw config field names.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import ConfigError


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
                     "num_heads", "num_kv_heads"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
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
        if not 0 <= self.mask_token_id < self.vocab_size:
            raise ConfigError(
                f"mask_token_id {self.mask_token_id} is outside the vocabulary "
                f"(size {self.vocab_size})"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    def to_dict(self) -> dict:
        return asdict(self)
