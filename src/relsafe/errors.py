"""Exceptions relsafe raises for bad input. Each message names the file, field or value at fault."""

from __future__ import annotations


class RelsafeError(Exception):
    """Base class for every error relsafe raises on purpose."""


class InputError(RelsafeError, ValueError):
    """Bad input: an empty list, mismatched shapes, an unknown name, an unreadable file."""


class ConfigError(InputError):
    """A config file or flag is malformed, has unknown keys, or fails validation."""


class CheckpointError(InputError):
    """A model folder or weight file is missing, corrupt, or not what it claims to be."""


class NotMainProcess(RelsafeError):
    """Raised on the non-main processes of a multi-process run once their part is done: only the
    main process writes outputs, so the command line exits 0 on this, without an error message."""
