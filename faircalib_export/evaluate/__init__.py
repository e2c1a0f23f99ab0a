"""Evaluation on real benchmark files (ARC, PIQA, BoolQ, WinoGrande, GSM8K, HumanEval,
WikiText-2); the tiny models' own tasks are scored by `faircalib_export.tiny.evaluate`.

`evaluate_benchmark(model, name, ...)` takes any opened model (checkpoint, calibrated
artifact, folded model or exported ONNX directory) and returns a JSON-able dict.
"""

from __future__ import annotations

from pathlib import Path

from .benchmarks import (
    GENERATION,
    MULTIPLE_CHOICE,
    benchmark_names,
    default_path,
    load_choices,
    load_problems,
    load_text,
)
from .scoring import score_choices, score_gsm8k, score_humaneval, score_perplexity


def evaluate_benchmark(model, name: str, *, path: Path | None = None,
                       data_root: Path | None = None, limit: int | None = None, seed: int = 0,
                       samples: int = 8, batch_size: int = 8, execute: bool = False,
                       seq_len: int = 128, progress=None, **policy) -> dict:
    path = Path(path) if path else default_path(name, data_root)
    tick = progress or (lambda *a: None)
    if name in MULTIPLE_CHOICE:
        items = load_choices(name, path)[:limit]
        result = score_choices(model, items, samples=samples, seed=seed, progress=tick)
    elif name in GENERATION:
        problems = load_problems(name, path)[:limit]
        config = model.policy(seed=seed, **policy)
        if name == "gsm8k":
            result = score_gsm8k(model, problems, config, batch_size=batch_size, progress=tick)
        else:
            result = score_humaneval(model, problems, config, batch_size=batch_size,
                                     execute=execute, progress=tick)
        result["policy"] = config.to_dict()
    else:
        result = score_perplexity(model, load_text(path), seq_len=seq_len, chunks=limit or 16,
                                  seed=seed, progress=tick)
    return {"benchmark": name, "data": str(path), **result}


__all__ = ["benchmark_names", "evaluate_benchmark"]
