"""`faircalib-export info` on tiny checkpoints, and the memory estimate on real 7-8B shapes."""

from __future__ import annotations

import json

import pytest
from real_configs import real_config
from typer.testing import CliRunner

from faircalib_export.cli import app
from faircalib_export.info import memory_estimate
from faircalib_export.models.families import get_family, parse_config
from faircalib_export.models.loading import load_model
from faircalib_export.quant.layout import kron_factors

runner = CliRunner()


@pytest.mark.parametrize("which", ["llada_dir", "dream_dir"])
def test_info_table(which, request):
    path = request.getfixturevalue(which)
    result = runner.invoke(app, ["info", str(path)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "Linear layers quantized to W4A4" in result.output
    family = "dream" if which == "dream_dir" else "llada"
    down_key = ("model.layers.1.mlp.down_proj.weight" if family == "dream"
                else "model.transformer.blocks.1.ff_out.weight")
    assert down_key in result.output


def test_info_json_matches_model(dream_dir):
    result = runner.invoke(app, ["info", str(dream_dir), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    model = load_model(dream_dir)
    assert data["parameters"] == model.num_parameters()
    assert data["config"]["num_kv_heads"] == 1 and data["config"]["hidden_size"] == 224
    assert len(data["linear_layers"]) == 7 * model.cfg.num_layers
    k = next(x for x in data["linear_layers"] if x["name"] == "blocks.0.attn.k_proj")
    assert (k["out_features"], k["in_features"]) == (32, 224)  # one KV head of dim 32


def test_kron_factors():
    assert kron_factors(12288) == (96, 128)
    assert kron_factors(3584) == (56, 64)
    assert kron_factors(4096) == (64, 64)
    assert kron_factors(18944) == (128, 148)
    assert kron_factors(13) == (1, 13)


LLADA_8B, DREAM_7B = real_config("llada-8b-instruct"), real_config("dream-7b-instruct")


def test_real_shapes_memory_estimate():
    llada = memory_estimate(parse_config(LLADA_8B))
    # LLaDA-8B has 8.02e9 parameters: ~16.0 GB in fp16.
    assert 15.9e9 < llada["fp16_bytes"] < 16.1e9
    ratio = llada["fp16_bytes"] / llada["w4a4_bytes"]
    assert 2.8 < ratio < 3.3  # paper: 3.1-3.2x with embeddings/head in 16 bit
    dream = memory_estimate(parse_config(DREAM_7B))
    assert 15.0e9 < dream["fp16_bytes"] < 15.5e9  # Dream-7B: 7.6e9 parameters
    assert get_family("dream").keys.mapping(parse_config(DREAM_7B))["blocks.27.attn.q_proj.bias"]
