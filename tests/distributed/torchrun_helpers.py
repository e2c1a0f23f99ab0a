"""Running the CLI under torchrun from a test (imported by name: its folder is on sys.path)."""

from __future__ import annotations

import os
import subprocess
import sys

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}


def torchrun_argv(*args: str, nproc: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc-per-node", str(nproc), "-m", "faircalib_export", *args]


def torchrun(*args: str, nproc: int = 2, expect: int = 0) -> subprocess.CompletedProcess:
    result = subprocess.run(torchrun_argv(*args, nproc=nproc), capture_output=True,
                            text=True, env=ENV, timeout=600)
    assert result.returncode == expect, result.stdout + result.stderr
    return result


def not_distributed() -> None:
    import torch.distributed as dist

    assert not dist.is_initialized(), "one process must not start torch.distributed"
