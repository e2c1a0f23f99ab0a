"""Peak memory of Stage II on the compute device, computed without running the model.

One calibration step of one block is traced on the meta device (no memory is used)
with autograd's saved-tensor hooks, so the activation term is exactly what autograd
keeps for the real shapes, not a rule of thumb. Views are counted once, at their base.
The CPU side holds three activation caches of samples x seq_len x hidden.

The meta trace runs attention through the math kernel, which keeps the full attention
probabilities; CUDA's memory-efficient kernel does not, so that term is reported apart
(`attention_probs`) and left out of the GPU peak.
"""

from __future__ import annotations

import torch

from ..models.config import ModelConfig
from ..models.transformer import Block, rope_cos_sin
from ..quant.qblock import QuantBlock
from ..quant.spec import QuantSpec
from .stage2 import weighted_mse

GIB = 2**30


def _saved_bytes(cfg: ModelConfig, spec: QuantSpec, batch: int, seq_len: int):
    saved: list[torch.Tensor] = []
    with torch.device("meta"):
        qb = QuantBlock(Block(cfg), spec)
        x = torch.empty(batch, seq_len, cfg.hidden_size)
        cos, sin = rope_cos_sin(torch.arange(seq_len)[None], cfg.head_dim, cfg.rope_theta)
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t,
                                                      lambda t: t):
            out = qb(x, cos, sin, None)
            weighted_mse(out, torch.empty_like(out), torch.ones(seq_len))
    by_base: dict[int, int] = {}
    largest, attention = 0, 0
    attn_shape = (batch, cfg.num_heads, seq_len, seq_len)
    for t in saved:
        base = t._base if t._base is not None else t
        size = base.numel() * base.element_size()
        if tuple(base.shape) == attn_shape:
            attention = max(attention, size)
            continue
        by_base[id(base)] = max(by_base.get(id(base), 0), size)
        largest = max(largest, size)
    trainable = sum(p.numel() for group in qb.trainable() for p in group)
    block_params = sum(p.numel() for p in qb.fp.parameters())
    return sum(by_base.values()), attention, largest, trainable, block_params


def calibration_plan(cfg: ModelConfig, *, samples: int, seq_len: int,
                     batch: int, spec: QuantSpec | None = None,
                     cache_bytes: int = 4) -> dict[str, float]:
    """GiB per component of a Stage II run (fp32 compute) and the device peak."""
    spec = spec or QuantSpec()
    saved, attention, largest, trainable, block_params = _saved_bytes(cfg, spec, batch, seq_len)
    io = 3 * batch * seq_len * cfg.hidden_size * 4  # input, output, target batch
    parts = {
        "block_weights": block_params * 4 / GIB,
        "trainable_params_grads_adam": trainable * 4 * 4 / GIB,
        "saved_activations": saved / GIB,
        "backward_transient": 2 * largest / GIB,  # two live gradients of the largest tensor
        "batch_io": io / GIB,
    }
    plan = {**parts, "device_peak": sum(parts.values()),
            "attention_probs_math_kernel": attention / GIB,
            "cpu_activation_caches": 3 * samples * seq_len * cfg.hidden_size * cache_bytes / GIB}
    return {k: round(v, 3) for k, v in plan.items()}
