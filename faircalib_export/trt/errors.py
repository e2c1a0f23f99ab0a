"""Typed errors of the TensorRT stage (all `FaircalibError`: the CLI prints one line)."""

from __future__ import annotations

from ..errors import ConfigError, FaircalibError


class TensorRTError(FaircalibError):
    """Base class of TensorRT export and runtime errors."""


class TensorRTUnavailableError(TensorRTError):
    """The `tensorrt` Python package (or a CUDA runtime) is not available here."""


class PluginLibraryError(TensorRTError):
    """The faircalib plugin library is missing or TensorRT refused to load it."""


class EngineBuildError(TensorRTError):
    """TensorRT could not parse the plugin graph or build an engine from it."""


class UnknownTargetError(ConfigError):
    """A target GPU name that has no file in configs/targets."""
