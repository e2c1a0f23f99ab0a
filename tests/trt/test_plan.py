"""`plan` on the real LLaDA-8B / Dream-7B configs (config.json alone): weight bytes, fits."""

from __future__ import annotations

import json

import pytest
from real_configs import real_config
from typer.testing import CliRunner

from faircalib_export.errors import ConfigError
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
@pytest.mark.parametrize("target", ["rtx4080-16gb", "rtx4060ti-16gb", "a4000", "rtx5080",
                                    "rtx5070ti"])  # the last two: nvfp4
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


@pytest.mark.parametrize("raw", [LLADA_8B, DREAM_7B], ids=["llada", "dream"])
def test_host_plan_streams_fold_and_export(raw):
    """The CPU pipeline's plan: fold and export hold one block or one table whatever the
    depth (they stream), the ONNX Runtime session grows with the file, and "low" holds
    less than "fast"; each within the range bench_real_scale.py measured (README)."""
    import dataclasses

    from faircalib_export.plan import host_plan

    cfg = parse_config(raw)
    half, full = (host_plan(dataclasses.replace(cfg, num_layers=n), samples=4, seq_len=64)
                  for n in (cfg.num_layers // 2, cfg.num_layers))
    assert half["fold"] == full["fold"] and half["export_w4a4_int"] == full["export_w4a4_int"]
    assert full["onnx_file"] > half["onnx_file"]
    assert full["ort_session_fast"] > full["onnx_file"]
    low = host_plan(cfg, samples=4, seq_len=64, ort_memory="low")["ort_session_low"]
    assert full["onnx_file"] < low < full["ort_session_fast"]
    assert 2 < full["fold"] < 4 and 1 < full["export_w4a4_int"] < 2
    assert plan(cfg, "rtx4090")["host_cpu_pipeline_gib"]["fold"] == full["fold"]


@pytest.mark.parametrize("fmt, block, scale_key", [("nvfp4", 16, "block_scales_e4m3"),
                                                    ("mxfp4", 32, "block_scales_e8m0")])
def test_fp4_weight_bytes_for_llada_8b(fmt, block, scale_key):
    """E2M1 codes at half a byte a weight plus one block-scale byte per block, by hand."""
    cfg = parse_config(LLADA_8B)
    w = deployment_weight_bytes(cfg, format=fmt)
    per_layer = 4 * 4096 * 4096 + 3 * 4096 * 12288  # q k v o, gate up down (MHA: kv = 4096)
    assert w["block_linears_e2m1"] == 32 * per_layer // 2 == 3_489_660_928
    assert w[scale_key] == 32 * per_layer // block
    assert "block_linears_int4" not in w
    rows = 4 * 4096 + 2 * 12288 + 4096  # one float32 second-level scale per output row
    assert w["channel_scales"] == 32 * rows * 4
    int4 = deployment_weight_bytes(cfg, format="int")
    same = ("channel_scales", "kronecker_factors", "norms_and_biases", "embedding_fp16",
            "lm_head_fp32")
    assert all(w[k] == int4[k] for k in same)


def test_plan_rtx5090_sizes_nvfp4_for_llada_8b(configs):
    """`plan llada-8b-instruct --target rtx5090`: Blackwell's default format, nvfp4."""
    p = plan("llada-8b-instruct", "rtx5090")
    d = p["deployment"]
    assert d["format"] == "nvfp4" and d["kernel_path"] == "fp4-native" and d["tensorrt_native"]
    w = d["weights_bytes"]
    assert w["block_scales_e4m3"] == 32 * (4 * 4096 * 4096 + 3 * 4096 * 12288) // 16
    assert w["total"] == sum(v for k, v in w.items() if k != "total")
    assert d["fits"] and d["peak_gib"] <= 31.84 * 0.9
    int_plan = plan(configs["llada"], "rtx5090", format="int")["deployment"]
    assert int_plan["kernel_path"] == "int8-mma" and "block_linears_int4" in int_plan[
        "weights_bytes"]
    # same codes (no padding at these widths), nvfp4 adds its E4M3 block scales
    assert w["total"] - int_plan["weights_bytes"]["total"] == w["block_scales_e4m3"]
    # quantized activations: codes + 1/16 byte of scales per element, same float32 token scale
    assert d["activations_gib"]["mlp"] > int_plan["activations_gib"]["mlp"]
    with pytest.raises(ConfigError, match="no FP4 tensor cores"):
        plan(configs["llada"], "rtx4090", format="nvfp4")


def test_plan_cmd_fp4(configs):
    import typer

    from faircalib_export.plan import plan_cmd

    app = typer.Typer()
    app.command()(plan_cmd)
    runner = CliRunner()
    result = runner.invoke(app, ["llada-8b-instruct", "--target", "rtx5090"],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "RTX 5090" in result.output and "nvfp4 via fp4-native" in result.output
    assert "block_scales_e4m3 (436,207,616 B)" in result.output
    result = runner.invoke(app, [str(configs["llada"]), "-t", "rtx5090", "--format", "mxfp4",
                                 "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)["deployment"]
    assert data["format"] == "mxfp4" and data["weights_bytes"]["block_scales_e8m0"] == (
        218_103_808)
    assert data["tensorrt_native"] is False  # sized, but TensorRT runs nvfp4 only
    result = runner.invoke(app, [str(configs["llada"]), "-t", "rtx5090", "--format", "mxfp4"],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "no native mxfp4 path" in result.output
