"""Masked-diffusion training of the tiny task models (LLaDA SFT objective, both families).

Objective: per sample t ~ U(eps, 1); each answer-window token is replaced by the mask
token with probability t (prompt tokens stay visible); cross-entropy on the masked
tokens, weighted by 1/t and divided by the window length, averaged over the batch. The
Dream-style model uses the same code: its position-aligned logits already carry the
shift (position i read from the hidden state at i - 1).

Determinism: the batch and the masks of step k are drawn from generators seeded by
(seed, k), so a run resumed from a training checkpoint continues exactly as an
uninterrupted one would.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F

from ..models.checkpoint import save_checkpoint
from ..models.tiny import tiny_config
from ..models.tokenizer_files import write_tokenizer
from ..models.transformer import DiffusionLM
from .card import render_card
from .config import TrainConfig, default_config
from .data import Batch, Encoder, make_batch, padded_vocab_size, task_tokenizer
from .tasks import Split, get_task

STATE_FILE = "train_state.safetensors"  # tensors + JSON metadata: loading runs no code


# --- objective ---------------------------------------------------------------------------

@dataclass
class NoisedBatch:
    input_ids: torch.Tensor  # (B, S) with masked answer tokens replaced by the mask id
    masked: torch.Tensor  # (B, S) bool, the positions the loss is taken on
    t: torch.Tensor  # (B,) masking ratio per sample


def add_noise(batch: Batch, mask_id: int, eps: float, gen: torch.Generator) -> NoisedBatch:
    """Forward process: mask each answer token with probability t ~ U(eps, 1)."""
    b, s = batch.input_ids.shape
    t = eps + (1 - eps) * torch.rand(b, generator=gen)  # (B,)
    draw = torch.rand(b, s, generator=gen)  # (B, S)
    masked = (draw < t[:, None]) & batch.answer_mask
    return NoisedBatch(batch.input_ids.masked_fill(masked, mask_id), masked, t)


def diffusion_loss(logits: torch.Tensor, batch: Batch, noised: NoisedBatch) -> torch.Tensor:
    """sum over masked tokens of CE / t / window length, averaged over the batch."""
    b = logits.shape[0]
    masked = noised.masked  # (B, S)
    ce = F.cross_entropy(logits[masked].float(), batch.input_ids[masked], reduction="none")  # (M,)
    answer_len = batch.answer_mask.sum(1).clamp(min=1)  # (B,)
    weight = (1.0 / (noised.t * answer_len))[:, None].expand_as(masked)[masked]  # (M,)
    return (ce * weight).sum() / b


def model_logits(model: DiffusionLM, batch: Batch, input_ids: torch.Tensor) -> torch.Tensor:
    # Skip the pairwise mask when nothing is padded: same result, faster attention.
    mask = None if bool(batch.attention_mask.all()) else batch.attention_mask
    return model(input_ids, attention_mask=mask, position_ids=batch.position_ids)


# --- schedule and data -------------------------------------------------------------------

def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warmup, then cosine decay to min_lr_ratio * lr (step counts from 0)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


def step_batch(cfg: TrainConfig, enc: Encoder, step: int) -> Batch:
    """The training batch of `step`; a pure function of (seed, step)."""
    task = get_task(cfg.task)
    rng = random.Random(f"train/{cfg.seed}/{step}")
    return make_batch(enc, [task.draw(rng, Split.TRAIN) for _ in range(cfg.batch_size)])


def step_generator(cfg: TrainConfig, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)


def build_model(family: str, cfg: TrainConfig) -> tuple[DiffusionLM, Encoder]:
    tok = task_tokenizer(family, get_task(cfg.task))
    enc = Encoder(family, tok, cfg.window)
    mcfg = tiny_config(family, padded_vocab_size(tok), enc.mask_id, enc.eos_id,
                       hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                       num_layers=cfg.num_layers, num_heads=cfg.num_heads,
                       num_kv_heads=cfg.num_kv_heads, max_position_embeddings=512)
    torch.manual_seed(cfg.seed)
    model = DiffusionLM(mcfg)
    _init_weights(model, cfg)
    return model, enc


def _init_weights(model: DiffusionLM, cfg: TrainConfig) -> None:
    """GPT-2 style init: N(0, 0.02), residual outputs scaled by 1/sqrt(2 * layers)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    resid_std = 0.02 / math.sqrt(2 * cfg.num_layers)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith(".bias"):
                p.zero_()
            else:
                std = resid_std if name.endswith(("o_proj.weight", "down_proj.weight")) else 0.02
                p.copy_(std * torch.randn(p.shape, generator=gen))


def make_optimizer(model: DiffusionLM, cfg: TrainConfig) -> torch.optim.AdamW:
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=cfg.betas,
    )


# --- training loop -----------------------------------------------------------------------

@dataclass
class TrainState:
    step: int = 0  # number of optimizer steps taken
    elapsed_s: float = 0.0  # training wall time, summed over resumed segments
    loss_ema: float | None = None  # exponential moving average of the step loss
    history: list[dict] = field(default_factory=list)  # logged (step, loss, lr) points


def save_state(path: Path, model, opt, state: TrainState, family: str, cfg: TrainConfig) -> None:
    """Model, optimizer moments and RNG as safetensors; everything else as JSON metadata.

    No pickle: a state file from elsewhere can hold wrong numbers, never code.
    """
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    opt_state = opt.state_dict()
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    for index, slots in opt_state["state"].items():
        for key, value in slots.items():
            tensors[f"optimizer.{index}.{key}"] = torch.as_tensor(value).contiguous()
    tensors["torch_rng"] = torch.get_rng_state()
    meta = {"family": family, "config": cfg.to_dict(), "state": asdict(state),
            "param_groups": opt_state["param_groups"]}
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"faircalib_train_state": json.dumps(meta)})
    tmp.replace(path)  # atomic: a crash mid-write keeps the previous state


def load_state(path: Path, model, opt, family: str, cfg: TrainConfig) -> TrainState:
    """Restore model, optimizer and RNG from `save_state`'s file.

    Everything is checked against the fresh model and optimizer before any of it is
    loaded: a damaged or edited file is a CheckpointError naming it, never a traceback
    (or a crash hours into the resumed run).
    """
    from safetensors import SafetensorError, safe_open

    from ..errors import CheckpointError

    try:
        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {})["faircalib_train_state"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, KeyError, json.JSONDecodeError, OSError) as err:
        raise CheckpointError(f"{path}: not a training state written by `tiny train` "
                              f"({type(err).__name__}: {err})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: not a training state written by `tiny train` "
                              f"(its metadata is a JSON {type(meta).__name__})")
    saved_cfg = json.loads(json.dumps(cfg.to_dict()))  # tuples -> lists, as stored
    if meta.get("family") != family or meta.get("config") != saved_cfg:
        raise CheckpointError(f"{path} was written by a different run ({meta.get('family')}, "
                              f"{meta.get('config')}); refusing to resume")
    try:
        state = _check_state(meta.get("state"), cfg)
        _check_tensors(tensors, model, opt, state)
    except ValueError as err:
        raise CheckpointError(f"{path}: damaged training state, cannot resume ({err}); "
                              f"delete it to start over") from None
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items()
                           if k.startswith("model.")})
    slots: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            slots.setdefault(int(index), {})[name] = value
    # The fresh optimizer's param groups: they equal the saved ones but for lr, which
    # train_steps sets before every step (so nothing from the file reaches the optimizer
    # unchecked).
    opt.load_state_dict({"state": slots, "param_groups": opt.state_dict()["param_groups"]})
    torch.set_rng_state(tensors["torch_rng"])
    return state


def _check_state(raw, cfg: TrainConfig) -> TrainState:
    """The TrainState of the metadata, or ValueError saying what is wrong with it."""
    names = {f.name for f in fields(TrainState)}
    if not isinstance(raw, dict) or set(raw) != names:
        got = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
        raise ValueError(f"metadata 'state' must have exactly the keys {sorted(names)}, "
                         f"found {got}")
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
    step, history = raw["step"], raw["history"]
    if not (isinstance(step, int) and not isinstance(step, bool) and 0 <= step <= cfg.steps):
        raise ValueError(f"state step {step!r} is not a step count in 0..{cfg.steps}")
    if not number(raw["elapsed_s"]) or not (raw["loss_ema"] is None or number(raw["loss_ema"])):
        raise ValueError("state elapsed_s / loss_ema are not numbers")
    if not isinstance(history, list) or not all(
            isinstance(h, dict) and number(h.get("step")) and number(h.get("loss"))
            and number(h.get("calib_accuracy", 0)) for h in history):
        raise ValueError("state history is not a list of {step, loss} records")
    return TrainState(**raw)


def _check_tensors(tensors: dict, model, opt, state: TrainState) -> None:
    """ValueError unless `tensors` hold exactly what save_state writes for this model."""
    expected = {f"model.{k}": v for k, v in model.state_dict().items()}
    params = [p for group in opt.param_groups for p in group["params"]]
    if state.step > 0:  # every parameter gets a gradient, so AdamW state, at step 1
        for i, p in enumerate(params):
            expected[f"optimizer.{i}.exp_avg"] = expected[f"optimizer.{i}.exp_avg_sq"] = p
            expected[f"optimizer.{i}.step"] = torch.tensor(float(state.step))
    expected["torch_rng"] = torch.get_rng_state()
    missing, extra = sorted(expected.keys() - tensors.keys()), sorted(tensors.keys() - expected)
    if missing or extra:
        listed = lambda keys: ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")  # noqa: E731
        raise ValueError("; ".join(
            ([f"missing tensor(s) {listed(missing)}"] if missing else [])
            + ([f"unexpected tensor(s) {listed(extra)}"] if extra else [])))
    for key, want in expected.items():
        got = tensors[key]
        if got.shape != want.shape or got.dtype != want.dtype:
            raise ValueError(f"tensor {key} is {got.dtype} {tuple(got.shape)}, expected "
                             f"{want.dtype} {tuple(want.shape)}")


def train_steps(model: DiffusionLM, enc: Encoder, opt, cfg: TrainConfig, state: TrainState,
                until: int, on_step=None) -> float:
    """Run optimizer steps state.step .. until-1; returns the last step's loss."""
    model.train()
    loss_value = float("nan")
    while state.step < until:
        step = state.step
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, step)
        batch = step_batch(cfg, enc, step)
        noised = add_noise(batch, enc.mask_id, cfg.mask_eps, step_generator(cfg, step))
        loss = diffusion_loss(model_logits(model, batch, noised.input_ids), batch, noised)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        loss_value = loss.item()
        state.step += 1
        if on_step is not None:
            on_step(state, loss_value, batch)
    return loss_value


def monitor_accuracy(model: DiffusionLM, enc: Encoder, cfg: TrainConfig) -> float:
    from .evaluate import evaluate_model

    result = evaluate_model(model, enc, get_task(cfg.task), cfg.monitor_examples,
                            batch_size=cfg.monitor_examples, split=Split.CALIB, console=False)
    return result["accuracy"]


def _check_writable(out: Path) -> None:
    """OutputError unless files can be created where `out` will be written (probed by
    creating one: permission bits say nothing for root or on a read-only mount)."""
    import tempfile

    from ..artifacts import OutputError

    where = next(p for p in out.resolve().parents if p.exists())  # a dir: check_output
    try:
        with tempfile.TemporaryFile(dir=where):
            pass
    except OSError as err:
        raise OutputError(f"--out {out}: cannot write in {where} "
                          f"({err.strerror or err})") from None


def default_state_dir(out_dir: str | Path) -> Path:
    from ..models.builtin import cache_dir

    return cache_dir() / "tiny-train" / Path(out_dir).resolve().name


def train(
    family: str,
    out_dir: str | Path,
    config: TrainConfig | None = None,
    *,
    resume: bool = False,
    state_dir: str | Path | None = None,
    stop_after: int | None = None,
    overwrite: bool = False,
    console=None,
) -> dict:
    """Train a tiny model and write it to `out_dir` in the family's real layout.

    Resumable state goes to `state_dir` every `checkpoint_every` steps (default: under
    the cache directory). With `resume`, training continues from the state found there.
    `stop_after` ends the run early after that many total steps, leaving the state for a
    later resume and writing no checkpoint. `overwrite` lets the checkpoint replace a
    foreign non-empty `out_dir` (moved aside, never deleted); without it such an output is
    refused before any training. Returns the `training.json` record.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from .. import checks
    from ..artifacts import check_output

    # Imported up front so a long run never picks up a half-edited module at its end.
    from .evaluate import describe, evaluate_model, policy_for, resolve_console, tiny_decoding

    checks.count("stop_after", stop_after)
    cfg = config or default_config(family)
    check_output(out_dir, "checkpoint", overwrite=overwrite)  # before training, not after
    _check_writable(Path(out_dir))
    console = resolve_console(console)
    torch.set_num_threads(cfg.threads)
    state_path = Path(state_dir or default_state_dir(out_dir)) / STATE_FILE
    model, enc = build_model(family, cfg)
    opt = make_optimizer(model, cfg)
    state = TrainState()
    if resume and state_path.is_file():
        state = load_state(state_path, model, opt, family, cfg)
        console.log(f"resumed from {state_path} at step {state.step}")
    until = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    console.log(f"training {family} on {cfg.task}: {model.num_parameters():,} parameters, "
                f"steps {state.step}..{until} of {cfg.steps}, batch {cfg.batch_size}, "
                f"{cfg.threads} thread(s)")

    tokens, seg_start = 0, time.perf_counter()
    elapsed_base = state.elapsed_s
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[tps]}"),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console) as progress:
        bar = progress.add_task(f"{family}", total=cfg.steps, completed=state.step,
                                loss=float("nan"), tps="")

        def on_step(st: TrainState, loss: float, batch: Batch) -> None:
            nonlocal tokens
            tokens += batch.input_ids.numel()
            ema = loss if st.loss_ema is None else 0.98 * st.loss_ema + 0.02 * loss
            st.loss_ema = ema
            seg = time.perf_counter() - seg_start
            st.elapsed_s = elapsed_base + seg
            progress.update(bar, completed=st.step, loss=ema, tps=f"{tokens / seg:,.0f} tok/s")
            if st.step % cfg.log_every == 0 or st.step == cfg.steps:
                st.history.append({"step": st.step, "loss": round(ema, 5),
                                   "lr": lr_at(cfg, st.step - 1),
                                   "elapsed_s": round(st.elapsed_s, 1)})
                console.log(f"step {st.step}/{cfg.steps} loss {ema:.4f} "
                            f"lr {lr_at(cfg, st.step - 1):.2e} {tokens / seg:,.0f} tok/s "
                            f"elapsed {st.elapsed_s / 60:.1f} min")
            if st.step % cfg.checkpoint_every == 0 or st.step == until:
                save_state(state_path, model, opt, st, family, cfg)
            if cfg.monitor_every and st.step % cfg.monitor_every == 0 and st.history:
                acc = monitor_accuracy(model, enc, cfg)
                st.history[-1]["calib_accuracy"] = acc
                console.log(f"step {st.step}: calibration-split accuracy {acc:.1%} "
                            f"({cfg.monitor_examples} problems)")
                model.train()

        train_steps(model, enc, opt, cfg, state, until, on_step)

    if state.step < cfg.steps:
        console.log(f"stopped at step {state.step}; resume with the same command and --resume")
        return {"family": family, "config": cfg.to_dict(), "step": state.step,
                "state": str(state_path)}

    model.eval()
    policy = policy_for(model, enc)
    console.log(f"scoring {cfg.eval_examples} held-out examples ({describe(policy)})")
    result = evaluate_model(model, enc, get_task(cfg.task), cfg.eval_examples, policy,
                            console=console)
    record = {
        "family": family,
        "task": cfg.task,
        "config": cfg.to_dict(),
        "model_config": model.cfg.to_dict(),
        "parameters": model.num_parameters(),
        "steps": state.step,
        "training_time_s": round(state.elapsed_s, 1),
        "final_loss_ema": state.history[-1]["loss"] if state.history else None,
        "history": state.history,
        "heldout": result,
        "torch": torch.__version__,
    }
    card = render_card(record, Path(out_dir).name)
    save_checkpoint(model, out_dir, lambda d: write_tokenizer(d, enc.tok, family),
                    decoding=tiny_decoding(family, cfg.window), overwrite=overwrite,
                    extra_files={"README.md": card,
                                 "training.json": json.dumps(record, indent=2) + "\n"})
    console.log(f"wrote {out_dir}: held-out accuracy {result['accuracy']:.1%} "
                f"({result['correct']}/{result['n']})")
    return record
