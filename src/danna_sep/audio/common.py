"""What every part of the audio package shares: its error, file kinds, and the first checks
on a path before anything opens it."""

from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path
from typing import Union

from ..errors import DannaSepError

PathLike = Union[str, "os.PathLike[str]"]

#: Lower-case file extensions (with the leading dot, as `Path.suffix` gives them) that a
#: folder scan treats as audio. ".stem.mp4" is covered by ".mp4".
AUDIO_EXTENSIONS: frozenset = frozenset(
    {
        ".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".mp2", ".m4a", ".m4b",
        ".aac", ".mp4", ".aiff", ".aif", ".aifc", ".wma", ".webm", ".mka", ".caf", ".w64",
        ".rf64", ".au", ".snd", ".ac3", ".eac3", ".dts", ".ape", ".wv", ".alac", ".amr",
        ".3gp", ".mkv", ".mov",
    }
)


class AudioError(DannaSepError):
    """A problem with an audio file: one line that names the file and the problem."""


def one_line(error: BaseException) -> str:
    """An exception's message on a single line, without libsndfile's "Error opening ..." prefix."""
    text = " ".join(str(error).split())
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", text) or type(error).__name__
    if text.startswith("Error opening") and ": " in text:
        text = text.split(": ", 1)[1]
    return text


def is_audio_file(path: PathLike) -> bool:
    """True when the extension is in AUDIO_EXTENSIONS (".stem.mp4" counts). Hidden names
    (leading dot: macOS "._x.wav" forks, our own temporary files) never count. The file
    system is not consulted."""
    name = Path(path).name
    return not name.startswith(".") and Path(name).suffix.lower() in AUDIO_EXTENSIONS


_FILE_KINDS = (
    (stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
    (stat.S_ISSOCK, "socket"),
)


def check_readable(path: PathLike) -> None:
    """Reject, as one line, what cannot be an audio file before anything opens it: a missing
    file, a symlink loop or one pointing nowhere, a folder, a FIFO or device (opening one
    could block or never end), an empty file or an unreadable one."""
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            raise AudioError(f"{path}: broken symlink (to {os.readlink(path)}, which does not exist)") from None
        raise AudioError(f"{path}: no such file") from None
    except NotADirectoryError:
        raise AudioError(f"{path}: no such file (a parent is not a folder)") from None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise AudioError(f"{path}: symlink loop") from None
        if error.errno == errno.ENAMETOOLONG:
            raise AudioError(f"{path}: name too long") from None
        raise AudioError(f"{path}: cannot read ({one_line(error)})") from None
    if stat.S_ISDIR(info.st_mode):
        raise AudioError(f"{path}: is a folder, not an audio file")
    for test, kind in _FILE_KINDS:
        if test(info.st_mode):
            raise AudioError(f"{path}: not a regular file ({kind})")
    if info.st_size == 0:
        raise AudioError(f"{path}: empty file (0 bytes)")
    if not os.access(path, os.R_OK):
        raise AudioError(f"{path}: cannot read (permission denied)")
