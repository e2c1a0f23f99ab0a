"""fold: packing, exactness against the calibrated fake-quant model, options, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from faircalib_export.calibrate.artifact import load_quantized
from faircalib_export.errors import ConfigError
from faircalib_export.fold.deployed import load_deployed
from faircalib_export.fold.fold import fold_artifact
from faircalib_export.fold.pack import pack_int4, unpack_int4


def test_nibble_order():
    # element 0 -> low nibble, element 1 -> high nibble, two's complement
    assert pack_int4(np.array([[1, -2]], dtype=np.int8)).tolist() == [[0xE1]]
    assert unpack_int4(np.array([[0xE1]], dtype=np.uint8), 2).tolist() == [[1, -2]]


@pytest.mark.parametrize("n", [1, 7, 64])
def test_pack_round_trip(n):
    codes = np.random.default_rng(n).integers(-8, 8, size=(5, n)).astype(np.int8)
    packed = pack_int4(codes)
    assert packed.shape == (5, (n + 1) // 2) and packed.dtype == np.uint8
    assert np.array_equal(unpack_int4(packed, n), codes)
    with pytest.raises(ValueError):
        pack_int4(np.array([[8]], dtype=np.int8))


def _padded_inputs(vocab=256):
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (2, 20), generator=gen)
    mask = torch.ones(2, 20, dtype=torch.long)
    mask[1, :6] = 0
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def test_folded_model_reproduces_calibrated_logits(calibrated, tmp_path):
    _, art = calibrated
    deploy = fold_artifact(art, tmp_path / "deploy")
    ids, mask, pos = _padded_inputs()
    with torch.no_grad():
        ref = load_quantized(art)(ids, mask, pos)
        out = load_deployed(deploy)(ids, mask, pos)
    rel = ((out - ref).norm() / ref.norm()).item()
    assert rel <= 1e-4, rel
    meta = json.loads((deploy / "deploy.json").read_text())
    assert meta["w_bits"] == 4 and meta["a_bits"] == 4
    assert (deploy / "tokenizer_config.json").is_file() and (deploy / "manifest.json").is_file()


def test_quantized_tables_are_smaller_and_close(calibrated, tmp_path):
    _, art = calibrated
    full = fold_artifact(art, tmp_path / "full")
    small = fold_artifact(art, tmp_path / "small", embed_bits=8, head_bits=4)
    size = lambda d: (d / "weights.safetensors").stat().st_size  # noqa: E731
    assert size(small) < size(full)
    ids, mask, pos = _padded_inputs()
    a, b = load_deployed(full)(ids, mask, pos), load_deployed(small)(ids, mask, pos)
    assert b.isfinite().all()
    assert ((a - b).norm() / a.norm()) < 0.5  # changed, but the same model


def test_tables_quantize_a_chunk_of_rows_at_a_time(calibrated, tmp_path, monkeypatch):
    """Chunked table quantization (fold's memory bound at real vocabularies) gives the
    one-call numbers, tensor for tensor."""
    from faircalib_export.fold import fold as fold_module
    from faircalib_export.fold.deployed import read_deploy

    _, art = calibrated
    whole = fold_artifact(art, tmp_path / "whole", embed_bits=8, head_bits=4)
    monkeypatch.setattr(fold_module, "TABLE_CHUNK_ROWS", 7)  # no vocabulary is a multiple
    chunked = fold_artifact(art, tmp_path / "chunked", embed_bits=8, head_bits=4)
    a, b = dict(read_deploy(whole)[1]), dict(read_deploy(chunked)[1])
    assert a.keys() == b.keys() and {"embed.scale", "lm_head.scale"} <= a.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_fold_bad_input(tmp_path, calibrated):
    _, art = calibrated
    with pytest.raises(ConfigError, match="not a calibrated artifact"):
        fold_artifact(tmp_path, tmp_path / "out")
    with pytest.raises(ConfigError, match="embedding bits"):
        fold_artifact(art, tmp_path / "out", embed_bits=4)
    assert not (tmp_path / "out").exists()


def test_fold_reads_one_block_at_a_time(calibrated, tmp_path, monkeypatch):
    """Streaming: fold never builds the whole model, so its peak memory is one block's
    fold plus the packed output (benchmarks/bench_real_scale.py measures it)."""
    from faircalib_export.models import loading

    _, art = calibrated
    prefixes = []
    real = loading.load_module

    def recording(plan, build, prefix="", *args, **kwargs):
        prefixes.append(prefix)
        return real(plan, build, prefix, *args, **kwargs)

    monkeypatch.setattr(loading, "load_module", recording)
    fold_artifact(art, tmp_path / "deploy")
    layers = json.loads((tmp_path / "deploy" / "deploy.json").read_text())[
        "model_config"]["num_layers"]
    assert prefixes == [f"blocks.{i}." for i in range(layers)]
