"""README.md's set-up commands are real: the main job runs and the test command matches CI."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _setup_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Set up and run", 1)[1].split("\n## ", 1)[0]
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", section, re.S)]


def test_readme_opens_with_two_commands():
    install, tests = _setup_commands()
    assert install.startswith("pip install torch==2.13.0 ")
    assert tests == "python -m pytest -q"
    assert tests in (ROOT / ".ci" / "run").read_text()


def test_readme_main_job_runs(tmp_path):
    """The main job as README.md spells it: build on the embedded default, in a fresh
    directory, ending with validation and the FP-vs-W4A4 quality summary."""
    install, _ = _setup_commands()
    main_job = install.split("&&", 1)[1].strip()
    argv = shlex.split(main_job)
    assert argv[:3] == ["faircalib-export", "build", "llada-chain"]
    env = {"FAIRCALIB_CACHE": str(tmp_path / "cache"), "COLUMNS": "200",
           "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-m", "faircalib_export", *argv[1:]],
                            capture_output=True, text=True, env=env, timeout=900,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    out = tmp_path / argv[argv.index("-o") + 1]
    assert (out / "onnx" / "model.onnx").is_file() and (out / "quality.json").is_file()
    for line in ("validation passed", "quality: chain held-out accuracy FP",
                 "quality: teacher-forced KL(FP || W4A4)"):
        assert line in result.stdout
    # the summary README.md shows is the summary the command prints
    shown = (ROOT / "README.md").read_text().split("## Set up and run", 1)[1]
    assert "validation passed: exported ONNX vs calibrated PyTorch" in shown


def _pipeline_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    block = text.split("A full run on a checkpoint", 1)[1]
    block = re.search(r"```bash\n(.*?)```", block, re.S).group(1)
    return [shlex.split(cmd) for cmd in block.replace("\\\n", " ").splitlines() if cmd.strip()]


def test_readme_pipeline_runs(tmp_path, monkeypatch, shared_data):
    from faircalib_export.cli import main

    monkeypatch.setenv("FAIRCALIB_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    (tmp_path / "shared").symlink_to(shared_data.parent)  # ../shared as beside a checkout
    commands = _pipeline_commands()
    assert [c[1] for c in commands] == ["calibrate", "fold", "export", "validate", "generate"]
    for argv in commands:
        assert argv[0] == "faircalib-export"
        with pytest.raises(SystemExit) as exc:
            main(argv[1:])
        assert exc.value.code in (0, None), argv
    assert (tmp_path / "work" / "runs" / "onnx" / "model.onnx").is_file()


def test_readme_results_commands_use_real_options():
    """The results section's `compare` commands take 40 minutes, so check what they say:
    every option exists and every method entry parses."""
    import typer.main

    from faircalib_export.cli import app
    from faircalib_export.compare.run import parse_entries, parse_formats

    text = (ROOT / "README.md").read_text().split("## Results on the shipped models", 1)[1]
    text = text.split("\n## ", 1)[0]
    block = "\n".join(re.findall(r"```bash\n(.*?)```", text, re.S)).replace("\\\n", " ")
    command = typer.main.get_command(app).commands["compare"]
    known = {opt for p in command.params for opt in p.opts}
    runs = [shlex.split(line) for line in block.splitlines() if line.strip()]
    assert runs and all(argv[:2] == ["faircalib-export", "compare"] for argv in runs)
    for argv in runs:
        options = [a for a in argv if a.startswith("-")]
        assert set(options) <= known, set(options) - known
        if "--methods" in argv:
            parse_entries(argv[argv.index("--methods") + 1].split(","))
        if "--formats" in argv:
            parse_formats(argv[argv.index("--formats") + 1])
