"""The one error type a user sees: a message of one line, and the exit code it stands for.

Every problem a user can fix (a file that cannot be read, a folder in the way, an option
that means nothing) raises a `DannaSepError`; the command line prints its message as one
line and exits with its `exit_code`, in one place (`danna_sep.cli.main`). Anything else is
a bug, and raises with its traceback.
"""

from __future__ import annotations

import errno
from typing import Optional

#: Exit codes of `danna-sep`.
FAILED = 1
"""An input or output that could not be handled (the others, if any, still were)."""
USAGE = 2
"""The command line asks for something that cannot be done; nothing was started."""
INTERRUPTED = 130
"""Ctrl-C; the work under way left nothing half-written."""
HUNG_UP = 129
"""SIGHUP (the terminal closed); handled as Ctrl-C is."""
TERMINATED = 143
"""SIGTERM (`kill`, `timeout`, `docker stop`, systemd); handled as Ctrl-C is."""


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


class DiskFullError(DannaSepError):
    """A folder ran out of space (or quota), found before the work or while writing: "disk full: FOLDER"."""


#: errno values that mean "no room left" rather than a broken file or folder.
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_no_space(error: BaseException) -> bool:
    """True for an OSError that says the disk (or the user's quota) is full."""
    return isinstance(error, OSError) and error.errno in NO_SPACE_ERRNOS


def disk_full(folder, detail: str = "") -> DiskFullError:
    """The error for a full `folder`: "disk full: FOLDER", with `detail` in brackets when given."""
    return DiskFullError(f"disk full: {folder}" + (f" ({detail})" if detail else ""))


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, SIGTERM or SIGHUP, raised in the main thread by `danna_sep.cli`'s signal handler.

    A KeyboardInterrupt, so that everything that cleans up after Ctrl-C (temporary files, the
    track folders a track made) does the same for the other two."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum
