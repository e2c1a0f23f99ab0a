"""`plan` on the real LLaDA-8B / Dream-7B configs (config.json alone): weight bytes, fits."""

from __future__ import annotations

import json

import pytest
from real_configs import real_config
from typer.testing import CliRunner

from faircalib_export.info import memory_estimate
from faircalib_export.models.families import parse_config
from faircalib_export.plan import deployment_weight_bytes, plan
from faircalib_export.trt.errors import UnknownTargetError

LLADA_8B, DREAM_7B = real_config("llada-8b-instruct"), real_config("dream-7b-instruct")


@pytest.fixture(scope="module")
def configs(tmp_path_factory):
    root = tmp_path_factory.mktemp("configs")
    out = {}
    for name, raw in (("llada", LLADA_8B), ("dream", DREAM_7B)):
        (root / name).mkdir()
        (root / name / "config.json").write_text(json.dumps(raw))
        out[name] = root / name / "config.json"
    return out


def test_llada_8b_fits_a_4090(configs):
    p = plan(configs["llada"], "rtx4090")
    d = p["deployment"]
    assert d["fits"] and d["peak_gib"] <= 23.99 * 0.9
    w = d["weights_bytes"]
    # 32 layers x (4 x 4096^2 + 3 x 4096 x 12288) int4 codes, K a multiple of 128: no padding
    assert w["block_linears_int4"] == 32 * (4 * 4096 * 4096 + 3 * 4096 * 12288) // 2
    assert w["embedding_fp16"] == 126464 * 4096 * 2 and w["lm_head_fp32"] == 126464 * 4096 * 4
    assert w["total"] == sum(v for k, v in w.items() if k != "total")
    assert p["calibration"]["fits"] and 5 < p["calibration"]["peak_gib"] < 16


@pytest.mark.parametrize("name", ["llada", "dream"])
def test_weights_agree_with_info_memory_estimate(configs, name):
    cfg = parse_config(LLADA_8B if name == "llada" else DREAM_7B)
    estimate = memory_estimate(cfg)["w4a4_bytes"]
    fp16_head = deployment_weight_bytes(cfg, head_precision="fp16")
    assert abs(sum(fp16_head.values()) - estimate) / estimate < 0.01
    fp32_head = plan(configs[name], "rtx4090")["deployment"]["weights_bytes"]["total"]
    extra = cfg.vocab_size * cfg.hidden_size * 2  # the head's float32 half
    assert fp32_head == sum(fp16_head.values()) + extra


@pytest.mark.parametrize("name", ["llada", "dream"])
@pytest.mark.parametrize("target", ["rtx4080-16gb", "rtx4060ti-16gb", "a4000"])
def test_fp16_does_not_fit_16gb_but_w4a4_does(configs, name, target):
    p = plan(configs[name], target)
    assert p["deployment"]["fits"] and not p["fp16_deployment"]["fits"]
    assert p["fp16_deployment"]["weights_gib"] > 14


def test_longer_sequences_stop_fitting(configs):
    small = plan(configs["llada"], "rtx4060ti-16gb", max_batch=1, max_seq=512)
    large = plan(configs["llada"], "rtx4060ti-16gb", max_batch=8, max_seq=4096)
    assert small["deployment"]["fits"] and not large["deployment"]["fits"]
    peak = lambda p: p["deployment"]["activations_gib"]["peak"]
    assert peak(large) > peak(small)
    assert plan(configs["dream"], "h100")["deployment"]["kernel_path"] == "int8-mma"


def test_unknown_target(configs):
    with pytest.raises(UnknownTargetError, match="rtx4090"):
        plan(configs["llada"], "gtx480")


def test_plan_cmd_prints_table_and_json(configs):
    import typer

    from faircalib_export.plan import plan_cmd

    app = typer.Typer()
    app.command()(plan_cmd)
    runner = CliRunner()
    result = runner.invoke(app, [str(configs["llada"]), "--target", "rtx4090"],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "RTX 4090" in result.output and "fits" in result.output
    assert "block_linears_int4 (3,489,660,928 B)" in result.output
    result = runner.invoke(app, [str(configs["dream"].parent), "-t", "a4000", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["target"]["name"] == "a4000" and data["deployment"]["fits"]
    result = runner.invoke(app, ["--model", str(configs["llada"]), "--target", "rtx4090",
                                 "--json"])  # the spelling
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["deployment"]["weights_bytes"]["block_linears_int4"] == (
        3_489_660_928)
    result = runner.invoke(app, ["-t", "rtx4090"])
    assert result.exit_code == 2 and "give the model once" in result.output
