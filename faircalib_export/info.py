"""`faircalib-export info`: what a checkpoint is and what quantization will touch.

Works from config.json and the safetensors headers only (no tensor data is read), so it
is instant even for 8B checkpoints, and it validates the checkpoint on the way.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from .models.config import ModelConfig
from .models.families import QUANT_LINEARS
from .models.loading import inspect_checkpoint, meta_model
from .quant.layout import kron_factors, transform_sites

FP16_BYTES = 2


@dataclass(frozen=True)
class LinearLayer:
    name: str  # canonical module name with the block index
    checkpoint_key: str
    out_features: int
    in_features: int


def linear_shape(cfg: ModelConfig, module: str) -> tuple[int, int]:
    """(out_features, in_features) of a quantized linear inside a block."""
    e, f, kv = cfg.hidden_size, cfg.intermediate_size, cfg.kv_dim
    return {
        "attn.q_proj": (e, e), "attn.k_proj": (kv, e), "attn.v_proj": (kv, e),
        "attn.o_proj": (e, e), "mlp.gate_proj": (f, e), "mlp.up_proj": (f, e),
        "mlp.down_proj": (e, f),
    }[module]


def memory_estimate(cfg: ModelConfig, weight_bits: int = 4) -> dict[str, int]:
    """Bytes of weights in FP16 and in the W4A4 deployment format.

    W4A4: packed int weights + one fp16 scale per output channel for every block linear,
    the online Kronecker factors (n1^2 + n2^2 fp16) and one activation clip ratio per
    transform site, and embeddings, LM head and norms kept in fp16.
    """
    linear_params = sum(o * i for o, i in (linear_shape(cfg, m) for m in QUANT_LINEARS))
    linear_rows = sum(linear_shape(cfg, m)[0] for m in QUANT_LINEARS)
    per_block_norms = 2 * cfg.hidden_size
    embed = cfg.vocab_size * cfg.hidden_size
    head = 0 if cfg.tie_word_embeddings else embed
    bias = cfg.hidden_size + 2 * cfg.kv_dim if cfg.qkv_bias else 0
    kron = sum(sum(k * k for k in kron_factors(s.dim)) + 1 for s in transform_sites(cfg))
    n = cfg.num_layers
    fp16_block = (linear_params + per_block_norms + bias) * FP16_BYTES
    w4_block = (linear_params * weight_bits // 8 + linear_rows * FP16_BYTES
                + (per_block_norms + bias + kron) * FP16_BYTES)
    shared = (embed + head + cfg.hidden_size) * FP16_BYTES
    fp16 = n * fp16_block + shared
    w4 = n * w4_block + shared
    return {"fp16_bytes": fp16, "w4a4_bytes": w4, "w4a4_block_bytes_only": n * w4_block,
            "fp16_block_bytes_only": n * fp16_block}


def checkpoint_info(path: str | Path) -> dict:
    plan = inspect_checkpoint(path)
    cfg = plan.cfg
    layers = []
    for i in range(cfg.num_layers):
        for module in QUANT_LINEARS:
            canon = f"blocks.{i}.{module}"
            out_f, in_f = linear_shape(cfg, module)
            layers.append(LinearLayer(canon, plan.mapping[f"{canon}.weight"], out_f, in_f))
    params = sum(p.numel() for p in meta_model(cfg).parameters())
    return {
        "path": str(plan.path),
        "family": plan.family.name,
        "model_type": plan.family.model_type,
        "config": cfg.to_dict(),
        "shards": [p.name for p in plan.shards],
        "parameters": params,
        "special_tokens": {"mask_token_id": cfg.mask_token_id, "eos_token_id": cfg.eos_token_id,
                           "pad_token_id": cfg.pad_token_id},
        "default_policy": plan.family.default_policy,
        "transform_sites": [{"name": s.name, "dim": s.dim, "kron": kron_factors(s.dim),
                             "linears": list(s.linears)} for s in transform_sites(cfg)],
        "linear_layers": [asdict(layer) for layer in layers],
        "memory": memory_estimate(cfg),
    }
