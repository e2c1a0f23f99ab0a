"""Stage II: sequential block-by-block calibration against full-precision block outputs.

Block l is trained on inputs produced by the already-calibrated quantized blocks
0..l-1; its target is the FP block applied to the FP inputs. The loss is the per-position
weighted hidden-state MSE

    L_l = mean_batch sum_i w_i ||h_q(x)_i - h_fp(x)_i||^2 / (L * E)

with w from the prior (mean 1 over positions; all ones for the uniform baselines). Only
transform, scale and clipping parameters train (AdamW, cosine decay, clipping at 10x the
learning rate). Activation caches live on the CPU in `cache_dtype`; only the current
block and one batch are on the compute device, so peak memory does not grow with depth.
Each finished block is saved at once, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..models.families import LINEAR_SITE
from ..models.loading import CheckpointPlan, load_block, load_module
from ..models.transformer import rope_cos_sin
from ..probe.prior import Prior
from ..quant.gptq import gptq_quantize, input_hessian
from ..quant.qblock import QuantBlock
from .config import CalibConfig, CalibrationError
from .methods import get_method


def block_file(directory: Path, index: int) -> Path:
    return directory / f"block_{index:03d}.safetensors"


def save_block_state(state: dict[str, torch.Tensor], path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
    tmp.replace(path)


def load_block_state(path: Path, device) -> dict[str, torch.Tensor]:
    """A finished block's calibration state; NaN in it is refused, naming the file (an
    infinite clip logit is legitimate: it means no clipping)."""
    state = load_file(str(path), device=str(device))
    for key, value in state.items():
        if value.is_floating_point() and torch.isnan(value).any():
            raise CalibrationError(f"{path}: {key} holds NaN values")
    return state


@torch.no_grad()
def _run(fn, cache: torch.Tensor, batch: int, device, dtype, out: torch.Tensor | None = None):
    """Apply fn to cache (N, L, E) in batches; results land in `out` (on the CPU)."""
    out = torch.empty_like(cache) if out is None else out
    for i in range(0, cache.shape[0], batch):
        out[i:i + batch] = fn(cache[i:i + batch].to(device, dtype)).to(out.dtype).cpu()
    return out


def _try_resume(qb: QuantBlock, path: Path, device) -> bool:
    """Load a finished block's state; a damaged file (killed mid-write elsewhere, disk
    error) is removed and the block recomputed instead of failing every rerun."""
    from safetensors import SafetensorError

    try:
        qb.load_calib_state(load_block_state(path, device))
        return True
    except (SafetensorError, OSError, KeyError, RuntimeError, CalibrationError):
        path.unlink(missing_ok=True)
        return False


def weighted_mse(out: torch.Tensor, target: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return ((out - target).pow(2).mean(-1) * w).mean()


def _gptq_block(qb: QuantBlock, inputs: torch.Tensor, rope, batch: int, device) -> None:
    """Quantize every linear of the block with GPTQ on its transformed inputs."""
    hessians: dict[str, torch.Tensor] = {}
    captured: dict[str, list[torch.Tensor]] = {}

    def hook(site):
        def fn(module, args, output):
            captured.setdefault(site, []).append(output.detach())
        return fn

    handles = [qb.sites[s].register_forward_hook(hook(s)) for s in qb.sites]
    try:
        with torch.no_grad():
            for i in range(0, inputs.shape[0], batch):
                # the calibration form: its site transforms expose the inputs to hook
                qb(inputs[i:i + batch].to(device, torch.float32), *rope, None)
                for site, xs in captured.items():
                    h = sum(input_hessian(x) * x[..., 0].numel() for x in xs)
                    hessians[site] = hessians.get(site, 0) + h
                captured.clear()
    finally:
        for h in handles:
            h.remove()
    n_tokens = inputs.shape[0] * inputs.shape[1]
    for name, site in LINEAR_SITE.items():
        with torch.no_grad():
            w = qb.folded_weight(name).double()
        qb.weight_override[name] = gptq_quantize(w, hessians[site] / n_tokens, qb.spec.w_bits)


def _train_block(qb: QuantBlock, q_in, fp_out, weights, rope, cfg: CalibConfig, seed: int,
                 drop_prob: float, on_step: Callable[[float], None]) -> float:
    device = cfg.device
    params, clips = qb.trainable()
    groups = [{"params": params, "lr": cfg.lr},
              {"params": clips, "lr": cfg.lr * cfg.clip_lr_mult}]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=0.0)
    n = q_in.shape[0]
    per_epoch = math.ceil(n / cfg.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.epochs * per_epoch))
    gen = torch.Generator(device="cpu").manual_seed(seed)
    w = weights.to(device)
    loss_value = float("nan")
    for _ in range(cfg.epochs):
        total = 0.0
        for idx in torch.randperm(n, generator=gen, device="cpu").split(cfg.batch_size):
            x = q_in[idx].to(device, torch.float32)
            y = fp_out[idx].to(device, torch.float32)
            loss = weighted_mse(qb(x, *rope, None, drop_prob=drop_prob), y, w)
            if not torch.isfinite(loss):
                raise CalibrationError(f"non-finite loss ({loss.item()}) while calibrating; "
                                       f"try a lower --lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        loss_value = total / n
        on_step(loss_value)
    return loss_value


def calibrate_blocks(
    plan: CheckpointPlan,
    tokens: torch.Tensor,  # (N, L) int64
    prior: Prior,
    cfg: CalibConfig,
    work_dir: Path,
    progress: Callable[[int, str, float | None], None] = lambda *a: None,
) -> list[dict]:
    """Calibrate every block of the checkpoint in order; returns per-block statistics.

    Blocks are read from the checkpoint one at a time (fp32), so memory holds one block
    and the activation caches, whatever the depth of the model.

    Block results are written to `work_dir/block_XXX.safetensors` as soon as they finish and
    reused when present, so a rerun after an interruption resumes.
    `progress(block, phase, loss)` is called as work advances.
    """
    cfg = cfg.resolved(plan.cfg.hidden_size)
    method = get_method(cfg.method)
    spec = method.spec(cfg.w_bits, cfg.a_bits)
    device = torch.device(cfg.device)
    cache_dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[
        cfg.cache_dtype]
    work_dir.mkdir(parents=True, exist_ok=True)
    n, seq_len = tokens.shape
    weights = (prior if method.weighted else Prior.uniform()).position_weights(seq_len)
    drop_prob = cfg.qdrop_prob if method.qdrop else 0.0

    mcfg = plan.cfg
    embed = load_module(plan, lambda: nn.Embedding(mcfg.vocab_size, mcfg.hidden_size),
                        "embed.", "fp32", device)
    with torch.no_grad():  # the deployment keeps the table in fp16: calibrate on that
        embed.weight.copy_(embed.weight.half().float())
    # the activation caches stay on the host
    fp_in = torch.empty(n, seq_len, mcfg.hidden_size, dtype=cache_dtype, device="cpu")
    with torch.no_grad():
        for i in range(0, n, cfg.batch_size):
            fp_in[i:i + cfg.batch_size] = embed(tokens[i:i + cfg.batch_size].to(device)).cpu()
    del embed
    q_in = fp_in.clone()
    fp_out = torch.empty_like(fp_in)
    positions = torch.arange(seq_len, device=device)[None]  # (1, L): no padding here
    rope = rope_cos_sin(positions, mcfg.head_dim, mcfg.rope_theta)  # (1, L, D) each

    stats = []
    for index in range(mcfg.num_layers):
        block = load_block(plan, index, "fp32", device)
        _run(lambda x, b=block: b(x, *rope, None), fp_in, cfg.batch_size, device,
             torch.float32, out=fp_out)
        qb = QuantBlock(block, spec, seed=cfg.seed + 1000 * index)
        path = block_file(work_dir, index)
        resumed = path.is_file() and _try_resume(qb, path, device)
        if resumed:
            progress(index, "resumed", None)
        else:
            if method.gptq:
                progress(index, "gptq", None)
                _gptq_block(qb, q_in, rope, cfg.batch_size, device)
            if method.trains and cfg.epochs > 0:
                _train_block(qb, q_in, fp_out, weights, rope, cfg, cfg.seed + index, drop_prob,
                             lambda loss, i=index: progress(i, "epoch", loss))
            save_block_state(qb.calib_state(), path)
        qb.convert()  # the next block's inputs come from the deployment arithmetic
        q_out = _run(lambda x, b=qb: b(x, *rope, None), q_in, cfg.batch_size, device,
                     torch.float32)
        with torch.no_grad():
            loss = sum(weighted_mse(q_out[i:i + 1].float(), fp_out[i:i + 1].float(),
                                    weights).item() for i in range(n)) / n
            rel = ((q_out.float() - fp_out.float()).norm() / fp_out.float().norm()).item()
        if not math.isfinite(loss):
            raise CalibrationError(f"block {index}: quantized output is not finite")
        stats.append({"block": index, "weighted_mse": loss, "relative_error": rel,
                      "resumed": resumed})
        progress(index, "done", loss)
        del qb, block
        fp_in, fp_out = fp_out, fp_in  # the FP outputs are the next block's FP inputs
        q_in = q_out
    return stats
