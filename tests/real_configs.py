"""The real checkpoints' config.json fields, from configs/models/ of the checkout."""

from __future__ import annotations

import json
from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "models"


def real_config(name: str) -> dict:
    return json.loads((CONFIGS / f"{name}.json").read_text())
