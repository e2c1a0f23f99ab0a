"""A checkpoint whose tokenizer files are corrupt fails with one CheckpointError line
naming the directory, never a tokenizers/transformers traceback."""

from __future__ import annotations

import shutil

import pytest

from faircalib_export.cli import main
from faircalib_export.errors import CheckpointError
from faircalib_export.models.loading import load_tokenizer
from faircalib_export.models.tiny import write_tiny_checkpoint


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    return {family: write_tiny_checkpoint(root / family, family)
            for family in ("llada", "dream")}


CASES = {  # id -> (family, file, corrupt contents or None for truncated)
    "json-list": ("llada", "tokenizer.json", b"[1,2]"),
    "truncated": ("llada", "tokenizer.json", None),
    "vocab-not-utf8": ("dream", "vocab.json", b"\xff\xfe\x00{}"),
}


def _corrupt(tiny, tmp_path, case):
    family, name, contents = CASES[case]
    path = tmp_path / "ckpt"
    shutil.copytree(tiny[family], path)
    file = path / name
    file.write_bytes(contents if contents is not None else file.read_bytes()[:60])
    return path


@pytest.mark.parametrize("case", sorted(CASES))
def test_load_tokenizer_raises_checkpoint_error(tiny, tmp_path, case):
    path = _corrupt(tiny, tmp_path, case)
    with pytest.raises(CheckpointError, match="cannot load the tokenizer") as exc:
        load_tokenizer(path)
    assert str(path) in str(exc.value)
    assert "\n" not in str(exc.value)
    assert "trust_remote_code" not in str(exc.value)


@pytest.mark.parametrize("case", ["json-list", "vocab-not-utf8"])
def test_generate_cli_exits_2_naming_the_directory(tiny, tmp_path, capsys, case):
    path = _corrupt(tiny, tmp_path, case)
    with pytest.raises(SystemExit) as exc:
        main(["generate", str(path), "-p", "hi"])
    out = capsys.readouterr()
    text = out.out + out.err
    assert exc.value.code == 2
    assert str(path) in text and "cannot load the tokenizer" in text
    assert "Traceback" not in text
