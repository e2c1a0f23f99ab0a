"""Fast decoding speed: the exact loop vs parallel commits, the KV cache, and both.

A random LLaDA-layout model (hidden 1024, 16 heads, SwiGLU 2816, --layers blocks, the
byte-level tokenizer of the tiny models) decodes --batch prompts of 128 tokens into a
256-token window in blocks of 32, greedy, with steps = window (one commit per step
in the exact loop, LLaDA's default shape). Every mode runs on the same backend and thread
count, one after the other in one process, after a warm-up:

    exact             the reference loop (a full forward per step)
    cached prefix     the policy's schedule, prompt + finished blocks from the cache
    cached dual       the policy's schedule, everything outside the block from the cache
    parallel tau      threshold commits, full forwards
    fast tau          threshold commits + dual cache

The fast modes decode the whole window like the exact loop (no per-sample stop at EOS),
so the ratios are the cache's and the threshold's alone; the "+stop" row adds the stop
(a sample leaves the batch once its text up to its first EOS is committed).

Backends: PyTorch FP32 eager (the unquantized checkpoint) and ONNX Runtime on the
W4A4-int export of an RTN W4A4 quantization of the same weights. A random model's
confidence depends on its init scale (--init-std), so steps per block under the threshold
rule are printed: they say how much parallelism the model allowed, not a quality figure.
Speed-ups are ratios to the exact loop of the same backend, measured in this run.

    python benchmarks/bench_fast_decode.py [--layers 4] [--batch 1] [--threads 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from faircalib_export.calibrate.artifact import run_calibration
from faircalib_export.calibrate.config import CalibConfig
from faircalib_export.export.onnx_export import ExportOptions, export_onnx
from faircalib_export.fold.fold import fold_artifact
from faircalib_export.models.tiny import write_tiny_checkpoint
from faircalib_export.opener import open_model
from faircalib_runtime import PolicyConfig, generate
from faircalib_runtime.fast import generate_fast
from faircalib_runtime.onnx import open_exported

PROMPT, WINDOW, BLOCK = 128, 256, 32


def modes(thresholds: list[float]) -> list[tuple[str, dict]]:
    out = [("exact", {"decode": "exact"}),
           ("cached prefix", {"decode": "cached", "cache": "prefix"}),
           ("cached dual", {"decode": "cached", "cache": "dual"})]
    for tau in thresholds:
        out.append((f"parallel {tau}", {"decode": "parallel", "threshold": tau}))
        out.append((f"fast {tau}", {"decode": "fast", "threshold": tau, "cache": "dual"}))
    out.append((f"fast {thresholds[0]} +stop", {"decode": "fast", "threshold": thresholds[0],
                                                "cache": "dual", "stop": True}))
    return out


def run_modes(name: str, backend, prompts, config, thresholds) -> None:
    backend.forward(np.asarray(prompts), None, None, "summary")  # warm-up
    print(f"\n{name}: {len(prompts)} x {PROMPT}-token prompts, window {WINDOW}, block {BLOCK}")
    print(f"{'mode':<16} {'seconds':>8} {'speed-up':>8} {'tok/s':>7} {'steps':>6} "
          f"{'positions':>10}  steps per block / agreement with exact")
    exact_time = exact_tokens = None
    for label, mode in modes(thresholds):
        stop = mode.pop("stop", False)
        run_config = PolicyConfig.from_dict({**config.to_dict(), **mode})
        start = time.perf_counter()
        if mode["decode"] == "exact":
            result = generate(backend, prompts, run_config)
        else:  # the whole window, as the exact loop decodes it, unless the row says +stop
            result = generate_fast(backend, prompts, run_config, stop_finished=stop)
        seconds = time.perf_counter() - start
        tokens = result.window
        if exact_time is None:
            exact_time, exact_tokens = seconds, tokens
        agree = float((tokens == exact_tokens).mean())
        per_block = getattr(result, "steps_per_block", None) or \
            [config.steps // (WINDOW // BLOCK)] * (WINDOW // BLOCK)
        computed = getattr(result, "positions_computed", None) or \
            result.steps_run * len(prompts) * (PROMPT + WINDOW)
        print(f"{label:<16} {seconds:8.2f} {exact_time / seconds:7.2f}x "
              f"{tokens.size / seconds:7.1f} {result.steps_run:6d} {computed:10d}  "
              f"{per_block} / {agree:.3f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--init-std", type=float, default=0.05)
    ap.add_argument("--thresholds", default="0.9,0.7")
    ap.add_argument("--skip-torch", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    thresholds = [float(t) for t in args.thresholds.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ck = write_tiny_checkpoint(tmp / "ck", "llada", hidden_size=1024,
                                   intermediate_size=2816, num_layers=args.layers,
                                   num_heads=16, max_position_embeddings=1024,
                                   init_std=args.init_std)
        opened = open_model(ck, "cpu")
        config = opened.policy(gen_length=WINDOW, steps=WINDOW, block_length=BLOCK)
        rng = np.random.default_rng(0)
        low, high = 3, opened.mask_id  # byte tokens, never the mask or a special
        prompts = [rng.integers(low, min(high, 259), PROMPT).tolist() for _ in range(args.batch)]
        params = sum(p.numel() for p in opened.model.parameters())
        print(f"model: random LLaDA layout, hidden 1024, {args.layers} layers, "
              f"{params / 1e6:.0f}M parameters, vocab {opened.vocab_size}; "
              f"{args.threads} threads")
        if not args.skip_torch:
            run_modes("PyTorch FP32", opened.backend(), prompts, config, thresholds)
        tokens = torch.randint(3, 259, (4, 64), generator=torch.Generator().manual_seed(0))
        cal = run_calibration(ck, tmp / "cal", CalibConfig(method="rtn"), tokens, None,
                              "random tokens")  # RTN needs no data beyond shapes
        folded = fold_artifact(cal, tmp / "fold")
        onnx_dir = export_onnx(folded, tmp / "onnx", ExportOptions(variant="w4a4-int"))
        exported = open_exported(onnx_dir, threads=args.threads)
        run_modes("ONNX Runtime W4A4-int", exported.session, prompts,
                  exported.policy(gen_length=WINDOW, steps=WINDOW, block_length=BLOCK),
                  thresholds)


if __name__ == "__main__":
    main()
