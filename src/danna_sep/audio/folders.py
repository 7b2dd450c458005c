"""Where stems go: the folders made for them (and removed again when a track fails), names
too long for their file system, and what a failed write into a folder means for its user
(a full disk, a read-only file system)."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import List, Optional, Sequence

from ..atomic import name_max
from ..errors import DiskFullError, disk_full, is_no_space
from .common import AudioError, PathLike, one_line

_FULL_BELOW = 1 << 20  # bytes free under which a failed write is taken for a full disk


def long_name(path: PathLike) -> Optional[str]:
    """"name too long (...)" when a part of `path` is longer than its file system takes, else None."""
    path = Path(path)
    for part, folder in zip(reversed(path.parts), [path.parent, *path.parent.parents]):
        size, limit = len(os.fsencode(part)), name_max(folder)
        if size > limit:
            return f"name too long ({size} bytes in {part[:24]}..., at most {limit} here)"
    return None


def space_problem(folder: Path, error: BaseException) -> Optional[Exception]:
    """The error to raise for a write into `folder` that failed for want of space or because
    the file system is read-only, or None. Encoders that hide the system's error (libsndfile
    says "System error.") are judged by the space left."""
    if is_no_space(error):
        return disk_full(folder)
    if isinstance(error, OSError) and error.errno == errno.EROFS:
        return AudioError(f"{folder}: read-only file system")
    if isinstance(error, OSError) and error.errno == errno.ENAMETOOLONG:
        return AudioError(f"{folder}: name too long")
    if isinstance(error, OSError) and error.errno == errno.EFBIG:
        return AudioError(f"{folder}: file too large for this file system (use --format flac)")
    try:
        usage = os.statvfs(folder)
    except OSError:
        return None
    if usage.f_bavail * usage.f_frsize < _FULL_BELOW or (usage.f_files and usage.f_favail == 0):
        return disk_full(folder)
    return None


def make_parent(path: Path, created: Optional[List[Path]] = None) -> Path:
    """The folder of `path`, made with its missing parents; those made are added to `created`
    (outermost first), so that a failed track can remove them again."""
    parent = path.parent
    if parent.is_dir():
        return parent
    try:
        for attempt in range(3):  # a failed track of another job may remove a shared empty folder meanwhile
            missing = [p for p in [parent, *parent.parents] if not p.exists() and not p.is_symlink()]
            try:
                for folder in reversed(missing):
                    try:
                        folder.mkdir()
                    except FileExistsError:
                        if folder.is_dir():  # made meanwhile by another job
                            continue
                        raise
                    if created is not None:
                        created.append(folder)
                break
            except FileNotFoundError:
                if attempt == 2:
                    raise
    except FileExistsError:
        if not parent.is_dir():
            return _blocked(parent)
    except NotADirectoryError:
        return _blocked(parent)
    except OSError as error:
        problem = space_problem(parent, error) if error.errno != errno.EACCES else None
        if isinstance(problem, DiskFullError):
            raise problem from None
        if error.errno == errno.ENAMETOOLONG:
            raise AudioError(f"{parent}: cannot create the output folder (name too long)") from None
        raise AudioError(f"{parent}: cannot create the output folder ({one_line(error)})") from None
    return parent


def _blocked(parent: Path) -> Path:
    blocker = next((p for p in [parent, *parent.parents] if p.exists() and not p.is_dir()), None)
    reason = f"{blocker} is a file, not a folder" if blocker is not None else "a file is in the way"
    raise AudioError(f"{parent}: cannot create the output folder ({reason})")


def remove_empty_folders(folders: Sequence[Path]) -> None:
    """Remove those of `folders` that are empty, innermost first (a folder that holds anything stays)."""
    for folder in sorted(set(folders), key=lambda f: len(f.parts), reverse=True):
        try:
            folder.rmdir()
        except OSError:
            pass
