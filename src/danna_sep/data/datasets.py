"""Torch datasets over tracks: random remixed segments for training, fixed chunks for validation.

Both yield the sources only, `(sources, channels, samples)` float32; the mixture a model
sees is their sum, taken after augmentation, so that augmenting the sources never makes
the mixture disagree with them.
"""

from __future__ import annotations

import logging
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from ..models import SOURCES
from .tracks import DataError, Track

log = logging.getLogger(__name__)


def _check_tracks(tracks: Sequence[Track], sources: Sequence[str], channels: Optional[int]) -> int:
    """The common sample rate of the tracks; DataError naming the first track that differs."""
    if not tracks:
        raise ValueError("no tracks given")
    unknown = [s for s in sources if s not in SOURCES]
    if unknown or not sources:
        raise ValueError(f"sources must be some of {list(SOURCES)}, got {list(sources)}")
    rate = tracks[0].samplerate
    for track in tracks:
        if track.samplerate != rate:
            raise DataError(
                f"{track.path}: sample rate {track.samplerate} Hz, but {tracks[0].path} has "
                f"{rate} Hz; resample the dataset to one rate"
            )
        if channels is None and track.channels != tracks[0].channels:
            raise DataError(
                f"{track.path}: {track.channels} channels, but {tracks[0].path} has "
                f"{tracks[0].channels}; pass channels= to convert"
            )
    return rate


def _stack(stems: dict, sources: Sequence[str], channels: Optional[int]) -> torch.Tensor:
    """`{source: (c, n)}` -> `(sources, channels, n)`, mono or 5.1 tracks converted to `channels`."""
    from ..audio import downmix

    parts = []
    for name in sources:
        wav = stems[name]
        if channels is not None and wav.shape[0] != channels:
            wav = downmix(wav, channels)
        parts.append(wav)
    return torch.stack(parts)


class RemixSegments(Dataset):
    """Random training segments `(sources, channels, segment)`, remixed across tracks.

    There are `samples_per_track` items per track and epoch. With `remix`, each source of an
    item comes from its own random track at its own random offset (new mixtures that the
    dataset never had); without, all sources come from track `index // samples_per_track`
    at one random offset. Items are a pure function of (seed, epoch, index), so a resumed
    run draws exactly the segments the interrupted one would have; call `set_epoch` at the
    start of each epoch (with DataLoader workers, before the iterator is created; workers
    that persist across epochs keep the epoch they were started with). Tracks shorter
    than `segment` are zero-padded at the end.

    `channels` converts tracks of other channel counts (mono is copied to both sides);
    None keeps them as they are and requires them all to match.
    """

    def __init__(
        self,
        tracks: Sequence[Track],
        segment: int,
        samples_per_track: int,
        remix: bool = True,
        seed: int = 0,
        sources: Sequence[str] = SOURCES,
        channels: Optional[int] = 2,
    ):
        if segment <= 0:
            raise ValueError(f"segment must be a positive number of samples, got {segment}")
        if samples_per_track <= 0:
            raise ValueError(f"samples_per_track must be positive, got {samples_per_track}")
        self.tracks: List[Track] = list(tracks)
        self.samplerate = _check_tracks(self.tracks, sources, channels)
        self.segment = int(segment)
        self.samples_per_track = int(samples_per_track)
        self.remix = remix
        self.seed = int(seed)
        self.sources = tuple(sources)
        self.channels = channels
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.tracks) * self.samples_per_track

    def _offset(self, rng: np.random.Generator, track: Track) -> int:
        return int(rng.integers(0, max(1, track.num_samples - self.segment + 1)))

    def draw(self, index: int) -> List[Tuple[int, int]]:
        """The (track index, offset) of each source of item `index` in this epoch."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        index %= len(self)
        # One independent stream per (seed, epoch, index): no state carried between items,
        # so worker order, resumption and shuffling cannot change what an item is.
        rng = np.random.default_rng([self.seed, self.epoch, index])
        if self.remix:
            picks = []
            for _ in self.sources:
                chosen = int(rng.integers(len(self.tracks)))
                picks.append((chosen, self._offset(rng, self.tracks[chosen])))
            return picks
        chosen = index // self.samples_per_track
        offset = self._offset(rng, self.tracks[chosen])
        return [(chosen, offset)] * len(self.sources)

    def __getitem__(self, index: int) -> torch.Tensor:
        picks = self.draw(index)
        if not self.remix:
            track_index, offset = picks[0]
            stems = self.tracks[track_index].read(offset, self.segment, stems=self.sources)
            return _stack(stems, self.sources, self.channels)
        stems = {}
        for name, (track_index, offset) in zip(self.sources, picks):
            stems[name] = self.tracks[track_index].read(offset, self.segment, stems=[name])[name]
        return _stack(stems, self.sources, self.channels)


class FixedChunks(Dataset):
    """Validation items: consecutive `segment`-sample chunks of every track, or whole tracks.

    With `segment=None`, item i is track i whole, `(sources, channels, track length)`.
    Otherwise chunks start at 0, segment, 2 * segment, ... of each track, in track order;
    the last chunk of a track is zero-padded to `segment`, so every item has one shape.
    `chunks[i]` is the (track index, start) of item i.
    """

    def __init__(
        self,
        tracks: Sequence[Track],
        segment: Optional[int] = None,
        sources: Sequence[str] = SOURCES,
        channels: Optional[int] = 2,
    ):
        if segment is not None and segment <= 0:
            raise ValueError(f"segment must be a positive number of samples or None, got {segment}")
        self.tracks: List[Track] = list(tracks)
        self.samplerate = _check_tracks(self.tracks, sources, channels)
        self.segment = segment
        self.sources = tuple(sources)
        self.channels = channels
        if segment is None:
            self.chunks = [(i, 0) for i in range(len(self.tracks))]
        else:
            self.chunks = [
                (i, start)
                for i, track in enumerate(self.tracks)
                for start in range(0, track.num_samples, segment)
            ]

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, index: int) -> torch.Tensor:
        track_index, start = self.chunks[index]
        stems = self.tracks[track_index].read(start, self.segment, stems=self.sources)
        return _stack(stems, self.sources, self.channels)
