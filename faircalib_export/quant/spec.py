"""What a block is quantized to: format, bit widths and transform kind.

`QuantSpec` is the numerics of a calibrated block, independent of how it was
calibrated; it is written into every calibrated artifact and read back with `from_dict`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..errors import ConfigError
from ..versioned import Versioned
from .formats import FP4_BITS, QuantFormat

SUPPORTED_BITS = range(2, 9)
NO_QUANT_BITS = 16  # leave the tensor in 16 bit (activations: weight-only quantization)


def check_bits(bits: int, what: str, allow_16: bool = False) -> int:
    if bits in SUPPORTED_BITS or (allow_16 and bits == NO_QUANT_BITS):
        return bits
    allowed = "2-8" + (" or 16 (no quantization)" if allow_16 else "")
    raise ConfigError(f"unsupported {what} bit width {bits}; supported: {allowed}")


def check_format(fmt: str, w_bits: int, a_bits: int) -> QuantFormat:
    """The format, refusing names it does not know and bit widths it does not have."""
    try:
        fmt = QuantFormat(fmt)
    except ValueError:
        raise ConfigError(f"unknown quantization format {fmt!r}; choose one of "
                          f"{', '.join(f.value for f in QuantFormat)}") from None
    if fmt.is_fp4 and (w_bits != FP4_BITS or a_bits not in (FP4_BITS, NO_QUANT_BITS)):
        raise ConfigError(f"{fmt.value} is a 4-bit format: it needs 4-bit weights and 4-bit "
                          f"(or 16, unquantized) activations, not W{w_bits}A{a_bits}")
    return fmt


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
    # int | nvfp4 | mxfp4 (formats.QuantFormat); artifacts written before FP4 lack the
    # field and read back as int. FP4 formats take 4-bit weights and 4 or 16-bit activations.
    format: QuantFormat = QuantFormat.INT

    def __post_init__(self) -> None:
        check_bits(self.w_bits, "weight", allow_16=True)
        check_bits(self.a_bits, "activation", allow_16=True)
        object.__setattr__(self, "format", check_format(self.format, self.w_bits,
                                                        self.a_bits))
        if self.transform not in self.TRANSFORMS:
            raise ConfigError(f"unknown transform {self.transform!r}; "
                              f"choose one of {', '.join(self.TRANSFORMS)}")
