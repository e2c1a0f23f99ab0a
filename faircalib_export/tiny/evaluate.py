"""Exact-match accuracy of a tiny task model, decoded with its family's commit policy.

`evaluate(model_path, task, limit)` loads a checkpoint, decodes `limit` held-out problems
in batches (LLaDA: low_confidence with semi-autoregressive blocks; Dream: entropy) and
returns a JSON-able dict. Defaults decode a 32-token window in 16 steps, two tokens
committed per step on average. Decoding is the project's runtime loop
(`faircalib_export.decoding.generate_torch`), so the numbers are those the pipeline sees.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..models.families import get_family
from ..models.transformer import DiffusionLM
from .data import Encoder
from .tasks import ChainTask, Split, get_task


@dataclass(frozen=True)
class DecodeSettings:
    policy: str  # "low_confidence" (LLaDA) or "entropy" (Dream)
    window: int = 32  # generation length
    steps: int = 16  # denoising steps over the whole window
    block_length: int = 8  # LLaDA semi-AR block; ignored by Dream
    eps: float = 1e-3  # Dream's final time; ignored by LLaDA

    def __post_init__(self) -> None:
        if self.policy not in ("low_confidence", "entropy"):
            raise ValueError(f"unsupported policy {self.policy!r}")
        if self.policy == "low_confidence":
            if self.window % self.block_length:
                raise ValueError("window must be a multiple of block_length")
            if self.steps % (self.window // self.block_length):
                raise ValueError("steps must split evenly across blocks")

    @classmethod
    def for_family(cls, family: str, **overrides) -> DecodeSettings:
        settings = cls(policy=get_family(family).default_policy)
        return cls(**{**asdict(settings), **{k: v for k, v in overrides.items()
                                             if v is not None}})

    def describe(self) -> str:
        if self.policy == "low_confidence":
            return (f"LLaDA low_confidence, greedy, gen length {self.window}, {self.steps} steps, "
                    f"block length {self.block_length}")
        return (f"Dream entropy, greedy, gen length {self.window}, {self.steps} steps, "
                f"eps {self.eps}")

    def to_dict(self) -> dict:
        return {**asdict(self), "description": self.describe()}


# --- decoding ----------------------------------------------------------------------------

def runtime_config(settings: DecodeSettings, mask_id: int, eos_id: int):
    """The project's decode-loop config for these settings (greedy, no guidance)."""
    from faircalib_runtime import DreamConfig, LLaDAConfig

    if settings.policy == "low_confidence":
        return LLaDAConfig(mask_id=mask_id, eos_ids=(eos_id,), gen_length=settings.window,
                           block_length=settings.block_length, steps=settings.steps,
                           temperature=0.0, remasking="low_confidence")
    return DreamConfig(mask_id=mask_id, eos_ids=(eos_id,), max_new_tokens=settings.window,
                       steps=settings.steps, eps=settings.eps, alg="entropy", temperature=0.0)


def decode(model: DiffusionLM, prompts: list[list[int]], enc: Encoder,
           settings: DecodeSettings) -> list[list[int]]:
    """Generated ids per prompt, cut at the first EOS (the runtime's loop, on torch)."""
    from ..decoding import generate_torch

    config = runtime_config(settings, enc.mask_id, enc.eos_id)
    # DiffusionLM already returns position-aligned logits, so no shift here.
    return generate_torch(model, prompts, config, shift=False).generated


# --- evaluation --------------------------------------------------------------------------

def resolve_console(console):
    """None: a stderr console; False: a silent one; else the console given."""
    from rich.console import Console

    if console is None:
        return Console(stderr=True)
    if console is False:
        return Console(quiet=True)
    return console


def evaluate_model(model: DiffusionLM, enc: Encoder, task: ChainTask, limit: int,
                   settings: DecodeSettings, *, batch_size: int = 64, seed: int = 0,
                   split: Split | str = Split.HELDOUT, keep_samples: int = 8,
                   console=None) -> dict:
    """Accuracy of an in-memory model; `enc` supplies the tokenizer and special ids."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    console = resolve_console(console)
    examples = task.examples(split, limit, seed=seed)
    correct, samples, answered = 0, [], 0
    start = time.perf_counter()
    model.eval()
    with Progress(TextColumn("[bold]eval {task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("acc {task.fields[acc]}"), console=console) as progress:
        bar = progress.add_task(task.name, total=len(examples), acc="-")
        for lo in range(0, len(examples), batch_size):
            chunk = examples[lo:lo + batch_size]
            generated = decode(model, enc.prompt_ids(chunk), enc, settings)
            for ex, ids in zip(chunk, generated, strict=True):
                text = enc.tok.decode(ids, skip_special_tokens=True)
                ok = task.check(ex, text)
                correct += ok
                answered += "answer" in text
                if len(samples) < keep_samples:
                    samples.append({"prompt": ex.prompt, "target": ex.target,
                                    "generated": text.strip(), "correct": ok})
            done = lo + len(chunk)
            progress.update(bar, completed=done, acc=f"{correct / done:.1%}")
    n = len(examples)
    acc = correct / n
    return {
        "task": task.name,
        "split": Split(split).value,
        "seed": seed,
        "n": n,
        "correct": correct,
        "accuracy": acc,
        "stderr": math.sqrt(acc * (1 - acc) / n),
        "answered": answered / n,  # share of outputs that contain "answer N" at all
        "decoding": settings.to_dict(),
        "time_s": round(time.perf_counter() - start, 2),
        "samples": samples,
    }


def evaluate(model_path: str | Path, task: str = "chain", limit: int = 500, *,
             window: int | None = None, steps: int | None = None,
             block_length: int | None = None, batch_size: int = 64, seed: int = 0,
             split: str = "heldout", dtype: str = "fp32", threads: int | None = None,
             console=None) -> dict:
    """Score a checkpoint, calibrated artifact (fake-quant) or folded model on `limit`
    problems of `task`; `dtype` applies to checkpoints only."""
    from ..generate import open_model
    from ..models.loading import load_model
    from .data import backend_tokenizer

    if threads:
        torch.set_num_threads(threads)
    opened = open_model(model_path)
    model = opened.model
    if opened.kind == "checkpoint" and dtype != "fp32":
        model = load_model(opened.path, dtype=dtype)
    elif opened.kind != "checkpoint" and dtype != "fp32":
        raise ValueError(f"--dtype applies to checkpoints; {model_path} is {opened.kind}")
    task_obj = get_task(task)
    tok = backend_tokenizer(opened.tokenizer)
    settings = DecodeSettings.for_family(opened.cfg.family, window=window, steps=steps,
                                         block_length=block_length)
    enc = Encoder(opened.cfg.family, tok, settings.window)
    result = evaluate_model(model, enc, task_obj, limit, settings, batch_size=batch_size,
                            seed=seed, split=split, console=console)
    return {"model": str(model_path), "kind": opened.kind, "family": opened.cfg.family,
            "dtype": dtype, **result}
