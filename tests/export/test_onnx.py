"""ONNX export: graph contract, numerics against the folded PyTorch model, the runtime
backend, external data, the weight-only variant (its 4-bit weights and W4A16 logits
against the folded weights dequantized), and torch-free generation."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
import torch
from helpers import padded_batch

from faircalib_export.export.onnx_export import ExportOptions, export_onnx
from faircalib_export.fold.deployed import DeployedModel, codes_of, load_deployed, read_deploy
from faircalib_export.fold.fold import fold_artifact
from faircalib_runtime import generate
from faircalib_runtime.onnx import ExportError, OnnxBackend, open_exported


@pytest.fixture(scope="module")
def exported(calibrated, tmp_path_factory):
    _, art = calibrated
    root = tmp_path_factory.mktemp("onnx")
    deploy = fold_artifact(art, root / "deploy")
    return deploy, export_onnx(deploy, root / "onnx")


def test_graph_contract(exported):
    _, out = exported
    model = onnx.load(str(out / "model.onnx"))
    onnx.checker.check_model(model)
    assert model.ir_version == 10
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 21
    int4 = [t for t in model.graph.initializer
            if t.data_type == onnx.TensorProto.INT4 and t.name.endswith("qweight_t")]
    assert len(int4) == 7 * 2  # every block linear of both blocks
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") == 4 * 2  # one per site per block
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask", "position_ids",
                                                   "past_key_values"]
    assert {o.name for o in model.graph.output} == {"logits", "token", "prob", "margin",
                                                    "neg_entropy", "present_key_values"}
    fp16 = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16}
    assert fp16 == {"embed.weight", "lm_head.weight"}


def test_onnx_matches_folded_pytorch(exported):
    deploy, out = exported
    ids, mask, pos = padded_batch()
    ref = load_deployed(deploy)(ids, mask, pos).numpy()
    backend = OnnxBackend(out)
    got = backend.forward(ids.numpy(), mask.numpy(), pos.numpy(), "logits").logits
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 1e-5
    s = backend.forward(ids.numpy(), mask.numpy(), pos.numpy(), "summary").summary
    assert np.array_equal(s.token, ref.argmax(-1))
    p = torch.softmax(torch.from_numpy(ref).double(), -1).numpy()
    np.testing.assert_allclose(s.prob, p.max(-1), atol=1e-5)
    top2 = np.sort(p, -1)[..., -2:]
    np.testing.assert_allclose(s.margin, top2[..., 1] - top2[..., 0], atol=1e-5)
    np.testing.assert_allclose(s.neg_entropy, (p * np.log(p + 1e-10)).sum(-1), atol=1e-4)


def test_greedy_decode_uses_summaries_and_matches_pytorch(exported):
    deploy, out = exported
    opened = open_exported(out)
    config = opened.policy(gen_length=8, steps=4)
    prompts = [[5, 6, 7], [8, 9]]
    onnx_result = generate(opened.backend(), prompts, config)
    assert opened.session.calls["logits"] == 0 and opened.session.calls["summary"] > 0
    from faircalib_export.decoding.torch_backend import TorchBackend

    torch_result = generate(TorchBackend(load_deployed(deploy)), prompts, config)
    assert np.array_equal(onnx_result.tokens, torch_result.tokens)


def test_summary_dtypes(exported):
    """"summary" keeps the graph's float32 statistics; "summary64" is float64 from the
    logits, summarized on the host."""
    from faircalib_runtime import summarize

    _, out = exported
    backend = OnnxBackend(out)
    ids, mask, pos = (t.numpy() for t in padded_batch())
    s = backend.forward(ids, mask, pos, "summary").summary
    assert s.prob.dtype == s.margin.dtype == s.neg_entropy.dtype == np.float32
    s64 = backend.forward(ids, mask, pos, "summary64").summary
    expected = summarize(backend.forward(ids, mask, pos, "logits").logits)
    for name in ("token", "prob", "margin", "neg_entropy"):
        assert np.array_equal(getattr(s64, name), getattr(expected, name)), name
    assert backend.calls == {"logits": 1, "summary": 1, "summary64": 1}


def test_external_data_and_missing_file(exported, tmp_path):
    """The streamed external-data export is the same graph as the in-memory one (same
    initializers, same logits), leaves nothing beside OUT, and a missing data file is a
    clear error."""
    deploy, inline = exported
    out = export_onnx(deploy, tmp_path / "ext", ExportOptions(external_data=True))
    assert (out / "model.onnx.data").stat().st_size > (out / "model.onnx").stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ext"]
    a, b = onnx.load(str(inline / "model.onnx")), onnx.load(str(out / "model.onnx"))
    assert {t.name: onnx.numpy_helper.to_array(t).tobytes() for t in a.graph.initializer} == \
        {t.name: onnx.numpy_helper.to_array(t).tobytes() for t in b.graph.initializer}
    ids, mask, pos = (x.numpy() for x in padded_batch())
    assert np.array_equal(OnnxBackend(inline).forward(ids, mask, pos, "logits").logits,
                          OnnxBackend(out).forward(ids, mask, pos, "logits").logits)
    (out / "model.onnx.data").unlink()
    with pytest.raises(ExportError, match="model.onnx.data"):
        OnnxBackend(out)


def _weight_only_reference(deploy):
    """The folded model with W4 weights (codes * scale) and unquantized activations
    (a_bits 16: the deploy format's 'no activation quantization')."""
    meta, tensors = read_deploy(deploy)
    return DeployedModel({**meta, "a_bits": 16}, tensors)


def test_weight_only_variant(exported, tmp_path):
    deploy, _ = exported
    out = export_onnx(deploy, tmp_path / "wo", ExportOptions(variant="weight-only"))
    graph = onnx.load(str(out / "model.onnx")).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("MatMulNBits") == 14 and "QuantizeLinear" not in ops

    # the 4-bit blocks decode (zero point 8, low nibble first) to the folded weights
    meta, tensors = read_deploy(deploy)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    for node in (n for n in graph.node if n.op_type == "MatMulNBits"):
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        k, n = attrs["K"], attrs["N"]
        packed, scales = inits[node.input[1]], inits[node.input[2]]
        nibbles = np.stack([packed & 0x0F, packed >> 4], -1).reshape(n, -1)[:, :k]
        block_scales = np.repeat(scales.reshape(n, -1), attrs["block_size"], axis=1)
        w = (nibbles.astype(np.float32) - 8) * block_scales[:, :k]
        prefix = node.input[1].removesuffix(".nbits")
        ref = codes_of(tensors, prefix, k, meta["w_bits"]).float() \
            * tensors[f"{prefix}.scale"].float()[:, None]
        np.testing.assert_array_equal(w, ref.numpy(), err_msg=prefix)

    # end to end: W4A16 logits, as the folded weights dequantized with float activations
    backend = OnnxBackend(out)
    reference = _weight_only_reference(deploy)
    w4a4 = load_deployed(deploy)
    for seed in (0, 1, 2):
        ids, mask, pos = padded_batch()
        ids = torch.randint(0, 256, ids.shape, generator=torch.Generator().manual_seed(seed))
        got = backend.forward(ids.numpy(), mask.numpy(), pos.numpy(), "logits").logits
        ref = reference(ids, mask, pos).numpy()
        err = np.linalg.norm(got - ref) / np.linalg.norm(ref)
        assert err < 1e-5, (seed, err)
        # activations stay unquantized: the W4A4 numbers are measurably further away
        act_q = w4a4(ids, mask, pos).numpy()
        assert np.linalg.norm(got - act_q) / np.linalg.norm(act_q) > 1e-2


def test_integer_variant_computes_the_same_numbers_with_int_gemms(exported, tmp_path):
    deploy, qdq = exported
    out = export_onnx(deploy, tmp_path / "int", ExportOptions(variant="w4a4-int"))
    model = onnx.load(str(out / "model.onnx"))
    onnx.checker.check_model(model)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("MatMulInteger") == 14 and ops.count("QuantizeLinear") == 8
    assert "DequantizeLinear" not in ops  # no float emulation of the block matmuls
    int4 = [t for t in model.graph.initializer
            if t.data_type == onnx.TensorProto.INT4 and t.name.endswith("qweight_t")]
    assert len(int4) == 14  # the file keeps 4-bit weights
    ids, mask, pos = padded_batch()
    ref = load_deployed(deploy)(ids, mask, pos).numpy()
    got = OnnxBackend(out).forward(ids.numpy(), mask.numpy(), pos.numpy(), "logits").logits
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 1e-5
    qdq_logits = OnnxBackend(qdq).forward(ids.numpy(), mask.numpy(), pos.numpy(),
                                          "logits").logits
    assert np.array_equal(got.argmax(-1), qdq_logits.argmax(-1))


NO_TORCH = textwrap.dedent("""
    import sys
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError("torch is blocked in this test")
    sys.meta_path.insert(0, Block())
    from faircalib_export.cli import main
    try:
        main(["generate", sys.argv[1], "-p", "hi", "--gen-length", "8", "--steps", "4"])
    except SystemExit as exit:
        assert exit.code in (0, None), exit.code
    assert "torch" not in sys.modules
    print("NO_TORCH_OK")
""")


def test_generate_from_onnx_without_torch(exported):
    _, out = exported
    result = subprocess.run([sys.executable, "-c", NO_TORCH, str(out)], capture_output=True,
                            text=True, timeout=120)
    assert "NO_TORCH_OK" in result.stdout, result.stderr


def test_low_memory_session_computes_the_same(exported, tmp_path):
    """--ort-memory low: runtime.json turns off prepacking, the session opens so, and
    the logits are the same numbers."""
    import json

    deploy, fast = exported
    low = export_onnx(deploy, tmp_path / "low", ExportOptions(ort_memory="low"))
    config = json.loads((low / "runtime.json").read_text())
    assert config["ort_memory"] == "low"
    assert config["ort_session_config"]["session.disable_prepacking"] == "1"
    backend = OnnxBackend(low)
    assert backend.session.get_session_options().get_session_config_entry(
        "session.disable_prepacking") == "1"
    ids, mask, pos = (x.numpy() for x in padded_batch())
    a = OnnxBackend(fast).forward(ids, mask, pos, "logits").logits
    b = backend.forward(ids, mask, pos, "logits").logits
    assert np.allclose(a, b, rtol=1e-5, atol=1e-5)
    with pytest.raises(Exception, match="ORT memory mode"):
        ExportOptions(ort_memory="tiny")
