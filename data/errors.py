"""The errors `data` raises for problems the user can fix; each message names the fix."""
from __future__ import annotations


class DataError(RuntimeError):
    """A dataset could not be built or read; the message says what to do."""


class SourceUnavailableError(DataError):
    """Text could not be fetched: no network, no package tool, or no such package or dataset."""


class ManifestError(DataError):
    """A prepared dataset folder is incomplete, corrupt, or holds another configuration."""
