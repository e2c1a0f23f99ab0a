"""Calibration cost per method: wall time and peak RSS of a full `calibrate` run.

Each method calibrates the same model with its defaults (the model's recipe,
`faircalib_export/calibrate/config.py`) in a fresh process, so the peak resident memory is that
run's alone. fair-calib includes its Stage I probing (reported apart as `probe`).

    python benchmarks/bench_calib_methods.py [--model llada-chain] [--methods rtn,...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys, time
from pathlib import Path
from faircalib_export.calibrate.entry import calibrate_checkpoint
from faircalib_export.calibrate.config import CalibConfig
from faircalib_export.probe.artifact import run_probe
model, method, out, threads = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
import torch
torch.set_num_threads(threads)
probe_s = 0.0
prior = None
if method in ("fair-calib", "qdrop-weighted"):
    start = time.perf_counter()
    prior = out.parent / f"{out.name}.prior"
    run_probe(model, None, prior)
    probe_s = time.perf_counter() - start
start = time.perf_counter()
calibrate_checkpoint(model, out, CalibConfig(method=method), prior=prior)
calib_s = time.perf_counter() - start
hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"probe_s": probe_s, "calib_s": calib_s,
                  "peak_rss": int(hwm.split()[1]) * 1024}))
"""


def measure(model: str, method: str, tmp: Path, threads: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, model, method, str(tmp / method),
                          str(threads)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llada-chain")
    ap.add_argument("--methods", default="rtn,quarot,flatquant,fair-calib,qdrop")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    print(f"calibration cost on {args.model} (defaults, {args.threads} torch thread(s), "
          f"CPU, one run each)")
    print(f"  {'method':<12} {'probe s':>8} {'calib s':>8} {'peak RSS MiB':>13}")
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods.split(","):
            r = measure(args.model, method, Path(tmp), args.threads)
            print(f"  {method:<12} {r['probe_s']:8.1f} {r['calib_s']:8.1f} "
                  f"{r['peak_rss'] / 2**20:13.0f}", flush=True)


if __name__ == "__main__":
    main()
