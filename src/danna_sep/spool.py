"""Audio parked on disk while a track streams through separation.

A `Spool` is `(channels, samples)` audio in an anonymous temporary file (unlinked on
creation, so nothing is left behind even if the process is killed), kept as float32 or,
to halve the disk it needs, float16. Reading a range costs memory for that range only,
which is what keeps separation memory bounded by the segment rather than by the track.
A full disk raises `DiskFullError` ("disk full: FOLDER") and leaves nothing behind.
"""

from __future__ import annotations

import os
import tempfile
from typing import Iterator, Optional

import numpy as np
import torch

from .errors import disk_full, is_no_space

#: Bytes per sample of each dtype a spool can keep.
ITEM_BYTES = {"float32": 4, "float16": 2}


def spool_folder(directory: Optional[str] = None) -> str:
    """The folder spools go to: `directory`, else the system's temporary folder ($TMPDIR)."""
    return directory if directory is not None else tempfile.gettempdir()


class Spool:
    """Append-then-read audio of a fixed channel count, kept in a temporary file as `dtype`
    (float32, or float16 at half the size); reads give float32."""

    def __init__(self, channels: int, directory: Optional[str] = None, dtype: str = "float32"):
        if channels <= 0:
            raise ValueError("a spool needs at least one channel")
        if dtype not in ITEM_BYTES:
            raise ValueError(f"a spool keeps float32 or float16, not {dtype!r}")
        self.channels = channels
        self.dtype = dtype
        self.length = 0
        self.folder = spool_folder(directory)
        try:
            self._file = tempfile.TemporaryFile(dir=self.folder, prefix="danna-sep-")
        except OSError as error:
            if is_no_space(error):
                raise disk_full(self.folder, "temporary spools") from None
            raise

    @property
    def nbytes(self) -> int:
        """Bytes the spool holds on disk."""
        return self.length * self.channels * ITEM_BYTES[self.dtype]

    def append(self, block: "np.ndarray | torch.Tensor") -> None:
        """Add `(channels, n)` samples at the end."""
        if isinstance(block, torch.Tensor):
            block = block.detach().to("cpu", torch.float32).numpy()
        if block.ndim != 2 or block.shape[0] != self.channels:
            raise ValueError(f"expected ({self.channels}, n) samples, got shape {block.shape}")
        frames = np.ascontiguousarray(block.T, dtype=self.dtype)  # interleaved on disk
        try:
            self._file.seek(0, os.SEEK_END)
            self._file.write(frames.tobytes())
        except OSError as error:
            if is_no_space(error):
                raise disk_full(self.folder, "temporary spools") from None
            raise
        self.length += block.shape[1]

    def read(self, start: int, stop: int) -> torch.Tensor:
        """Samples `[start, stop)` as float32 `(channels, stop - start)`; the range must lie inside."""
        if not 0 <= start <= stop <= self.length:
            raise IndexError(f"range [{start}, {stop}) outside a spool of {self.length} samples")
        width = ITEM_BYTES[self.dtype] * self.channels
        try:
            self._file.seek(start * width)  # flushes what append left in the buffer
            raw = self._file.read((stop - start) * width)
        except OSError as error:
            if is_no_space(error):
                raise disk_full(self.folder, "temporary spools") from None
            raise
        frames = np.frombuffer(raw, dtype=self.dtype).reshape(stop - start, self.channels)
        return torch.from_numpy(frames.T.astype(np.float32))

    def blocks(self, size: int = 1 << 16) -> Iterator[torch.Tensor]:
        """The whole spool, in order, `size` samples at a time."""
        for start in range(0, self.length, size):
            yield self.read(start, min(start + size, self.length))

    def close(self) -> None:
        """Drop the spool (its file is already unlinked: closing frees the space). A flush that
        fails on a full disk is of no matter here."""
        try:
            self._file.close()
        except OSError:
            pass

    def __enter__(self) -> "Spool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
