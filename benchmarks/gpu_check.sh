#!/usr/bin/env bash
# The GPU checks, as one script for a lent GPU machine: at most GPU_CHECK_BUDGET seconds
# (default 540, under the device tool's 600 s per command); every step has its own limit,
# cut to what is left of the budget, and the script goes on past a failed step.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]        # default: $OUT, else ./gpu_check_out
#
# Steps, in order of value:
#   1. device report: nvidia-smi, torch.cuda, nvcc, tensorrt, onnxruntime providers
#   2. the CUDA kernel harness (runtimes/tensorrt: GPU vs host, bit for bit)
#   3. pytest -m gpu, then -m tensorrt (engine build, TensorRT decode backend, exported vs
#      ONNX Runtime token agreement); they skip cleanly without TensorRT
#   4. benchmarks/bench_gemm_trt.py at the LLaDA-8B shapes (W4A4 GEMM vs FP16 cuBLAS)
#   5. benchmarks/bench_calib_cuda.py: calibrate --device cuda of a real-shape block vs plan
#   6. benchmarks/bench_serve.py --device cuda (needs onnxruntime-gpu), batched vs sequential
# Each step's output goes to OUT_DIR/<step>.log; OUT_DIR/summary.txt lists each step's exit
# status (0 ok, 124 timed out). The machine reaches no network: nothing is installed here.
set -u
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT_DIR="${1:-${OUT:-$ROOT/gpu_check_out}}"
mkdir -p "$OUT_DIR"
cd "$ROOT"
# the package and its runtime from this tree, installed or not (runtimes/ itself is not put
# on the path: its tensorrt/ folder would shadow the tensorrt package)
PYDIR="$(mktemp -d)"
ln -s "$ROOT/runtimes/faircalib_runtime" "$PYDIR/faircalib_runtime"
export PYTHONPATH="$ROOT:$PYDIR${PYTHONPATH:+:$PYTHONPATH}"
SUMMARY="$OUT_DIR/summary.txt"
BUDGET="${GPU_CHECK_BUDGET:-540}"
: > "$SUMMARY"

step() {  # step NAME SECONDS COMMAND...
    local name="$1" limit="$2"
    shift 2
    local left=$((BUDGET - SECONDS))
    if [ "$left" -lt 20 ]; then
        echo "== $name: skipped, ${left} s of the budget left" | tee -a "$SUMMARY"
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    local t0=$SECONDS
    echo "== $name (limit ${limit} s)" | tee -a "$SUMMARY"
    timeout --signal=TERM --kill-after=10 "$limit" "$@" > "$OUT_DIR/$name.log" 2>&1
    local rc=$?
    echo "   exit $rc after $((SECONDS - t0)) s" | tee -a "$SUMMARY"
    tail -n 15 "$OUT_DIR/$name.log" | sed 's/^/   | /' >> "$SUMMARY"
}

step device 30 bash -c '
    nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version --format=csv
    python -c "import torch; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, torch.cuda.is_available() and torch.cuda.get_device_name())"
    (command -v nvcc && nvcc --version | tail -n 2) || echo "nvcc: not found"
    python -c "import tensorrt; print(\"tensorrt\", tensorrt.__version__)" || echo "tensorrt: not importable"
    python -c "import onnxruntime as o; print(\"onnxruntime\", o.__version__, o.get_available_providers())"
'
step harness 150 bash -c '
    cmake -S runtimes/tensorrt -B runtimes/tensorrt/build -DFAIRCALIB_CUDA_ARCHS=90 \
        -DFAIRCALIB_BUILD_PLUGINS=AUTO &&
    cmake --build runtimes/tensorrt/build -j "$(nproc)" &&
    runtimes/tensorrt/build/faircalib_trt_harness
'
step pytest-gpu 90 python -m pytest -q -m gpu -p no:cacheprovider
step pytest-tensorrt 120 python -m pytest -q -m tensorrt -p no:cacheprovider
step gemm 90 python benchmarks/bench_gemm_trt.py --tokens 256 1024 --iters 20 \
    --json "$OUT_DIR/gemm.json"
step calibrate-cuda 120 python benchmarks/bench_calib_cuda.py --family llada --layers 1 \
    --samples 8 --seq-len 512
step serve-cuda 90 python benchmarks/bench_serve.py --device cuda --variant w4a4 \
    --requests 32 --clients 1 16
echo "done: $SUMMARY"
