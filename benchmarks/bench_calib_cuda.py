"""Stage II on a GPU at the real shapes: `calibrate --device cuda` of real-shape blocks.

Writes a random bf16 checkpoint with LLaDA-8B's (or Dream-7B's) exact config and
--layers layers (bench_real_scale.make_checkpoint), calibrates it with flatquant for one
epoch on --samples x --seq-len random tokens with CalibConfig(device="cuda"), and prints
wall time and the CUDA allocator's peak next to `plan`'s Stage II device peak
(calibrate.memory.calibration_plan) for the same settings, with the device's name.

Needs torch with CUDA; without a GPU it says so and exits 0.

    python benchmarks/bench_calib_cuda.py [--family llada|dream] [--layers 1]
                                          [--samples 8] [--seq-len 512] [--batch 4]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

GIB = 1 << 30


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", default="llada", choices=["llada", "dream"])
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch", type=int, default=4)
    args = ap.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("bench_calib_cuda: no CUDA device here; nothing measured")
        return 0
    from bench_real_scale import MODELS, make_checkpoint

    from faircalib_export.calibrate.artifact import inspect_checkpoint, run_calibration
    from faircalib_export.calibrate.config import CalibConfig
    from faircalib_export.calibrate.memory import calibration_plan

    with tempfile.TemporaryDirectory() as tmp:
        ck, out = Path(tmp) / "ck", Path(tmp) / "cal"
        make_checkpoint(args.family, args.layers, str(ck))
        cfg = inspect_checkpoint(ck).cfg
        calib = CalibConfig(method="flatquant", epochs=1, device="cuda",
                            batch_size=args.batch)
        plan = calibration_plan(cfg, samples=args.samples, seq_len=args.seq_len,
                                batch=args.batch, spec=calib.spec())
        tokens = torch.randint(0, min(cfg.vocab_size, 32000), (args.samples, args.seq_len))
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        run_calibration(ck, out, calib, tokens, None, "random")
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated() / GIB
        reserved = torch.cuda.max_memory_reserved() / GIB
    name = torch.cuda.get_device_name()
    print(f"calibrate --device cuda, flatquant 1 epoch, {MODELS[args.family]} shapes, "
          f"{args.layers} layer(s), {args.samples} x {args.seq_len} tokens, batch {args.batch}, "
          f"on {name}:")
    print(f"  wall {wall:.1f} s ({wall / args.layers:.1f} s per block)")
    print(f"  CUDA peak allocated {peak:.2f} GiB, reserved {reserved:.2f} GiB; plan's Stage II "
          f"device peak {plan['device_peak']:.2f} GiB (allocated / plan "
          f"{peak / plan['device_peak']:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
