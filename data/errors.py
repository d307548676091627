"""The errors `data` raises for problems the user can fix; each message names the fix."""

from __future__ import annotations

from lora_gpt.errors import FixableError


class DataError(FixableError, RuntimeError):
    """A dataset could not be built or read; the message says what to do."""


class SourceUnavailableError(DataError):
    """Text could not be fetched: no network, no package tool, or no such package or dataset."""


class ManifestError(DataError):
    """A prepared dataset folder is incomplete, corrupt, or holds another configuration."""


class DataFileError(DataError, ValueError):
    """A file of your own data cannot be read as a dataset: its message names the file, the line and the fix."""


class DataNotFoundError(DataError, FileNotFoundError):
    """The data a recipe or path names does not exist."""
