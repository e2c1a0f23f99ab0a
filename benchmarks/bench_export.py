"""Deployment size and CPU decode speed: FP checkpoint vs exported W4A4 ONNX.

For each model: quantize with the method's graph (default flatquant with its online
Kronecker transforms, untrained: size and speed do not depend on the learned values), fold,
export the W4A4 and weight-only graphs, then print
  - int4 block weights (codes + per-channel scales) vs the FP16 block weights (target
    <= 0.3x), the online transform matrices apart, and whole-model sizes including the
    optional int8 embedding + int4 head;
  - greedy decode throughput of the PyTorch eager FP32 reference loop and of ONNX
    Runtime (W4A4 Q/DQ, W4A4 integer GEMMs, weight-only) on CPU, same prompts, policy,
    steps and thread count, one run each after a warm-up (target: W4A4 ONNX >= 2x the
    PyTorch loop).

    python benchmarks/bench_export.py [--model llada-chain --model dream-chain]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import onnx
import torch

from faircalib_export.calibrate.artifact import run_calibration
from faircalib_export.calibrate.config import CalibConfig
from faircalib_export.export.onnx_export import ExportOptions, export_onnx
from faircalib_export.fold.fold import fold_artifact
from faircalib_export.models.builtin import resolve_model, shipped_models
from faircalib_export.opener import open_model
from faircalib_runtime import generate
from faircalib_runtime.onnx import open_exported

PROMPTS = ["start 12 then +3 then -5", "start 40 then -7", "start 3 then +9 then +1 then -2",
           "start 77 then -20 then +4", "What is the sum of 5 and 8?", "start 9 then +9"]


def onnx_block_bytes(path: Path) -> tuple[int, int]:
    """(int4 weight codes + scales, online transform matrices) bytes of the graph."""
    model = onnx.load(str(path / "model.onnx"))
    weights = transforms = 0
    for t in model.graph.initializer:
        size = len(t.raw_data) or onnx.numpy_helper.to_array(t).nbytes
        if t.name.startswith("blocks.") and (".qweight_t" in t.name or t.name.endswith(".scale")
                                              or ".nbits" in t.name):
            weights += size
        elif t.name.startswith("blocks.") and (".p1" in t.name or ".p2_t" in t.name):
            transforms += size
    return weights, transforms


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir()
               if f.name.startswith("model.onnx"))


def decode_time(backend, opened, prompts, config, repeats: int = 2) -> float:
    ids = [opened.text_decoder(True).encode(p) for p in prompts]
    generate(backend, ids[:1], config)  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        generate(backend, ids, config)
    return (time.perf_counter() - start) / repeats


def bench(name: str, tmp: Path, method: str) -> None:
    path = resolve_model(name)
    fp = open_model(path)
    cfg = fp.cfg
    block_params = sum(p.numel() for b in fp.model.blocks for n, p in b.named_parameters()
                       if "norm" not in n and "bias" not in n)
    all_params = sum(p.numel() for p in fp.model.parameters())
    tokens = torch.randint(0, cfg.vocab_size - 16, (8, 64), generator=torch.Generator()
                           .manual_seed(0))
    art = run_calibration(path, tmp / f"{name}-{method}", CalibConfig(method=method, epochs=0),
                          tokens, None, "random tokens")
    deploy = fold_artifact(art, tmp / f"{name}-deploy")
    small = fold_artifact(art, tmp / f"{name}-deploy-small", embed_bits=8, head_bits=4)
    w4a4 = export_onnx(deploy, tmp / f"{name}-w4a4")
    w4a4_small = export_onnx(small, tmp / f"{name}-w4a4-small")
    w4a4_int = export_onnx(deploy, tmp / f"{name}-w4a4-int", ExportOptions(variant="w4a4-int"))
    nbits = export_onnx(deploy, tmp / f"{name}-wo", ExportOptions(variant="weight-only"))

    weights, transforms = onnx_block_bytes(w4a4)
    print(f"\n== {name} ({method} graph): {cfg.family}, hidden {cfg.hidden_size}, intermediate "
          f"{cfg.intermediate_size}, {cfg.num_layers} layers, {all_params:,} parameters")
    print(f"block weights: FP16 {2 * block_params:,} B -> int4 + scales {weights:,} B "
          f"= {weights / (2 * block_params):.3f}x (target <= 0.3); online transforms "
          f"{transforms:,} B")
    fp16_total = 2 * all_params
    for label, d in (("W4A4, fp16 embed/head", w4a4), ("W4A4, int8 embed + int4 head",
                                                         w4a4_small)):
        size = dir_bytes(d)
        print(f"whole model {label}: {size:,} B, {fp16_total / size:.2f}x smaller than FP16 "
              f"({fp16_total:,} B)")

    config = fp.policy()
    print(f"decode: {len(PROMPTS)} prompts, {config.to_dict()['policy']} "
          f"{config.window} tokens in {config.steps} steps, greedy, CPU "
          f"({torch.get_num_threads()} threads for PyTorch and ONNX Runtime)")
    t_torch = decode_time(fp.backend(), fp, PROMPTS, config)
    results = {"PyTorch eager FP32": t_torch}
    for label, d in (("ONNX Runtime W4A4 Q/DQ", w4a4), ("ONNX Runtime W4A4 int GEMM", w4a4_int),
                     ("ONNX Runtime weight-only", nbits)):
        exported = open_exported(d, threads=torch.get_num_threads())  # same threads
        results[label] = decode_time(exported.backend(), exported, PROMPTS, config)
    n_tokens = len(PROMPTS) * config.window
    for label, seconds in results.items():
        print(f"  {label:<26} {seconds:7.3f} s  {n_tokens / seconds:8.1f} tok/s  "
              f"speed-up vs PyTorch {t_torch / seconds:5.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", action="append",
                        help="checkpoint or built-in name (default: the shipped models)")
    parser.add_argument("--method", default="flatquant", choices=["rtn", "quarot", "flatquant"],
                        help="quantization graph (flatquant: online transforms at 4 sites)")
    args = parser.parse_args()
    models = args.model or shipped_models() or ["tiny-llada", "tiny-dream"]
    with tempfile.TemporaryDirectory() as tmp:
        for name in models:
            bench(name, Path(tmp), args.method)


if __name__ == "__main__":
    main()
