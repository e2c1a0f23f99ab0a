"""Stage I settings: the probing config, its time schedule λ0(t) and the sharpness scores.

Torch-free, so the CLI can read the defaults without importing torch.

Time runs backwards as in the paper: the first decoding step has t = T (all masked),
the last t = 1. The loop's 0-based step s is t = T - s.

    early-boost  λ0(t) = λ0 · max(((t-1)/(T-1))^α, ρ)   earlier steps weigh more (paper)
    late-boost   λ0(t) = λ0 · max(((T-t)/(T-1))^α, ρ)   the mirror image
    uniform      λ0(t) = λ0
    none         λ0(t) = 0                              reliability term only

With T = 1 the ratio is taken as 1 (the single step is both first and last).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import Enum

import numpy as np

from ..errors import ConfigError


class Schedule(str, Enum):
    EARLY_BOOST = "early-boost"  # paper default: commits of early steps weigh more
    LATE_BOOST = "late-boost"  # mirror of early-boost (ablation)
    UNIFORM = "uniform"  # constant λ0 (ablation)
    NONE = "none"  # no frontier-hit term (ablation: reliability only)


class Score(str, Enum):
    """Teacher sharpness at a masked position; larger = surer (trajectory.py fields)."""

    TOP1_PROB = "top1_prob"  # softmax probability of the top-1 token (paper default)
    NEG_ENTROPY = "neg_entropy"  # sum p log(p + 1e-10)
    MARGIN = "margin"  # p_top1 - p_top2


def _enum(cls: type[Enum], value, name: str):
    try:
        return cls(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not one of: "
                          f"{', '.join(m.value for m in cls)}") from None


# The paper's Stage I setting (Appendix C): 512 prompts, T = K = 256.
PAPER_SAMPLES, PAPER_WINDOW, PAPER_STEPS = 512, 256, 256
TINY_SAMPLES = 128  # tiny models: probing costs seconds; 128 keeps the band narrow
TINY_WINDOW = 32  # tiny models without a recorded generation window (random checkpoints)


@dataclass(frozen=True)
class ProbeConfig:
    steps: int = PAPER_STEPS  # T: decoding steps of each rollout
    window: int = PAPER_WINDOW  # K: generation window (the prior's length)
    schedule: Schedule = Schedule.EARLY_BOOST
    score: Score = Score.TOP1_PROB
    lambda0: float = 1.0
    alpha: float = 1.5
    rho: float = 0.1
    lambda1: float = 1.0  # 0: frontier-hit term only
    temperature: float = 1.0  # teacher sampling of the written tokens (0 = argmax)
    floor: float | None = None  # weight before the window; None: prior.DEFAULT_FLOOR
    seed: int = 0
    batch_size: int = 16

    def __post_init__(self) -> None:
        object.__setattr__(self, "schedule", _enum(Schedule, self.schedule, "schedule"))
        object.__setattr__(self, "score", _enum(Score, self.score, "score"))
        for name in ("steps", "window", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.lambda0 < 0 or self.lambda1 < 0 or self.alpha < 0 or not 0 <= self.rho <= 1:
            raise ConfigError("need lambda0, lambda1, alpha >= 0 and 0 <= rho <= 1")
        if self.temperature < 0 or self.seed < 0:
            raise ConfigError("temperature and seed must be >= 0")
        if self.floor is not None and not 0 <= self.floor <= 1:
            raise ConfigError(f"floor must be in [0, 1] (weights are max-normalized), "
                              f"got {self.floor}")
        if not self.has_frontier and self.lambda1 == 0:
            raise ConfigError("both terms are off (schedule none / lambda0 0 and lambda1 0)")

    @property
    def has_frontier(self) -> bool:
        return self.schedule is not Schedule.NONE and self.lambda0 > 0

    def lambda0_schedule(self) -> np.ndarray:
        """(T,) float64: entry t - 1 holds λ0(t), t = 1 .. T."""
        return lambda0_values(self.schedule, self.steps, self.lambda0, self.alpha, self.rho)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["schedule"], out["score"] = self.schedule.value, self.score.value
        return out


def lambda0_values(schedule: Schedule | str, steps: int, lambda0: float = 1.0,
                   alpha: float = 1.5, rho: float = 0.1) -> np.ndarray:
    """λ0(t) for t = 1 .. T as a (T,) array (see the module docstring)."""
    schedule = _enum(Schedule, schedule, "schedule")
    t = np.arange(1, steps + 1, dtype=np.float64)
    if schedule is Schedule.NONE:
        return np.zeros(steps)
    if schedule is Schedule.UNIFORM:
        return np.full(steps, float(lambda0))
    if steps == 1:
        ratio = np.ones(1)
    elif schedule is Schedule.EARLY_BOOST:
        ratio = (t - 1) / (steps - 1)
    else:
        ratio = (steps - t) / (steps - 1)
    return lambda0 * np.maximum(ratio ** alpha, rho)
