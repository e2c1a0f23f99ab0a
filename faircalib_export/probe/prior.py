"""The position prior w̄ and how Stage II turns it into per-position loss weights.

A prior is K floats over the generation window (max-normalized, as Stage I produces
it) plus the floor weight for positions before the window. For a calibration sequence
of length L, `position_weights(L)` aligns w̄ to the last K positions (the last L values
of w̄ if K > L), fills earlier positions with the floor, and normalizes to mean 1 so the
loss scale matches plain MSE. The uniform prior (FlatQuant) is all ones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError

PRIOR_FILE = "prior.json"
DEFAULT_FLOOR = 0.05


@dataclass
class Prior:
    weights: np.ndarray  # (K,) float64, max 1
    floor: float = DEFAULT_FLOOR
    settings: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.weights = np.asarray(self.weights, dtype=np.float64)
        if self.weights.ndim != 1 or not len(self.weights):
            raise ConfigError("a prior needs a non-empty 1-D weight vector")
        if not np.isfinite(self.weights).all() or (self.weights < 0).any():
            raise ConfigError("prior weights must be finite and non-negative")
        if self.weights.max() <= 0:
            raise ConfigError("prior weights are all zero")
        if not (isinstance(self.floor, (int, float)) and 0 <= self.floor < float("inf")):
            raise ConfigError(f"the prior floor must be a finite number >= 0, got "
                              f"{self.floor!r} (a negative floor gives negative loss weights)")

    @classmethod
    def uniform(cls, k: int = 1) -> Prior:
        return cls(np.ones(k), floor=1.0, settings={"kind": "uniform"})

    @property
    def is_uniform(self) -> bool:
        return bool(np.all(self.weights == self.weights[0]) and self.floor == self.weights[0])

    def position_weights(self, seq_len: int) -> torch.Tensor:
        w = np.full(seq_len, self.floor, dtype=np.float64)
        k = min(len(self.weights), seq_len)
        w[seq_len - k:] = self.weights[len(self.weights) - k:]
        w = w / w.mean()
        return torch.from_numpy(w).float()

    def save(self, directory: str | Path, filename: str = PRIOR_FILE) -> Path:
        """Write `directory/filename` (Stage I also saves its components this way)."""
        path = Path(directory) / filename
        data = {"weights": self.weights.tolist(), "floor": self.floor, "settings": self.settings}
        path.write_text(json.dumps(data, indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Prior:
        path = Path(path)
        file = path / PRIOR_FILE if path.is_dir() else path
        if not file.is_file():
            raise ConfigError(f"no prior at {file} (run `faircalib-export probe` first)")
        try:
            data = json.loads(file.read_text())
            return cls(data["weights"], float(data.get("floor", DEFAULT_FLOOR)),
                       data.get("settings", {}))
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ConfigError(f"{file} is not a valid prior file: {err}") from err
