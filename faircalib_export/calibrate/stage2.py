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

Under torchrun the work is data-parallel over calibration sequences: rank r holds the
block and the caches of sequences r, r + N, r + 2N, ... Every rank draws the same
single-process batches (one seeded permutation of all sequences) and back-propagates
each of its sequences of a batch alone; the per-sequence gradients are gathered and
summed in batch order on every rank, so the step equals one process's with the same
global batch bit for bit. (An all-reduce of per-rank sums would differ in the last
bits, and quantization-aware training turns such differences into different rounding
decisions within a few steps.) Caches are computed one sequence at a time for the same
reason. GPTQ Hessians and the block statistics are all-reduced. Rank 0 saves finished
blocks; on resume it reads them and sends the state to the other ranks.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .. import distributed
from ..models.families import LINEAR_SITE
from ..models.loading import CheckpointPlan, load_block, load_tensors
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
def _run(fn, cache: torch.Tensor, device, dtype, out: torch.Tensor | None = None):
    """Apply fn to cache (N, L, E) one sequence at a time, results in `out` (on the CPU).

    One at a time: a sequence's outputs then have the same bits whichever sequences
    share its process (matrix kernels may sum differently at other batch sizes).
    """
    out = torch.empty_like(cache) if out is None else out
    for i in range(cache.shape[0]):
        out[i:i + 1] = fn(cache[i:i + 1].to(device, dtype)).to(out.dtype).cpu()
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


def _resume(qb: QuantBlock, path: Path, device) -> bool:
    """`_try_resume` on rank 0, whose answer (and the state it read) every rank follows,
    so all ranks resume the same blocks even where only rank 0 sees the file."""
    def read() -> dict[str, torch.Tensor] | None:
        return qb.calib_state() if path.is_file() and _try_resume(qb, path, device) else None

    state = distributed.on_main(read)
    if state is not None and not distributed.is_main():
        qb.load_calib_state({k: v.to(device) for k, v in state.items()})
    return state is not None


def _local_rows(idx: torch.Tensor) -> list[tuple[int, int, int]]:
    """(position in the batch, global index, row of this rank's caches) of the sequences
    of the batch `idx` that belong to this rank: sequence g lives on rank g % N at row
    g // N."""
    world, rank = distributed.world(), distributed.rank()
    return [(pos, g, g // world) for pos, g in enumerate(idx.tolist()) if g % world == rank]


@contextmanager
def _sequence_rng(seed: int, step: int, sequence: int, device: torch.device):
    """QDrop's random draws for one sequence at one step, seeded by (block seed, step,
    sequence): the same whichever process trains the sequence. The caller's RNG state is
    restored afterwards."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        key = hashlib.blake2b(f"qdrop/{seed}/{step}/{sequence}".encode(), digest_size=7)
        torch.manual_seed(int.from_bytes(key.digest(), "big"))
        yield


def weighted_mse(out: torch.Tensor, target: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return ((out - target).pow(2).mean(-1) * w).mean()


def _gptq_block(qb: QuantBlock, inputs: torch.Tensor, rope, batch: int, device,
                n_total: int) -> None:
    """Quantize every linear of the block with GPTQ on its transformed inputs (the
    Hessians summed over this rank's `inputs` and then over the ranks' shares of all
    `n_total` sequences)."""
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
    for h in hessians.values():
        distributed.all_reduce_sum(h)  # every rank gets the same sum, so the same codes
    n_tokens = n_total * inputs.shape[1]
    for name, site in LINEAR_SITE.items():
        with torch.no_grad():
            w = qb.folded_weight(name).double()
        qb.weight_override[name] = gptq_quantize(w, hessians[site] / n_tokens, qb.spec.w_bits)


def _train_block(qb: QuantBlock, q_in, fp_out, weights, rope, cfg: CalibConfig, seed: int,
                 drop_prob: float, on_step: Callable[[float], None], n_total: int) -> float:
    """Train on batches of `cfg.batch_size` of all `n_total` sequences; `q_in` and
    `fp_out` hold this rank's share (all of them in one process)."""
    device = cfg.device
    params, clips = qb.trainable()
    groups = [{"params": params, "lr": cfg.lr},
              {"params": clips, "lr": cfg.lr * cfg.clip_lr_mult}]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=0.0)
    per_epoch = math.ceil(n_total / cfg.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.epochs * per_epoch))
    gen = torch.Generator(device="cpu").manual_seed(seed)
    w = weights.to(device)
    trainable = params + clips
    loss_value = float("nan")
    step = 0
    for _ in range(cfg.epochs):
        total = 0.0
        for idx in torch.randperm(n_total, generator=gen, device="cpu").split(cfg.batch_size):
            done = []  # (position in the batch, (flat gradient, loss)) of this rank's sequences
            for pos, seq, row in _local_rows(idx):
                x = q_in[row:row + 1].to(device, torch.float32)
                y = fp_out[row:row + 1].to(device, torch.float32)
                with (_sequence_rng(seed, step, seq, torch.device(device)) if drop_prob > 0
                      else nullcontext()):
                    loss = weighted_mse(qb(x, *rope, None, drop_prob=drop_prob), y, w)
                grads = torch.autograd.grad(loss, trainable, allow_unused=True)
                flat = torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                                  for p, g in zip(trainable, grads, strict=True)])
                done.append((pos, (flat.cpu(), loss.detach().cpu())))
            per_seq = distributed.gather(done, len(idx))  # every rank, in batch order
            grad = per_seq[0][0].clone()
            for part, _ in per_seq[1:]:
                grad += part
            grad /= len(idx)  # the gradient of the batch mean
            loss = sum(v.item() for _, v in per_seq) / len(idx)
            if not math.isfinite(loss):
                raise CalibrationError(f"non-finite loss ({loss}) while calibrating; "
                                       f"try a lower --lr")
            offset = 0
            for p in trainable:
                p.grad = grad[offset:offset + p.numel()].view_as(p).to(p.device).clone()
                offset += p.numel()
            opt.step()
            sched.step()
            step += 1
            total += loss * len(idx)
        loss_value = total / n_total
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
    spec = cfg.spec()
    device = torch.device(cfg.device)
    cache_dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[
        cfg.cache_dtype]
    if distributed.is_main():
        work_dir.mkdir(parents=True, exist_ok=True)
    n_total, seq_len = tokens.shape
    if n_total < distributed.world():
        raise CalibrationError(f"{n_total} calibration sequences cannot be shared by "
                               f"{distributed.world()} processes: use at least one each")
    tokens = tokens[distributed.rank()::distributed.world()]  # this rank's sequences
    n = tokens.shape[0]
    weights = (prior if method.weighted else Prior.uniform()).position_weights(seq_len)
    drop_prob = cfg.qdrop_prob if method.qdrop else 0.0

    mcfg = plan.cfg
    # the deployment keeps the table in fp16: calibrate on that (read as fp16, half the
    # fp32 table's memory; rows are widened to fp32 as they are looked up)
    embed = load_tensors(plan, ["embed.weight"], "fp16", device)["embed.weight"]
    # the activation caches stay on the host
    fp_in = torch.empty(n, seq_len, mcfg.hidden_size, dtype=cache_dtype, device="cpu")
    with torch.no_grad():
        for i in range(0, n, cfg.batch_size):
            rows = embed[tokens[i:i + cfg.batch_size].to(device)]
            fp_in[i:i + cfg.batch_size] = rows.float().cpu()
    del embed
    q_in = fp_in.clone()
    fp_out = torch.empty_like(fp_in)
    positions = torch.arange(seq_len, device=device)[None]  # (1, L): no padding here
    rope = rope_cos_sin(positions, mcfg.head_dim, mcfg.rope_theta)  # (1, L, D) each

    stats = []
    for index in range(mcfg.num_layers):
        block = load_block(plan, index, "fp32", device)
        _run(lambda x, b=block: b(x, *rope, None), fp_in, device, torch.float32, out=fp_out)
        qb = QuantBlock(block, spec, seed=cfg.seed + 1000 * index)
        path = block_file(work_dir, index)
        resumed = _resume(qb, path, device)
        if resumed:
            progress(index, "resumed", None)
        else:
            if method.gptq:
                progress(index, "gptq", None)
                _gptq_block(qb, q_in, rope, cfg.batch_size, device, n_total)
            if method.trains and cfg.epochs > 0:
                _train_block(qb, q_in, fp_out, weights, rope, cfg, cfg.seed + index, drop_prob,
                             lambda loss, i=index: progress(i, "epoch", loss), n_total)
            state = qb.calib_state()
            distributed.on_main(lambda st=state, p=path: save_block_state(st, p))
        qb.convert()  # the next block's inputs come from the deployment arithmetic
        q_out = _run(lambda x, b=qb: b(x, *rope, None), q_in, device, torch.float32)
        with torch.no_grad():  # per sequence, summed in sequence order on every rank
            per_seq = distributed.gather(
                [(distributed.rank() + i * distributed.world(),
                  (weighted_mse(q_out[i:i + 1].float(), fp_out[i:i + 1].float(), weights).item(),
                   (q_out[i].float() - fp_out[i].float()).pow(2).sum().item(),
                   fp_out[i].float().pow(2).sum().item())) for i in range(n)], n_total)
            loss = sum(v[0] for v in per_seq) / n_total
            ref_sq = sum(v[2] for v in per_seq)
            rel = math.sqrt(sum(v[1] for v in per_seq) / ref_sq) if ref_sq > 0 else math.nan
        if not math.isfinite(loss):
            raise CalibrationError(f"block {index}: quantized output is not finite")
        stats.append({"block": index, "weighted_mse": loss, "relative_error": rel,
                      "resumed": resumed})
        progress(index, "done", loss)
        del qb, block
        fp_in, fp_out = fp_out, fp_in  # the FP outputs are the next block's FP inputs
        q_in = q_out
    return stats
