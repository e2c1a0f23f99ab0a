"""User-facing error types.

Every error a user can cause (bad path, corrupt file, unsupported option) is raised as a
`FaircalibError` subclass whose message names the file, key or field at fault. The CLI
prints the message and exits with status 2 instead of showing a traceback.
"""


class FaircalibError(Exception):
    """Base class for errors caused by user input rather than by a bug."""


class CheckpointError(FaircalibError):
    """A checkpoint directory is missing, incomplete, corrupt or inconsistent."""


class ConfigError(FaircalibError):
    """A config file lacks a required field or holds an invalid value."""


class UnsupportedModelError(FaircalibError):
    """The checkpoint describes an architecture or option this toolchain does not support."""
