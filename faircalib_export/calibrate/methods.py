"""Calibration methods as data: what each quantizes and how it is calibrated.

| method         | transform (online)          | scales | clips   | calibration                |
| rtn            | none                        | no     | fixed 1 | none                       |
| quarot         | random Hadamard per factor  | no     | fixed 1 | GPTQ weights               |
| flatquant      | learnable Kronecker affine  | yes    | learned | uniform hidden-state MSE   |
| fair-calib     | learnable Kronecker affine  | yes    | learned | prior-weighted MSE         |
| qdrop          | none                        | no     | learned | uniform MSE, QDrop drops   |
| qdrop-weighted | none                        | no     | learned | prior-weighted, QDrop drops|

QuaRot here keeps its rotations online at the same four sites as the learned
transforms (the original absorbs residual-stream rotations into the weights offline);
the numerics of the quantized matmuls are the same.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from ..quant.spec import QuantSpec, check_format


@dataclass(frozen=True)
class Method:
    name: str
    transform: str
    smooth: bool
    learn_clips: bool
    trains: bool  # gradient-based block reconstruction
    gptq: bool
    weighted: bool  # uses the Stage I prior
    qdrop: bool

    def spec(self, w_bits: int, a_bits: int, format: str = QuantSpec.format, *,
             act_clips: bool = True) -> QuantSpec:
        """The numerics of this method; `act_clips=False` keeps the activation clips at 1
        even where the method learns clips."""
        if self.gptq and check_format(format, w_bits, a_bits).is_fp4:
            raise ConfigError(f"method {self.name} quantizes its weights with GPTQ, which "
                              f"has integer grids only; {format} is not supported with it")
        return QuantSpec(w_bits=w_bits, a_bits=a_bits, transform=self.transform,
                         smooth=self.smooth, learn_w_clip=self.learn_clips,
                         learn_a_clip=self.learn_clips and act_clips, format=format)


METHODS = {m.name: m for m in (
    Method("rtn", "none", False, False, trains=False, gptq=False, weighted=False, qdrop=False),
    Method("quarot", "hadamard", False, False, trains=False, gptq=True, weighted=False,
           qdrop=False),
    Method("flatquant", "learnable", True, True, trains=True, gptq=False, weighted=False,
           qdrop=False),
    Method("fair-calib", "learnable", True, True, trains=True, gptq=False, weighted=True,
           qdrop=False),
    Method("qdrop", "none", False, True, trains=True, gptq=False, weighted=False, qdrop=True),
    Method("qdrop-weighted", "none", False, True, trains=True, gptq=False, weighted=True,
           qdrop=True),
)}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}") from None
