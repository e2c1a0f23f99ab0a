"""Stage II settings, typed and versioned, with every calibration default defined once.

`CalibConfig` says how to calibrate (method, bits, optimizer); `Recipe` says how much:
calibration sequences, tokens per sequence and epochs per block. Real models get the
paper's recipe; the tiny shipped models get one sized for them and chosen by measurement
(`benchmarks/bench_build_recipe.py`). Fields left None take the model's recipe.
Configs are written into artifacts with `to_dict` (carrying `version`) and read back with
`from_dict`, which validates them.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

from .. import checks
from ..errors import ConfigError, FaircalibError
from ..quant.spec import QuantSpec
from ..versioned import Versioned
from .methods import get_method


class CalibrationError(FaircalibError):
    """Calibration diverged (NaN/inf loss) or was given unusable inputs."""


@dataclass(frozen=True)
class Recipe:
    """How much calibration a model gets."""

    samples: int  # calibration sequences
    seq_len: int  # tokens per sequence
    epochs: int  # passes over the sequences, per block


PAPER_RECIPE = Recipe(samples=128, seq_len=1024, epochs=15)
# The shipped 2M-parameter models: their training sequences are under 100 tokens. At
# 2 epochs of 32 sequences the held-out accuracy and teacher-forced KL match the paper
# recipe's within seed noise, in a tenth of the time (README, "Choosing the tiny recipe").
TINY_RECIPE = Recipe(samples=32, seq_len=128, epochs=2)
TINY_HIDDEN_MAX = 1024  # a model narrower than this gets the tiny recipe


def recipe_for(hidden_size: int) -> Recipe:
    return TINY_RECIPE if hidden_size < TINY_HIDDEN_MAX else PAPER_RECIPE


def _check_count(name: str, value: Any, minimum: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class CalibConfig(Versioned):
    VERSION: ClassVar[int] = 1
    WHAT: ClassVar[str] = "calibration config"

    method: str = "fair-calib"
    w_bits: int = 4
    a_bits: int = 4
    epochs: int | None = None  # None: the model's recipe (`recipe_for`)
    batch_size: int = 4
    lr: float = 5e-3
    clip_lr_mult: float = 10.0
    qdrop_prob: float = 0.5
    seed: int = 0
    device: str = "cpu"
    cache_dtype: str = "fp32"
    format: str = QuantSpec.format  # int | nvfp4 | mxfp4 (quant/formats.py)
    # False: the activation clips stay at 1 whatever the method (weights keep theirs).
    # TensorRT's dynamic NVFP4 quantization always maps a block's amax to 6, so only a
    # fold with unit activation clips takes its native graph (trt/native_fp4.py). Configs
    # written before the field read back as True, which is what they calibrated.
    act_clips: bool = True

    def __post_init__(self) -> None:
        from ..quant.spec import check_bits

        get_method(self.method)  # validates the name
        check_bits(self.w_bits, "weight")  # 16-bit weights have nothing to calibrate or fold
        object.__setattr__(self, "format", self.spec().format)  # validates bits and format
        if not isinstance(self.act_clips, bool):
            raise ConfigError(f"act_clips must be true or false, got {self.act_clips!r}")
        if self.epochs is not None:
            _check_count("epochs", self.epochs, minimum=0)
        _check_count("batch_size", self.batch_size)
        _check_count("seed", self.seed, minimum=0)
        if not 0 < self.lr < math.inf or not 0 < self.clip_lr_mult < math.inf:
            raise ConfigError(f"lr and clip_lr_mult must be finite and > 0, got {self.lr}, "
                              f"{self.clip_lr_mult}")
        if not 0 <= self.qdrop_prob <= 1:
            raise ConfigError(f"qdrop_prob must be in [0, 1], got {self.qdrop_prob}")
        checks.device(self.device)
        if self.cache_dtype not in ("fp32", "fp16", "bf16"):
            raise ConfigError(f"cache_dtype must be fp32, fp16 or bf16, got {self.cache_dtype!r}")

    def spec(self) -> QuantSpec:
        """The numerics this config calibrates (its method's transform, bits, format)."""
        return get_method(self.method).spec(self.w_bits, self.a_bits, self.format,
                                            act_clips=self.act_clips)

    def resolved(self, hidden_size: int) -> CalibConfig:
        """This config with unset fields taken from the recipe for a model of this width."""
        if self.epochs is not None:
            return self
        return dataclasses.replace(self, epochs=recipe_for(hidden_size).epochs)
