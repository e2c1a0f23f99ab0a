"""The W4A4 CUDA kernels, run from their unchanged source on the CPU emulator.

No GPU is needed, only make and a C++17 compiler. This runs the kernels' indexing, tiling,
MMA fragment layouts, tails and cp.async pipeline (runtimes/tensorrt/emulator/emu.cpp says
what is and is not emulated):
- the standalone harness, bit for bit against its C++ reference, as four devices (sm_80,
  sm_86 and sm_89 pick the int4 MMA, sm_90 the int8 MMA; sm_86's 99 KB shared-memory opt-in
  is the tightest for Dream-7B's 128 x 148 down-projection site), with cp.async copies eager
  and as late as wait_group allows, and fibers in forward, reverse and shuffled order;
- a kernel with a pipeline bug fails that harness (the check can fail);
- the plugin-node ONNX graph of folded tiny models with the plugin ops computed by the
  emulated kernels: equal to the numpy reference's run, and to the folded PyTorch model;
- where TensorRT's headers are found (TENSORRT_INCLUDE_DIR / TENSORRT_ROOT): the same graph
  through the IPluginV3 plugins themselves (tests/plugin_driver.cpp makes TensorRT's calls).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import emulated_plugins
import numpy as np
import onnx
import pytest
from emulated_kernels import HARNESS, LIBRARY, EmulatedKernels, build, toolchain_missing
from helpers import padded_batch
from onnx.reference import ReferenceEvaluator
from trt_env import RUNTIME_DIR, tensorrt_include
from trt_plugin_ops import evaluator, graph_feeds

from faircalib_export.fold.deployed import load_deployed
from faircalib_export.trt import reference
from faircalib_export.trt.export import write_plugin_onnx

pytestmark = pytest.mark.skipif(toolchain_missing() is not None,
                                reason=toolchain_missing() or "")


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    return build(tmp_path_factory.mktemp("emulator"))


def _harness(binary, *args, **env):
    return subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=900,
                          env={**os.environ, **env})


@pytest.mark.parametrize("sm, copies, order, path", [
    ("89", "lazy", "forward", "int4-mma"),
    ("90", "eager", "reverse", "int8-mma"),
    ("80", "lazy", "shuffled", "int4-mma"),
    ("86", "eager", "shuffled", "int4-mma"),
])
def test_harness_is_exact_on_the_emulated_device(emulator, sm, copies, order, path):
    run = _harness(emulator / HARNESS, "--small", FAIRCALIB_EMU_SM=sm,
                   FAIRCALIB_EMU_CP_ASYNC=copies, FAIRCALIB_EMU_ORDER=order)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert f"GEMM path for this device: {path}" in run.stdout
    passed = int(re.search(r"(\d+) passed, 0 failed", run.stdout).group(1))
    assert passed == 7 * 4 * 3 + 13  # 7 GEMM shapes x (3 types + bias) x 3 paths, quantize


@pytest.mark.slow
def test_harness_quick_with_a_real_size_gemm(emulator):
    """--quick adds the 19 x 4096 x 4096 GEMM (LLaDA-8B's q/k/v/o shape)."""
    run = _harness(emulator / HARNESS, "--quick", FAIRCALIB_EMU_CP_ASYNC="lazy")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "m=19 n=4096 k=4096" in run.stdout


def test_a_pipeline_bug_fails_the_harness(tmp_path):
    """Without the in-loop cp.async.wait_group, lazy copies leave stale (poisoned) tiles."""
    tree = tmp_path / "tensorrt"
    for part in ("kernels", "include", "tests", "emulator"):
        shutil.copytree(RUNTIME_DIR / part, tree / part, ignore=shutil.ignore_patterns("build"))
    gemm = tree / "kernels" / "gemm.cu"
    source = gemm.read_text()
    assert "        cpAsyncWait<kStages - 2>();\n" in source
    gemm.write_text(source.replace("        cpAsyncWait<kStages - 2>();\n", "", 1))
    result = subprocess.run(["make", "-C", str(tree / "emulator"), f"BUILD={tmp_path / 'b'}",
                             f"{tmp_path / 'b' / HARNESS}"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    run = _harness(tmp_path / "b" / HARNESS, "--small", FAIRCALIB_EMU_CP_ASYNC="lazy")
    assert run.returncode == 1
    assert re.search(r"FAIL  gemm int4-mma", run.stdout) and "FAIL  gemm dp4a" not in run.stdout


def test_launch_errors_come_back_as_cuda_errors(emulator):
    kernels = EmulatedKernels(emulator / LIBRARY)
    words = reference.packed_words(128)
    with pytest.raises(RuntimeError, match=r"invalid argument \(1\)"):  # K not padded to 128
        kernels.gemm(np.zeros((2, words - 1), np.int32), np.ones(2, np.float32),
                     np.zeros((3, words - 1), np.int32), np.ones(3, np.float32), 120)
    # a 64 x 1024 transform site needs more shared memory than an sm_89 block may have
    with pytest.raises(RuntimeError, match=r"invalid configuration argument \(9\)"):
        kernels.quantize(np.ones((1, 64 * 1024), np.float32), 1.0,
                         np.eye(64, dtype=np.float32), np.eye(1024, dtype=np.float32))


def test_kernels_match_the_numpy_contract(emulator):
    """Random shapes with M / N tails and a K that is padded, every output type and path."""
    kernels = EmulatedKernels(emulator / LIBRARY)
    rng = np.random.default_rng(0)
    m, n, k = 37, 70, 200
    a = reference.pack_words(rng.integers(-8, 8, (m, k)))
    b = reference.pack_words(rng.integers(-8, 8, (n, k)))
    sa = rng.uniform(1e-3, 2e-2, m).astype(np.float32)
    sb = rng.uniform(1e-3, 2e-2, n).astype(np.float32)
    bias = rng.normal(size=n).astype(np.float32)
    for dtype in reference.OUT_DTYPES:
        expect = reference.gemm(a, sa, b, sb, k, bias, dtype)
        for path in (1, 2, 3):  # int4-mma, int8-mma, dp4a
            got = kernels.gemm(a, sa, b, sb, k, bias, dtype, path=path)
            np.testing.assert_array_equal(got.view(np.uint8), np.asarray(expect).view(np.uint8))
    x = rng.normal(size=(9, 8 * 17)).astype(np.float32)
    x[:, 5] *= 30  # an outlier channel
    p1 = rng.normal(size=(8, 8)).astype(np.float32)
    p2 = rng.normal(size=(17, 17)).astype(np.float32)
    words, scales = kernels.quantize(x, 0.9, p1, p2)
    ref_words, ref_scales = reference.quantize(x, 0.9, p1, p2)
    np.testing.assert_array_equal(words, ref_words)
    np.testing.assert_array_equal(scales, ref_scales)


def test_plugin_graph_on_the_emulated_kernels(emulator, deployed, tmp_path):
    """The whole exported TensorRT graph, its plugin ops run by the CUDA kernels' source."""
    out = write_plugin_onnx(deployed, tmp_path / "export", "rtx4090")
    model = onnx.load(str(out / "model.onnx"))
    ids, mask, pos = padded_batch()
    feeds = graph_feeds(model, ids, mask, pos)
    kernels = EmulatedKernels(emulator / LIBRARY)
    logits, token = evaluator(model, kernels).run(["logits", "token"], feeds)
    ref_logits, ref_token = evaluator(model).run(["logits", "token"], feeds)
    np.testing.assert_array_equal(logits, ref_logits)
    np.testing.assert_array_equal(token, ref_token)
    torch_logits = load_deployed(deployed)(ids, mask, pos).numpy()
    assert np.linalg.norm(logits - torch_logits) / np.linalg.norm(torch_logits) < 1e-5
    np.testing.assert_array_equal(token, torch_logits.argmax(-1))



@pytest.fixture(scope="module")
def plugins(tmp_path_factory):
    include = tensorrt_include()
    if include is None:
        pytest.skip("NvInfer.h not found (set TENSORRT_INCLUDE_DIR or TENSORRT_ROOT)")
    library = emulated_plugins.build(tmp_path_factory.mktemp("plugins"), include)
    return emulated_plugins.EmulatedPlugins(library)


def test_plugin_graph_through_the_tensorrt_plugins(plugins, deployed, tmp_path):
    """Each plugin node: creator lookup, fields from the node's attributes, output types and
    shapes, formats, serialize and recreate, enqueue; the same logits as the numpy contract."""
    out = write_plugin_onnx(deployed, tmp_path / "export", "rtx4090")
    model = onnx.load(str(out / "model.onnx"))
    ids, mask, pos = padded_batch()
    feeds = graph_feeds(model, ids, mask, pos)
    ops = emulated_plugins.plugin_ops(plugins)
    logits, token = ReferenceEvaluator(model, new_ops=ops).run(["logits", "token"], feeds)
    ref_logits, ref_token = evaluator(model).run(["logits", "token"], feeds)
    np.testing.assert_array_equal(logits, ref_logits)
    np.testing.assert_array_equal(token, ref_token)


def test_plugins_fp16_output_and_field_errors(plugins):
    rng = np.random.default_rng(1)
    m, n, k = 5, 24, 40
    a = reference.pack_words(rng.integers(-8, 8, (m, k)))
    b = reference.pack_words(rng.integers(-8, 8, (n, k)))
    sa = rng.uniform(1e-3, 2e-2, (m, 1)).astype(np.float32)
    sb = rng.uniform(1e-3, 2e-2, n).astype(np.float32)
    gemm = dict(in_features=k, out_features=n, has_bias=0, out_dtype=1)
    (y,) = plugins.run("FaircalibW4A4Gemm", gemm, [a, sa, b, sb], [((m, n), np.float16)])
    np.testing.assert_array_equal(y, reference.gemm(a, sa, b, sb, k, None, "float16"))
    with pytest.raises(RuntimeError, match="another type"):  # fp16 out, fp32 expected
        plugins.run("FaircalibW4A4Gemm", gemm, [a, sa, b, sb], [((m, n), np.float32)])
    with pytest.raises(RuntimeError, match="out_dtype must be 0"):
        plugins.run("FaircalibW4A4Gemm", dict(gemm, out_dtype=5), [a, sa, b, sb],
                    [((m, n), np.float32)])
    x = rng.normal(size=(2, 3, 40)).astype(np.float32)
    p1, p2t = np.eye(5, dtype=np.float32), np.eye(8, dtype=np.float32)
    quant = dict(dim=40, n1=3, n2=8, has_transform=1, act_clip=0.9)
    with pytest.raises(RuntimeError, match=r"n1 \* n2 must equal dim"):
        plugins.run("FaircalibW4A4Quantize", quant, [x, p1, p2t],
                    [((2, 3, 16), np.int32), ((2, 3, 1), np.float32)])
    with pytest.raises(RuntimeError, match="no creator FaircalibW4A4Nope"):
        plugins.run("FaircalibW4A4Nope", quant, [x], [((2, 3, 16), np.int32)])
