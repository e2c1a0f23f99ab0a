"""No command loses a user's file: OUT checks, replacement, locks, stale temps, errors.

Each test names the behaviour it guards; the mutant that must fail it is in its comment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from faircalib_export.cli import main


def _run(capsys, *argv):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    captured = capsys.readouterr()
    return (exc.value.code or 0), captured.out + captured.err


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory, llada_dir):
    """(checkpoint, calibrated artifact, folded model) of the tiny LLaDA, rtn."""
    from faircalib_export.calibrate.config import CalibConfig
    from faircalib_export.calibrate.entry import calibrate_checkpoint
    from faircalib_export.fold.fold import fold_artifact

    root = tmp_path_factory.mktemp("safety")
    data = root / "text.txt"
    data.write_text("the quick brown fox jumps over the lazy dog\n" * 50)
    art = calibrate_checkpoint(llada_dir, root / "cal", CalibConfig("rtn"), data=str(data),
                               samples=2, seq_len=16)
    return llada_dir, art, fold_artifact(art, root / "deploy"), data


def _user_dir(path):
    path.mkdir()
    (path / "notes.txt").write_text("mine")
    return path


def test_a_foreign_directory_is_refused_and_kept(calibrated, tmp_path, capsys):
    # mutant: atomic_dir replacing any existing OUT (the old behaviour) loses notes.txt
    ck, art, deploy, data = calibrated
    for argv in (("fold", art), ("export", deploy),
                 ("calibrate", ck, "--method", "rtn", "--data", data, "--samples", 2,
                  "--seq-len", 16), ("tiny", "create")):
        out = _user_dir(tmp_path / f"out-{argv[0]}")
        if argv[0] == "tiny":
            code, text = _run(capsys, "tiny", "create", out)
        else:
            code, text = _run(capsys, *argv, "-o", out)
        assert code == 2, (argv, text)
        assert "not a" in text and "--overwrite" in text and "Traceback" not in text
        assert (out / "notes.txt").read_text() == "mine"
        assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_overwrite_moves_a_foreign_directory_aside(calibrated, tmp_path, capsys):
    # mutant: --overwrite deleting the old directory instead of moving it
    _, art, _, _ = calibrated
    out = _user_dir(tmp_path / "deploy")
    code, text = _run(capsys, "fold", art, "-o", out, "--overwrite")
    assert code == 0, text
    assert (out / "deploy.json").is_file()
    (aside,) = tmp_path.glob("deploy.replaced-*")
    assert (aside / "notes.txt").read_text() == "mine"


def test_same_kind_is_replaced_in_place(calibrated, tmp_path, capsys):
    # mutant: refusing every non-empty OUT would make reruns impossible
    _, art, _, _ = calibrated
    out = tmp_path / "deploy"
    assert _run(capsys, "fold", art, "-o", out)[0] == 0
    first = (out / "manifest.json").read_text()
    time.sleep(1.1)  # manifests carry a timestamp
    assert _run(capsys, "fold", art, "-o", out)[0] == 0
    assert (out / "manifest.json").read_text() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deploy"]  # no leftovers


def test_output_may_not_be_the_input_or_inside_it_or_a_file(calibrated, tmp_path, capsys):
    # mutant: dropping the input check destroys the artifact being folded / exported
    ck, art, deploy, data = calibrated
    before = sorted(p.name for p in deploy.iterdir())
    code, text = _run(capsys, "export", deploy, "-o", deploy)
    assert code == 2 and "is the input" in text
    code, text = _run(capsys, "fold", art, "-o", art / "sub")
    assert code == 2 and "inside the input" in text
    code, text = _run(capsys, "calibrate", ck, "-o", ck, "--method", "rtn", "--data", data)
    assert code == 2 and "is the input" in text
    assert sorted(p.name for p in deploy.iterdir()) == before
    target = tmp_path / "file.onnx"
    target.write_text("keep")
    code, text = _run(capsys, "export", deploy, "-o", target)
    assert code == 2 and "existing file" in text and target.read_text() == "keep"
    code, text = _run(capsys, "export", deploy, "-o", target / "sub")
    assert code == 2 and "is a file" in text


def test_stale_temp_dirs_of_killed_runs_are_removed(calibrated, tmp_path, capsys):
    # mutant: clean_stale not called -> the dead run's temp dir stays forever
    _, art, _, _ = calibrated
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a PID that no longer runs
    stale = tmp_path / f".deploy.tmp-{dead.pid}"
    stale.mkdir()
    (stale / "half.bin").write_bytes(b"x")
    live = tmp_path / f".deploy.tmp-{os.getpid() + 0}"  # this process: still running
    assert _run(capsys, "fold", art, "-o", tmp_path / "deploy")[0] == 0
    assert not stale.exists()
    assert not live.exists() or live.is_dir()


def test_a_second_writer_is_refused_with_the_pid(calibrated, tmp_path, capsys):
    # mutant: no lock -> two runs rename onto the same OUT
    _, art, _, _ = calibrated
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / ".deploy.lock").write_text(f"{holder.pid}\n")
        code, text = _run(capsys, "fold", art, "-o", tmp_path / "deploy")
        assert code == 2 and f"being written by PID {holder.pid}" in text
        assert not (tmp_path / "deploy").exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: its lock is stale and taken over
    assert _run(capsys, "fold", art, "-o", tmp_path / "deploy")[0] == 0
    assert not (tmp_path / ".deploy.lock").exists()


def test_tensorrt_export_without_tensorrt_leaves_nothing(calibrated, tmp_path, capsys,
                                                         monkeypatch):
    # mutant: writing the graph before checking for TensorRT leaves a half-made OUT
    _, _, deploy, _ = calibrated
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    code, text = _run(capsys, "export", deploy, "--format", "tensorrt", "-o",
                      tmp_path / "trt")
    assert code == 2 and "tensorrt" in text and not (tmp_path / "trt").exists()
    code, text = _run(capsys, "export", deploy, "--format", "tensorrt", "--no-engine", "-o",
                      tmp_path / "trt")
    assert code == 0 and (tmp_path / "trt" / "model.onnx").is_file()


def test_a_damaged_block_in_partial_is_recomputed(llada_dir, tmp_path, capsys, calibrated):
    # mutant: loading block files without the damage check fails every rerun
    _, _, _, data = calibrated
    argv = ("calibrate", llada_dir, "--method", "flatquant", "--data", data, "--samples", 2,
            "--seq-len", 16, "--epochs", 1)
    out = tmp_path / "cal"
    assert _run(capsys, *argv, "-o", out)[0] == 0
    # a killed later run: its partial dir with one block file cut short
    partial = tmp_path / "cal2.partial"
    partial.mkdir()
    (partial / "settings.json").write_text((out / "manifest.json").read_text())
    (partial / "blocks").mkdir()
    (partial / "blocks" / "block_000.safetensors").write_bytes(b"\x10\x00\x00\x00trunc")
    code, text = _run(capsys, *argv, "-o", tmp_path / "cal2")
    assert code == 0, text
    assert (tmp_path / "cal2" / "manifest.json").is_file()


def test_user_errors_are_one_line_and_bugs_keep_their_traceback(calibrated, tmp_path, capsys,
                                                                monkeypatch):
    # mutant: catching every exception in main() would hide bugs; catching none shows
    # tracebacks for a corrupt manifest
    _, art, _, _ = calibrated
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{not json")
    (broken / "config.json").write_text("{}")
    code, text = _run(capsys, "fold", broken, "-o", tmp_path / "x")
    assert code == 2 and "manifest.json" in text and "invalid JSON" in text
    assert "Traceback" not in text and len(text.strip().splitlines()) == 1
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes(b"caf\xe9\n")  # latin-1, not UTF-8
    code, text = _run(capsys, "validate", "--reference", art, "--exported", art,
                      "--prompts", prompts)
    assert code == 2 and "not UTF-8" in text and "Traceback" not in text
    # --debug shows the traceback of the same user error
    from faircalib_export.errors import ConfigError

    with pytest.raises(ConfigError, match="invalid JSON"):
        main(["--debug", "fold", str(broken), "-o", str(tmp_path / "x")])
    # an unexpected exception is a bug: it propagates with its traceback
    import faircalib_export.fold.fold as fold_module

    monkeypatch.setattr(fold_module, "fold_artifact",
                        lambda *a, **k: (_ for _ in ()).throw(ZeroDivisionError("bug")))
    with pytest.raises(ZeroDivisionError):
        main(["fold", str(art), "-o", str(tmp_path / "y")])


def test_replacing_an_artifact_keeps_a_users_file_inside_it(calibrated, tmp_path, capsys):
    # mutant: same-kind replace deleting the old directory whole (the user's notes with it)
    _, art, _, _ = calibrated
    out = tmp_path / "deploy"
    assert _run(capsys, "fold", art, "-o", out)[0] == 0
    (out / "notes.txt").write_text("mine")
    code, text = _run(capsys, "fold", art, "-o", out)
    assert code == 0 and "moved to" in text
    assert (out / "deploy.json").is_file() and not (out / "notes.txt").exists()
    (aside,) = tmp_path.glob("deploy.replaced-*")
    assert (aside / "notes.txt").read_text() == "mine"


def test_single_file_outputs_never_clobber(calibrated, tmp_path, capsys):
    # mutant: eval / probe-compare writing -o without checks (inputs and files lost)
    _, art, deploy, _ = calibrated
    mine = tmp_path / "notes.json"
    mine.write_text("mine")
    code, text = _run(capsys, "eval", art, "--task", "chain", "--limit", 1, "-o", mine)
    assert code == 2 and "exists" in text and mine.read_text() == "mine"
    code, text = _run(capsys, "eval", art, "--task", "chain", "--limit", 1, "-o",
                      art / "manifest.json")
    assert code == 2 and "inside the input" in text
    code, text = _run(capsys, "eval", art, "--task", "chain", "--limit", 1, "-o", mine,
                      "--overwrite")
    assert code == 0 and json.loads(mine.read_text())["n"] == 1


def test_validate_report_dir_is_an_artifact(calibrated, tmp_path, capsys):
    # mutant: validate -o writing report.md into a user's directory
    _, art, deploy, _ = calibrated
    folder = _user_dir(tmp_path / "v")
    (folder / "report.md").write_text("mine")
    code, text = _run(capsys, "validate", "--reference", art, "--exported", deploy, "-n", 1,
                      "-o", folder)
    assert code == 2 and (folder / "report.md").read_text() == "mine"
