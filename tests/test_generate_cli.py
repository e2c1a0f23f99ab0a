"""`faircalib-export generate` on checkpoints, calibrated artifacts and folded models."""

from __future__ import annotations

import pytest

from faircalib_export.cli import main


def _run(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main(["generate", *args])
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_generate_show_steps(llada_dir, capsys):
    code, out, err = _run(capsys, str(llada_dir), "-p", "2+2=", "--gen-length", "8", "--steps",
                          "4", "--block-length", "4", "--show-steps")
    assert code == 0, err
    steps = [line for line in err.splitlines() if line.startswith("step")]
    assert len(steps) == 4
    assert steps[0].count("░") == 8 - 2  # 8 masked, 2 written in the first step
    assert "2+2=" in out


def test_generate_dream_policy_options(dream_dir, capsys):
    code, out, err = _run(capsys, str(dream_dir), "-p", "a", "-p", "longer prompt", "--policy",
                          "topk_margin", "--gen-length", "6", "--steps", "3", "--temperature",
                          "0.7", "--top-p", "0.9")
    assert code == 0, err
    assert "longer prompt" in out


def test_generate_rejects_foreign_policy(dream_dir, capsys):
    code, _, err = _run(capsys, str(dream_dir), "-p", "a", "--policy", "low_confidence")
    assert code == 2 and "low_confidence" in err


@pytest.mark.parametrize("mode", ["parallel", "cached", "fast"])
def test_generate_fast_modes_report_their_steps(llada_dir, capsys, mode):
    code, out, err = _run(capsys, str(llada_dir), "-p", "2+2=", "--gen-length", "8", "--steps",
                          "8", "--block-length", "4", "--decode", mode, "--threshold", "0.01")
    assert code == 0, err
    assert f"decode {mode}:" in err and "per block" in err
    if mode != "cached":  # tau 0.01 commits a whole block per step
        assert "per block [1, 1]" in err


def test_generate_refuses_fast_mode_settings_it_cannot_run(dream_dir, capsys):
    code, _, err = _run(capsys, str(dream_dir), "-p", "a", "--policy", "origin", "--decode",
                        "fast")
    assert code == 2 and "origin" in err
    code, _, err = _run(capsys, str(dream_dir), "-p", "a", "--decode", "fast", "--cache", "all")
    assert code == 2 and "cache" in err
