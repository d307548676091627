"""The project's own errors: problems a user can fix, each message naming the fix.

Command-line entry points print these on one line and exit 2; any other exception is a bug (or
the machine running out of memory) and keeps its traceback. Subclasses also derive from the
built-in type they replace (`ValueError`, `FileNotFoundError`, ...), so existing handlers hold.
"""

from __future__ import annotations


class FixableError(Exception):
    """A problem the user can fix: a bad option, a missing or damaged file, an unreachable source."""


class ConfigError(FixableError, ValueError):
    """An option has a value it cannot take, or contradicts another option or the data."""
