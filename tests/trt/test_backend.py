"""The TensorRT backend on a machine with TensorRT, a GPU and the plugin library (marked
`tensorrt`, deselected by default), and its torch-free import everywhere."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from faircalib_export.fold.deployed import load_deployed


def test_backend_module_imports_without_torch():
    code = textwrap.dedent("""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked in this test")
        sys.meta_path.insert(0, Block())
        from faircalib_export.trt.backend import TensorRTBackend
        from faircalib_export.trt.targets import load_target
        load_target("rtx4090")
        assert "torch" not in sys.modules
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr


@pytest.fixture(scope="module")
def engine_dir(deployed, tmp_path_factory):
    pytest.importorskip("tensorrt")
    from faircalib_export.trt.errors import PluginLibraryError, TensorRTUnavailableError
    from faircalib_export.trt.export import export_tensorrt, find_plugin_library

    try:
        find_plugin_library()
    except PluginLibraryError as err:
        pytest.skip(str(err))
    out = tmp_path_factory.mktemp("engine") / "trt"
    try:
        export_tensorrt(deployed, out, "rtx4090", max_batch=4, max_seq=32)
    except TensorRTUnavailableError as err:
        pytest.skip(str(err))
    return deployed, out


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_engine_matches_folded_pytorch(engine_dir):
    from faircalib_export.trt.backend import TensorRTBackend

    deploy, out = engine_dir
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 256, (3, 17), generator=gen)
    mask = torch.ones(3, 17, dtype=torch.long)
    mask[1, :4] = 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    ref = load_deployed(deploy)(ids, mask, pos).numpy()
    backend = TensorRTBackend(out)
    got = backend.forward(ids.numpy(), mask.numpy(), pos.numpy(), "logits").logits
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 1e-4
    summary = backend.forward(ids.numpy(), mask.numpy(), pos.numpy(), "summary").summary
    assert (summary.token == ref.argmax(-1)).mean() > 0.97
    assert backend.describe()["target"]["name"] == "rtx4090"


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_greedy_decode_matches_pytorch(engine_dir):
    from faircalib_export.decoding.torch_backend import TorchBackend
    from faircalib_export.opener import open_model
    from faircalib_export.trt.backend import TensorRTBackend
    from faircalib_runtime import generate

    deploy, out = engine_dir
    backend = TensorRTBackend(out)
    policy = open_model(deploy).policy(gen_length=8, steps=4)
    prompts = [[5, 6, 7], [8, 9]]
    trt_tokens = generate(backend, prompts, policy).tokens
    torch_tokens = generate(TorchBackend(load_deployed(deploy)), prompts, policy).tokens
    assert np.array_equal(trt_tokens, torch_tokens)
    assert backend.calls["logits"] == 0
