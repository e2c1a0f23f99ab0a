"""A minimal CUDA runtime binding over ctypes (no torch, no cuda-python).

The TensorRT backend needs device buffers, a stream and host <-> device copies; the engine
builder needs the device's compute capability. libcudart is found through
`$FAIRCALIB_CUDART`, the loader's search path, or the NVIDIA pip wheels that tensorrt pulls
in. Every failing call raises `TensorRTUnavailableError` naming the call.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import sys
from pathlib import Path

from .errors import TensorRTUnavailableError

H2D, D2H = 1, 2  # cudaMemcpyKind
ATTR_CC_MAJOR, ATTR_CC_MINOR = 75, 76  # cudaDevAttrComputeCapabilityMajor / Minor
_NAMES = ("libcudart.so", "libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0")


def _candidates() -> list[str]:
    out = [os.environ["FAIRCALIB_CUDART"]] if os.environ.get("FAIRCALIB_CUDART") else []
    found = ctypes.util.find_library("cudart")
    out += [found] if found else []
    out += list(_NAMES)
    for site in sys.path:  # nvidia-cuda-runtime-cu1x wheels
        out += sorted(glob.glob(str(Path(site) / "nvidia" / "cu*" / "lib" / "libcudart.so*")))
        out += sorted(glob.glob(str(Path(site) / "nvidia" / "cuda_runtime" / "lib" /
                                    "libcudart.so*")))
    return out


class CudaRuntime:
    def __init__(self) -> None:
        errors = []
        for name in _candidates():
            try:
                self.lib = ctypes.CDLL(name)
                break
            except OSError as err:
                errors.append(f"{name}: {err}")
        else:
            raise TensorRTUnavailableError(
                "cannot load the CUDA runtime (libcudart); set FAIRCALIB_CUDART to its path "
                f"(tried: {'; '.join(errors[:4])})")
        self.lib.cudaGetErrorString.restype = ctypes.c_char_p

    def _check(self, code: int, what: str) -> None:
        if code != 0:
            message = self.lib.cudaGetErrorString(code).decode()
            raise TensorRTUnavailableError(f"CUDA call {what} failed: {message} (error {code})")

    def device_count(self) -> int:
        n = ctypes.c_int(0)
        code = self.lib.cudaGetDeviceCount(ctypes.byref(n))
        return n.value if code == 0 else 0

    def set_device(self, device: int) -> None:
        self._check(self.lib.cudaSetDevice(ctypes.c_int(device)), "cudaSetDevice")

    def capability(self, device: int = 0) -> tuple[int, int]:
        major, minor = ctypes.c_int(0), ctypes.c_int(0)
        self._check(self.lib.cudaDeviceGetAttribute(ctypes.byref(major), ATTR_CC_MAJOR, device),
                    "cudaDeviceGetAttribute")
        self._check(self.lib.cudaDeviceGetAttribute(ctypes.byref(minor), ATTR_CC_MINOR, device),
                    "cudaDeviceGetAttribute")
        return major.value, minor.value

    def mem_info(self) -> tuple[int, int]:
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        self._check(self.lib.cudaMemGetInfo(ctypes.byref(free), ctypes.byref(total)),
                    "cudaMemGetInfo")
        return free.value, total.value

    def malloc(self, nbytes: int) -> int:
        ptr = ctypes.c_void_p(0)
        self._check(self.lib.cudaMalloc(ctypes.byref(ptr), ctypes.c_size_t(max(nbytes, 1))),
                    f"cudaMalloc({nbytes})")
        return ptr.value

    def free(self, ptr: int) -> None:
        if ptr:
            self.lib.cudaFree(ctypes.c_void_p(ptr))

    def stream(self) -> int:
        s = ctypes.c_void_p(0)
        self._check(self.lib.cudaStreamCreate(ctypes.byref(s)), "cudaStreamCreate")
        return s.value or 0

    def copy(self, dst: int, src: int, nbytes: int, kind: int, stream: int) -> None:
        self._check(self.lib.cudaMemcpyAsync(ctypes.c_void_p(dst), ctypes.c_void_p(src),
                                             ctypes.c_size_t(nbytes), kind,
                                             ctypes.c_void_p(stream)), "cudaMemcpyAsync")

    def synchronize(self, stream: int) -> None:
        self._check(self.lib.cudaStreamSynchronize(ctypes.c_void_p(stream)),
                    "cudaStreamSynchronize")
