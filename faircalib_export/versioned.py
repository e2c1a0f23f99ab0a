"""Typed configs written into artifacts: a version beside the fields, checked on read.

A frozen dataclass with a `VERSION` class variable and a `WHAT` name gets `to_dict` /
`from_dict` from `Versioned`; `from_dict` refuses another version and unknown fields,
and the dataclass's own `__post_init__` validates the values.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, TypeVar

from .errors import ConfigError

T = TypeVar("T", bound="Versioned")


class Versioned:
    VERSION: ClassVar[int]
    WHAT: ClassVar[str]  # how errors name it: "calibration config"

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.VERSION, **dataclasses.asdict(self)}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls: type[T], data: Any) -> T:
        if not isinstance(data, dict):
            raise ConfigError(f"{cls.WHAT} must be an object, got {type(data).__name__}")
        data = dict(data)
        version = data.pop("version", cls.VERSION)
        if version != cls.VERSION:
            raise ConfigError(f"{cls.WHAT} version {version} is not supported (this toolchain "
                              f"reads version {cls.VERSION})")
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})  # type: ignore[arg-type]
        if unknown:
            raise ConfigError(f"{cls.WHAT} has unknown field(s): {', '.join(unknown)}")
        return cls(**data)
