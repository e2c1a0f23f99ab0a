"""Scoring diffusion LMs on real benchmarks through any runtime backend.

Likelihoods use the masked-diffusion bound LLaDA evaluates with: for a continuation y of
length L after a prompt x,

    log p(y | x) >= E_l [ (L / l) * sum_{i in M_l} log p(y_i | x, y with M_l masked) ],

with l masked tokens (l = 1..L) at uniformly random positions M_l. We use a stratified,
seeded Monte Carlo estimate: `samples` rows with l spread evenly over 1..L, so results are
deterministic and comparable across models. Multiple choice picks the option with the
largest estimate (acc) or the largest per-character estimate (acc_norm).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .benchmarks import Choice, Problem


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    z = x - x.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def masked_loglik(backend, mask_id: int, prompt: Sequence[int], cont: Sequence[int],
                  samples: int = 8, seed: int = 0) -> float:
    """Stratified Monte Carlo estimate of the masked-diffusion log-likelihood bound."""
    cont = np.asarray(cont, dtype=np.int64)
    length = len(cont)
    if length == 0:
        return 0.0
    rng = np.random.default_rng(seed)
    rows, masks = [], []
    for j in range(samples):
        n_masked = max(1, int(round(length * (j + 1) / samples)))
        masked = np.zeros(length, dtype=bool)
        masked[rng.permutation(length)[:n_masked]] = True
        rows.append(np.concatenate([prompt, np.where(masked, mask_id, cont)]))
        masks.append(masked)
    ids = np.stack(rows).astype(np.int64)  # (samples, P + L)
    logits = backend.forward(ids, None, None, "logits").logits[:, len(prompt):]
    logp = _log_softmax(logits)  # (samples, L, V)
    gold = np.take_along_axis(logp, cont[None, :, None].repeat(samples, 0), -1)[..., 0]
    per_row = [(length / m.sum()) * gold[r][m].sum() for r, m in enumerate(masks)]
    return float(np.mean(per_row))


def score_choices(model, items: list[Choice], *, samples: int, seed: int,
                  progress: Callable[[], None] = lambda: None) -> dict:
    """Accuracy over `items`; item n is scored with seed `seed + n`, so under torchrun
    each rank takes its share of the items and the result does not depend on N."""
    from .. import distributed

    backend, decoder, mask_id = model.backend(), model.text_decoder(False), _mask_id(model)
    picked: list[tuple[int, tuple[bool, bool]]] = []
    for n, item in distributed.shard(items):
        scores, norms = [], []
        for context, continuation in item.options:
            ctx = decoder.encode(context)
            full = decoder.encode(context + continuation)
            cont = full[len(ctx):] if full[:len(ctx)] == ctx else decoder.encode(continuation)
            s = masked_loglik(backend, mask_id, ctx, cont, samples, seed + n)
            scores.append(s)
            norms.append(s / max(1, len(continuation)))
        picked.append((n, (bool(np.argmax(scores) == item.gold),
                           bool(np.argmax(norms) == item.gold))))
        progress()
    hits = distributed.gather(picked, len(items))
    correct = sum(h for h, _ in hits)
    correct_norm = sum(h for _, h in hits)
    n = max(1, len(items))
    return {"n": len(items), "acc": correct / n, "acc_norm": correct_norm / n,
            "chance": float(np.mean([1 / len(i.options) for i in items]))}


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def last_number(text: str) -> str | None:
    found = _NUMBER.findall(text)
    return found[-1].replace(",", "").rstrip(".") if found else None


def _numbers_equal(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return False
    try:
        return abs(float(a) - float(b)) < 1e-6
    except ValueError:
        return a == b


def generate_batches(model, prompts: list[str], config, *, chat: bool, batch_size: int,
                     progress: Callable[[int], None] = lambda n: None) -> list[str]:
    """Decoded texts of `prompts`, in batches of `batch_size` with `config`'s seed; under
    torchrun each rank decodes its share of the batches (the batches, and so the texts,
    are the same whatever the number of processes)."""
    from faircalib_runtime import generate

    from .. import distributed

    decoder, backend = model.text_decoder(chat), model.backend()
    batches = [prompts[i:i + batch_size] for i in range(0, len(prompts), batch_size)]
    done: list[tuple[int, list[str]]] = []
    for index, chunk in distributed.shard(batches):
        result = generate(backend, [decoder.encode(p) for p in chunk], config)
        done.append((index, [decoder.decode(ids) for ids in result.generated]))
        progress(len(chunk))
    return [text for batch in distributed.gather(done, len(batches)) for text in batch]


GSM8K_INSTRUCTION = "\nLet's think step by step."


def score_gsm8k(model, problems: list[Problem], config, *, batch_size: int,
                progress=lambda n: None) -> dict:
    outputs = generate_batches(model, [p.prompt + GSM8K_INSTRUCTION for p in problems], config,
                               chat=True, batch_size=batch_size, progress=progress)
    hits = [_numbers_equal(last_number(o), p.answer) for o, p in zip(outputs, problems,
                                                                       strict=True)]
    return {"n": len(problems), "exact_match": float(np.mean(hits)) if hits else 0.0,
            "samples": [{"id": p.id, "gold": p.answer, "output": o, "correct": h}
                        for p, o, h in list(zip(problems, outputs, hits, strict=True))[:20]]}


def run_humaneval_test(problem: Problem, completion: str, timeout: float = 5.0) -> bool:
    """Run the problem's tests on a completion in a separate Python process with a time
    limit. This is NOT a security sandbox: only enable it for models you trust."""
    program = (problem.prompt + completion + "\n\n" + problem.extra["test"] +
               f"\n\ncheck({problem.extra['entry_point']})\n")
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "candidate.py"
        file.write_text(program)
        try:
            result = subprocess.run([sys.executable, "-I", str(file)], cwd=tmp, timeout=timeout,
                                    capture_output=True)
        except subprocess.TimeoutExpired:
            return False
    return result.returncode == 0


def score_humaneval(model, problems: list[Problem], config, *, batch_size: int, execute: bool,
                    progress=lambda n: None) -> dict:
    outputs = generate_batches(model, [p.prompt for p in problems], config, chat=False,
                               batch_size=batch_size, progress=progress)
    out = {"n": len(problems), "executed": execute,
           "completions": [{"task_id": p.id, "completion": o} for p, o in
                           zip(problems, outputs, strict=True)]}
    if execute:
        passed = [run_humaneval_test(p, o) for p, o in zip(problems, outputs, strict=True)]
        out["pass@1"] = float(np.mean(passed)) if passed else 0.0
    return out


RATIOS = (0.15, 0.3, 0.5, 0.7, 0.85)  # fixed mask ratios: comparable across models


def score_perplexity(model, text: str, *, seq_len: int, chunks: int, seed: int,
                     progress=lambda: None) -> dict:
    """Masked-diffusion NLL on fixed-length chunks at fixed mask ratios."""
    backend, decoder, mask_id = model.backend(), model.text_decoder(False), _mask_id(model)
    ids = np.asarray(decoder.encode(text[: 400 * seq_len * chunks]), dtype=np.int64)
    n_chunks = min(chunks, len(ids) // seq_len)
    if n_chunks == 0:
        from ..errors import ConfigError

        raise ConfigError(f"text has {len(ids)} tokens, fewer than seq_len={seq_len}")
    from .. import distributed

    sums: list[tuple[int, tuple[float, float, int]]] = []
    for c, _ in distributed.shard(range(n_chunks)):
        rng = np.random.default_rng([seed, c])  # per chunk: independent of the sharding
        chunk = ids[c * seq_len:(c + 1) * seq_len]
        rows, masks = [], []
        for ratio in RATIOS:
            masked = rng.random(seq_len) < ratio
            masked[rng.integers(seq_len)] = True  # at least one
            rows.append(np.where(masked, mask_id, chunk))
            masks.append(masked)
        logp = _log_softmax(backend.forward(np.stack(rows), None, None, "logits").logits)
        nll_c = bound_c = 0.0
        count_c = 0
        for r, (ratio, m) in enumerate(zip(RATIOS, masks, strict=True)):
            ce = -logp[r, np.arange(seq_len), chunk][m]
            nll_c += ce.sum()
            bound_c += ce.sum() / (ratio * seq_len)  # per-token ELBO term at this ratio
            count_c += int(m.sum())
        sums.append((c, (float(nll_c), float(bound_c), count_c)))
        progress()
    nll_sum = bound_sum = 0.0
    count = 0
    for nll_c, bound_c, count_c in distributed.gather(sums, n_chunks):  # in chunk order
        nll_sum += nll_c
        bound_sum += bound_c
        count += count_c
    nll = nll_sum / count
    bound = bound_sum / (n_chunks * len(RATIOS))
    return {"chunks": n_chunks, "seq_len": seq_len, "mask_ratios": list(RATIOS),
            "masked_nll": float(nll), "masked_ppl": float(np.exp(nll)),
            "elbo_nll_per_token": float(bound)}


def _mask_id(model) -> int:
    cfg = getattr(model, "cfg", None)
    return cfg.mask_token_id if cfg is not None else int(model.config["mask_token_id"])
