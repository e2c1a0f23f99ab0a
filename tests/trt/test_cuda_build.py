"""The CUDA sources compile (compile-only; nothing runs without a GPU).

Default suite: the kernels, the C ABI and the harness for one architecture (sm_89), with
ptxas reporting no register spills. `slow`: every shipped architecture (sm_80, 86, 89, 90),
the TensorRT plugins when NvInfer.h is available (TENSORRT_INCLUDE_DIR / TENSORRT_ROOT or the
system paths), and the CMake build.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from trt_env import RUNTIME_DIR, tensorrt_include

SOURCES = ["kernels/quantize.cu", "kernels/gemm.cu", "kernels/capi.cu", "tests/harness.cu"]
ARCHS = ["80", "86", "89", "90"]
FLAGS = ["-std=c++17", "-O3", f"-I{RUNTIME_DIR / 'include'}", "-Xcompiler", "-ffp-contract=off"]


def _nvcc(nvcc: str, args: list[str], cwd: Path, timeout: int = 600) -> str:
    result = subprocess.run([nvcc, *args], cwd=cwd, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def _gencode(arch: str) -> list[str]:
    return ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]


def test_kernels_compile_for_sm89(nvcc, tmp_path):
    log = _nvcc(nvcc, [*FLAGS, *_gencode("89"), "-Xptxas", "-v", "-c",
                       *[str(RUNTIME_DIR / s) for s in SOURCES], "--output-directory",
                       str(tmp_path)], tmp_path)
    assert sorted(p.name for p in tmp_path.glob("*.o")) == [
        "capi.o", "gemm.o", "harness.o", "quantize.o"]
    spills = [int(n) for n in re.findall(r"(\d+) bytes spill stores", log)]
    assert spills and not any(spills), "a kernel spills registers to local memory"


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_kernels_compile_for_every_arch(nvcc, tmp_path, arch):
    _nvcc(nvcc, [*FLAGS, *_gencode(arch), "-c", *[str(RUNTIME_DIR / s) for s in SOURCES[:3]],
                 "--output-directory", str(tmp_path)], tmp_path)


@pytest.mark.slow
def test_plugins_compile_and_export_entry_points(nvcc, tmp_path):
    include = tensorrt_include()
    if include is None:
        pytest.skip("NvInfer.h not found (set TENSORRT_INCLUDE_DIR or TENSORRT_ROOT)")
    lib = tmp_path / "libfaircalib_trt_plugins.so"
    plugins = sorted(str(p) for p in (RUNTIME_DIR / "plugins").glob("*.cpp"))
    _nvcc(nvcc, [*FLAGS, *_gencode("89"), "-Xcompiler", "-fPIC,-fvisibility=hidden",
                 "-isystem", str(include), "-shared", "-o", str(lib),
                 str(RUNTIME_DIR / "kernels/quantize.cu"), str(RUNTIME_DIR / "kernels/gemm.cu"),
                 *plugins, "-Xlinker", "--no-undefined"], tmp_path)
    if shutil.which("nm"):
        symbols = subprocess.run(["nm", "-D", "--defined-only", str(lib)], capture_output=True,
                                 text=True).stdout
        assert " getCreators" in symbols and " setLoggerFinder" in symbols


@pytest.mark.slow
def test_cmake_build(nvcc, tmp_path):
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed")
    build = tmp_path / "build"
    configure = ["cmake", "-S", str(RUNTIME_DIR), "-B", str(build),
                 f"-DCMAKE_CUDA_COMPILER={nvcc}", "-DCMAKE_CUDA_ARCHITECTURES=89"]
    include = tensorrt_include()
    if include is not None:
        configure.append(f"-DTENSORRT_INCLUDE_DIR={include}")
    for cmd in (configure, ["cmake", "--build", str(build), "-j2"]):
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert (build / "faircalib_trt_harness").is_file()
    assert (build / "libfaircalib_kernels_capi.so").is_file()
    assert (build / "libfaircalib_trt_plugins.so").is_file() == (include is not None)
