"""Every error a user can cause, each with its own exit code (mapped in one place: cli.py)."""

from __future__ import annotations


class VdmcError(Exception):
    exit_code = 1


class UsageError(VdmcError):
    exit_code = 2


class InputNotFoundError(VdmcError):
    exit_code = 3


class NotAnImageError(VdmcError):
    exit_code = 4


class UnsupportedImageError(VdmcError):
    exit_code = 5


class OutputExistsError(VdmcError):
    exit_code = 6


class OutputNotWritableError(VdmcError):
    exit_code = 7


class CorruptFileError(VdmcError):
    """Not a .vdmc file, truncated, or failed a checksum."""

    exit_code = 8


class UnsupportedVersionError(VdmcError):
    exit_code = 9


class CheckpointError(VdmcError):
    """Checkpoint missing or unreadable."""

    exit_code = 10


class ModelMismatchError(VdmcError):
    """The file was written with a model that is not available here."""

    exit_code = 11


class VerificationError(VdmcError):
    """Decoding did not give back the exact pixels (encode-time check or pixel hash)."""

    exit_code = 12


class EnvironmentMismatchError(VdmcError):
    """The compute setup differs from the one that wrote the file in a way that breaks decoding."""

    exit_code = 13


class SomeFilesFailedError(VdmcError):
    """A batch (--recursive) finished, but some of its files failed (each one is named)."""

    exit_code = 14
