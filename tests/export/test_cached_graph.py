"""The KV cache of the exported graph, every ONNX variant and both families: with an empty
past it is the uncached graph, bit for bit; queries over the other positions' cached keys
and values give the uncached logits; an export without the cache runs uncached and refuses
cached calls; runtime.json's "cache" field is validated."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from helpers import padded_batch
from onnx import helper, numpy_helper

from faircalib_export.export.onnx_export import (
    CACHE_INPUT,
    CACHE_OUTPUT,
    VARIANTS,
    ExportOptions,
    export_onnx,
)
from faircalib_export.fold.deployed import load_deployed
from faircalib_export.fold.fold import fold_artifact
from faircalib_runtime.backend import PAST_LAYOUT, supports_cache
from faircalib_runtime.onnx import (
    RUNTIME_JSON,
    ExportError,
    OnnxBackend,
    validate_runtime_config,
)

SPLIT_TOLERANCE = 1e-5  # the same arithmetic; only the order of the attention sums differs
SUMMARY = ("token", "prob", "margin", "neg_entropy")


@pytest.fixture(scope="module")
def exports(calibrated, tmp_path_factory):
    """(folded model directory, variant -> export directory)."""
    _, art = calibrated
    root = tmp_path_factory.mktemp("cached-onnx")
    deploy = fold_artifact(art, root / "deploy")
    return deploy, {v: export_onnx(deploy, root / v, ExportOptions(variant=v)) for v in VARIANTS}


def _batch():
    ids, mask, pos = padded_batch()
    return ids.numpy(), mask.numpy(), pos.numpy()


def test_graph_and_runtime_json_carry_the_cache(exports):
    deploy, out = exports
    cfg = load_deployed(deploy).cfg
    model = onnx.load(str(out["w4a4"] / "model.onnx"))
    dims = lambda t: [d.dim_value or d.dim_param for d in t.type.tensor_type.shape.dim]  # noqa: E731
    graph = {t.name: dims(t) for t in [*model.graph.input, *model.graph.output]}
    layers, g, d = cfg.num_layers, cfg.num_kv_heads, cfg.head_dim
    assert graph[CACHE_INPUT] == [layers, 2, "batch", g, "past", d]
    assert graph[CACHE_OUTPUT] == [layers, 2, "batch", g, "seq", d]
    assert graph["attention_mask"] == ["batch", "past+seq"]
    cache = json.loads((out["w4a4"] / RUNTIME_JSON).read_text())["cache"]
    assert cache == {"input": CACHE_INPUT, "output": CACHE_OUTPUT, "layout": list(PAST_LAYOUT),
                     "shape": [layers, 2, None, g, None, d]}


@pytest.mark.parametrize("variant", VARIANTS)
def test_empty_past_is_the_uncached_graph(exports, variant):
    deploy, out = exports
    backend = OnnxBackend(out[variant])
    assert supports_cache(backend)
    ids, mask, pos = _batch()
    for want in ("logits", "summary"):
        step = backend.forward_cached(ids, mask, pos, None, want)
        plain = backend.forward(ids, mask, pos, want)
        if want == "logits":
            np.testing.assert_array_equal(step.output.logits, plain.logits)
        else:
            for field in SUMMARY:
                np.testing.assert_array_equal(getattr(step.output.summary, field),
                                              getattr(plain.summary, field))
    # the cache's layout is the PyTorch models' (same keys and values, float32)
    _, present = load_deployed(deploy)(*map(torch.from_numpy, (ids, mask, pos)),
                                       return_present=True)
    assert step.present.dtype == np.float32 and step.present.shape == present.shape
    if variant != "weight-only":  # W4A16 computes other keys than the W4A4 reference
        assert np.abs(step.present - present.numpy()).max() < SPLIT_TOLERANCE


@pytest.mark.parametrize("variant", VARIANTS)
def test_queries_over_a_cached_past_match_the_uncached_graph(exports, variant):
    deploy, out = exports
    backend = OnnxBackend(out[variant])
    shift = load_deployed(deploy).cfg.logit_shift
    ids, mask, pos = _batch()
    n = ids.shape[1]
    full = backend.forward(ids, mask, pos, "logits").logits
    present = backend.forward_cached(ids, mask, pos, None, "logits").present
    for a, b in ((3, 11), (1, 6), (12, n)):
        start = a - 1 if shift else a  # Dream's output a is read at a - 1
        past = np.r_[0:start, b:n]
        key_mask = np.concatenate([mask[:, past], mask[:, start:b]], axis=1)
        step = backend.forward_cached(ids[:, start:b], key_mask, pos[:, start:b],
                                      present[..., past, :], "logits")
        got = step.output.logits[:, a - start:]
        assert np.abs(got - full[:, a:b]).max() < SPLIT_TOLERANCE, (a, b)
        assert np.abs(step.present - present[..., start:b, :]).max() < SPLIT_TOLERANCE
        tokens = backend.forward_cached(ids[:, start:b], key_mask, pos[:, start:b],
                                        present[..., past, :], "summary").output.summary.token
        np.testing.assert_array_equal(tokens[:, a - start:], full[:, a:b].argmax(-1))


def _without_cache(export, out):
    """`export` as exported before the cache: the graph takes no past (it makes an empty
    one itself), outputs no present, and runtime.json has no "cache"."""
    shutil.copytree(export, out)
    model = onnx.load(str(out / "model.onnx"))
    graph = model.graph
    past = next(i for i in graph.input if i.name == CACHE_INPUT)
    layers, two, _, kv_heads, _, head_dim = (d.dim_value for d in
                                             past.type.tensor_type.shape.dim)
    graph.input.remove(past)
    graph.output.remove(next(o for o in graph.output if o.name == CACHE_OUTPUT))
    graph.initializer.extend([
        numpy_helper.from_array(np.array([layers, two], np.int64), "old.lead"),
        numpy_helper.from_array(np.array([kv_heads, 0, head_dim], np.int64), "old.tail")])
    graph.node.insert(0, helper.make_node("Shape", ["input_ids"], ["old.batch"], end=1))
    graph.node.insert(1, helper.make_node("Concat", ["old.lead", "old.batch", "old.tail"],
                                          ["old.shape"], axis=0))
    graph.node.insert(2, helper.make_node("ConstantOfShape", ["old.shape"], [CACHE_INPUT],
                                          value=numpy_helper.from_array(np.zeros(1, np.float32))))
    onnx.save(model, str(out / "model.onnx"))
    config = json.loads((out / RUNTIME_JSON).read_text())
    del config["cache"]
    (out / RUNTIME_JSON).write_text(json.dumps(config))
    return out


def test_an_export_without_the_cache_runs_uncached_and_refuses_cached_calls(exports,
                                                                             tmp_path):
    _, out = exports
    old = OnnxBackend(_without_cache(out["w4a4-int"], tmp_path / "old"))
    assert not old.supports_cache and not supports_cache(old)
    ids, mask, pos = _batch()
    np.testing.assert_array_equal(old.forward(ids, mask, pos, "logits").logits,
                                  OnnxBackend(out["w4a4-int"]).forward(ids, mask, pos,
                                                                       "logits").logits)
    with pytest.raises(ExportError, match=r"old was exported without the KV cache.*re-export"):
        old.forward_cached(ids, mask, pos, None, "summary")


def test_a_wrong_past_or_key_mask_is_refused(exports):
    _, out = exports
    backend = OnnxBackend(out["w4a4"])
    ids, mask, pos = _batch()
    present = backend.forward_cached(ids, mask, pos, None, "logits").present
    with pytest.raises(ValueError, match="past has shape"):
        backend.forward_cached(ids, mask, pos, present[:, :, :2], "logits")
    with pytest.raises(ValueError, match="key_mask has shape"):
        backend.forward_cached(ids[:, :5], mask, pos[:, :5], present[..., 5:9, :], "logits")


def _cache_edit(config, key, value):
    config = json.loads(json.dumps(config))
    if key is None:
        config["cache"] = value
    else:
        config["cache"][key] = value
    return config


BAD_CACHE = {  # id -> (key of "cache" or None for the whole field, value, message)
    "a-list": (None, [1], "'cache'"),
    "no-input": ("input", None, "'cache'"),
    "layout": ("layout", ["layers", "2", "batch", "keys", "kv_heads", "head_dim"],
               "'cache.layout'"),
    "rank": ("shape", [2, 2, None, 2, None], "'cache.shape'"),
    "fixed-batch": ("shape", [2, 2, 1, 2, None, 12], "'cache.shape'"),
    "not-2": ("shape", [2, 3, None, 2, None, 12], "'cache.shape'"),
    "zero-heads": ("shape", [2, 2, None, 0, None, 12], "'cache.shape'"),
}


@pytest.mark.parametrize("case", list(BAD_CACHE))
def test_runtime_json_cache_field_is_validated(exports, case):
    _, out = exports
    config = json.loads((out["w4a4"] / RUNTIME_JSON).read_text())
    validate_runtime_config(config, "runtime.json")  # as written
    validate_runtime_config({k: v for k, v in config.items() if k != "cache"}, "runtime.json")
    key, value, message = BAD_CACHE[case]
    with pytest.raises(ExportError, match=message):
        validate_runtime_config(_cache_edit(config, key, value), "runtime.json")


def test_runtime_json_cache_must_agree_with_the_model_and_graph(exports, tmp_path):
    _, out = exports
    config = json.loads((out["w4a4"] / RUNTIME_JSON).read_text())
    layers, two, _, kv_heads, _, head_dim = config["cache"]["shape"]
    more_layers = [layers + 1, two, None, kv_heads, None, head_dim]
    with pytest.raises(ExportError, match="deploy_config's num_layers"):
        validate_runtime_config(_cache_edit(config, "shape", more_layers), "runtime.json")
    for key, value, message in (("input", "past", "names the input 'past'"),
                                ("shape", [layers, two, None, kv_heads, None, head_dim + 2],
                                 "gives the shape")):
        path = tmp_path / key
        shutil.copytree(out["w4a4"], path)
        (path / RUNTIME_JSON).write_text(json.dumps(_cache_edit(config, key, value)))
        with pytest.raises(ExportError, match=message):
            OnnxBackend(path)
