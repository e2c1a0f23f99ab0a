"""Runtime tests use tiny tensors: one torch thread avoids OpenMP spin-waits that make
them slow on a loaded machine. The previous setting is restored after each test."""

from __future__ import annotations

import sys

import pytest


@pytest.fixture(autouse=True)
def _one_torch_thread():
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
