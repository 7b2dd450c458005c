"""Audio parked on disk while a track streams through separation.

A `Spool` is float32 `(channels, samples)` audio in an anonymous temporary file (unlinked
on creation, so nothing is left behind even if the process is killed). Reading a range
costs memory for that range only, which is what keeps separation memory bounded by the
segment rather than by the track.
"""

from __future__ import annotations

import os
import tempfile
from typing import Iterator, Optional

import numpy as np
import torch


class Spool:
    """Append-then-read float32 audio of a fixed channel count, kept in a temporary file."""

    def __init__(self, channels: int, directory: Optional[str] = None):
        if channels <= 0:
            raise ValueError("a spool needs at least one channel")
        self.channels = channels
        self.length = 0
        self._file = tempfile.TemporaryFile(dir=directory, prefix="danna-sep-")

    def append(self, block: "np.ndarray | torch.Tensor") -> None:
        """Add `(channels, n)` samples at the end."""
        if isinstance(block, torch.Tensor):
            block = block.detach().to("cpu", torch.float32).numpy()
        if block.ndim != 2 or block.shape[0] != self.channels:
            raise ValueError(f"expected ({self.channels}, n) samples, got shape {block.shape}")
        frames = np.ascontiguousarray(block.T, dtype=np.float32)  # interleaved on disk
        self._file.seek(0, os.SEEK_END)
        self._file.write(frames.tobytes())
        self.length += block.shape[1]

    def read(self, start: int, stop: int) -> torch.Tensor:
        """Samples `[start, stop)` as `(channels, stop - start)`; the range must lie inside."""
        if not 0 <= start <= stop <= self.length:
            raise IndexError(f"range [{start}, {stop}) outside a spool of {self.length} samples")
        width = 4 * self.channels
        self._file.seek(start * width)
        raw = self._file.read((stop - start) * width)
        frames = np.frombuffer(raw, dtype=np.float32).reshape(stop - start, self.channels)
        return torch.from_numpy(frames.T.copy())

    def blocks(self, size: int = 1 << 16) -> Iterator[torch.Tensor]:
        """The whole spool, in order, `size` samples at a time."""
        for start in range(0, self.length, size):
            yield self.read(start, min(start + size, self.length))

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "Spool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
