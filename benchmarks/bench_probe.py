"""Stage I probing: rollout throughput, and how many prompts a stable prior needs.

1. Throughput: random-commit rollouts per second and model steps per second at a few
   batch sizes (the accumulator only moves (B, K) statistics to the host per step).
2. Stability: one probe of N prompts, then the split-half Spearman between the mean
   curves of two disjoint halves of n prompts each, for growing n (combined prior and
   each component). A prior is stable where this approaches 1.

    python benchmarks/bench_probe.py [--model llada-chain] [--data task:chain] \
        [--samples 128] [--device cpu]

Defaults: the shipped tiny LLaDA model if present (else the random `tiny-llada`), its
own task, and the tiny probing shape (K = T = its generation window).
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def split_half(per_sample: np.ndarray, n: int, rng: np.random.Generator) -> float:
    from faircalib_export.probe.compare import spearman

    idx = rng.permutation(len(per_sample))
    return spearman(per_sample[idx[:n]].mean(0), per_sample[idx[n:2 * n]].mean(0))


def main() -> None:
    import torch

    from faircalib_export.models.builtin import default_task, resolve_model, shipped_models
    from faircalib_export.opener import open_model
    from faircalib_export.probe.config import ProbeConfig
    from faircalib_export.probe.prompts import load_prompts
    from faircalib_export.probe.stage1 import max_normalize_rows, probe, probe_shape

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llada-chain" if "llada-chain" in shipped_models()
                    else "tiny-llada")
    ap.add_argument("--data", default=None)
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    path = resolve_model(args.model)
    opened = open_model(path, args.device)
    source = args.data or default_task(path) or "task:chain"
    _, window, steps = probe_shape(opened.cfg, opened.generation_config)
    prompts = load_prompts(source, path, args.samples, tokenizer=opened.tokenizer)
    print(f"model {path} ({opened.cfg.family}), data {source}, K={window}, T={steps}, "
          f"device {args.device}")

    print("\nthroughput")
    for bs in (1, 8, 32):
        n = min(len(prompts), 2 * bs)
        config = ProbeConfig(steps=steps, window=window, batch_size=bs)
        probe(opened.model, prompts[:bs], config, device=args.device)  # warm-up
        start = time.perf_counter()
        probe(opened.model, prompts[:n], config, device=args.device)
        dt = time.perf_counter() - start
        print(f"  batch {bs:>3}: {n / dt:8.1f} rollouts/s, {n * steps / dt:9.1f} "
              f"sequence-steps/s")

    print(f"\nsplit-half Spearman ({args.samples} prompts, 20 random splits)")
    config = ProbeConfig(steps=steps, window=window, batch_size=32)
    res = probe(opened.model, prompts, config, device=args.device)
    curves = {"combined": res.per_sample, "frontier": max_normalize_rows(res.hit),
              "reliability": max_normalize_rows(res.rel)}
    rng = np.random.default_rng(0)
    sizes = [n for n in (4, 8, 16, 32, 64, 128, 256) if 2 * n <= len(prompts)]
    print("  n    " + "  ".join(f"{name:>12}" for name in curves))
    for n in sizes:
        row = [np.nanmean([split_half(c, n, rng) for _ in range(20)]) for c in curves.values()]
        print(f"  {n:<4} " + "  ".join(f"{v:12.3f}" for v in row))


if __name__ == "__main__":
    main()
