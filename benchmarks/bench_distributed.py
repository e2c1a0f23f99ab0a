"""Data-parallel eval: throughput of 1 process vs N processes under torchrun (gloo, CPU).

Runs `faircalib-export eval MODEL` once as one process and once under
`torchrun --standalone --nproc-per-node N`, every process pinned to one thread
(OMP_NUM_THREADS=1), and prints problems per second of each and their ratio. Two
throughputs are shown: of the scoring loop (`time_s` in the result, rank 0's time up to
the gather, so the slowest rank's) and of the whole command (interpreter start, model
load and torchrun's rendezvous included). The two runs must give the same result.

    python benchmarks/bench_distributed.py [--model llada-chain] [--limit 512]
        [--batch-size 32] [--nproc 2]

On N free cores the loop's ratio approaches N (batches are the unit of work, so use at
least a few batches per process); the machine's load during the run is printed, as other
processes on the cores lower the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(argv: list[str], env: dict) -> float:
    start = time.perf_counter()
    result = subprocess.run(argv, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed:\n{result.stdout}{result.stderr}")
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llada-chain")
    ap.add_argument("--limit", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--nproc", type=int, default=2)
    args = ap.parse_args()

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    eval_args = ["eval", args.model, "--limit", str(args.limit), "--batch-size",
                 str(args.batch_size)]
    print(f"eval {args.model}: {args.limit} problems in batches of {args.batch_size}, one "
          f"thread per process, {os.cpu_count()} cores, load average before "
          f"{os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        single, multi = Path(tmp) / "single.json", Path(tmp) / "multi.json"
        wall_1 = run([sys.executable, "-m", "faircalib_export", *eval_args, "-o", str(single)],
                     env)
        wall_n = run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                      "--nproc-per-node", str(args.nproc), "-m", "faircalib_export",
                      *eval_args, "-o", str(multi)], env)
        one, many = json.loads(single.read_text()), json.loads(multi.read_text())
    loop_1, loop_n = one.pop("time_s"), many.pop("time_s")
    same = one == many
    print(f"load average after {os.getloadavg()[0]:.2f}; results identical: {same}")
    print(f"{'':>14} {'1 process':>12} {f'{args.nproc} processes':>12} {'ratio':>7}")
    for what, t1, tn in (("scoring loop", loop_1, loop_n), ("whole command", wall_1, wall_n)):
        print(f"{what:>14} {args.limit / t1:>9.1f}/s {args.limit / tn:>9.1f}/s "
              f"{t1 / tn:>6.2f}x")
    if not same:
        sys.exit("the N-process result differs from the single-process result")


if __name__ == "__main__":
    main()
