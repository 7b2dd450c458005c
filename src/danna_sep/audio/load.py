"""A file made ready for the models: mono or stereo at their rate, in memory or spooled to disk."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional, Tuple

import torch

from .. import SAMPLERATE
from .common import AudioError, PathLike
from .mix import downmix, note_downmix
from .read import AudioBlocks, open_blocks, read_audio, with_fallback
from .resample import StreamResampler, resample

if TYPE_CHECKING:  # pragma: no cover
    from ..spool import Spool


def _check_channels(channels: int) -> None:
    if channels not in (1, 2):
        raise ValueError(f"channels must be 1 or 2, got {channels}")


def load(
    path: PathLike, samplerate: Optional[int] = SAMPLERATE, channels: int = 2, allow_truncated: bool = False
) -> Tuple[torch.Tensor, int]:
    """Read any audio file for separation: float32 `(channels, samples)` at `samplerate`
    (None: the file's own), plus the file's ORIGINAL sample rate (to write the stems back at it).

    Mono is duplicated; more channels are downmixed (see `downmix`) with a warning. A file
    cut short is refused unless `allow_truncated` (see `open_blocks`).
    """
    _check_channels(channels)
    wav, rate = read_audio(path, allow_truncated=allow_truncated)
    note_downmix(Path(path), wav.shape[0], channels)
    wav = downmix(wav, channels)
    if samplerate is not None and rate != samplerate:
        wav = resample(wav, rate, samplerate)
    return wav.contiguous(), rate


def load_spooled(
    path: PathLike, samplerate: int = SAMPLERATE, channels: int = 2, directory: Optional[str] = None,
    allow_truncated: bool = False, dtype: str = "float32",
) -> Tuple["Spool", int, int]:
    """Like `load`, but block by block into a `Spool` on disk, so that memory does not
    grow with the track: returns the spool (`(channels, samples)` at `samplerate`, kept as
    `dtype`), the file's original rate and its original number of samples. A full disk
    raises DiskFullError naming the spool's folder."""
    from ..spool import Spool

    _check_channels(channels)

    def spooled(reader: AudioBlocks) -> Tuple["Spool", int, int]:
        note_downmix(Path(path), reader.channels, channels)
        resampler = None
        if reader.samplerate != samplerate:
            resampler = StreamResampler(reader.samplerate, samplerate, channels)
        spool = Spool(channels, directory, dtype=dtype)
        try:
            for block in reader:
                mixed = downmix(torch.from_numpy(block), channels).numpy()
                if resampler is not None:
                    mixed = resampler(mixed.T).T
                if mixed.shape[1]:
                    spool.append(mixed)
            if resampler is not None:
                tail = resampler.flush().T
                if tail.shape[1]:
                    spool.append(tail)
            if spool.length == 0:
                raise AudioError(f"{path}: no samples")
        except BaseException:
            spool.close()
            raise
        return spool, reader.samplerate, reader.frames_read

    return with_fallback(open_blocks(path, allow_truncated=allow_truncated), spooled)
