"""The W4A4 CUDA kernels run on the CPU emulator (runtimes/tensorrt/emulator), over ctypes.

`EmulatedKernels.quantize` / `.gemm` have the signatures of `trt.reference.quantize` /
`.gemm`, so the plugin-graph evaluator (trt_plugin_ops.py) can run either: the kernels'
source, launched through kernels/capi.cu's C ABI, or the numpy statement of their contract.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
from trt_env import RUNTIME_DIR

from faircalib_export.trt import reference

EMULATOR_DIR = RUNTIME_DIR / "emulator"
HARNESS = "faircalib_trt_harness_emu"
LIBRARY = "libfaircalib_kernels_emu.so"
DTYPE_CODES = {"float32": 0, "float16": 1, "bfloat16": 2}
H2D, D2H = 1, 2


def toolchain_missing() -> str | None:
    """Why the emulator cannot be built here, or None."""
    for tool in ("make", "g++"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


def build(build_dir: Path) -> Path:
    """Build the emulated harness and kernel library into build_dir (make, g++ only)."""
    result = subprocess.run(["make", "-C", str(EMULATOR_DIR), f"BUILD={build_dir}", "-j2"],
                            capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError("emulator build failed:\n"
                           + result.stdout[-3000:] + result.stderr[-3000:])
    return build_dir


class EmulatedKernels:
    def __init__(self, library: Path) -> None:
        lib = ctypes.CDLL(str(library))
        vp, i32, i64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_longlong
        lib.faircalib_gemm.argtypes = [vp] * 6 + [i32, i64, i32, i32, i32, vp]
        lib.faircalib_quantize.argtypes = [vp, i32, i64, i32, i32, i32, vp, vp, ctypes.c_float,
                                           vp, vp, vp]
        lib.cudaMalloc.argtypes = [ctypes.POINTER(vp), ctypes.c_size_t]
        lib.cudaMemcpy.argtypes = [vp, vp, ctypes.c_size_t, i32]
        lib.cudaFree.argtypes = [vp]
        lib.cudaGetErrorString.restype = ctypes.c_char_p
        self.lib = lib
        self._buffers: list[int] = []

    def _check(self, code: int, what: str) -> None:
        if code != 0:
            raise RuntimeError(f"{what}: {self.lib.cudaGetErrorString(code).decode()} ({code})")

    def _device(self, host: np.ndarray | None = None, nbytes: int = 0) -> int | None:
        """A cudaMalloc'd buffer (the kernels only read memory the runtime handed out)."""
        if host is None and nbytes == 0:
            return None
        ptr = ctypes.c_void_p()
        self._check(self.lib.cudaMalloc(ctypes.byref(ptr), max(nbytes, 1) if host is None
                                        else max(host.nbytes, 1)), "cudaMalloc")
        self._buffers.append(ptr.value)
        if host is not None:
            host = np.ascontiguousarray(host)
            self._check(self.lib.cudaMemcpy(ptr, host.ctypes.data, host.nbytes, H2D), "cudaMemcpy")
        return ptr.value

    def _download(self, ptr: int, shape: tuple, dtype) -> np.ndarray:
        out = np.empty(shape, dtype)
        self._check(self.lib.cudaMemcpy(out.ctypes.data, ptr, out.nbytes, D2H), "cudaMemcpy")
        return out

    def _free(self) -> None:
        for ptr in self._buffers:
            self.lib.cudaFree(ptr)
        self._buffers.clear()

    def quantize(self, x: np.ndarray, clip: float, p1: np.ndarray | None = None,
                 p2: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The FaircalibW4A4Quantize plugin's kernel: (rows, n) -> (words, scales (rows,))."""
        x = np.ascontiguousarray(x, np.float32)
        rows, dim = x.shape
        n1, n2 = (p1.shape[0], p2.shape[0]) if p1 is not None else (1, dim)
        words = reference.packed_words(dim)
        try:
            codes = self._device(nbytes=rows * words * 4)
            scales = self._device(nbytes=rows * 4)
            p2t = None if p2 is None else np.ascontiguousarray(np.asarray(p2, np.float32).T)
            self._check(self.lib.faircalib_quantize(
                self._device(x), DTYPE_CODES["float32"], rows, dim, n1, n2,
                None if p1 is None else self._device(np.asarray(p1, np.float32)),
                None if p2t is None else self._device(p2t), clip, codes, scales, None),
                "faircalib_quantize")
            return (self._download(codes, (rows, words), np.int32),
                    self._download(scales, (rows,), np.float32))
        finally:
            self._free()

    def gemm(self, a_words: np.ndarray, a_scales: np.ndarray, b_words: np.ndarray,
             b_scales: np.ndarray, k: int, bias: np.ndarray | None = None,
             out_dtype: str = "float32", path: int = 0) -> np.ndarray:
        """The FaircalibW4A4Gemm plugin's kernel; path 0 = the emulated device's own. k is
        implied by the packed widths (the kernel checks them); it keeps reference.gemm's
        signature."""
        m, words = a_words.shape
        n = b_words.shape[0]
        size = 4 if out_dtype == "float32" else 2
        try:
            out = self._device(nbytes=m * n * size)
            self._check(self.lib.faircalib_gemm(
                self._device(np.asarray(a_words, np.int32)),
                self._device(np.asarray(a_scales, np.float32)),
                self._device(np.asarray(b_words, np.int32)),
                self._device(np.asarray(b_scales, np.float32)),
                None if bias is None else self._device(np.asarray(bias, np.float32)), out,
                DTYPE_CODES[out_dtype], m, n, words, path, None), "faircalib_gemm")
            if out_dtype == "float32":
                return self._download(out, (m, n), np.float32)
            if out_dtype == "float16":
                return self._download(out, (m, n), np.float16)
            bits = self._download(out, (m, n), np.uint16).astype(np.uint32) << 16
            return bits.view(np.float32)  # bfloat16 as float32, like reference.round_output
        finally:
            self._free()
