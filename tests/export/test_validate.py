"""validate: passes on a faithful export, fails loudly on thresholds and foreign inputs."""

from __future__ import annotations

import json

import pytest

from faircalib_export.calibrate.artifact import run_calibration
from faircalib_export.calibrate.config import CalibConfig
from faircalib_export.cli import main
from faircalib_export.export.onnx_export import export_onnx
from faircalib_export.fold.fold import fold_artifact


@pytest.fixture(scope="module")
def exported(calibrated, tmp_path_factory):
    base, art = calibrated
    root = tmp_path_factory.mktemp("val")
    return base, art, export_onnx(fold_artifact(art, root / "deploy"), root / "onnx")


def _validate(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main(["validate", *args, "--gen-length", "8", "--steps", "4"])
    out = capsys.readouterr()
    return exc.value.code, out.out + out.err


def test_validate_passes_and_writes_report(exported, tmp_path, capsys):
    _, art, onnx_dir = exported
    code, text = _validate(capsys, "--reference", str(art), "--exported", str(onnx_dir),
                           "-o", str(tmp_path))
    assert code == 0, text
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["passed"] and report["metrics"]["top1_agreement"] >= 0.999
    assert report["metrics"]["masked_positions"] > 0
    assert "PASS" in (tmp_path / "report.md").read_text()


def test_validate_fails_on_threshold(exported, capsys):
    _, art, onnx_dir = exported
    code, text = _validate(capsys, "--reference", str(art), "--exported", str(onnx_dir),
                           "--top1-min", "1.01")
    assert code == 2 and "top1_agreement" in text


def test_validate_refuses_graph_of_another_calibration(exported, tmp_path, capsys):
    import torch

    base, art, onnx_dir = exported
    tokens = torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(5))
    other = run_calibration(base, tmp_path / "other", CalibConfig(method="rtn"), tokens, None,
                            "random")
    code, text = _validate(capsys, "--reference", str(other), "--exported", str(onnx_dir))
    assert code == 2 and "not made from" in text


def test_validate_refuses_other_tokenizer(exported, tmp_path, capsys):
    import shutil

    _, art, onnx_dir = exported
    bad = tmp_path / "onnx"
    shutil.copytree(onnx_dir, bad)
    tok = json.loads((bad / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    a, b = list(vocab)[10:12]
    vocab[a], vocab[b] = vocab[b], vocab[a]  # two ids swapped
    (bad / "tokenizer.json").write_text(json.dumps(tok))
    code, text = _validate(capsys, "--reference", str(art), "--exported", str(bad))
    assert code == 2 and "tokenizer" in text


@pytest.mark.parametrize("mode", ["fast", "cached"])
def test_validate_in_a_fast_mode_compares_both_sides_in_it(exported, tmp_path, capsys, mode):
    """Both sides decode in the fast mode (the cached ONNX graph against the cached
    PyTorch model) and the report adds each one's fast mode against its exact loop."""
    _, art, onnx_dir = exported
    code, text = _validate(capsys, "--reference", str(art), "--exported", str(onnx_dir),
                           "--decode", mode, "--threshold", "0.5", "-o", str(tmp_path))
    assert code == 0, text
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["policy"]["decode"] == mode
    assert report["metrics"]["decode_identical_rate"] == 1.0
    for side in ("reference", "exported"):
        fast = report["fast_vs_exact"][side]
        assert fast["decode"] == mode and 0 <= fast["token_agreement"] <= 1
        assert fast["steps"]["exact"] == 4
    assert f"decode {mode}" in (tmp_path / "report.md").read_text()


def test_validate_refuses_a_bad_threshold(exported, capsys):
    _, art, onnx_dir = exported
    code, text = _validate(capsys, "--reference", str(art), "--exported", str(onnx_dir),
                           "--decode", "parallel", "--threshold", "1.5")
    assert code == 2 and "threshold must be in (0, 1]" in text


def test_a_cache_refreshed_every_step_decodes_the_exact_tokens_on_real_backends(exported):
    """On the exported graph and on its PyTorch artifact (calibrated model), the cached
    loop with K/V recomputed at every step is the exact loop; with block-wise refresh it
    computes fewer positions."""
    from faircalib_export.opener import open_model
    from faircalib_runtime import PolicyConfig, generate
    from faircalib_runtime.fast import generate_fast

    _, art, onnx_dir = exported
    for path in (art, onnx_dir):
        opened = open_model(path)
        exact = opened.policy(gen_length=16, steps=16, block_length=4)
        cached = PolicyConfig.from_dict({**exact.to_dict(), "decode": "cached",
                                         "block_length": 4 if exact.policy == "llada" else 16})
        prompts = [[5, 6, 7], [8, 9, 10, 11, 12]]
        backend = opened.backend()
        want = generate(backend, prompts, exact)
        got = generate_fast(backend, prompts, cached, refresh="step", stop_finished=False)
        assert got.window.tolist() == want.window.tolist(), path
        block = generate_fast(backend, prompts, cached, stop_finished=False)
        assert block.positions_computed < got.positions_computed
