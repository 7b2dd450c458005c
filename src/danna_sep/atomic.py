"""Files and folders that appear whole or not at all: one policy for every write.

Whatever danna-sep writes (stems, reports, checkpoints, bundles) goes first to a hidden
temporary name next to its target, `.NAME.tmp-PID-HOST4RAND4[.EXT]`, and is renamed onto
NAME only once complete; on any error, or Ctrl-C, the temporary goes and the target is
left as it was. The policy, the same for all of them:

- durability: the data is fsync'ed before the rename and the folder after it, so that a
  crash never leaves a complete name over data still in the page cache;
- permissions: what a plain `open()` or `mkdir()` gives (0o666 or 0o777 less the umask),
  as the temporary is made with those modes here, never by `mkstemp` (owner-only);
- leftovers: the writer's pid and 4 hex digits of a hash of the host name in the temporary
  name let a later writer into the same folder remove what a killed one of this machine
  left (`remove_stale_temporaries`), and leave another machine's (a shared folder) alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import secrets
import shutil
import socket
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Union

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

# NAME is shortened to "PREFIX~8HEX" where the whole would not fit in a file name.
_TEMPORARY = re.compile(r"\..+\.tmp-(?P<pid>\d+)-(?P<host>[0-9a-f]{4})[0-9a-f]{4}(\.[A-Za-z0-9]+)?")
_HOST_TAG: Optional[str] = None


def host_tag() -> str:
    """4 hex digits of a hash of this machine's name (in every temporary name written here)."""
    global _HOST_TAG
    if _HOST_TAG is None:
        _HOST_TAG = hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:4]
    return _HOST_TAG


def is_temporary_name(name: str) -> bool:
    """True for the name of one of our temporary files or folders."""
    return _TEMPORARY.fullmatch(name) is not None


def temporary_name(name: str, extension: Optional[str] = None, limit: int = 255) -> str:
    """The hidden temporary name for target `name`: ".NAME.tmp-PID-8HEX[.EXT]", NAME cut to a
    prefix and a hash of the whole where that would be longer than `limit` bytes (so that a
    temporary fits wherever its target does)."""
    tail = f".tmp-{os.getpid()}-{host_tag()}{secrets.token_hex(2)}" + (f".{extension}" if extension else "")
    whole = f".{name}{tail}"
    if len(os.fsencode(whole)) <= limit:
        return whole
    digest = hashlib.sha1(os.fsencode(name)).hexdigest()[:8]
    room = limit - len(os.fsencode(f".~{digest}{tail}"))
    prefix = os.fsencode(name)[:max(0, room)].decode("utf-8", "ignore") if room > 0 else ""
    return f".{prefix}~{digest}{tail}"


def name_max(folder: PathLike) -> int:
    """The longest file name (bytes) the file system of `folder`, or of its nearest existing
    ancestor, takes (255 on most)."""
    for candidate in [Path(folder), *Path(folder).parents]:
        try:
            return int(os.pathconf(candidate, "PC_NAME_MAX"))
        except (OSError, ValueError):
            continue
    return 255


def _process_is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # it exists, under another user
        return False
    return False


def _remove(path: Path) -> None:
    """Remove a file, or a folder with all it holds (OSError as the system raises it)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def remove_stale_temporaries(folder: PathLike) -> List[Path]:
    """Delete the temporary files and folders in `folder` left by writers of this machine that
    no longer run (killed mid-write: their names carry the writer's pid), say so, and return them."""
    folder = Path(folder)
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    removed = []
    for name in names:
        found = _TEMPORARY.fullmatch(name)
        if found is None:
            continue
        pid = int(found["pid"])
        if found["host"] == host_tag() and pid != os.getpid() and _process_is_gone(pid):
            try:
                _remove(folder / name)
            except OSError:
                continue
            removed.append(folder / name)
    if removed:
        pids = sorted({int(_TEMPORARY.fullmatch(p.name)["pid"]) for p in removed})
        log.info("%s: removed %d temporary file%s left by a killed run (process %s)", folder, len(removed),
                 "s" * (len(removed) > 1), ", ".join(map(str, pids)))
    return removed


def reserve(folder: PathLike, name: str, extension: Optional[str] = None, directory: bool = False) -> Path:
    """Make an empty temporary file (or folder) in `folder` for target `name`, with the modes a
    plain `open()` (`mkdir()`) gives, after removing what killed writers left there. OSError
    as the system raised it (the caller says what it means for its user)."""
    folder = Path(folder)
    remove_stale_temporaries(folder)
    limit = name_max(folder)
    for _ in range(16):
        candidate = folder / temporary_name(name, extension, limit)
        try:
            if directory:
                os.mkdir(candidate, 0o777)
            else:
                os.close(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"{folder}: no free temporary name for {name}")


def _fsync(path: Path, required: bool = True) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if required:
            raise
        return
    try:
        os.fsync(fd)
    except OSError:
        if required:  # a folder on some file systems cannot be fsync'ed: its rename still stands
            raise
    finally:
        os.close(fd)


def commit(temporary: PathLike, target: PathLike) -> Path:
    """Rename a complete temporary file or folder onto `target`, durably (see the module's
    policy). A folder replaces an existing folder: the old one is moved aside first, then
    removed, so that `target` is at every moment the old whole or the new whole."""
    temporary, target = Path(temporary), Path(target)
    if temporary.is_dir():
        for inner in sorted(temporary.rglob("*")):
            if inner.is_file() and not inner.is_symlink():
                _fsync(inner)
        _fsync(temporary, required=False)
    else:
        _fsync(temporary)
    aside = None
    if temporary.is_dir() and target.is_dir() and not target.is_symlink():
        aside = target.parent / temporary_name(target.name, None, name_max(target.parent))
        os.replace(target, aside)
    try:
        os.replace(temporary, target)
    except BaseException:
        if aside is not None:
            os.replace(aside, target)
        raise
    _fsync(target.parent, required=False)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    return target


def discard(temporary: Optional[PathLike]) -> None:
    """Remove a temporary file or folder (nothing where it is already gone)."""
    if temporary is None:
        return
    try:
        _remove(Path(temporary))
    except FileNotFoundError:
        pass
    except OSError as error:  # pragma: no cover - only when the folder vanished or locked
        log.warning("could not remove temporary %s (%s)", temporary, error)


@contextlib.contextmanager
def writing(target: PathLike, extension: Optional[str] = None, directory: bool = False) -> Iterator[Path]:
    """`with writing(path) as temporary:` write `temporary` (a file, or with `directory` a
    folder to fill); it becomes `path` when the block ends, and is removed if it raises.
    The target's folder is made where missing."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = reserve(target.parent, target.name, extension, directory)
    try:
        yield temporary
        commit(temporary, target)
    except BaseException:
        discard(temporary)
        raise


def write_with(target: PathLike, write: Callable[[Path], object], extension: Optional[str] = None) -> Path:
    """`write(temporary)` then commit it onto `target` (see `writing`)."""
    with writing(target, extension) as temporary:
        write(temporary)
    return Path(target)


def write_text(target: PathLike, text: str) -> Path:
    """UTF-8 `text` written to `target` atomically (see `writing`)."""
    return write_with(target, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def write_bytes(target: PathLike, data: bytes) -> Path:
    """`data` written to `target` atomically (see `writing`)."""
    return write_with(target, lambda temporary: temporary.write_bytes(data))
