"""FP4 through the pipeline: `calibrate --format`, fold (packed E2M1, byte block scales),
the opset-23 FLOAT4E2M1 graph under ONNX's reference evaluator, the ORT emulation graph
through `validate`, and the variant / format checks.

Mutants: a graph whose activation scale or E2M1 rounding differs from PyTorch's (logits
off by far more than 1e-4), block scales stored along the wrong axis or in another
encoding, an FP4 variant accepted for an int model.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx.reference import ReferenceEvaluator

from faircalib_export.calibrate.artifact import load_quantized
from faircalib_export.calibrate.config import CalibConfig
from faircalib_export.calibrate.entry import calibrate_checkpoint
from faircalib_export.cli import main
from faircalib_export.errors import CheckpointError, ConfigError
from faircalib_export.export.onnx_export import ExportOptions, check_variant_format, export_onnx
from faircalib_export.fold.deployed import load_deployed, read_deploy
from faircalib_export.fold.fold import fold_artifact
from faircalib_export.fold.pack import pack_fp4, unpack_fp4
from faircalib_export.quant.formats import QuantFormat
from faircalib_export.validate import validate
from faircalib_runtime.onnx import ExportError, OnnxBackend


@pytest.fixture(scope="module", params=["nvfp4", "mxfp4"])
def fp4_chain(request, tmp_path_factory):
    """dream-chain calibrated in an FP4 format (nvfp4: rtn through the CLI; mxfp4:
    flatquant), folded, exported both ways."""
    fmt = request.param
    root = tmp_path_factory.mktemp(fmt)
    if fmt == "nvfp4":  # through the CLI, as a user would
        with pytest.raises(SystemExit) as exc:
            main(["calibrate", "dream-chain", "-o", str(root / "cal"), "--method", "rtn",
                  "--format", fmt, "--samples", "2", "--seq-len", "32"])
        assert exc.value.code in (0, None)
        cal = root / "cal"
    else:  # a trained method: Stage II fits its transforms and clips to FP4 numerics
        cal = calibrate_checkpoint("dream-chain", root / "cal",
                                   CalibConfig("flatquant", format=fmt, epochs=1),
                                   samples=2, seq_len=32)
    spec = json.loads((cal / "manifest.json").read_text())["config"]["spec"]
    assert spec["format"] == fmt
    deploy = fold_artifact(cal, root / "deploy")
    return (QuantFormat(fmt), cal, deploy,
            export_onnx(deploy, root / "q23", ExportOptions(variant="w4a4-fp4")),
            export_onnx(deploy, root / "emu", ExportOptions(variant="w4a4-fp4-emu")))


def _inputs():
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 300, (2, 17), generator=gen)
    mask = torch.ones(2, 17, dtype=torch.long)
    mask[1, :4] = 0
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def _feeds(model: onnx.ModelProto, ids, mask, pos) -> dict:
    past = next(i for i in model.graph.input if i.name == "past_key_values")
    dims = [d.dim_value for d in past.type.tensor_type.shape.dim]
    dims[2], dims[4] = ids.shape[0], 0
    return {"input_ids": ids.numpy(), "attention_mask": mask.numpy(),
            "position_ids": pos.numpy(), "past_key_values": np.zeros(dims, np.float32)}


def _rel(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_fold_stores_packed_fp4_with_byte_block_scales(fp4_chain):
    fmt, cal, deploy, _, _ = fp4_chain
    meta, tensors = read_deploy(deploy)
    assert meta["quant_format"] == fmt.value and meta["block_size"] == fmt.block_size
    q = tensors["blocks.0.mlp.down_proj.qweight"]  # (192, 640): in = intermediate 640
    s = tensors["blocks.0.mlp.down_proj.block_scale"]
    assert q.dtype == torch.uint8 and tuple(q.shape) == (192, 320)
    assert s.dtype == torch.uint8 and tuple(s.shape) == (192, 640 // fmt.block_size)
    ids, mask, pos = _inputs()
    with torch.no_grad():
        ref = load_quantized(cal)(ids, mask, pos)
        out = load_deployed(deploy)(ids, mask, pos)
    assert torch.equal(out, ref)


def test_reference_evaluator_matches_the_fake_quant_model(fp4_chain):
    fmt, cal, _, q23, _ = fp4_chain
    model = onnx.load(str(q23 / "model.onnx"))
    assert model.opset_import[0].version == 23
    fp4 = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT4E2M1]
    assert len(fp4) == 4 * 7  # every block linear
    blocked = [n for n in model.graph.node if n.op_type == "QuantizeLinear"
               and any(a.name == "block_size" and a.i == fmt.block_size for a in n.attribute)]
    assert len(blocked) == 4 * 4  # every site's activations
    ids, mask, pos = _inputs()
    with torch.no_grad():
        ref = load_quantized(cal)(ids, mask, pos).numpy()
    out = ReferenceEvaluator(model).run(["logits"], _feeds(model, ids, mask, pos))[0]
    assert _rel(out, ref) <= 1e-4, _rel(out, ref)


def test_emulation_graph_runs_on_ort_and_validates(fp4_chain):
    from faircalib_export.opener import open_model

    fmt, cal, _, _, emu = fp4_chain
    backend = OnnxBackend(emu)
    ids, mask, pos = _inputs()
    with torch.no_grad():
        ref = load_quantized(cal)(ids, mask, pos).numpy()
    out = backend.forward(ids.numpy(), mask.numpy(), pos.numpy(), "logits").logits
    assert _rel(out, ref) <= 1e-4, _rel(out, ref)
    reference = open_model(cal)
    report = validate(reference, open_model(emu), ["start 12 then +3", "start 7 then -2"],
                      gen_length=8, steps=4)
    assert report["passed"], report["metrics"]
    assert json.loads((emu / "runtime.json").read_text())["quant_format"] == fmt.value


def test_fp4_qdq_graph_is_refused_by_ort_with_a_hint(fp4_chain):
    _, _, _, q23, _ = fp4_chain
    try:
        OnnxBackend(q23)
    except ExportError as err:
        assert "w4a4-fp4-emu" in str(err)


def test_variants_must_match_the_format(fp4_chain, tmp_path):
    fmt, _, deploy, _, _ = fp4_chain
    with pytest.raises(ConfigError, match="--variant w4a4-fp4"):
        export_onnx(deploy, tmp_path / "int", ExportOptions(variant="w4a4-int"))
    with pytest.raises(ConfigError, match="needs a model calibrated with --format"):
        check_variant_format("w4a4-fp4-emu", QuantFormat.INT)
    assert check_variant_format("w4a4", QuantFormat.INT) is QuantFormat.INT


def test_fold_refuses_mismatched_block_scales(fp4_chain, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    _, _, deploy, _, _ = fp4_chain
    bad = tmp_path / "bad"
    shutil.copytree(deploy, bad)
    tensors = load_file(str(bad / "weights.safetensors"))
    key = "blocks.1.attn.q_proj.block_scale"
    tensors[key] = tensors[key].T.contiguous()  # blocks along the wrong axis
    save_file(tensors, str(bad / "weights.safetensors"))
    with pytest.raises(CheckpointError, match="block_scale"):
        read_deploy(bad)


def test_fp4_nibble_packing():
    values = np.array([[0.5, -6.0, 0.0, 3.0, -1.5]], np.float32)
    packed = pack_fp4(values)
    assert packed.tolist() == [[0xF1, 0x50, 0x0B]]  # 0.5 = 0001, -6 = 1111, 3 = 0101, -1.5
    assert np.array_equal(unpack_fp4(packed, 5), values)
    with pytest.raises(ValueError, match="E2M1"):
        pack_fp4(np.array([[2.5]], np.float32))


@pytest.mark.parametrize("fmt", [QuantFormat.NVFP4, QuantFormat.MXFP4])
def test_graph_activation_rounding_is_pytorch_bit_for_bit(fmt):
    """The FP4 activation ops alone, on exact ties and block amaxes at exact powers of
    two (where floor(log2) from Log / ln 2 needs its correction): ONNX Runtime (emulation)
    and the reference evaluator (both forms) against `fp4_fake_quant`."""
    import onnxruntime as ort
    from onnx import TensorProto

    from faircalib_export.export import fp4_graph
    from faircalib_export.export.graph import FP4_IR_VERSION, FP4_OPSET, GraphBuilder
    from faircalib_export.quant.fp4 import fp4_fake_quant

    gen = torch.Generator().manual_seed(0)
    k = 64
    x = torch.randn(2, 120, k, generator=gen)
    blocks = x.view(2, 120, -1, fmt.block_size)
    power = torch.exp2(torch.arange(-100.0, 20.0))[:, None]  # (120, 1): 2^-100 .. 2^19
    blocks[0, :, 0] = power * torch.rand(120, fmt.block_size, generator=gen) * 0.99
    blocks[0, :, 0, 0] = power[:, 0]  # block amax 2^e exactly (and clip 0.5 keeps it so)
    ties = torch.tensor([6.0, 2.5, 5.0, 0.25, 0.75, 1.25, 1.75, 3.5]).repeat(k // 8)
    x[1, 0] = 2 * ties  # MX: block amax 12, scale 2 after the clip, every tie exact
    clip = 0.5
    want = fp4_fake_quant(x, fmt, torch.tensor(clip)).numpy()
    for emulate in (True, False):
        b = GraphBuilder("fp4-act")
        inp = b.input("x", TensorProto.FLOAT, [2, 120, k])
        b.output(fp4_graph.act_qdq(b, inp, fmt, clip, emulate), "y", TensorProto.FLOAT,
                 [2, 120, k])
        model = b.model() if emulate else b.model(opset=FP4_OPSET, ir_version=FP4_IR_VERSION)
        got = ReferenceEvaluator(model).run(None, {"x": x.numpy()})[0]
        assert np.array_equal(got, want), (emulate, np.abs(got - want).max())
        if emulate:
            session = ort.InferenceSession(model.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
            got = session.run(None, {"x": x.numpy()})[0]
            assert np.array_equal(got, want), np.abs(got - want).max()
