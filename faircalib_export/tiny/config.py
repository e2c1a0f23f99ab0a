"""Training configs of the tiny task models: `TrainConfig` and the shipped defaults."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from .. import checks
from ..errors import ConfigError
from .tasks import get_task

# The integer fields that must be >= 1.
COUNTS = ("window", "hidden_size", "intermediate_size", "num_layers", "num_heads",
          "num_kv_heads", "steps", "batch_size", "threads", "checkpoint_every", "log_every",
          "monitor_examples", "eval_examples")


EVAL_LIMIT = 500  # held-out problems `eval` scores on a tiny task by default

@dataclass(frozen=True)
class TrainConfig:
    task: str = "chain"
    window: int = 32  # answer window (generation length) in tokens
    # model shape
    hidden_size: int = 192
    intermediate_size: int = 576
    num_layers: int = 4
    num_heads: int = 6
    num_kv_heads: int = 6
    # optimization
    steps: int = 3000
    batch_size: int = 32
    lr: float = 1.5e-3
    min_lr_ratio: float = 0.05  # cosine floor, as a fraction of lr
    warmup_steps: int = 200
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 1.0
    mask_eps: float = 1e-3  # lower bound of the masking ratio t
    seed: int = 0
    threads: int = 1  # torch CPU threads (the two shipped models train side by side)
    # bookkeeping
    checkpoint_every: int = 250  # steps between resumable training checkpoints
    log_every: int = 50
    # Accuracy on calibration-split problems while training (never the held-out split,
    # which is only scored once, at the end); 0 turns it off.
    monitor_every: int = 250
    monitor_examples: int = 64
    eval_examples: int = 500  # held-out examples scored for the model card

    def __post_init__(self) -> None:
        for name in COUNTS:  # 0 is never "the default" (None is, in default_config)
            checks.count(name, getattr(self, name))
        for name in ("warmup_steps", "monitor_every", "seed"):
            checks.count(name, getattr(self, name), minimum=0)
        if not 0 < self.mask_eps < 1:
            raise ValueError(f"mask_eps must be in (0, 1), got {self.mask_eps}")
        if self.window <= get_task(self.task).max_target_tokens():
            raise ValueError(f"window {self.window} cannot hold the longest {self.task} target "
                             f"({get_task(self.task).max_target_tokens()} tokens) plus EOS")
        if self.monitor_every % self.log_every:
            raise ValueError("monitor_every must be a multiple of log_every")
        object.__setattr__(self, "betas", tuple(self.betas))

    def to_dict(self) -> dict:
        return asdict(self)


# The shipped models: one default config per family (the only place these values live).
DEFAULT_CONFIGS: dict[str, TrainConfig] = {
    "llada": TrainConfig(seed=1),
    "dream": TrainConfig(num_kv_heads=2, intermediate_size=640, seed=2),
}


def default_config(family: str, **overrides) -> TrainConfig:
    try:
        base = DEFAULT_CONFIGS[family]
    except KeyError:
        raise ConfigError(f"no tiny model config for family {family!r}; choose one of "
                          f"{', '.join(DEFAULT_CONFIGS)}") from None
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})
