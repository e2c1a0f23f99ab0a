"""Packaging: configs/targets and configs/models are package data, and a non-editable
install plans from any directory."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

from faircalib_export import configs_data
from faircalib_export.plan import plan
from faircalib_export.trt.targets import list_targets, load_target

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
# what `pip install .` needs from the checkout (pyproject.toml's readme and package dirs)
BUILD_INPUTS = ("pyproject.toml", "README.md", "faircalib_export", "configs",
                "runtimes/faircalib_runtime")


def test_every_config_is_package_data(monkeypatch):
    monkeypatch.delenv(configs_data.TARGETS_ENV, raising=False)
    targets = configs_data.targets()
    shipped = sorted(p.stem for p in (CONFIGS / "targets").glob("*.json"))
    assert shipped and list(targets) == shipped == list_targets()
    for name in shipped:
        assert targets[name].read_text() == (CONFIGS / "targets" / f"{name}.json").read_text()
        assert load_target(name).name == name
    models = configs_data.model_configs()
    shipped = sorted(p.stem for p in (CONFIGS / "models").glob("*.json"))
    assert {"llada-8b-instruct", "dream-7b-instruct"} <= set(shipped)
    assert list(models) == shipped
    for name in shipped:
        assert models[name].read_text() == (CONFIGS / "models" / f"{name}.json").read_text()
        assert plan(name, "rtx4090")["model"]["vocab_size"] > 0  # a name resolves


def test_targets_dir_env_overrides(tmp_path, monkeypatch):
    good = load_target("l4").to_dict()
    (tmp_path / "mine.json").write_text(json.dumps(dict(good, name="mine")))
    monkeypatch.setenv(configs_data.TARGETS_ENV, str(tmp_path))
    assert list_targets() == ["mine"] and load_target("mine").memory_gib == good["memory_gib"]


def test_pyproject_lists_every_package():
    tomllib = pytest.importorskip("tomllib")
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setup["packages"])
    found = set()
    for base in (ROOT, ROOT / "runtimes"):
        for top in ("faircalib_export", "faircalib_runtime"):
            found |= {".".join(p.parent.relative_to(base).parts)
                      for p in base.glob(f"{top}/**/*.py") if "__pycache__" not in p.parts}
    assert "faircalib_runtime" in found
    missing = sorted(found - listed)
    assert not missing, f"add to pyproject.toml [tool.setuptools] packages: {missing}"
    assert setup["package-dir"]["faircalib_export.configs"] == "configs"
    assert "faircalib_export.configs" in listed


def _bin(venv: Path, name: str) -> Path:
    return venv / ("Scripts" if os.name == "nt" else "bin") / name


def test_non_editable_install_plans_from_any_directory(tmp_path):
    pytest.importorskip("setuptools")
    src = tmp_path / "src"  # a copy, so that setuptools' build/ never lands in the checkout
    for item in BUILD_INPUTS:
        copy = shutil.copytree if (ROOT / item).is_dir() else shutil.copy2
        kwargs = {"ignore": shutil.ignore_patterns("__pycache__", "*.pyc")} \
            if (ROOT / item).is_dir() else {}
        (src / item).parent.mkdir(parents=True, exist_ok=True)
        copy(ROOT / item, src / item, **kwargs)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip",
                    str(venv)], check=True)
    python = _bin(venv, "python")
    if sys.prefix != sys.base_prefix:  # run from a venv: its packages (torch, pip) as well
        purelib = subprocess.run([str(python), "-c", "import sysconfig; "
                                  "print(sysconfig.get_path('purelib'))"],
                                 check=True, capture_output=True, text=True).stdout.strip()
        Path(purelib, "outer-venv.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", configs_data.TARGETS_ENV)}
    env["COLUMNS"] = "200"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "-q", str(src)],
        capture_output=True, text=True, env=env, cwd=tmp_path)
    assert install.returncode == 0, install.stdout + install.stderr

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run(
        [str(python), "-c", "import faircalib_export, faircalib_export.configs_data as c; "
         "print(faircalib_export.__file__); print(c.targets()['rtx4090']); "
         "print(c.model_configs()['llada-8b-instruct'])"],
        check=True, capture_output=True, text=True, env=env, cwd=elsewhere).stdout.split("\n")
    for line in where[:3]:  # the installed copy, not the checkout (or an editable finder)
        assert Path(line).resolve().is_relative_to(venv.resolve()), where
        assert not Path(line).resolve().is_relative_to(ROOT), where

    cli = str(_bin(venv, "faircalib-export"))
    result = subprocess.run([cli, "plan", "--model", "llada-8b-instruct", "--target", "rtx4090"],
                            capture_output=True, text=True, env=env, cwd=elsewhere)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "RTX 4090" in result.stdout and "fits" in result.stdout
    assert "block_linears_int4 (3,489,660,928 B)" in result.stdout

    config_json = elsewhere / "dream" / "config.json"  # a path to a config.json works too
    config_json.parent.mkdir()
    config_json.write_text((CONFIGS / "models" / "dream-7b-instruct.json").read_text())
    result = subprocess.run([cli, "plan", "--model", str(config_json), "-t", "h100", "--json"],
                            capture_output=True, text=True, env=env, cwd=elsewhere)
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert data["target"]["name"] == "h100" and data["model"]["family"] == "dream"
    assert data["deployment"]["kernel_path"] == "int8-mma" and data["deployment"]["fits"]
