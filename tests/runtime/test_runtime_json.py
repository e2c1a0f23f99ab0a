"""runtime.json is validated on read: each corruption is one ExportError naming the file
and the field, and through the CLI one line with exit status 2, never a traceback."""

from __future__ import annotations

import json
import shutil

import pytest

from faircalib_export.cli import main
from faircalib_runtime.onnx import RUNTIME_JSON, ExportError, open_exported


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """llada-chain, rtn-calibrated, folded and exported (w4a4) once."""
    from faircalib_export.calibrate.config import CalibConfig
    from faircalib_export.calibrate.entry import calibrate_checkpoint
    from faircalib_export.export.onnx_export import export_onnx
    from faircalib_export.fold.fold import fold_artifact

    root = tmp_path_factory.mktemp("runtime-json")
    calibrated = calibrate_checkpoint("llada-chain", root / "cal", CalibConfig("rtn"),
                                      samples=2, seq_len=16)
    return export_onnx(fold_artifact(calibrated, root / "deploy"), root / "onnx")


def _edit(change):
    """An in-place change of the runtime.json dict, as an edit returning the document."""
    return lambda config: (change(config), config)[1]


def _set(key, value):
    return _edit(lambda config: config.__setitem__(key, value))


def _drop(key):
    return _edit(lambda config: config.pop(key))


CORRUPTIONS = {  # id -> (runtime.json dict -> new document, what the message must name)
    "mask-outside-vocab": (_set("mask_token_id", 999), "'mask_token_id'"),
    "pad-outside-vocab": (_set("pad_token_id", -1), "'pad_token_id'"),
    "eos-an-int": (_set("eos_token_ids", 305), "'eos_token_ids'"),
    "eos-empty": (_set("eos_token_ids", []), "'eos_token_ids'"),
    "eos-strings": (_set("eos_token_ids", ["305"]), "'eos_token_ids'"),
    "no-decoding": (_drop("decoding"), "'decoding'"),
    "decoding-a-list": (_set("decoding", [1]), "'decoding'"),
    "unknown-variant": (_set("variant", "w4a4-fp8"), "'variant'"),
    "version-a-string": (_set("version", "1"), "'version'"),
    "vocab-too-small": (_set("vocab_size", 100), "vocab_size"),
    "vocab-wider-than-logits": (_set("vocab_size", 400), "'vocab_size'"),
    "no-max-positions": (_edit(lambda c: c["deploy_config"].pop("max_position_embeddings")),
                         "max_position_embeddings"),
    "deploy-config-null": (_set("deploy_config", None), "'deploy_config'"),
    "outputs-misnamed": (_edit(lambda c: c["outputs"].__setitem__("logits", "scores")),
                         "'outputs'"),
    "not-an-object": (lambda c: [1, 2], "JSON object"),
}


def _corrupt(exported, tmp_path, case):
    edit, _ = CORRUPTIONS[case]
    path = tmp_path / "export"
    shutil.copytree(exported, path)
    config = json.loads((path / RUNTIME_JSON).read_text())
    (path / RUNTIME_JSON).write_text(json.dumps(edit(config)))
    return path


def _cli(capsys, *argv):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    out = capsys.readouterr()
    return exc.value.code or 0, out.out + out.err


def test_the_export_itself_opens(exported):
    opened = open_exported(exported)
    assert opened.vocab_size == 320 and opened.mask_id == 309


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_open_exported_names_the_field(exported, tmp_path, case):
    path = _corrupt(exported, tmp_path, case)
    with pytest.raises(ExportError) as exc:
        open_exported(path)
    message = str(exc.value)
    assert CORRUPTIONS[case][1] in message
    assert RUNTIME_JSON in message and "\n" not in message


@pytest.mark.parametrize("case", ["mask-outside-vocab", "eos-an-int", "no-decoding",
                                  "unknown-variant", "vocab-too-small",
                                  "vocab-wider-than-logits"])
def test_generate_cli_exits_2_in_one_line(exported, tmp_path, capsys, case):
    path = _corrupt(exported, tmp_path, case)
    code, text = _cli(capsys, "generate", path, "-p", "hi")
    assert code == 2, text
    assert "Traceback" not in text and RUNTIME_JSON in text
    assert len(text.strip().splitlines()) == 1, text


@pytest.mark.parametrize("case", ["mask-outside-vocab", "vocab-wider-than-logits"])
def test_eval_cli_exits_2_in_one_line(exported, tmp_path, capsys, case):
    path = _corrupt(exported, tmp_path, case)
    code, text = _cli(capsys, "eval", path, "--task", "chain", "--limit", "2")
    assert code == 2, text
    assert "Traceback" not in text and RUNTIME_JSON in text
