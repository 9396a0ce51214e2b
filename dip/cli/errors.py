"""Exit codes, ``UsageError`` and the two ways the command talks to the user on stderr."""
from __future__ import annotations

import sys

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """A problem with the user's input or options: exit code 2, message and hint on stderr."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint


def err(message: str, hint: str | None = None) -> None:
    """``dip: error: MESSAGE`` and, indented below it, the hint."""
    sys.stderr.write(f"dip: error: {message}\n")
    if hint:
        sys.stderr.write(f"  {hint}\n")


def say(args, message: str) -> None:
    """A progress line on stderr, unless ``args.quiet``."""
    if not getattr(args, "quiet", False):
        sys.stderr.write(message + "\n")
