"""TensorFile / TensorFileWriter: the streaming safetensors reader and writer that fold
and export use to hold one tensor at a time, checked against the safetensors library."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from faircalib_export.errors import CheckpointError
from faircalib_export.models.loading import TensorFile, TensorFileWriter

TENSORS = {
    "w": torch.randn(3, 5), "packed": torch.randint(0, 256, (7,), dtype=torch.uint8),
    "codes": torch.randint(-8, 8, (4, 3), dtype=torch.int8), "table": torch.randn(2, 9).half(),
    "bf": torch.randn(5).bfloat16(), "empty": torch.zeros(0, 4), "scalar": torch.tensor(1.5),
}


def test_writer_output_reads_back_with_safetensors(tmp_path):
    file = tmp_path / "w.safetensors"
    with TensorFileWriter(file) as writer:
        for name, value in TENSORS.items():
            writer.add(name, value)
    loaded = load_file(str(file))
    assert loaded.keys() == TENSORS.keys()
    for name, value in TENSORS.items():
        assert loaded[name].dtype == value.dtype and torch.equal(loaded[name], value), name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]  # no spool left
    assert (8 + int.from_bytes(file.read_bytes()[:8], "little")) % 8 == 0  # aligned data


def test_reader_matches_safetensors(tmp_path):
    file = tmp_path / "r.safetensors"
    save_file(TENSORS, str(file))
    lazy = TensorFile(file)
    assert set(lazy) == TENSORS.keys() and len(lazy) == len(TENSORS)
    for name, value in TENSORS.items():
        assert lazy[name].dtype == value.dtype and torch.equal(lazy[name], value), name
    file.write_bytes(file.read_bytes()[:-3])  # truncated: refused when opened
    with pytest.raises(CheckpointError, match="truncated"):
        TensorFile(file)


def test_writer_failure_leaves_no_file(tmp_path):
    with pytest.raises(RuntimeError), TensorFileWriter(tmp_path / "x.safetensors") as writer:
        writer.add("a", torch.ones(3))
        raise RuntimeError("fold failed")
    assert list(tmp_path.iterdir()) == []
    with TensorFileWriter(tmp_path / "y.safetensors") as writer, pytest.raises(ValueError):
        writer.add("a", torch.ones(3))
        writer.add("a", torch.ones(3))
