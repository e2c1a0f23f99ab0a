"""What a block is quantized to: bit widths and transform kind (torch-free).

`QuantSpec` is the numerics of a calibrated block, independent of how it was
calibrated; it is written into every calibrated artifact and read back with `from_dict`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..errors import ConfigError
from ..versioned import Versioned

SUPPORTED_BITS = range(2, 9)
NO_QUANT_BITS = 16  # leave the tensor in 16 bit (activations: weight-only quantization)


def check_bits(bits: int, what: str, allow_16: bool = False) -> int:
    if bits in SUPPORTED_BITS or (allow_16 and bits == NO_QUANT_BITS):
        return bits
    allowed = "2-8" + (" or 16 (no quantization)" if allow_16 else "")
    raise ConfigError(f"unsupported {what} bit width {bits}; supported: {allowed}")



@dataclass(frozen=True)
class QuantSpec(Versioned):
    """How a block is quantized (the numerics), independent of how it is calibrated."""

    VERSION: ClassVar[int] = 1
    WHAT: ClassVar[str] = "quantization spec"
    TRANSFORMS: ClassVar[tuple[str, ...]] = ("none", "hadamard", "learnable")

    w_bits: int = 4
    a_bits: int = 4
    transform: str = "learnable"  # none | hadamard | learnable
    smooth: bool = True  # learnable per-channel scales
    learn_w_clip: bool = True
    learn_a_clip: bool = True

    def __post_init__(self) -> None:
        check_bits(self.w_bits, "weight", allow_16=True)
        check_bits(self.a_bits, "activation", allow_16=True)
        if self.transform not in self.TRANSFORMS:
            raise ConfigError(f"unknown transform {self.transform!r}; "
                              f"choose one of {', '.join(self.TRANSFORMS)}")
