"""What this machine offers for the CUDA / TensorRT tests (nvcc, a GPU and its arch)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

RUNTIME_DIR = Path(__file__).resolve().parents[2] / "runtimes" / "tensorrt"


def nvcc_path() -> str | None:
    return shutil.which("nvcc") or next(
        (p for p in ("/usr/local/cuda/bin/nvcc",) if os.access(p, os.X_OK)), None)


def gpu_available() -> bool:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    out = subprocess.run([smi, "-L"], capture_output=True, text=True)
    return out.returncode == 0 and "GPU" in out.stdout


def gpu_arch() -> str | None:
    """sm_XY of the first GPU, from nvidia-smi."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    out = subprocess.run([smi, "--query-gpu=compute_cap", "--format=csv,noheader"],
                         capture_output=True, text=True)
    if out.returncode != 0 or not out.stdout.strip():
        return None
    return "sm_" + out.stdout.splitlines()[0].strip().replace(".", "")


def tensorrt_include() -> Path | None:
    """A directory holding TensorRT's NvInfer.h (TENSORRT_INCLUDE_DIR, TENSORRT_ROOT/include
    or the system paths), or None."""
    candidates = [os.environ.get("TENSORRT_INCLUDE_DIR"),
                  os.environ.get("TENSORRT_ROOT") and os.environ["TENSORRT_ROOT"] + "/include",
                  "/usr/include/x86_64-linux-gnu", "/usr/local/TensorRT/include"]
    for c in candidates:
        if c and (Path(c) / "NvInfer.h").is_file():
            return Path(c)
    return None
