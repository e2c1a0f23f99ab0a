"""The CPU cost options of the ONNX export: the int8 LM head of the integer graph (its
logits are the exact per-token int8 x int-code arithmetic), the float head staying the
default, the weight-only graph's MatMulNBits accuracy level, and the refused settings."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import padded_batch

from faircalib_export.errors import ConfigError
from faircalib_export.export.onnx_export import (
    WEIGHT_ONLY_ACCURACY_LEVEL,
    ExportOptions,
    export_onnx,
)
from faircalib_export.fold.deployed import codes_of, load_deployed, read_deploy
from faircalib_export.fold.fold import fold_artifact
from faircalib_runtime.onnx import RUNTIME_JSON, OnnxBackend

BLOCK_LINEARS = 7 * 2  # seven linears in each of the two blocks


@pytest.fixture(scope="module")
def folded(calibrated, tmp_path_factory):
    """LM head bits -> folded model directory."""
    _, art = calibrated
    root = tmp_path_factory.mktemp("ort-costs")
    return {bits: fold_artifact(art, root / f"deploy{bits}", head_bits=bits)
            for bits in (16, 8, 4)}


def _batch():
    ids, mask, pos = padded_batch()
    return ids.numpy(), mask.numpy(), pos.numpy()


def _runtime(out) -> dict:
    return json.loads((out / RUNTIME_JSON).read_text())


def _producer(graph: onnx.GraphProto, name: str) -> onnx.NodeProto:
    return next(n for n in graph.node if name in n.output)


def _head_input(model: onnx.ModelProto) -> str:
    """The float hidden state the int8 head quantizes: MatMulInteger <- Clip <-
    QuantizeLinear <- Div(h, s)."""
    graph = model.graph
    head = next(n for n in graph.node if n.op_type == "MatMulInteger"
                and (n.input[1] == "lm_head.codes_t"
                     or _producer(graph, n.input[1]).input[0] == "lm_head.codes_t"))
    clip = _producer(graph, head.input[0])
    quant = _producer(graph, clip.input[0])
    div = _producer(graph, quant.input[0])
    assert (clip.op_type, quant.op_type, div.op_type) == ("Clip", "QuantizeLinear", "Div")
    return div.input[0]


def _run_with(model: onnx.ModelProto, extra: str, feeds: dict) -> tuple[np.ndarray, ...]:
    """logits and the graph tensor `extra`, exposed as an output."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    model.graph.output.append(onnx.helper.make_tensor_value_info(extra, onnx.TensorProto.FLOAT,
                                                                 None))
    options = ort.SessionOptions()
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return tuple(session.run(["logits", extra], feeds))


def _int8_head_reference(h: np.ndarray, codes: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Per-token symmetric int8 codes of h (scale max|h| / 127, round half to even), an
    exact integer product with the head codes, then * s * c, all in float32 as the graph."""
    s = np.maximum(np.abs(h).max(-1, keepdims=True), np.float32(1e-8)) / np.float32(127)
    q = np.clip(np.rint(h / s), -128, 127).astype(np.int64)
    acc = np.einsum("bse,ve->bsv", q, codes.astype(np.int64))
    return (acc.astype(np.float32) * s) * scale.reshape(-1).astype(np.float32)


@pytest.mark.parametrize("head_bits", [8, 4])
def test_int8_head_is_the_exact_integer_arithmetic(folded, tmp_path, head_bits):
    deploy = folded[head_bits]
    out = export_onnx(deploy, tmp_path / "int8-head",
                      ExportOptions(variant="w4a4-int", head_activations="int8"))
    assert _runtime(out)["head_activations"] == "int8"
    model = onnx.load(str(out / "model.onnx"))
    onnx.checker.check_model(model)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("MatMulInteger") == BLOCK_LINEARS + 1  # the head is one more
    inits = {t.name: t for t in model.graph.initializer}
    assert "lm_head.codes_t" in inits and "lm_head.weight" not in inits
    assert inits["lm_head.codes_t"].data_type == (onnx.TensorProto.INT4 if head_bits == 4
                                                  else onnx.TensorProto.INT8)

    ids, mask, pos = _batch()
    feeds = {"input_ids": ids, "attention_mask": mask, "position_ids": pos}
    meta, tensors = read_deploy(deploy)
    cfg = load_deployed(deploy).cfg
    feeds["past_key_values"] = np.zeros((cfg.num_layers, 2, ids.shape[0], cfg.num_kv_heads, 0,
                                         cfg.head_dim), np.float32)
    logits, h = _run_with(model, _head_input(model), feeds)
    codes = codes_of(tensors, "lm_head", cfg.hidden_size, head_bits).numpy()
    ref = _int8_head_reference(h, codes, tensors["lm_head.scale"].float().numpy())
    if cfg.logit_shift:  # Dream: position i reads the prediction made at i - 1
        ref = np.concatenate([ref[:, :1], ref[:, :-1]], axis=1)
    np.testing.assert_allclose(logits, ref, rtol=1e-6, atol=1e-6 * np.abs(ref).max())

    # the runtime backend computes the same logits; the float head is measurably elsewhere
    got = OnnxBackend(out).forward(ids, mask, pos, "logits").logits
    np.testing.assert_array_equal(got, logits)
    float_head = load_deployed(deploy)(*padded_batch()).numpy()
    assert np.linalg.norm(got - float_head) / np.linalg.norm(float_head) > 1e-5


@pytest.mark.parametrize("variant", ["w4a4", "w4a4-int"])
def test_float_head_stays_the_default(folded, tmp_path, variant):
    deploy = folded[8]
    default = export_onnx(deploy, tmp_path / "default", ExportOptions(variant=variant))
    explicit = export_onnx(deploy, tmp_path / "float",
                           ExportOptions(variant=variant, head_activations="float"))
    assert (default / "model.onnx").read_bytes() == (explicit / "model.onnx").read_bytes()
    runtime = _runtime(default)
    assert runtime["head_activations"] == "float" and runtime["accuracy_level"] is None
    model = onnx.load(str(default / "model.onnx"))
    assert [n.op_type for n in model.graph.node].count("MatMulInteger") == \
        (BLOCK_LINEARS if variant == "w4a4-int" else 0)
    assert "lm_head.codes_t" not in {t.name for t in model.graph.initializer}
    # the float head: the folded PyTorch model's logits to float32 rounding
    ids, mask, pos = padded_batch()
    ref = load_deployed(deploy)(ids, mask, pos).numpy()
    got = OnnxBackend(default).forward(ids.numpy(), mask.numpy(), pos.numpy(), "logits").logits
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 1e-5


@pytest.mark.parametrize("variant", ["w4a4", "weight-only"])
def test_4bit_head_stays_4bit_in_the_qdq_graphs(folded, tmp_path, variant):
    """A head folded to 4 bits is DequantizeLinear(INT4 codes (E, V), per-column scales)
    + MatMul in the Q/DQ and weight-only graphs, which ONNX Runtime fuses into MatMulNBits
    (4-bit resident) rather than folding an fp32 table; its logits are the folded model's."""
    out = export_onnx(folded[4], tmp_path / variant, ExportOptions(variant=variant))
    model = onnx.load(str(out / "model.onnx"))
    inits = {t.name: t for t in model.graph.initializer}
    assert inits["lm_head.codes_t"].data_type == onnx.TensorProto.INT4
    (dq,) = [n for n in model.graph.node if "lm_head.codes_t" in n.input]
    assert dq.op_type == "DequantizeLinear" and dq.input[1] == "lm_head.scale"
    assert [n.op_type for n in model.graph.node if dq.output[0] in n.input] == ["MatMul"]
    if variant == "w4a4":  # (weight-only computes other numbers: 16-bit activations)
        ids, mask, pos = padded_batch()
        ref = load_deployed(folded[4])(ids, mask, pos).numpy()
        got = OnnxBackend(out).forward(ids.numpy(), mask.numpy(), pos.numpy(), "logits").logits
        assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 1e-5
    # ONNX Runtime's optimized graph has no fp32 head table
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")
    ort.InferenceSession(str(out / "model.onnx"), options, providers=["CPUExecutionProvider"])
    optimized = onnx.load(str(tmp_path / "optimized.onnx"))
    cfg = load_deployed(folded[4]).cfg
    head_floats = [t for t in optimized.graph.initializer if t.data_type == onnx.TensorProto.FLOAT
                   and sorted(t.dims) == sorted([cfg.hidden_size, cfg.vocab_size])]
    assert not head_floats


def _levels(out) -> list[int]:
    graph = onnx.load(str(out / "model.onnx")).graph
    nodes = [n for n in graph.node if n.op_type == "MatMulNBits"]
    assert len(nodes) == BLOCK_LINEARS
    return [next((onnx.helper.get_attribute_value(a) for a in n.attribute
                  if a.name == "accuracy_level"), None) for n in nodes]


def test_weight_only_accuracy_level_on_every_node_and_in_runtime_json(folded, tmp_path):
    deploy = folded[16]
    ids, mask, pos = _batch()
    logits = {}
    for level in (None, 0, 1, 2, 3, 4):
        out = export_onnx(deploy, tmp_path / f"wo{level}",
                          ExportOptions(variant="weight-only", accuracy_level=level))
        expected = WEIGHT_ONLY_ACCURACY_LEVEL if level is None else level
        assert _levels(out) == [expected] * BLOCK_LINEARS
        assert _runtime(out)["accuracy_level"] == expected
        logits[level] = OnnxBackend(out).forward(ids, mask, pos, "logits").logits  # ORT runs it
    assert np.array_equal(logits[None], logits[WEIGHT_ONLY_ACCURACY_LEVEL])
    # level 1 is fp32 (W4A16); level 4 re-quantizes the activations to int8 per block
    l1, l4 = logits[1], logits[4]
    rel = np.linalg.norm(l4 - l1) / np.linalg.norm(l1)
    assert 1e-6 < rel < 0.05, rel


BAD_OPTIONS = {
    "level-above-4": (dict(variant="weight-only", accuracy_level=5), "0..4"),
    "level-negative": (dict(variant="weight-only", accuracy_level=-1), "0..4"),
    "level-a-string": (dict(variant="weight-only", accuracy_level="4"), "0..4"),
    "level-a-bool": (dict(variant="weight-only", accuracy_level=True), "0..4"),
    "level-on-qdq": (dict(variant="w4a4", accuracy_level=4), "weight-only"),
    "level-on-int": (dict(variant="w4a4-int", accuracy_level=1), "weight-only"),
    "head-unknown": (dict(variant="w4a4-int", head_activations="int4"), "float, int8"),
    "int8-head-on-qdq": (dict(variant="w4a4", head_activations="int8"), "w4a4-int"),
    "int8-head-weight-only": (dict(variant="weight-only", head_activations="int8"), "w4a4-int"),
}


@pytest.mark.parametrize("options,message", BAD_OPTIONS.values(), ids=BAD_OPTIONS.keys())
def test_bad_options_are_refused(options, message):
    with pytest.raises(ConfigError, match=message):
        ExportOptions(**options)


def test_int8_head_needs_a_folded_head(folded, tmp_path):
    with pytest.raises(ConfigError, match="head folded to 4 or 8-bit.*16-bit"):
        export_onnx(folded[16], tmp_path / "out",
                    ExportOptions(variant="w4a4-int", head_activations="int8"))
    assert not (tmp_path / "out").exists()


def test_cli_export_takes_the_head_and_accuracy_options(folded, tmp_path, capsys):
    from faircalib_export.cli import main

    deploy = folded[8]
    for args, key, value in (
            (["--variant", "w4a4-int", "--head-activations", "int8"], "head_activations", "int8"),
            (["--variant", "weight-only", "--accuracy-level", "4"], "accuracy_level", 4)):
        out = tmp_path / key
        with pytest.raises(SystemExit) as exc:
            main(["export", str(deploy), "-o", str(out), *args])
        assert exc.value.code == 0, capsys.readouterr().err
        assert _runtime(out)[key] == value
    with pytest.raises(SystemExit) as exc:
        main(["export", str(deploy), "-o", str(tmp_path / "bad"), "--accuracy-level", "9"])
    assert exc.value.code == 2 and not (tmp_path / "bad").exists()
