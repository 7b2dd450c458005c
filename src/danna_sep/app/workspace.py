"""The web app's temporary folder: uploads and results, under a size cap, removed on exit.

Layout (the whole folder is also Gradio's upload folder, so that the files in it can be
served to the page):

    danna-sep-app-XXXXXXXX/
      owner               host and pid of the app, so that a later app can remove the folder
                          of one that was killed (SIGKILL leaves no chance to clean up)
      <sha>/<name>        an upload as Gradio received it; moved out at once (see `adopt`)
      jobs/<token>/       one input or one separation: the token is 32 random bytes, so a
                          folder (and the URL of a file in it) cannot be guessed from another's

Nothing the user sends is used in a path: inputs are renamed to `input` plus a checked
extension, stems are named after the bundle's sources.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import socket
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Collection, Optional, Tuple

from ..errors import DannaSepError

log = logging.getLogger(__name__)

PREFIX = "danna-sep-app-"
OWNER_FILE = "owner"
JOBS = "jobs"
_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")


class StorageFull(DannaSepError):
    """A job would take the app's temporary folder past its size cap."""


def _folder_size(folder: Path) -> int:
    total = 0
    for place, _, names in os.walk(folder):
        for name in names:
            try:
                total += os.lstat(os.path.join(place, name)).st_size
            except FileNotFoundError:  # removed while we walked
                pass
    return total


def _owner_is_gone(owner: str) -> bool:
    """True when `owner` ("host pid") names a process of this host that no longer runs."""
    parts = owner.split()
    if len(parts) != 2 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return False
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's live process
        return False
    return False


def remove_abandoned(parent: Path) -> int:
    """Remove the temporary folders that apps killed on this host left in `parent`; how many."""
    removed = 0
    try:
        candidates = [p for p in parent.iterdir() if p.name.startswith(PREFIX) and p.is_dir()]
    except OSError:
        return 0
    for folder in candidates:
        try:
            owner = (folder / OWNER_FILE).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if _owner_is_gone(owner):
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    return removed


class Workspace:
    """The app's temporary folder (see the module's docstring), at most `cap_bytes` in all.

    Folders are handed out by token (`new_folder`) and remembered oldest first; `make_room`
    removes the oldest ones not in use when a job needs the space. Thread-safe.
    """

    def __init__(self, cap_bytes: int, parent: Optional[Path] = None):
        self.cap_bytes = int(cap_bytes)
        parent = Path(parent or tempfile.gettempdir())
        abandoned = remove_abandoned(parent)
        if abandoned:
            log.info("removed %d temporary folder(s) of web apps that were killed", abandoned)
        self.root = Path(tempfile.mkdtemp(prefix=PREFIX, dir=parent)).resolve()
        (self.root / OWNER_FILE).write_text(f"{socket.gethostname()} {os.getpid()}", encoding="utf-8")
        self.jobs = self.root / JOBS
        self.jobs.mkdir()
        self._folders: "OrderedDict[str, float]" = OrderedDict()
        self._lock = threading.Lock()

    def new_folder(self) -> Tuple[str, Path]:
        """A new empty folder under an unguessable token: (token, folder)."""
        token = secrets.token_urlsafe(32)
        folder = self.jobs / token
        folder.mkdir(mode=0o700)
        with self._lock:
            self._folders[token] = time.monotonic()
        return token, folder

    def folder(self, token: str) -> Optional[Path]:
        """The folder of `token`, or None when it is not one of ours (or was removed)."""
        if not isinstance(token, str) or not _TOKEN.fullmatch(token):
            return None
        with self._lock:
            known = token in self._folders
        folder = self.jobs / token
        return folder if known and folder.is_dir() else None

    def remove(self, *tokens: Optional[str]) -> None:
        """Remove the folders of `tokens` (None and unknown tokens are ignored)."""
        for token in tokens:
            if token is None or self.folder(token) is None:
                continue
            with self._lock:
                self._folders.pop(token, None)
            shutil.rmtree(self.jobs / token, ignore_errors=True)

    def used_bytes(self) -> int:
        return _folder_size(self.root)

    def make_room(self, needed: int, keep: Collection[str] = ()) -> None:
        """Make sure `needed` more bytes fit under the cap, removing the oldest folders (not
        those in `keep`) as far as it takes; StorageFull when even that is not enough."""
        with self._lock:
            used = self.used_bytes()
            for token in list(self._folders):
                if used + needed <= self.cap_bytes:
                    break
                if token in keep:
                    continue
                freed = _folder_size(self.jobs / token)
                shutil.rmtree(self.jobs / token, ignore_errors=True)
                del self._folders[token]
                used -= freed
                log.info("removed an earlier result (%.1f MB) to stay under the storage cap", freed / 1e6)
            if used + needed > self.cap_bytes:
                raise StorageFull(
                    f"needs {_megabytes(needed)} more and the app's temporary folder holds {_megabytes(used)} of "
                    f"its {_megabytes(self.cap_bytes)} (start the app with a larger --max-storage-gb)")

    def discard_upload(self, upload: Path) -> None:
        """Remove an upload that Gradio wrote (and its folder, `<sha>/`, when that is left empty);
        a path outside this folder is left alone."""
        upload = Path(upload).resolve()
        if self.root not in upload.parents or self.jobs in upload.parents:
            return
        upload.unlink(missing_ok=True)
        folder = upload.parent
        if folder.parent == self.root:
            try:
                folder.rmdir()
            except OSError:  # another upload of the same bytes is in it
                pass

    def is_upload(self, path: Path) -> bool:
        """True for a file where Gradio's upload route puts one: `<root>/<sha256>/<name>`."""
        path = Path(path)
        return (path.parent.parent == self.root and re.fullmatch(r"[0-9a-f]{64}", path.parent.name) is not None
                and path.is_file() and not path.is_symlink())

    def close(self) -> None:
        """Remove the whole folder."""
        with self._lock:
            self._folders.clear()
        shutil.rmtree(self.root, ignore_errors=True)


def _megabytes(count: int) -> str:
    return f"{count / 1e9:.2f} GB" if count >= 1e9 else f"{count / 1e6:.1f} MB"
