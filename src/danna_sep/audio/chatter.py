"""What C decoders print on the process's stderr, turned into log lines naming the file."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Iterator, Optional

log = logging.getLogger(__name__)

_CHATTER_LOCK = threading.Lock()
_chatter_sink: Optional[int] = None
_CHATTER_SAID: set = set()


def _chatter_fd() -> Optional[int]:
    """An in-memory file that takes what C libraries print, made once; None where the system
    has no memfd (then their lines reach stderr as they are)."""
    global _chatter_sink
    if _chatter_sink is None:
        try:
            _chatter_sink = os.memfd_create("danna-sep-decoder", os.MFD_CLOEXEC)
        except (AttributeError, OSError):
            return None
    return _chatter_sink


@contextlib.contextmanager
def decoder_chatter(path: Path) -> Iterator[None]:
    """What C libraries print on the process's stderr while they work on `path` (libmpg123
    inside libsndfile: "Warning: Xing stream size off by more than 1% ...") goes to the log
    instead, at info level (so -q hides it), naming the file.

    The process's file descriptor 2 points elsewhere for the call; lines another thread
    writes meanwhile that are not the decoder's (a progress bar's redraw, a line of our own
    log) are passed on to stderr as they were."""
    sink = _chatter_fd()
    if sink is None:
        yield
        return
    with _CHATTER_LOCK:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError, AttributeError):  # no stderr to take over
            yield
            return
        os.dup2(sink, 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.lseek(sink, 0, os.SEEK_SET)
            chunks = []
            while True:
                chunk = os.read(sink, 1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
            os.lseek(sink, 0, os.SEEK_SET)
            os.ftruncate(sink, 0)
    text = b"".join(chunks).decode("utf-8", "replace")
    for line in text.split("\n"):
        if not line.strip():
            continue
        if "\r" in line or "\x1b" in line or line.startswith("danna-sep"):
            try:
                os.write(2, (line + "\n").encode("utf-8", "replace"))
            except OSError:
                pass
        elif (str(path), line.strip()) not in _CHATTER_SAID:  # the same line from each opening, once
            if len(_CHATTER_SAID) > 1000:
                _CHATTER_SAID.clear()
            _CHATTER_SAID.add((str(path), line.strip()))
            log.info("%s: decoder says: %s", path, line.strip())
