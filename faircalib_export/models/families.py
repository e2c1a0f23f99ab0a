"""Architecture registry: what differs between LLaDA and Dream, as data.

A `Family` holds the `config.json` parser and writer, the checkpoint key layout and the
decoding defaults. The transformer itself (`transformer.py`) is shared. Lookup is by the
checkpoint's `model_type`; anything unknown fails with the list of supported types.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, UnsupportedModelError
from .config import ModelConfig

# Canonical names of the per-block tensors, in the module tree of `DiffusionLM`.
BLOCK_MODULES = (
    "attn_norm", "attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj",
    "mlp_norm", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
)
# Online-transform sites of a block and the linears each feeds, in execution order
# (site, input width: "hidden" or "intermediate", linears). Written once; the quantizer,
# fold, export and planner derive their maps from it.
TRANSFORM_SITES = (
    ("qkv", "hidden", ("attn.q_proj", "attn.k_proj", "attn.v_proj")),
    ("o", "hidden", ("attn.o_proj",)),
    ("gate_up", "hidden", ("mlp.gate_proj", "mlp.up_proj")),
    ("down", "intermediate", ("mlp.down_proj",)),
)
# linear -> the site whose transformed input it consumes
LINEAR_SITE = {lin: site for site, _, lins in TRANSFORM_SITES for lin in lins}
# The linear layers that quantization touches, in execution order inside a block.
QUANT_LINEARS = tuple(LINEAR_SITE)
# Chat-turn terminators that end an answer like EOS does.
END_OF_TURN = ("<|eot_id|>", "<|im_end|>")


@dataclass(frozen=True)
class KeyLayout:
    """Where each canonical tensor lives in the family's safetensors files."""

    embed: str
    final_norm: str
    lm_head: str
    block_prefix: str  # formatted with the block index
    block: dict[str, str]  # canonical module name -> checkpoint module name

    def mapping(self, cfg: ModelConfig) -> dict[str, str]:
        """Canonical parameter name -> checkpoint key, for every stored tensor."""
        out = {"embed.weight": self.embed, "norm.weight": self.final_norm}
        if not cfg.tie_word_embeddings:
            out["lm_head.weight"] = self.lm_head
        for i in range(cfg.num_layers):
            prefix = self.block_prefix.format(i=i)
            for canon in BLOCK_MODULES:
                out[f"blocks.{i}.{canon}.weight"] = f"{prefix}{self.block[canon]}.weight"
            if cfg.qkv_bias:
                for proj in ("attn.q_proj", "attn.k_proj", "attn.v_proj"):
                    out[f"blocks.{i}.{proj}.bias"] = f"{prefix}{self.block[proj]}.bias"
        return out


@dataclass(frozen=True)
class Family:
    name: str
    model_type: str  # the value of `model_type` in the real config.json
    keys: KeyLayout
    parse_config: Callable[[dict[str, Any]], ModelConfig]
    write_config: Callable[[ModelConfig], dict[str, Any]]
    default_policy: str  # the commit policy of the family's reference generate()
    # transformers tokenizer class to use when tokenizer_config.json names a remote-code class
    tokenizer_fallback: str


def _require(raw: dict[str, Any], field: str, where: str = "config.json") -> Any:
    if raw.get(field) is None:
        raise ConfigError(f"{where} has no '{field}' field (required for {raw.get('model_type')})")
    return raw[field]


def _int(value: Any) -> int:
    """An integer config value; 2.0 is 2, but 2.5, "2" or true are errors, not truncated."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not math.isfinite(value) or value != int(value):
        raise ConfigError(f"config.json: expected an integer, got {value!r}")
    return int(value)


def _float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"config.json: expected a number, got {value!r}")
    return float(value)


def _expect(raw: dict[str, Any], field: str, supported: Any, default: Any) -> None:
    value = raw.get(field, default)
    if value != supported:
        raise UnsupportedModelError(
            f"config.json: {field}={value!r} is not supported (only {supported!r})"
        )


# --- LLaDA (OLMo-style config and keys) ------------------------------------------------

def _parse_llada(raw: dict[str, Any]) -> ModelConfig:
    _expect(raw, "activation_type", "silu", "silu")
    _expect(raw, "block_type", "llama", "llama")
    _expect(raw, "layer_norm_type", "rms", "rms")
    _expect(raw, "alibi", False, False)
    _expect(raw, "rope", True, True)
    _expect(raw, "include_bias", False, False)
    _expect(raw, "attention_layer_norm", False, False)
    n_heads = _int(_require(raw, "n_heads"))
    return ModelConfig(
        family="llada",
        # embedding_size is the padded table size; vocab_size may be smaller.
        vocab_size=_int(raw.get("embedding_size") or _require(raw, "vocab_size")),
        hidden_size=_int(_require(raw, "d_model")),
        intermediate_size=_int(_require(raw, "mlp_hidden_size")),
        num_layers=_int(_require(raw, "n_layers")),
        num_heads=n_heads,
        num_kv_heads=_int(raw.get("n_kv_heads") or n_heads),
        rope_theta=_float(raw.get("rope_theta", 10000.0)),
        rms_norm_eps=_float(raw.get("rms_norm_eps", 1e-5)),
        mask_token_id=_int(_require(raw, "mask_token_id")),
        eos_token_id=raw.get("eos_token_id"),
        pad_token_id=raw.get("pad_token_id"),
        max_position_embeddings=_int(raw.get("max_sequence_length", 4096)),
        tie_word_embeddings=bool(raw.get("weight_tying", False)),
        qkv_bias=bool(raw.get("include_qkv_bias", False)),
        logit_shift=False,
        rope_fp32=bool(raw.get("rope_full_precision", True)),
    )


def _write_llada(cfg: ModelConfig) -> dict[str, Any]:
    """A config.json with every field the real LLaDA-8B config carries."""
    return {
        "activation_type": "silu", "alibi": False, "alibi_bias_max": 8.0,
        "architectures": ["LLaDAModelLM"], "attention_dropout": 0.0,
        "attention_layer_norm": False, "attention_layer_norm_with_affine": True,
        "auto_map": {
            "AutoConfig": "configuration_llada.LLaDAConfig",
            "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
            "AutoModel": "modeling_llada.LLaDAModelLM",
        },
        "bias_for_layer_norm": False, "block_group_size": 1, "block_type": "llama",
        "d_model": cfg.hidden_size, "embedding_dropout": 0.0,
        "embedding_size": cfg.vocab_size, "eos_token_id": cfg.eos_token_id,
        "flash_attention": False, "include_bias": False, "include_qkv_bias": cfg.qkv_bias,
        "init_cutoff_factor": None, "init_device": "meta", "init_fn": "mitchell",
        "init_std": 0.02, "input_emb_norm": False, "layer_norm_type": "rms",
        "layer_norm_with_affine": True, "mask_token_id": cfg.mask_token_id,
        "max_sequence_length": cfg.max_position_embeddings,
        "mlp_hidden_size": cfg.intermediate_size, "mlp_ratio": 4, "model_type": "llada",
        "multi_query_attention": None, "n_heads": cfg.num_heads,
        "n_kv_heads": cfg.num_kv_heads, "n_layers": cfg.num_layers,
        "pad_token_id": cfg.pad_token_id, "precision": "amp_bf16", "residual_dropout": 0.0,
        "rms_norm_eps": cfg.rms_norm_eps, "rope": True,
        "rope_full_precision": cfg.rope_fp32, "rope_theta": cfg.rope_theta,
        "scale_logits": False, "transformers_version": "4.46.3", "use_cache": False,
        "vocab_size": cfg.vocab_size, "weight_tying": cfg.tie_word_embeddings,
    }


LLADA = Family(
    name="llada",
    model_type="llada",
    keys=KeyLayout(
        embed="model.transformer.wte.weight",
        final_norm="model.transformer.ln_f.weight",
        lm_head="model.transformer.ff_out.weight",
        block_prefix="model.transformer.blocks.{i}.",
        block={
            "attn_norm": "attn_norm", "attn.q_proj": "q_proj", "attn.k_proj": "k_proj",
            "attn.v_proj": "v_proj", "attn.o_proj": "attn_out", "mlp_norm": "ff_norm",
            "mlp.gate_proj": "ff_proj", "mlp.up_proj": "up_proj", "mlp.down_proj": "ff_out",
        },
    ),
    parse_config=_parse_llada,
    write_config=_write_llada,
    default_policy="low_confidence",
    tokenizer_fallback="PreTrainedTokenizerFast",
)


# --- Dream (Qwen2-style config and keys) -----------------------------------------------

def _parse_dream(raw: dict[str, Any]) -> ModelConfig:
    _expect(raw, "hidden_act", "silu", "silu")
    _expect(raw, "rope_scaling", None, None)
    _expect(raw, "use_sliding_window", False, False)
    n_heads = _int(_require(raw, "num_attention_heads"))
    return ModelConfig(
        family="dream",
        vocab_size=_int(_require(raw, "vocab_size")),
        hidden_size=_int(_require(raw, "hidden_size")),
        intermediate_size=_int(_require(raw, "intermediate_size")),
        num_layers=_int(_require(raw, "num_hidden_layers")),
        num_heads=n_heads,
        num_kv_heads=_int(raw.get("num_key_value_heads") or n_heads),
        rope_theta=_float(raw.get("rope_theta", 10000.0)),
        rms_norm_eps=_float(raw.get("rms_norm_eps", 1e-6)),
        mask_token_id=_int(_require(raw, "mask_token_id")),
        eos_token_id=raw.get("eos_token_id"),
        pad_token_id=raw.get("pad_token_id"),
        max_position_embeddings=_int(raw.get("max_position_embeddings", 32768)),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        qkv_bias=True,
        logit_shift=True,
        rope_fp32=False,
    )


def _write_dream(cfg: ModelConfig) -> dict[str, Any]:
    """A config.json with every field the real Dream-v0-7B config carries."""
    return {
        "architectures": ["DreamModel"], "attention_dropout": 0.0,
        "auto_map": {
            "AutoConfig": "configuration_dream.DreamConfig",
            "AutoModel": "modeling_dream.DreamModel",
        },
        "bos_token_id": cfg.eos_token_id, "eos_token_id": cfg.eos_token_id,
        "hidden_act": "silu", "hidden_size": cfg.hidden_size, "initializer_range": 0.02,
        "intermediate_size": cfg.intermediate_size, "mask_token_id": cfg.mask_token_id,
        "max_position_embeddings": cfg.max_position_embeddings,
        "max_window_layers": cfg.num_layers, "model_type": "Dream",
        "num_attention_heads": cfg.num_heads, "num_hidden_layers": cfg.num_layers,
        "num_key_value_heads": cfg.num_kv_heads, "pad_token_id": cfg.pad_token_id,
        "rms_norm_eps": cfg.rms_norm_eps, "rope_scaling": None, "rope_theta": cfg.rope_theta,
        "sliding_window": None, "tie_word_embeddings": cfg.tie_word_embeddings,
        "torch_dtype": "bfloat16", "transformers_version": "4.46.2", "use_cache": False,
        "use_sliding_window": False, "vocab_size": cfg.vocab_size,
    }


DREAM = Family(
    name="dream",
    model_type="Dream",
    keys=KeyLayout(
        embed="model.embed_tokens.weight",
        final_norm="model.norm.weight",
        lm_head="lm_head.weight",
        block_prefix="model.layers.{i}.",
        block={
            "attn_norm": "input_layernorm", "attn.q_proj": "self_attn.q_proj",
            "attn.k_proj": "self_attn.k_proj", "attn.v_proj": "self_attn.v_proj",
            "attn.o_proj": "self_attn.o_proj", "mlp_norm": "post_attention_layernorm",
            "mlp.gate_proj": "mlp.gate_proj", "mlp.up_proj": "mlp.up_proj",
            "mlp.down_proj": "mlp.down_proj",
        },
    ),
    parse_config=_parse_dream,
    write_config=_write_dream,
    default_policy="entropy",
    tokenizer_fallback="Qwen2TokenizerFast",
)


FAMILIES: dict[str, Family] = {f.name: f for f in (LLADA, DREAM)}
_BY_MODEL_TYPE = {f.model_type.lower(): f for f in FAMILIES.values()}


def supported_model_types() -> list[str]:
    return sorted(f.model_type for f in FAMILIES.values())


def family_for_model_type(model_type: str | None, where: str = "config.json") -> Family:
    """The family registered for a checkpoint's `model_type` (case-insensitive)."""
    if not model_type:
        raise UnsupportedModelError(
            f"{where} has no 'model_type'; supported: {', '.join(supported_model_types())}"
        )
    family = _BY_MODEL_TYPE.get(str(model_type).lower())
    if family is None:
        raise UnsupportedModelError(
            f"{where}: model_type {model_type!r} is not supported; "
            f"supported: {', '.join(supported_model_types())}"
        )
    return family


def get_family(name: str) -> Family:
    """A family by its short name ("llada", "dream")."""
    try:
        return FAMILIES[name.lower()]
    except KeyError:
        raise UnsupportedModelError(
            f"unknown family {name!r}; supported: {', '.join(sorted(FAMILIES))}"
        ) from None


def parse_config(raw: dict[str, Any], where: str = "config.json") -> ModelConfig:
    family = family_for_model_type(raw.get("model_type"), where)
    try:
        return family.parse_config(raw)
    except (TypeError, ValueError) as err:  # a field of the wrong type
        raise ConfigError(f"{where}: invalid value ({err})") from err
