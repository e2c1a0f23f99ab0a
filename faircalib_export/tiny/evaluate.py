"""Exact-match accuracy on a tiny task, decoded with the model's own commit policy.

`evaluate(model, task, limit)` opens a model of any kind (checkpoint, calibrated
artifact, folded model, exported ONNX / TensorRT directory) through `opener.open_model`,
decodes `limit` problems in batches with the model's default policy (its
`generation_config.json` or `runtime.json`: for the tiny models a 32-token window in 16
steps, LLaDA blocks of 8) and returns a JSON-able dict. `evaluate_model` scores an
in-memory `DiffusionLM` (training monitors it) through the same loop.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ..models.transformer import DiffusionLM
from .data import Encoder
from .tasks import ChainTask, Example, Split, get_task


# Decoding of the tiny task models: the whole answer window in half as many steps (two
# commits per step), LLaDA in four semi-AR blocks. Written into each trained checkpoint's
# generation_config.json, which every later stage reads.
def tiny_decoding(family: str, window: int) -> dict:
    """The decoding settings of a tiny model, in its family's policy fields."""
    from faircalib_runtime.defaults import family_defaults, with_overrides

    settings = with_overrides(family_defaults(family), gen_length=window, steps=window // 2,
                              block_length=window // 4 if family == "llada" else None)
    shape = ("gen_length", "block_length", "steps") if family == "llada" else (
        "max_new_tokens", "steps")  # Dream's block_length is the fast modes', not the shape
    return {k: v for k, v in settings.items() if k in shape}


def describe(policy) -> str:
    """One line naming the policy and its shape, for tables and logs."""
    d = policy.to_dict()
    name = d.get("remasking") or d.get("alg") or d.get("policy")
    shape = f"gen length {policy.window}, {d['steps']} steps"
    if d.get("decode", "exact") != "exact":
        shape = (f"decode {d['decode']} (threshold {d['threshold']}, cache {d['cache']}), "
                 + shape)
    if "block_length" in d and (d["policy"] == "llada" or d.get("decode", "exact") != "exact"):
        shape += f", block length {d['block_length']}"  # exact Dream has no blocks
    greedy = "greedy" if not d.get("temperature") else f"temperature {d['temperature']}"
    return f"{d['policy']} {name}, {greedy}, {shape}"


def policy_for(model: DiffusionLM, enc: Encoder, **overrides):
    """The family's default policy at the tiny decoding shape, for an in-memory model."""
    from faircalib_runtime.defaults import family_defaults, policy_config, with_overrides

    family = model.cfg.family
    settings = {**family_defaults(family), **tiny_decoding(family, enc.window)}
    settings = with_overrides(settings, **overrides)
    return policy_config(settings, mask_id=enc.mask_id, eos_ids=(enc.eos_id,),
                         pad_id=enc.eos_id)


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
                   policy=None, *, batch_size: int = 64, seed: int = 0,
                   split: Split | str = Split.HELDOUT, keep_samples: int = 8,
                   console=None) -> dict:
    """Accuracy of an in-memory model; `enc` supplies the tokenizer and special ids."""
    from ..decoding import generate_torch

    policy = policy or policy_for(model, enc)
    model.eval()
    return score(lambda ids: generate_torch(model, ids, policy, shift=False).generated,
                 enc.prompt_ids, lambda ids: enc.tok.decode(ids, skip_special_tokens=True),
                 task, limit, policy, batch_size=batch_size, seed=seed, split=split,
                 keep_samples=keep_samples, console=console)


def score(generate: Callable[[list[list[int]]], list[list[int]]],
          encode: Callable[[list[Example]], list[list[int]]],
          decode: Callable[[Sequence[int]], str], task: ChainTask, limit: int, policy, *,
          batch_size: int, seed: int, split: Split | str, keep_samples: int = 8,
          console=None) -> dict:
    """The scoring loop: decode `limit` problems of `task` in batches, check each answer."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from .. import checks, distributed

    checks.count("limit", limit)
    console = resolve_console(console)
    examples = task.examples(split, limit, seed=seed)
    # The unit of work is a batch: its problems and its policy seed are the same whatever
    # the number of processes, so under torchrun every rank decodes its own batches
    # (distributed.shard) and the texts are put back in order (distributed.gather).
    batches = [examples[lo:lo + batch_size] for lo in range(0, len(examples), batch_size)]
    mine = distributed.shard(batches)
    texts: list[tuple[int, list[str]]] = []
    done = local_correct = 0
    start = time.perf_counter()
    with Progress(TextColumn("[bold]eval {task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("acc {task.fields[acc]}"), console=console) as progress:
        bar = progress.add_task(task.name, total=sum(len(b) for _, b in mine), acc="-")
        for index, chunk in mine:
            decoded = [decode(ids) for ids in generate(encode(chunk))]
            if len(decoded) != len(chunk):
                raise ValueError(f"{len(decoded)} outputs for a batch of {len(chunk)}")
            texts.append((index, decoded))
            done += len(chunk)
            local_correct += sum(task.check(ex, t) for ex, t in zip(chunk, decoded, strict=True))
            progress.update(bar, completed=done, acc=f"{local_correct / done:.1%}")
    outputs = [t for batch in distributed.gather(texts, len(batches)) for t in batch]
    correct, samples, answered = 0, [], 0
    for ex, text in zip(examples, outputs, strict=True):
        ok = task.check(ex, text)
        correct += ok
        answered += "answer" in text
        if len(samples) < keep_samples:
            samples.append({"prompt": ex.prompt, "target": ex.target,
                            "generated": text.strip(), "correct": ok})
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
        "decoding": {**policy.to_dict(), "window": policy.window,
                     "description": describe(policy)},
        "time_s": round(time.perf_counter() - start, 2),
        "samples": samples,
    }


def evaluate(model: str | Path, task: str = "chain", limit: int = 500, *,
             gen_length: int | None = None, steps: int | None = None,
             block_length: int | None = None, batch_size: int = 64, seed: int = 0,
             split: str = "heldout", dtype: str = "fp32", threads: int | None = None,
             console=None, **decoding) -> dict:
    """Score a model of any kind on `limit` problems of `task` (`dtype`: checkpoints only;
    `decoding`: further policy fields, e.g. decode="fast", threshold=0.9)."""
    from ..errors import ConfigError
    from ..opener import open_model

    if threads:
        import torch

        torch.set_num_threads(threads)
    try:
        task_obj = get_task(task)
    except KeyError as err:
        raise ConfigError(str(err.args[0])) from None
    opened = open_model(model)
    if dtype != "fp32":
        if opened.kind != "checkpoint":
            raise ConfigError(f"--dtype applies to checkpoints; {model} is {opened.kind}")
        from ..models.loading import load_model

        opened.model = load_model(opened.path, dtype=dtype)
    policy = opened.policy(gen_length=gen_length, steps=steps, block_length=block_length,
                           **decoding)
    text = opened.text_decoder(chat=True)
    result = score(lambda ids: opened.generate(ids, policy).generated,
                   lambda examples: [text.encode(ex.prompt) for ex in examples], text.decode,
                   task_obj, limit, policy, batch_size=batch_size, seed=seed, split=split,
                   console=console)
    return {"model": str(model), "kind": opened.kind, "family": opened.family,
            "dtype": dtype, **result}
