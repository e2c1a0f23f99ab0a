"""Shared fixtures: tiny checkpoints in the real layouts, made once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from faircalib_export.models.tiny import write_tiny_checkpoint

# Odd sizes on purpose: hidden 224 with 7 heads (head dim 32) and 1 KV head for Dream.
DREAM_ODD = dict(hidden_size=224, intermediate_size=608, num_layers=2, num_heads=7, num_kv_heads=1)
LLADA_SMALL = dict(hidden_size=96, intermediate_size=288, num_layers=2, num_heads=3)


@pytest.fixture(scope="session")
def llada_dir(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ck") / "llada", "llada", shards=3,
                                 init_std=0.2, **LLADA_SMALL)


@pytest.fixture(scope="session")
def llada_single_dir(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ck") / "llada1", "llada", shards=1,
                                 init_std=0.2, **LLADA_SMALL)


@pytest.fixture(scope="session")
def dream_dir(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ck") / "dream", "dream", shards=2,
                                 init_std=0.2, **DREAM_ODD)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The public data sets in ../shared/data beside the checkout (skip where absent)."""
    path = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"{path} not present")
    return path
