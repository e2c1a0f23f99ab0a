"""W4A4 GEMM kernel (runtimes/tensorrt) vs torch FP16 matmul (cuBLAS) at LLaDA-8B shapes.

For weights (out, in) in {(4096, 4096) q/k/v/o, (12288, 4096) gate/up, (4096, 12288) down}
and 256-4096 tokens: median time of the W4A4 GEMM (int4 activations x int4 weights ->
fp16 out, per-token x per-channel rescale) and of torch.matmul on fp16 operands, their
ratio, and the quantize kernel (Kronecker transform + per-token int4) of the site feeding
that GEMM. Before timing, every shape is checked bit for bit against an exact float32
reference computed with torch on the GPU (integer products and sums below 2^24 are exact).

Needs a CUDA GPU, torch with CUDA, and nvcc (the kernels' C ABI library is built on first
use into runtimes/tensorrt/build/, or taken from $FAIRCALIB_KERNELS_CAPI). Without a GPU it
prints why and exits 0.

    python benchmarks/bench_gemm_trt.py [--tokens 256 1024 4096] [--path auto|int4|int8|dp4a]
                                        [--iters 50] [--json results.json]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

RUNTIME = Path(__file__).resolve().parents[1] / "runtimes" / "tensorrt"
LIB_NAME = "libfaircalib_kernels_capi.so"
SHAPES = [(4096, 4096), (12288, 4096), (4096, 12288)]  # (out_features, in_features)
PATHS = {"auto": 0, "int4": 1, "int8": 2, "dp4a": 3}
PATH_NAMES = {1: "int4-mma", 2: "int8-mma", 3: "dp4a"}
FP16 = 1


def kernels_library(arch: str) -> ctypes.CDLL:
    explicit = os.environ.get("FAIRCALIB_KERNELS_CAPI")
    path = Path(explicit) if explicit else RUNTIME / "build" / LIB_NAME
    if not path.is_file():
        nvcc = shutil.which("nvcc")
        if nvcc is None:
            sys.exit(f"{path} is missing and nvcc is not installed to build it")
        path.parent.mkdir(parents=True, exist_ok=True)
        print(f"building {path} for {arch} ...", flush=True)
        subprocess.run([nvcc, "-std=c++17", "-O3", f"-arch={arch}", "-shared", "-Xcompiler",
                        "-fPIC", f"-I{RUNTIME / 'include'}", str(RUNTIME / "kernels/capi.cu"),
                        str(RUNTIME / "kernels/gemm.cu"), str(RUNTIME / "kernels/quantize.cu"),
                        "-o", str(path)], check=True)
    lib = ctypes.CDLL(str(path))
    lib.faircalib_gemm.argtypes = [ctypes.c_void_p] * 6 + [ctypes.c_int, ctypes.c_longlong,
                                                           ctypes.c_int, ctypes.c_int,
                                                           ctypes.c_int, ctypes.c_void_p]
    lib.faircalib_quantize.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_longlong,
                                       ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                       ctypes.c_void_p, ctypes.c_void_p, ctypes.c_float,
                                       ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    return lib


def unpack(words, k: int):
    """(rows, w) int32 packed int4 -> (rows, k) float32 codes, on the GPU."""
    import torch

    shifts = torch.arange(0, 32, 4, device=words.device, dtype=torch.int32)
    nibbles = (words.unsqueeze(-1) >> shifts) & 0xF  # (rows, w, 8)
    codes = torch.where(nibbles > 7, nibbles - 16, nibbles).reshape(words.shape[0], -1)
    return codes[:, :k].float()


def timed(fn, iters: int) -> float:
    """Median milliseconds of fn() over iters runs, timed with CUDA events."""
    import torch

    for _ in range(3):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def measure(lib, path: int, stream, gen, m: int, n: int, k: int, iters: int) -> dict:
    """Check one (tokens, out, in) shape bit for bit, then time it."""
    import torch

    from faircalib_export.quant.layout import kron_factors
    from faircalib_export.trt.reference import packed_words

    dev = torch.device("cuda")
    words = packed_words(k)
    w = torch.randint(-2**31, 2**31 - 1, (n, words), generator=gen, device=dev, dtype=torch.int32)
    w[:, k // 8:] = 0  # zero padding codes, as the exporter stores them
    w_scale = torch.rand(n, generator=gen, device=dev) * 0.02 + 1e-3
    a = torch.randint(-2**31, 2**31 - 1, (m, words), generator=gen, device=dev, dtype=torch.int32)
    a[:, k // 8:] = 0
    a_scale = torch.rand(m, generator=gen, device=dev) * 0.02 + 1e-3

    def w4a4(out, out_type):
        code = lib.faircalib_gemm(a.data_ptr(), a_scale.data_ptr(), w.data_ptr(),
                                  w_scale.data_ptr(), None, out.data_ptr(), out_type, m, n,
                                  words, path, stream)
        if code != 0:
            raise RuntimeError(f"faircalib_gemm failed with CUDA error {code}")

    out = torch.empty(m, n, device=dev)
    w4a4(out, 0)  # fp32 output: integer sums below 2^24 are exact in float32
    expect = (unpack(a, k) @ unpack(w, k).T * a_scale[:, None]) * w_scale[None, :]
    if not torch.equal(out, expect):
        sys.exit(f"MISMATCH at m={m} n={n} k={k}: {(out != expect).sum().item()} outputs differ")
    out16 = torch.empty(m, n, device=dev, dtype=torch.float16)
    t_w4a4 = timed(lambda: w4a4(out16, FP16), iters)
    x16 = torch.randn(m, k, generator=gen, device=dev, dtype=torch.float16)
    w16 = torch.randn(k, n, generator=gen, device=dev, dtype=torch.float16)
    t_fp16 = timed(lambda: torch.matmul(x16, w16), iters)

    n1, n2 = kron_factors(k)
    p1 = torch.randn(n1, n1, generator=gen, device=dev) / n1 ** 0.5
    p2t = torch.randn(n2, n2, generator=gen, device=dev) / n2 ** 0.5
    x32 = torch.randn(m, k, generator=gen, device=dev)
    codes = torch.empty(m, words, device=dev, dtype=torch.int32)
    scales = torch.empty(m, device=dev)

    def quantize():
        code = lib.faircalib_quantize(x32.data_ptr(), 0, m, k, n1, n2, p1.data_ptr(),
                                      p2t.data_ptr(), 0.9, codes.data_ptr(), scales.data_ptr(),
                                      stream)
        if code != 0:
            raise RuntimeError(f"faircalib_quantize failed with CUDA error {code}")

    t_quant = timed(quantize, iters)
    return {"tokens": m, "out_features": n, "in_features": k, "fp16_ms": t_fp16,
            "w4a4_ms": t_w4a4, "speedup": t_fp16 / t_w4a4,
            "w4a4_tops": 2 * m * n * k / (t_w4a4 * 1e-3) / 1e12, "quantize_ms": t_quant,
            "speedup_with_quantize": t_fp16 / (t_w4a4 + t_quant)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    parser.add_argument("--path", choices=list(PATHS), default="auto")
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    try:
        import torch
    except ImportError:
        print("torch is not installed: nothing to compare against; skipping")
        return
    if not torch.cuda.is_available():
        print("no CUDA GPU visible to torch: the W4A4 GEMM benchmark needs one; skipping")
        return
    torch.backends.cuda.matmul.allow_tf32 = False  # the exactness check needs true fp32 sums
    major, minor = torch.cuda.get_device_capability()
    lib = kernels_library(f"sm_{major}{minor}")
    path = PATHS[args.path] or lib.faircalib_gemm_path_for_device(torch.cuda.current_device())
    name = torch.cuda.get_device_name()
    print(f"device: {name} (sm_{major}{minor}), W4A4 GEMM path: {PATH_NAMES.get(path, path)}, "
          f"torch {torch.__version__}")
    stream = ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)
    gen = torch.Generator(device="cuda").manual_seed(0)
    rows = []
    header = (f"{'tokens':>6} {'out':>6} {'in':>6} | {'fp16 ms':>8} {'w4a4 ms':>8} "
              f"{'speedup':>7} {'w4a4 TOPS':>9} | {'quant ms':>8} {'total x':>7}")
    print(header)
    print("-" * len(header))
    for n, k in SHAPES:
        for m in args.tokens:
            row = measure(lib, path, stream, gen, m, n, k, args.iters)
            rows.append(row)
            print(f"{m:>6} {n:>6} {k:>6} | {row['fp16_ms']:>8.3f} {row['w4a4_ms']:>8.3f} "
                  f"{row['speedup']:>6.2f}x {row['w4a4_tops']:>9.1f} | "
                  f"{row['quantize_ms']:>8.3f} {row['speedup_with_quantize']:>6.2f}x", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"device": name, "capability": f"{major}.{minor}",
                                         "path": PATH_NAMES.get(path, path), "rows": rows},
                                        indent=1) + "\n")


if __name__ == "__main__":
    main()
