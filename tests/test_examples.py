"""examples/ runs as written: the Python API script, and the 8B recipe's plan and build."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def _env(tmp_path: Path, **extra: str) -> dict:
    bin_dir = str(Path(sys.executable).parent)  # where the faircalib-export script lives
    return {"FAIRCALIB_CACHE": str(tmp_path / "cache"), "COLUMNS": "160",
            "PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), **extra}


def test_python_api_example(tmp_path):
    result = subprocess.run([sys.executable, str(EXAMPLES / "python_api.py"),
                             str(tmp_path / "api")], capture_output=True, text=True,
                            env=_env(tmp_path), cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr
    lines = dict(line.strip().split(": ", 1) for line in result.stdout.splitlines())
    assert set(lines) == {"checkpoint", "onnx"}
    # 12 + 2 - 1 + 1 - 2 = 12: the FP model and its W4A4 export both compute it
    assert lines["checkpoint"].endswith("answer 12") and lines["onnx"].endswith("answer 12")
    assert (tmp_path / "api" / "onnx" / "model.onnx").is_file()


def test_real_model_recipe_quotes_the_plan_it_gets():
    """The plan figures quoted in the recipe are what `plan` says for LLaDA-8B-Instruct."""
    script = (EXAMPLES / "real_8b_on_24gb.sh").read_text()
    quoted = {m.group(1): float(m.group(2)) for m in re.finditer(
        r"^#\s+(calibration|W4A4 deployment|FP16 deployment)\b.*?([\d.]+) GiB$", script, re.M)}
    result = subprocess.run([sys.executable, "-m", "faircalib_export", "plan",
                             "llada-8b-instruct", "--target", "rtx4090", "--json"],
                            capture_output=True, text=True, check=True)
    plan = json.loads(result.stdout)
    assert quoted == {"calibration": plan["calibration"]["peak_gib"],
                      "W4A4 deployment": plan["deployment"]["peak_gib"],
                      "FP16 deployment": plan["fp16_deployment"]["peak_gib"]}
    assert plan["calibration"]["fits"] and plan["deployment"]["fits"]
    assert not plan["fp16_deployment"]["fits"]


def test_real_model_recipe_runs_on_a_checkpoint_of_the_real_layout(tmp_path, llada_dir,
                                                                   shared_data):
    """The script end to end on a tiny LLaDA-layout checkpoint, on the CPU, with a small
    budget appended as the script allows."""
    if not os.access(EXAMPLES / "real_8b_on_24gb.sh", os.X_OK):
        pytest.fail("examples/real_8b_on_24gb.sh is not executable")
    out = tmp_path / "out"
    result = subprocess.run(
        [str(EXAMPLES / "real_8b_on_24gb.sh"), str(llada_dir), "--method", "rtn",
         "--samples", "4", "--seq-len", "32", "--validate-prompts", "2", "--gen-length", "8",
         "--steps", "4", "--quality-problems", "0"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
        env=_env(tmp_path, DEVICE="cpu", OUT=str(out), SHARED=str(shared_data)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Memory plan" in result.stdout and "validation passed" in result.stdout
    record = json.loads((out / "build.json").read_text())
    assert record["stages"]["calibrate"]["settings"]["data"].endswith("valid.txt")
