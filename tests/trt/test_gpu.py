"""On a machine with a GPU: build the harness for that GPU and require bit-exact kernels.

Marked `gpu` (deselected by default; run with `-m gpu`). Skips cleanly without nvcc or a GPU.
"""

from __future__ import annotations

import subprocess

import pytest
from trt_env import RUNTIME_DIR, gpu_arch, gpu_available, nvcc_path

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    nvcc = nvcc_path()
    if nvcc is None:
        pytest.skip("nvcc is not installed")
    if not gpu_available():
        pytest.skip("no CUDA GPU")
    arch = gpu_arch() or "sm_80"
    exe = tmp_path_factory.mktemp("harness") / "faircalib_trt_harness"
    sources = [RUNTIME_DIR / p for p in ("tests/harness.cu", "kernels/quantize.cu",
                                         "kernels/gemm.cu")]
    result = subprocess.run(
        [nvcc, "-std=c++17", "-O2", f"-I{RUNTIME_DIR / 'include'}", "-Xcompiler",
         "-ffp-contract=off", f"-arch={arch}", *map(str, sources), "-o", str(exe)],
        capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    return exe


def test_kernels_are_bit_exact(harness):
    result = subprocess.run([str(harness)], capture_output=True, text=True, timeout=1800)
    print(result.stdout)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr
    assert " 0 failed" in result.stdout
