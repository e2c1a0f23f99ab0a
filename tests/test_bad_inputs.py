"""Bad input ends in exit 2 and one line naming the problem: no traceback, no hang,
no silent default, no exit 0.

Each case was a traceback, a hang or a wrong exit 0 before the checks it names.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from faircalib_export.cli import main


def _run(capsys, *argv):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    captured = capsys.readouterr()
    return (exc.value.code or 0), captured.out + captured.err


def _assert_one_line_error(code, text, *needles):
    assert code == 2, text
    assert "Traceback" not in text
    error = [ln for ln in text.splitlines() if ln.startswith("error:")]
    assert len(error) == 1, text
    for needle in needles:
        assert needle in error[0], (needle, error[0])


@pytest.fixture
def checkpoint(tmp_path, llada_single_dir):
    """A private copy of a one-shard tiny LLaDA checkpoint to damage."""
    return shutil.copytree(llada_single_dir, tmp_path / "ck")


def _edit_config(path, **fields):
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(fields)
    (path / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("fields,needle", [
    ({"n_layers": 2.5}, "expected an integer"),
    ({"rope_theta": -1.0}, "rope_theta must be a positive number"),
    ({"pad_token_id": 10**6}, "pad_token_id 1000000 is outside the vocabulary"),
    ({"n_layers": 10**12}, "more than any real checkpoint"),
    ({"d_model": 10**9}, "more than any real checkpoint"),
    ({"n_heads": 5}, "not divisible by num_heads"),
])
def test_bad_config_fields(checkpoint, capsys, fields, needle):
    _edit_config(checkpoint, **fields)
    _assert_one_line_error(*_run(capsys, "info", checkpoint), needle)


def test_config_that_is_not_an_object(checkpoint, capsys):
    (checkpoint / "config.json").write_text("[1, 2]")
    _assert_one_line_error(*_run(capsys, "info", checkpoint), "expected a JSON object")


def _rewrite_weights(path, change):
    file = path / "model.safetensors"
    tensors = load_file(str(file))
    change(tensors)
    save_file(tensors, str(file))


@pytest.mark.parametrize("damage,needle", [
    (lambda t: t["model.transformer.blocks.0.q_proj.weight"].view(-1).__setitem__(0, float("nan")),
     "NaN or Inf"),
    (lambda t: t.__setitem__("model.transformer.blocks.0.q_proj.weight",
                             t["model.transformer.blocks.0.q_proj.weight"].to(torch.int8)),
     "must be a float tensor"),
])
def test_bad_weights_do_not_decode(checkpoint, capsys, damage, needle):
    if "model.transformer.blocks.0.q_proj.weight" not in load_file(
            str(checkpoint / "model.safetensors")):
        pytest.skip("layout changed")
    _rewrite_weights(checkpoint, damage)
    code, text = _run(capsys, "generate", checkpoint, "-p", "hi", "--gen-length", "8",
                      "--steps", "4")
    _assert_one_line_error(code, text, needle)


def test_shard_index_may_not_point_outside_the_checkpoint(tmp_path, llada_dir, capsys):
    ck = shutil.copytree(llada_dir, tmp_path / "ck")
    index = json.loads((ck / "model.safetensors.index.json").read_text())
    key = next(iter(index["weight_map"]))
    secret = tmp_path / "outside.safetensors"
    save_file({"x": torch.zeros(1)}, str(secret))
    index["weight_map"][key] = "../outside.safetensors"
    (ck / "model.safetensors.index.json").write_text(json.dumps(index))
    _assert_one_line_error(*_run(capsys, "info", ck), "outside the checkpoint directory")


def test_safetensors_header_that_is_not_an_object(checkpoint, capsys):
    header = b"[1,2,3]"
    (checkpoint / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    _assert_one_line_error(*_run(capsys, "info", checkpoint), "header is not a JSON object")


@pytest.mark.parametrize("argv,needle", [
    (("eval", "llada-chain", "--limit", "0"), "limit must be an integer >= 1"),
    (("eval", "llada-chain", "--task", "nope", "--limit", "2"), "nope"),
    (("probe", "llada-chain", "--samples", "0"), "samples must be an integer >= 1"),
    (("calibrate", "llada-chain", "--samples", "0"), "samples must be an integer >= 1"),
    (("calibrate", "llada-chain", "--seq-len", "100000"), "exceeds the model's maximum"),
    (("calibrate", "llada-chain", "--w-bits", "16"), "unsupported weight bit width 16"),
    (("calibrate", "llada-chain", "--device", "cuda"), "no CUDA device"),
    (("calibrate", "llada-chain", "--device", "tpu9"), "is not a device"),
    (("generate", "llada-chain", "-p", "x", "--temperature", "nan"), "temperature"),
    (("generate", "llada-chain", "-p", "<|mdm_mask|>"), "mask id"),
])
def test_bad_options(tmp_path, capsys, argv, needle):
    if argv[0] in ("probe", "calibrate"):
        argv = (*argv, "-o", tmp_path / "out")
    _assert_one_line_error(*_run(capsys, *argv), needle)
    assert not (tmp_path / "out").exists()


def test_prior_with_a_negative_floor(tmp_path, capsys):
    prior = tmp_path / "prior"
    prior.mkdir()
    (prior / "prior.json").write_text(json.dumps({"weights": [1.0, 0.5], "floor": -0.5}))
    code, text = _run(capsys, "calibrate", "llada-chain", "--prior", prior, "-o",
                      tmp_path / "out")
    _assert_one_line_error(code, text, "floor")


def test_invalid_json_in_a_manifest_names_the_file(tmp_path, capsys):
    art = tmp_path / "art"
    art.mkdir()
    (art / "manifest.json").write_text("{")
    _assert_one_line_error(*_run(capsys, "fold", art, "-o", tmp_path / "d"), "manifest.json",
                           "invalid JSON")


def test_text_inputs_that_are_not_utf8_name_the_file(tmp_path, capsys):
    data = tmp_path / "latin1.txt"
    data.write_bytes("café au lait\n".encode("latin-1") * 20)
    code, text = _run(capsys, "calibrate", "llada-chain", "--method", "rtn", "--data", data,
                      "-o", tmp_path / "out")
    _assert_one_line_error(code, text, str(data), "not UTF-8")
    code, text = _run(capsys, "probe", "llada-chain", "--data", data, "--samples", 2, "-o",
                      tmp_path / "prior")
    _assert_one_line_error(code, text, str(data), "not UTF-8")


@pytest.fixture(scope="module")
def folded_chain(tmp_path_factory):
    from faircalib_export.calibrate.config import CalibConfig
    from faircalib_export.calibrate.entry import calibrate_checkpoint
    from faircalib_export.fold.fold import fold_artifact

    root = tmp_path_factory.mktemp("folded")
    art = calibrate_checkpoint("llada-chain", root / "cal", CalibConfig("rtn"), samples=2,
                               seq_len=16)
    return fold_artifact(art, root / "deploy")


@pytest.mark.parametrize("field,value,needle", [
    ("w_bits", 8, "w_bits 8 disagrees with the stored weights"),
    ("embed_bits", 4, "embed bits 4 disagree"),
])
def test_deploy_json_bits_must_match_the_stored_weights(folded_chain, tmp_path, capsys, field,
                                                        value, needle):
    deploy = shutil.copytree(folded_chain, tmp_path / "deploy")
    meta = json.loads((deploy / "deploy.json").read_text())
    (deploy / "deploy.json").write_text(json.dumps({**meta, field: value}))
    code, text = _run(capsys, "export", deploy, "-o", tmp_path / "onnx")
    _assert_one_line_error(code, text, needle)
    assert not (tmp_path / "onnx").exists()


def test_validate_reads_jsonl_prompts(tmp_path, capsys):
    from faircalib_export.validate import ValidationError, read_prompts

    file = tmp_path / "p.jsonl"
    file.write_text('{"prompt": "a"}\n\n{"question": "b"}\n')
    assert read_prompts(file, []) == ["a", "b"]
    file.write_text('{"prompt": "a"}\n[1]\n')
    with pytest.raises(ValidationError, match="no prompts"):
        read_prompts(file, [])


@pytest.mark.parametrize("argv,needle", [
    (("compare", "llada-chain", "--task", "nope", "--seeds", "1"), "unknown task 'nope'"),
    (("build", "llada-chain", "--target", "gtx480"), "unknown target"),
    (("probe", "llada-chain", "--window", "600"), "probing window of 600 tokens"),
])
def test_a_failed_start_leaves_no_output(tmp_path, capsys, argv, needle):
    _assert_one_line_error(*_run(capsys, *argv, "-o", tmp_path / "out"), needle)
    assert list(tmp_path.iterdir()) == []  # no empty marked directory, no lock


def test_a_window_longer_than_the_model_is_refused(capsys):
    code, text = _run(capsys, "generate", "llada-chain", "-p", "hi", "--gen-length", "600",
                      "--block-length", "600", "--steps", "600")
    _assert_one_line_error(code, text, "leaves no room for a prompt")


def test_nan_in_artifacts_is_refused(tmp_path, capsys):
    """NaN written into a calibrated block or a folded model's weights: refused on load."""
    from faircalib_export.calibrate.config import CalibConfig
    from faircalib_export.calibrate.entry import calibrate_checkpoint
    from faircalib_export.fold.fold import fold_artifact

    art = calibrate_checkpoint("llada-chain", tmp_path / "cal", CalibConfig("flatquant", epochs=1),
                               samples=2, seq_len=16)
    deploy = fold_artifact(art, tmp_path / "deploy")
    block = art / "blocks" / "block_000.safetensors"
    state = load_file(str(block))
    key = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1
               and torch.isfinite(v).all())
    state[key].view(-1)[0] = float("nan")
    save_file(state, str(block))
    code, text = _run(capsys, "fold", art, "-o", tmp_path / "d2")
    _assert_one_line_error(code, text, "NaN")
    weights = load_file(str(deploy / "weights.safetensors"))
    weights["blocks.0.attn.k_proj.scale"][0] = float("nan")
    save_file(weights, str(deploy / "weights.safetensors"))
    code, text = _run(capsys, "export", deploy, "-o", tmp_path / "onnx")
    _assert_one_line_error(code, text, "NaN")


def test_infinite_learning_rate_is_refused_before_work(tmp_path, capsys):
    code, text = _run(capsys, "calibrate", "llada-chain", "--method", "flatquant", "--lr", "inf",
                      "-o", tmp_path / "out")
    _assert_one_line_error(code, text, "finite")
    assert list(tmp_path.iterdir()) == []


def test_a_kept_prior_of_another_model_is_refused(tmp_path, capsys, llada_dir):
    """calibrate without --prior keeps OUT.prior; a later run on another model must not
    silently reuse it."""
    args = ("--method", "fair-calib", "--samples", "2", "--seq-len", "16", "--epochs", "1")
    out = tmp_path / "x"
    assert _run(capsys, "calibrate", "llada-chain", "-o", out, *args)[0] == 0
    shutil.rmtree(out)
    data = tmp_path / "t.txt"
    data.write_text("some text to calibrate on\n" * 40)
    code, text = _run(capsys, "calibrate", llada_dir, "-o", out, *args, "--data", data)
    _assert_one_line_error(code, text, "was probed on")
