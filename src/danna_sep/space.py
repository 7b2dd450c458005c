"""Disk space a track needs, checked before any work starts.

`Separator.write_stems` spools the input (at 44.1 kHz stereo) and every stem onto disk in
the temporary folder ($TMPDIR) during pass 1, then encodes each stem into its output
folder and frees its spool (pass 2). Both sizes follow from the track's duration, which
the header declares, so a track that cannot fit is refused before it starts, in one line
naming the folder, what it needs and what is free.

Spools are float32. Where that does not fit but float16 does (half the size), they are
kept as float16, with a line saying so: measured on the shipped bundle, this moves the
stems by about 70 dB below their own level (69 to 73 dB SNR against float32 spools; a
16-bit output's own rounding is 73 to 80 dB), far under the separation's own error.
Several tracks at once (`-j`) each check on their own; a full disk during the work is
still one line ("disk full: FOLDER") and leaves nothing behind.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from . import SAMPLERATE
from .errors import disk_full
from .spool import ITEM_BYTES, spool_folder

log = logging.getLogger(__name__)

#: Room kept free on top of what the track needs (file system metadata, headers).
MARGIN = 1 << 20
SPOOL_CHANNELS = 2


@dataclass(frozen=True)
class Place:
    """Where a folder's bytes go: its nearest existing ancestor, that file system and its free bytes."""

    folder: Path
    device: int
    free: int


def place(folder: os.PathLike) -> Optional[Place]:
    """The file system `folder` (or the nearest ancestor that exists) is on; None where it cannot be read."""
    for candidate in [Path(folder), *Path(folder).parents]:
        try:
            info = os.stat(candidate)
            usage = os.statvfs(candidate)
        except OSError:
            continue
        if usage.f_flag & os.ST_RDONLY:  # writing will say so; space is not the problem there
            return None
        return Place(Path(folder), info.st_dev, usage.f_bavail * usage.f_frsize)
    return None


def size_text(count: int) -> str:
    """Bytes as "12.3 MB" or "4.21 GB" (powers of ten, as `df -H` says them)."""
    if count >= 10**9:
        return f"{count / 10**9:.2f} GB"
    return f"{count / 10**6:.1f} MB"


def spool_bytes(seconds: float, dtype: str) -> int:
    """One spool of `seconds` of 44.1 kHz stereo audio kept as `dtype`."""
    return math.ceil(seconds * SAMPLERATE + SAMPLERATE) * SPOOL_CHANNELS * ITEM_BYTES[dtype]


def shortfall(seconds: float, outputs: Sequence[Tuple[Path, int]], dtype: str,
              directory: Optional[str] = None) -> Optional[Tuple[Path, int, int]]:
    """(folder, bytes needed, bytes free) of the first file system that cannot hold a track of
    `seconds` whose stems go to `outputs` ((folder, encoded bytes), in the order they are
    written), with spools as `dtype` in `directory` (default: $TMPDIR); None when all fit.

    On one file system the peak is the larger of the end of pass 1 (the input's spool and
    every stem's) and each moment of pass 2 (the spools not yet freed, and the outputs so far)."""
    unit = spool_bytes(seconds, dtype)
    spools = place(spool_folder(directory))
    places = [(place(folder), size) for folder, size in outputs]
    if spools is None or any(p is None for p, _ in places):
        return None
    count = len(outputs)
    needs: Dict[int, int] = {spools.device: (1 + count) * unit}
    written: Dict[int, int] = {}
    for index, (where, size) in enumerate(places):
        written[where.device] = written.get(where.device, 0) + size
        for device, total in written.items():
            moment = total + ((count - index) * unit if device == spools.device else 0)
            needs[device] = max(needs.get(device, 0), moment)
    folders: Dict[int, Place] = {spools.device: spools}
    for where, _ in places:
        folders.setdefault(where.device, where)
    for device, need in needs.items():
        where = folders[device]
        if need + MARGIN > where.free:
            return where.folder, need + MARGIN, where.free
    return None


def spool_dtype(seconds: Optional[float], outputs: Sequence[Tuple[Path, int]], choice: str = "auto",
                directory: Optional[str] = None, name: str = "") -> str:
    """The dtype to spool a track in: float32 where it fits, float16 where only that fits
    (`choice` "auto"; said in a line), or `choice` itself. Raises DiskFullError naming the
    folder, the need and what is free when nothing fits. A track of unknown length is not
    checked (a full disk then shows while it runs)."""
    tried: List[str] = ["float32", "float16"] if choice == "auto" else [choice]
    if seconds is None:
        return tried[0]
    short = None
    for dtype in tried:
        short = shortfall(seconds, outputs, dtype, directory)
        if short is None:
            if dtype != tried[0]:
                log.info("%s: spooled as float16 (half the temporary space; about 70 dB below the stems): "
                         "float32 would need more than is free", name or "the track")
            return dtype
    folder, need, free = short
    raise disk_full(folder, f"the track needs {size_text(need)} there, {size_text(free)} free")
