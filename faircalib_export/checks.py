"""Checks of user-given values where they enter: counts and devices.

`None` always means "the default"; 0 or a negative count is an error, never the default.
"""

from __future__ import annotations

from .errors import ConfigError


def count(name: str, value, minimum: int = 1):
    """`value` unchanged when it is None or an integer >= minimum; else a ConfigError."""
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def device(name: str) -> str:
    """A torch device string that exists on this machine."""
    import torch

    try:
        parsed = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"--device {name!r} is not a device (cpu, cuda, cuda:N)") from None
    if parsed.type == "cuda":
        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if available == 0:
            raise ConfigError(f"--device {name}: no CUDA device on this machine")
        if parsed.index is not None and parsed.index >= available:
            raise ConfigError(f"--device {name}: this machine has {available} CUDA device(s)")
    elif parsed.type != "cpu":
        raise ConfigError(f"--device {name}: only cpu and cuda are supported")
    return name
