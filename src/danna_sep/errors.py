"""The one error type a user sees: a message of one line, and the exit code it stands for.

Every problem a user can fix (a file that cannot be read, a folder in the way, an option
that means nothing) raises a `DannaSepError`; the command line prints its message as one
line and exits with its `exit_code`, in one place (`danna_sep.cli.main`). Anything else is
a bug, and raises with its traceback.
"""

from __future__ import annotations

from typing import Optional

#: Exit codes of `danna-sep`.
FAILED = 1
"""An input or output that could not be handled (the others, if any, still were)."""
USAGE = 2
"""The command line asks for something that cannot be done; nothing was started."""
INTERRUPTED = 130
"""Ctrl-C; the work under way left nothing half-written."""


class DannaSepError(Exception):
    """A problem the user can fix; `str(error)` names the file or option and the problem."""

    exit_code: int = FAILED

    def __init__(self, message: str, *, exit_code: Optional[int] = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(DannaSepError):
    """Options that cannot go together, or a value that cannot be used: found before any work."""

    exit_code = USAGE
