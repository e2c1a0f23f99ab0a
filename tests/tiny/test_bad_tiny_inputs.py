"""Bad input to `tiny train` and `tiny create`: one line, exit status 2, no traceback, and
nothing trained or written (through the real CLI entry point, `faircalib_export.cli.main`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from faircalib_export import cli
from faircalib_export.errors import ConfigError
from faircalib_export.models.loading import read_config
from faircalib_export.models.tiny import tiny_config, write_tiny_checkpoint
from faircalib_export.tiny.train import STATE_FILE

# `tiny train` arguments of a run small enough to train in a second.
SMALL = ["--family", "dream", "--steps", "2", "--batch-size", "2", "--eval-examples", "1"]


def _cli(capsys, *args: str) -> tuple[int, str]:
    """(exit status, stdout + stderr) of `faircalib-export ARGS`."""
    with pytest.raises(SystemExit) as exc:
        cli.main(list(args))
    captured = capsys.readouterr()
    return exc.value.code or 0, captured.out + captured.err


def _refused(capsys, *args: str) -> str:
    """The one-line error of a command that must exit 2."""
    code, text = _cli(capsys, *args)
    assert code == 2, text
    assert "Traceback" not in text and text.strip().count("\n") == 0, text
    assert text.startswith("error:"), text
    return text


# --- counts: 0 is an error, never "the default" ------------------------------------------

@pytest.mark.parametrize("option", ["--steps", "--threads", "--batch-size", "--eval-examples",
                                    "--stop-after"])
def test_train_refuses_a_zero_count(option, tmp_path: Path, capsys):
    out, state = tmp_path / "m", tmp_path / "state"
    text = _refused(capsys, "tiny", "train", "--out", str(out), "--state-dir", str(state),
                    option, "0")
    assert f"{option} must be an integer >= 1, got 0" in text
    assert not out.exists() and not state.exists()  # refused before any training


def test_train_refuses_a_negative_count(tmp_path: Path, capsys):
    text = _refused(capsys, "tiny", "train", "--out", str(tmp_path / "m"), "--steps", "-3")
    assert "--steps must be an integer >= 1, got -3" in text


# --- the output is checked before training -----------------------------------------------

def test_train_refuses_a_foreign_directory_before_training(tmp_path: Path, capsys):
    out, state = tmp_path / "mine", tmp_path / "state"
    out.mkdir()
    (out / "notes.txt").write_text("my notes\n")
    text = _refused(capsys, "tiny", "train", *SMALL, "--out", str(out),
                    "--state-dir", str(state))
    assert "non-empty directory that is not a checkpoint artifact" in text
    assert "--overwrite" in text
    assert (out / "notes.txt").read_text() == "my notes\n"
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert not state.exists()  # nothing trained: not even a first training state


def test_train_refuses_an_output_under_a_file(tmp_path: Path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("keep\n")
    text = _refused(capsys, "tiny", "train", *SMALL, "--out", str(blocker / "m"),
                    "--state-dir", str(tmp_path / "state"))
    assert "is a file" in text
    assert blocker.read_text() == "keep\n" and not (tmp_path / "state").exists()


def test_train_refuses_an_existing_file_as_output(tmp_path: Path, capsys):
    out = tmp_path / "model.bin"
    out.write_bytes(b"user data")
    text = _refused(capsys, "tiny", "train", *SMALL, "--out", str(out),
                    "--state-dir", str(tmp_path / "state"))
    assert "existing file" in text
    assert out.read_bytes() == b"user data" and not (tmp_path / "state").exists()


def test_train_refuses_an_unwritable_output_before_training(tmp_path: Path, capsys):
    place = Path("/sys")  # read-only even for root
    try:
        (place / ".faircalib-probe").touch()
    except OSError:
        pass
    else:
        (place / ".faircalib-probe").unlink()
        pytest.skip("/sys is writable here")
    if not place.is_dir():
        pytest.skip("no /sys")
    text = _refused(capsys, "tiny", "train", *SMALL, "--out", str(place / "faircalib" / "m"),
                    "--state-dir", str(tmp_path / "state"))
    assert "cannot write in /sys" in text
    assert not (tmp_path / "state").exists()


def test_train_overwrite_moves_a_foreign_directory_aside(tmp_path: Path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes\n")
    code, text = _cli(capsys, "tiny", "train", *SMALL, "--out", str(out),
                      "--state-dir", str(tmp_path / "state"), "--overwrite")
    assert code == 0, text
    assert (out / "training.json").is_file()
    [aside] = tmp_path.glob("mine.replaced-*")
    assert (aside / "notes.txt").read_text() == "my notes\n"


# --- a damaged training state ------------------------------------------------------------

@pytest.fixture(scope="module")
def saved_state(tmp_path_factory) -> Path:
    """The state directory of a `tiny train` run stopped after one step."""
    root = tmp_path_factory.mktemp("state")
    with pytest.raises(SystemExit) as exc:
        cli.main(["tiny", "train", *SMALL, "--out", str(root / "m"),
                  "--state-dir", str(root / "state"), "--stop-after", "1"])
    assert exc.value.code in (0, None)
    assert (root / "state" / STATE_FILE).is_file()
    return root / "state"


def _del(key):
    return lambda tensors, meta: tensors.pop(key)


def _first(prefix):
    return lambda tensors: next(k for k in sorted(tensors) if k.startswith(prefix))


def _reshape_model(tensors, meta):
    key = _first("model.")(tensors)
    tensors[key] = torch.zeros(3, 5)


def _drop_optimizer_slot(tensors, meta):
    tensors.pop(_first("optimizer.")(tensors))


def _set_state(**changes):
    def edit(tensors, meta):
        meta["state"].update(changes)
    return edit


DAMAGE = {
    "no torch_rng": (_del("torch_rng"), "missing tensor(s) torch_rng"),
    "no optimizer slot": (_drop_optimizer_slot, "missing tensor(s) optimizer."),
    "extra optimizer slot": (lambda t, m: t.update({"optimizer.999.exp_avg": torch.zeros(2)}),
                             "unexpected tensor(s) optimizer.999.exp_avg"),
    "model tensor reshaped": (_reshape_model, "(3, 5), expected"),
    "torch_rng reshaped": (lambda t, m: t.update(torch_rng=t["torch_rng"][:10]),
                           "tensor torch_rng is"),
    "unknown state key": (_set_state(surprise=1), "'state' must have exactly the keys"),
    "state key missing": (lambda t, m: m["state"].pop("history"),
                          "'state' must have exactly the keys"),
    "state step not a number": (_set_state(step="1"), "state step '1'"),
    "state step past the end": (_set_state(step=99), "state step 99"),
    "history record without loss": (_set_state(history=[{"step": 1}]), "state history"),
    "state not a dict": (lambda t, m: m.update(state=[1]), "'state' must have exactly"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_resume_refuses_a_damaged_state(damage, saved_state: Path, tmp_path: Path, capsys):
    edit, expected = DAMAGE[damage]
    state = tmp_path / "state"
    shutil.copytree(saved_state, state)
    with safe_open(str(state / STATE_FILE), "pt") as f:
        meta = json.loads(f.metadata()["faircalib_train_state"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    edit(tensors, meta)
    save_file(tensors, str(state / STATE_FILE),
              metadata={"faircalib_train_state": json.dumps(meta)})
    out = tmp_path / "m"
    text = _refused(capsys, "tiny", "train", *SMALL, "--out", str(out),
                    "--state-dir", str(state), "--resume")
    assert str(state / STATE_FILE) in text and "damaged training state" in text, text
    assert expected in text, text
    assert not out.exists()


def test_resume_of_the_untouched_state_still_works(saved_state: Path, tmp_path: Path, capsys):
    state = tmp_path / "state"
    shutil.copytree(saved_state, state)
    code, text = _cli(capsys, "tiny", "train", *SMALL, "--out", str(tmp_path / "m"),
                      "--state-dir", str(state), "--resume")
    assert code == 0, text
    assert json.loads((tmp_path / "m" / "training.json").read_text())["steps"] == 2


# --- tiny create -------------------------------------------------------------------------

def test_create_refuses_more_shards_than_tensors(tmp_path: Path, capsys):
    out = tmp_path / "x"
    text = _refused(capsys, "tiny", "create", str(out), "--shards", "500")
    assert "shards 500 is more than the" in text and "tensors of this model" in text
    assert not out.exists()


@pytest.mark.parametrize("value", ["0", "-1"])
def test_create_refuses_a_shard_count_below_one(value, tmp_path: Path, capsys):
    out = tmp_path / "x"
    text = _refused(capsys, "tiny", "create", str(out), "--shards", value)
    assert f"shards must be an integer >= 1, got {value}" in text
    assert not out.exists()


def test_create_accepts_as_many_shards_as_tensors(tmp_path: Path):
    cfg = tiny_config("llada", 64, 1, 2, num_layers=1)
    from faircalib_export.models.families import get_family

    n = len(get_family("llada").keys.mapping(cfg))
    path = write_tiny_checkpoint(tmp_path / "x", "llada", shards=n, num_layers=1)
    assert len(list(path.glob("model-*-of-*.safetensors"))) == n


@pytest.mark.parametrize("name", ["intermediate_size", "num_kv_heads", "hidden_size",
                                  "num_layers", "num_heads"])
def test_tiny_shapes_refuse_zero_and_default_on_none(name, tmp_path: Path):
    with pytest.raises(ConfigError, match=f"{name} must be an integer >= 1, got 0"):
        write_tiny_checkpoint(tmp_path / "x", "llada", **{name: 0})
    assert not (tmp_path / "x").exists()
    cfg = tiny_config("llada", 64, 1, 2, hidden_size=32, num_heads=4,
                      intermediate_size=None, num_kv_heads=None)
    assert cfg.intermediate_size == 96 and cfg.num_kv_heads == 4


@pytest.mark.parametrize("option", ["--intermediate-size", "--num-kv-heads"])
def test_create_refuses_a_zero_shape(option, tmp_path: Path, capsys):
    out = tmp_path / "x"
    text = _refused(capsys, "tiny", "create", str(out), option, "0")
    assert "must be an integer >= 1, got 0" in text
    assert not out.exists()


def test_create_defaults_the_optional_shapes(tmp_path: Path, capsys):
    code, text = _cli(capsys, "tiny", "create", str(tmp_path / "x"), "--hidden-size", "32")
    assert code == 0, text
    _, cfg = read_config(tmp_path / "x")
    assert cfg.intermediate_size == 96 and cfg.num_kv_heads == cfg.num_heads
