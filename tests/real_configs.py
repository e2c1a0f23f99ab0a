"""The real checkpoints' config.json fields, from configs/models/ (package data)."""

from __future__ import annotations

import json

from faircalib_export.configs_data import model_configs


def real_config(name: str) -> dict:
    return json.loads(model_configs()[name].read_text())
