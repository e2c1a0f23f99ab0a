"""Every benchmark, one after the other, each printing its own figures.

    python benchmarks/run_all.py [--quick] [--gpu]

CPU benchmarks: calibration time and peak memory per method, Stage II memory scaling and
the 7-8B plans, checkpoint loading memory, deployment size and decode throughput
(PyTorch FP32, ONNX W4A4, ONNX weight-only), policy overhead, probing cost, fast decoding
(speed per mode; accuracy vs threshold on the shipped models), ONNX graph costs, eval
throughput of 1 vs 2 processes under torchrun. `--gpu` adds
the int4 GEMM kernels (needs CUDA and the built kernels). `--quick` runs one shipped model
and fewer methods. Each runs in its own process; a failure is reported and the rest go on.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def jobs(quick: bool, gpu: bool) -> list[list[str]]:
    methods = "rtn,flatquant" if quick else "rtn,quarot,flatquant,fair-calib,qdrop"
    out = [["bench_calib_methods.py", "--methods", methods],
           ["bench_calib_memory.py"],
           ["bench_load_memory.py"],
           ["bench_export.py"] + (["--model", "llada-chain"] if quick else []),
           ["bench_policy.py"],
           ["bench_probe.py"],
           ["bench_build_recipe.py"] + (["--recipes", "2x32"] if quick else []),
           ["bench_fast_decode.py"] + (["--layers", "2"] if quick else []),
           ["bench_fast_accuracy.py"] + (["--limit", "100", "--models", "llada-chain"]
                                         if quick else []),
           ["bench_ort_costs.py"],
           ["bench_distributed.py"] + (["--limit", "256"] if quick else [])]
    if gpu:
        out.append(["bench_gemm_trt.py"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--gpu", action="store_true")
    args = ap.parse_args()
    failed = []
    for job in jobs(args.quick, args.gpu):
        print(f"\n#### {' '.join(job)}", flush=True)
        start = time.perf_counter()
        rc = subprocess.run([sys.executable, str(HERE / job[0]), *job[1:]]).returncode
        print(f"#### {job[0]}: exit {rc}, {time.perf_counter() - start:.0f} s", flush=True)
        if rc:
            failed.append(job[0])
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
        sys.exit(1)


if __name__ == "__main__":
    main()
