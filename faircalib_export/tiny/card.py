"""Model cards for the trained tiny models, rendered from their `training.json` record.

`render_card(record)` is what `train` writes as README.md; `refresh_card(dir)` re-renders
the README of an existing checkpoint from its record (after a wording change, say)
without touching the weights.
"""

from __future__ import annotations

import json
from pathlib import Path

from .config import default_config
from .tasks import get_task

NAMES = {"llada": "LLaDA", "dream": "Dream"}
MODEL_TYPES = {"llada": "llada", "dream": "Dream"}
TOKENIZATION = {
    "llada": "LLaDA's layout (`tokenizer.json`, GPT-2 style byte-level BPE): each keyword "
             "is one token and numbers are written digit by digit (no digit merges), so "
             "every two-digit value is two tokens, the same ones wherever it appears",
    "dream": "Dream's layout (`vocab.json` + `merges.txt`, read as a Qwen2 tokenizer): like "
             "the real Dream, digits are split, so every two-digit value is two tokens; "
             "each keyword is one token",
}


def _curve(history: list[dict]) -> str:
    rows = [h for h in history if "calib_accuracy" in h]
    if not rows:
        return ""
    lines = ["| step | loss (EMA) | accuracy on 64 calibration-split problems |",
             "|---|---|---|"]
    lines += [f"| {h['step']} | {h['loss']:.4f} | {h['calib_accuracy']:.1%} |" for h in rows]
    return "\n".join(lines) + "\n"


def _reproduce(record: dict, name: str) -> str:
    family = record["family"]
    as_json = lambda d: json.loads(json.dumps(d))  # tuples -> lists, as in training.json
    if as_json(record["config"]) != as_json(default_config(family).to_dict()):
        return ("Trained with a non-default config (see `training.json`); "
                "`faircalib_export.tiny.train.train` with that config reproduces it.\n")
    return ("Reproduce (deterministic on a CPU for a given torch build):\n\n"
            f"    faircalib-export tiny train --family {family} --out {name}\n")


def render_card(record: dict, name: str | None = None) -> str:
    family = record["family"]
    cfg, mcfg, ev = record["config"], record["model_config"], record["heldout"]
    task = get_task(cfg["task"])
    ex = task.examples("train", 1, seed=0)[0]
    name = name or f"{family}-chain"
    ops = (f"{task.min_ops}" if task.min_ops == task.max_ops
           else f"{task.min_ops}-{task.max_ops}")
    return f"""# {name}: a tiny {NAMES[family]}-style diffusion LM trained on `{cfg['task']}`

A {record['parameters']:,}-parameter masked-diffusion language model in the real
{NAMES[family]} checkpoint layout (config field names, tensor keys, tokenizer files),
trained from scratch on a CPU. It lets the FAIR-Calib pipeline be run and measured end to
end on a model whose decoding actually works. Weights are fp32 safetensors.

## Task and data

Synthetic running-arithmetic chains (`faircalib_export/tiny/tasks.py`, generated, no
licensed data): a start value 00..{task.max_value} and {ops} operations of
+/- 1..{task.max_operand} (every value stays within 00..{task.max_value}, written with two
digits). The answer writes each intermediate result before the final one, so an early
wrong commit ruins the answer:

    prompt: {ex.prompt}
    answer: {ex.target}

The prompt is rendered with the family's chat template; the answer window of
{cfg['window']} tokens holds the answer followed by EOS padding (as in LLaDA SFT).
Tokenizer: {TOKENIZATION[family]}. Problems are assigned to train / calibration /
held-out splits by a hash of the problem, so the three never overlap.

## Model

| | |
|---|---|
| family | {family} (`model_type` "{MODEL_TYPES[family]}") |
| parameters | {record['parameters']:,} |
| hidden / intermediate | {mcfg['hidden_size']} / {mcfg['intermediate_size']} |
| layers / heads / KV heads | {mcfg['num_layers']} / {mcfg['num_heads']} / {mcfg['num_kv_heads']} |
| vocabulary (padded) | {mcfg['vocab_size']} |
| logit shift | {mcfg['logit_shift']} |

## Training

LLaDA SFT objective: per sample t ~ U({cfg['mask_eps']}, 1); each answer-window token is
masked with probability t (prompt tokens never); cross-entropy on masked tokens weighted
by 1/t, divided by the window length. AdamW (lr {cfg['lr']}, betas {tuple(cfg['betas'])},
weight decay {cfg['weight_decay']}, gradient clip {cfg['grad_clip']}), {cfg['warmup_steps']}
warmup steps then cosine decay to {cfg['min_lr_ratio']} x lr; {record['steps']} steps of
{cfg['batch_size']} sequences; seed {cfg['seed']}; {cfg['threads']} CPU thread(s); torch
{record['torch']}.

| | |
|---|---|
| training wall time | {record['training_time_s'] / 60:.1f} min (on a shared 2-core CPU) |
| final loss (EMA) | {record['final_loss_ema']:.4f} |

{_curve(record['history'])}
{_reproduce(record, name)}

## Held-out accuracy (full precision)

Exact match of the final answer on {ev['n']} held-out `{ev['task']}` problems, decoded
with the family's default commit policy: {ev['decoding']['description']}.

| examples | correct | accuracy |
|---|---|---|
| {ev['n']} | {ev['correct']} | {ev['accuracy']:.1%} |

    faircalib-export eval {name} --task {ev['task']} --limit {ev['n']}
"""


def refresh_card(checkpoint: str | Path) -> Path:
    """Rewrite README.md of a trained checkpoint from its training.json."""
    checkpoint = Path(checkpoint)
    record = json.loads((checkpoint / "training.json").read_text())
    out = checkpoint / "README.md"
    out.write_text(render_card(record, checkpoint.name))
    return out
