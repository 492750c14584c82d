"""Exceptions with messages a user can act on (they name the file and the problem)."""
from __future__ import annotations

from pathlib import Path


class MedITokError(Exception):
    """Base class of every error raised on purpose by meditok."""


class ImageReadError(MedITokError):
    """An input file could not be read or converted into a model input.

    Always carries the offending path so batch jobs can report and skip it.
    """

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class InvalidInputError(MedITokError):
    """A tensor handed to the model has the wrong shape, range or values."""


class DeviceError(MedITokError):
    """The requested device does not exist on this machine (e.g. ``cuda`` without a GPU)."""


class CheckpointError(MedITokError):
    """A checkpoint is missing, corrupt, or does not match the expected layout."""


class MissingDependencyError(MedITokError, ImportError):
    """An optional dependency is needed for this feature; the message says how to install it."""
