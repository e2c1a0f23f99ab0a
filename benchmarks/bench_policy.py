"""How much the decode policy costs next to the model's forward pass.

For LLaDA and Dream, greedy (summary path) and sampling (temperature 1, logits path), on a
tiny random DiffusionLM (hidden 256, 4 layers) with a 256-token generation window, it
reports per step: the model forward time, and the time spent outside the model (policy
math, summaries, host/device transfers), as a fraction of the forward.

Two loops are timed: the torch-free runtime over `TorchBackend` (numpy policy, summaries
computed by torch), and `generate_torch` (everything on the device). `--vocab N` also
times the numpy policy alone against fixed random logits with a realistic vocabulary
(e.g. 126464 for LLaDA), where the per-step cost of sampling grows with V.

    python benchmarks/bench_policy.py [--steps 32] [--batch 1] [--vocab 126464]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

from faircalib_export.decoding import TorchBackend, generate_torch
from faircalib_export.models.loading import load_model
from faircalib_export.models.tiny import write_tiny_checkpoint
from faircalib_runtime import DreamConfig, FunctionBackend, LLaDAConfig, generate


class TimedModel(torch.nn.Module):
    """Wraps a model and accumulates the wall time of its forward calls."""

    def __init__(self, model):
        super().__init__()
        self.model, self.seconds, self.calls = model, 0.0, 0

    def forward(self, *args, **kwargs):
        t0 = time.perf_counter()
        out = self.model(*args, **kwargs)
        if out.is_cuda:
            torch.cuda.synchronize()
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return out


def policy_configs(family_cfg, gen_length: int, steps: int):
    ids = dict(mask_id=family_cfg.mask_token_id, eos_ids=[family_cfg.eos_token_id], seed=0)
    llada = dict(gen_length=gen_length, block_length=32, steps=steps, **ids)
    dream = dict(max_new_tokens=gen_length, steps=steps, alg="entropy", **ids)
    return {
        "LLaDA greedy": LLaDAConfig(**llada),
        "LLaDA T=1": LLaDAConfig(temperature=1.0, **llada),
        "Dream greedy": DreamConfig(**dream),
        "Dream T=1": DreamConfig(temperature=1.0, **dream),
    }


def run(label, fn, timed: TimedModel, repeats: int) -> tuple[float, float]:
    """Best of `repeats` runs (after a warm-up): forward and non-forward seconds per step."""
    fn()
    fwd = other = float("inf")
    for _ in range(repeats):
        timed.seconds, timed.calls = 0.0, 0
        t0 = time.perf_counter()
        fn()
        total = time.perf_counter() - t0
        fwd = min(fwd, timed.seconds / timed.calls)
        other = min(other, (total - timed.seconds) / timed.calls)
    print(f"  {label:<28} forward {fwd * 1e3:7.2f} ms/step   policy+loop {other * 1e3:6.2f} "
          f"ms/step = {100 * other / fwd:5.1f}% of forward")
    return fwd, other


def bench_tiny(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for family in ("llada", "dream"):
            path = write_tiny_checkpoint(Path(tmp) / family, family, hidden_size=256,
                                         num_layers=4, num_heads=4)
            model = load_model(path, device=args.device)
            timed = TimedModel(model)
            cfg_m = model.cfg
            print(f"{family}: vocab {cfg_m.vocab_size}, params {model.num_parameters():,}, "
                  f"batch {args.batch}, prompt 32 + window {args.gen_length}, "
                  f"{args.steps} steps, device {args.device}")
            prompts = [[(7 * i + j) % 200 + 1 for j in range(32)] for i in range(args.batch)]
            for name, cfg in policy_configs(cfg_m, args.gen_length, args.steps).items():
                if not name.lower().startswith(family):
                    continue
                run(f"{name} numpy loop", partial(generate, TorchBackend(timed), prompts, cfg),
                    timed, args.repeats)
                run(f"{name} generate_torch", partial(generate_torch, timed, prompts, cfg),
                    timed, args.repeats)


class FixedLogits(FunctionBackend):
    """The same logits every step, like an ONNX session that only returns logits."""

    def __init__(self, logits: np.ndarray):
        super().__init__(lambda x, m, p: logits)
        self.calls = 0

    def forward(self, *args):
        self.calls += 1
        return super().forward(*args)


def bench_vocab(args) -> None:
    """The numpy policy alone, against fixed logits with a realistic vocabulary."""
    s = 32 + args.gen_length
    logits = np.random.default_rng(0).standard_normal((args.batch, s, args.vocab),
                                                      dtype=np.float32) * 3
    fake = type("C", (), dict(mask_token_id=args.vocab - 1, eos_token_id=0))
    print(f"numpy policy only, fixed logits, vocab {args.vocab}, batch {args.batch}:")
    prompts = [[1] * 32] * args.batch
    for name, cfg in policy_configs(fake, args.gen_length, args.steps).items():
        backend = FixedLogits(logits)
        t0 = time.perf_counter()
        generate(backend, prompts, cfg)
        per_step = (time.perf_counter() - t0) / backend.calls
        print(f"  {name:<28} {per_step * 1e3:8.2f} ms/step (greedy: summaries on the host)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gen-length", type=int, default=256)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2, help="best of N timed runs")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (1 keeps timings stable on a shared machine)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--vocab", type=int, default=0,
                    help="also time the numpy policy alone at this vocabulary size")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bench_tiny(args)
    if args.vocab:
        bench_vocab(args)


if __name__ == "__main__":
    main()
