"""The TensorRT export on a machine without TensorRT: the plugin-node ONNX graph, its numerics
(plugin ops evaluated by the numpy reference) against the folded PyTorch model, and the typed
errors when the engine cannot be built here."""

from __future__ import annotations

import json
import shutil
import sys
import types

import numpy as np
import onnx
import pytest
import torch
from helpers import padded_batch
from onnx import numpy_helper
from trt_plugin_ops import evaluator, graph_feeds

from faircalib_export.errors import ConfigError, FaircalibError
from faircalib_export.export.onnx_export import CACHE_OUTPUT, export_onnx
from faircalib_export.fold.deployed import load_deployed, read_deploy
from faircalib_export.trt import reference
from faircalib_export.trt.errors import PluginLibraryError, TensorRTUnavailableError
from faircalib_export.trt.export import (
    build_engine,
    export_tensorrt,
    record_engine,
    write_plugin_onnx,
)
from faircalib_export.trt.plugin_graph import GEMM_OP, PLUGIN_DOMAIN, QUANTIZE_OP, PluginWriter


@pytest.fixture(scope="module")
def plugin_export(deployed, tmp_path_factory):
    out = write_plugin_onnx(deployed, tmp_path_factory.mktemp("trt") / "export", "rtx4090")
    return deployed, out


def _run(model_dir, names):
    model = onnx.load(str(model_dir / "model.onnx"))
    return evaluator(model).run(names, graph_feeds(model, *padded_batch()))


def test_graph_contract(plugin_export):
    deploy, out = plugin_export
    meta, _ = read_deploy(deploy)
    layers, hidden = meta["model_config"]["num_layers"], meta["model_config"]["hidden_size"]
    model = onnx.load(str(out / "model.onnx"))
    onnx.checker.check_model(model)
    assert {o.domain: o.version for o in model.opset_import}[PLUGIN_DOMAIN] == 1
    plugins = [n for n in model.graph.node if n.domain == PLUGIN_DOMAIN]
    ops = [n.op_type for n in plugins]
    assert ops.count(QUANTIZE_OP) == 4 * layers and ops.count(GEMM_OP) == 4 * layers
    assert not {"QuantizeLinear", "DequantizeLinear", "MatMulNBits"} & {
        n.op_type for n in model.graph.node}
    for node in plugins:  # what TensorRT's ONNX parser reads to find the creator
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["plugin_version"] == b"1" and attrs["plugin_namespace"] == b""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    qkv = inits["blocks.0.qkv.qweight_words"]
    kv = meta["model_config"]["num_kv_heads"] * hidden // meta["model_config"]["num_heads"]
    assert qkv.dtype == np.int32 and qkv.shape == (hidden + 2 * kv, reference.packed_words(hidden))
    down = inits["blocks.0.down.qweight_words"]
    assert down.shape == (hidden, reference.packed_words(meta["model_config"]["intermediate_size"]))
    runtime = json.loads((out / "runtime.json").read_text())
    assert runtime["variant"] == "tensorrt-plugins" and runtime["engine"] is None
    assert runtime["target"]["name"] == "rtx4090" and runtime["head_precision"] == "fp32"
    assert runtime["plugins"]["ops"] == [QUANTIZE_OP, GEMM_OP]
    assert json.loads((out / "manifest.json").read_text())["kind"] == "tensorrt"


def test_plugin_graph_matches_folded_pytorch(plugin_export):
    deploy, out = plugin_export
    ids, mask, pos = padded_batch()
    ref = load_deployed(deploy)(ids, mask, pos).numpy()
    logits, token, prob = _run(out, ["logits", "token", "prob"])
    assert np.linalg.norm(logits - ref) / np.linalg.norm(ref) < 1e-5
    np.testing.assert_array_equal(token, ref.argmax(-1))
    p = torch.softmax(torch.from_numpy(ref).double(), -1).numpy()
    np.testing.assert_allclose(prob, p.max(-1), atol=1e-5)


def test_fp16_head_halves_the_head(deployed, tmp_path):
    out = write_plugin_onnx(deployed, tmp_path / "fp16", "rtx4090", head_precision="fp16")
    model = onnx.load(str(out / "model.onnx"))
    heads = {t.name: t for t in model.graph.initializer if t.name.startswith("lm_head")}
    assert list(heads) == ["lm_head.weight_t"]
    assert heads["lm_head.weight_t"].data_type == onnx.TensorProto.FLOAT16
    ids, mask, pos = padded_batch()
    ref = load_deployed(deployed)(ids, mask, pos).numpy()
    (logits,) = _run(out, ["logits"])
    error = np.linalg.norm(logits - ref) / np.linalg.norm(ref)
    assert 1e-6 < error < 3e-3  # fp16 rounding of the hidden state and the logits


def test_only_w4a4_has_plugins(deployed):
    from faircalib_export.export.graph import GraphBuilder

    meta, tensors = read_deploy(deployed)
    with pytest.raises(ConfigError, match="W4A8"):
        PluginWriter(GraphBuilder("x"), dict(meta, a_bits=8), tensors)
    with pytest.raises(ConfigError, match="head precision"):
        PluginWriter(GraphBuilder("x"), meta, tensors, head_precision="int8")


@pytest.mark.parametrize("fmt", ["nvfp4", "mxfp4"])
def test_an_fp4_fold_is_refused_for_the_int4_plugins(deployed, tmp_path, monkeypatch, fmt):
    """The plugins would read E2M1 nibbles as int4 codes: the plugin writer refuses an FP4
    fold. export_tensorrt sends nvfp4 to TensorRT's native FP4 graph (its tests:
    tests/export/test_trt_native_fp4.py) and refuses mxfp4, which TensorRT's dynamic
    quantization does not do, before TensorRT is looked up and before anything is written.
    (Mutants: the writer accepting `quant_format` nvfp4; mxfp4 given a TensorRT graph.)"""
    from faircalib_export.export.graph import GraphBuilder

    meta, tensors = read_deploy(deployed)
    with pytest.raises(ConfigError, match=f"{fmt} calibration.*misread its E2M1 nibbles"):
        PluginWriter(GraphBuilder("x"), dict(meta, quant_format=fmt), tensors)
    if fmt == "nvfp4":
        return
    fp4 = tmp_path / "deploy-fp4"
    shutil.copytree(deployed, fp4)
    (fp4 / "deploy.json").write_text(json.dumps(dict(meta, quant_format=fmt)))
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # would be TensorRTUnavailableError
    for engine in (True, False):
        with pytest.raises(ConfigError, match="native FP4 graph is nvfp4 only.*w4a4-fp4"):
            export_tensorrt(fp4, tmp_path / "out", "rtx5090", engine=engine)
    assert not (tmp_path / "out").exists()


def test_without_tensorrt_nothing_is_written_and_the_error_is_typed(deployed, tmp_path,
                                                                    monkeypatch):
    """An engine asked for where TensorRT is missing: a typed error, and no half-written
    OUT; the plugin graph alone (engine=False) is written."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    out = tmp_path / "no-trt"
    with pytest.raises(TensorRTUnavailableError) as info:
        export_tensorrt(deployed, out, "rtx3090")
    assert isinstance(info.value, FaircalibError) and "tensorrt" in str(info.value)
    assert not out.exists() and list(tmp_path.iterdir()) == []
    result = export_tensorrt(deployed, tmp_path / "graph-only", "rtx3090", engine=False)
    assert result.engine is None and result.onnx.is_file()
    runtime = json.loads((tmp_path / "graph-only" / "runtime.json").read_text())
    assert runtime["target"]["name"] == "rtx3090" and runtime["engine"] is None
    assert runtime["variant"] == "tensorrt-plugins"  # an int fold: the plugin graph


def test_missing_plugin_library_is_a_typed_error(plugin_export, monkeypatch, tmp_path):
    _, out = plugin_export
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    monkeypatch.setenv("FAIRCALIB_TRT_PLUGINS", str(tmp_path / "missing.so"))
    with pytest.raises(PluginLibraryError, match="missing.so"):
        build_engine(out)


def test_build_engine_needs_the_plugin_graph(deployed, tmp_path):
    plain = export_onnx(deployed, tmp_path / "onnx")
    with pytest.raises(ConfigError, match="tensorrt"):
        build_engine(plain, "rtx4090")


def test_a_built_engine_is_recorded_in_runtime_json_and_the_manifest(plugin_export, tmp_path):
    """build_engine's last step (the engine build itself needs a GPU): runtime.json and
    manifest.json's copy of it both name the engine, and nothing else in the manifest moves."""
    _, out = plugin_export
    export = shutil.copytree(out, tmp_path / "export")
    before = json.loads((export / "manifest.json").read_text())
    assert before["config"]["engine"] is None
    returned = record_engine(export, max_batch=2, max_seq=64)
    runtime = json.loads((export / "runtime.json").read_text())
    manifest = json.loads((export / "manifest.json").read_text())
    assert runtime["engine"] == {"file": "model.engine", "metadata": "engine.json",
                                 "build_log": "build.log", "max_batch": 2, "max_seq": 64}
    assert manifest["config"] == runtime == returned
    assert {k: v for k, v in manifest.items() if k not in ("config", "files")} == {
        k: v for k, v in before.items() if k not in ("config", "files")}
    # the engine's files are the artifact's own: a later export may replace them
    assert set(manifest["files"]) == set(before["files"]) | {"model.engine", "engine.json",
                                                             "build.log"}
    assert {k: v for k, v in runtime.items() if k != "engine"} == {
        k: v for k, v in before["config"].items() if k != "engine"}
    assert sorted(p.name for p in export.iterdir()) == sorted(p.name for p in out.iterdir())


def test_plugin_library_is_loaded_once_per_process(tmp_path, monkeypatch):
    from faircalib_export.trt import export as trt_export

    calls = []

    class Registry:
        registered = False

        def get_creator(self, name, version, namespace):
            return object() if self.registered else None

        def load_library(self, path):
            calls.append(path)
            return None if "bad" in path else "handle"

    fake = types.SimpleNamespace(get_plugin_registry=lambda: registry)
    registry = Registry()
    monkeypatch.setattr(trt_export, "_LOADED_LIBRARIES", {})
    good, bad = tmp_path / "good.so", tmp_path / "bad.so"
    trt_export.load_plugins(fake, good)
    trt_export.load_plugins(fake, good)
    assert calls == [str(good.resolve())]
    with pytest.raises(PluginLibraryError, match="bad.so"):
        trt_export.load_plugins(fake, bad)
    registry.registered = True  # creators already registered (e.g. by another library copy)
    trt_export.load_plugins(fake, tmp_path / "other.so")
    assert len(calls) == 2


def test_plugin_graph_runs_cached_queries(plugin_export):
    """The KV cache of the plugin graph: queries over the other positions' keys and values
    give the uncached logits (the same rule as the ONNX export, tests/export)."""
    deploy, out = plugin_export
    model = onnx.load(str(out / "model.onnx"))
    run = evaluator(model).run
    ids, mask, pos = padded_batch()
    logits, present = run(["logits", CACHE_OUTPUT], graph_feeds(model, ids, mask, pos))
    _, ref_present = load_deployed(deploy)(ids, mask, pos, return_present=True)
    assert np.abs(present - ref_present.numpy()).max() < 1e-5
    a, b, n = 3, 11, ids.shape[1]
    start = a - 1 if read_deploy(deploy)[0]["model_config"]["logit_shift"] else a
    past = np.r_[0:start, b:n]
    key_mask = torch.cat([mask[:, past], mask[:, start:b]], dim=1)
    feeds = graph_feeds(model, ids[:, start:b], key_mask, pos[:, start:b], present[..., past, :])
    (got,) = run(["logits"], feeds)
    assert np.abs(got[:, a - start:] - logits[:, a:b]).max() < 1e-5
