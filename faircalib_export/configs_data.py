"""The shipped JSON configs: target GPUs and the real models' config.json fields.

They live in the checkout's top-level `configs/` (`configs/targets/*.json`,
`configs/models/*.json`) and are installed as package data, `faircalib_export/configs/`
(pyproject.toml maps the package `faircalib_export.configs` onto `configs/`), so an
installed package finds them from any directory.

    targets()        {name: file} of the target GPUs ($FAIRCALIB_TARGETS_DIR when set)
    model_configs()  {name: file} of the model configs (`llada-8b-instruct`, ...)

The files are `importlib.resources` Traversables: `.read_text()`, `.name`, and
`importlib.resources.as_file(...)` for a real path.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable  # importlib.abc on Python 3.10

TARGETS_ENV = "FAIRCALIB_TARGETS_DIR"


def configs_root() -> Traversable:
    """`faircalib_export/configs` of an installed wheel, else the checkout's `configs/`.

    An editable install (and a run from the source tree) keeps the files in the checkout:
    setuptools' editable finder does not import the mapped `faircalib_export.configs`
    (it has no __init__.py), so they are read from beside the package there.
    """
    packaged = resources.files("faircalib_export").joinpath("configs")
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "configs"


def targets_dir() -> Traversable:
    """Where targets are read: `$FAIRCALIB_TARGETS_DIR` when set, else the shipped ones."""
    env = os.environ.get(TARGETS_ENV)
    return Path(env) if env else configs_root().joinpath("targets")


def _json_files(directory: Traversable) -> dict[str, Traversable]:
    if not directory.is_dir():
        return {}
    files = (f for f in directory.iterdir() if f.name.endswith(".json") and f.is_file())
    return {f.name[: -len(".json")]: f for f in sorted(files, key=lambda f: f.name)}


def targets() -> dict[str, Traversable]:
    """Target GPU files by name (`rtx4090` -> `.../targets/rtx4090.json`), sorted."""
    return _json_files(targets_dir())


def model_configs() -> dict[str, Traversable]:
    """Model config.json files by name (`llada-8b-instruct` -> `.../models/...json`)."""
    return _json_files(configs_root().joinpath("models"))
