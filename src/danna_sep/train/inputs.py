"""What a run trains and validates on: the tracks, the segments, their order, and the
statistics some recipes take from the training set.

Segments are a pure function of (seed, epoch, index) (`danna_sep.data.RemixSegments`), and
`epoch_batches` deals an epoch's permutation out to the processes like DistributedSampler,
so a resumed or a distributed run sees the segments an uninterrupted one would.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

import torch

from .. import SAMPLERATE, spectral
from ..distributed import Distributed
from ..models import SOURCES
from ..progress import TaskProgressFn
from .config import Config, ConfigError, augment_arguments

log = logging.getLogger(__name__)


@dataclass
class RunData:
    """The training segments and validation items of a run."""

    train_tracks: List[Any]
    dataset: Any
    """`RemixSegments`: `dataset[i]` is `(4, channels, samples)`."""
    augment: Any
    """The batch augmentations, an `nn.Module` taking `(batch, 4, channels, samples)`."""
    valid_set: Optional[Any]
    """`FixedChunks` of the validation tracks, or None when the run does not validate."""
    song_stats: Optional[torch.Tensor]
    """Mean and std of each training track's mono mixture `(tracks, 2)`, for data.normalize "song"."""


def run_data(config: Config, source: str) -> RunData:
    """The tracks of `config.data`, checked: a bad track fails here, before any model is built
    or file written."""
    from ..data import DataError, FixedChunks, RemixSegments, build_augment, find_tracks, validation_split

    d = config.data
    if d.root is None:
        raise ConfigError(f"{source}: data.root is not set (pass --data ROOT)")
    root = Path(os.path.expanduser(d.root))
    validate_on_split = config.train.validate and d.valid_split is not None
    split = validation_split(root, d.valid_tracks) if (d.split or validate_on_split) else None
    held_out = split is not None and split.origin == "held out"
    train_split = d.split
    if held_out and not validate_on_split and d.split == "train":
        train_split = None  # tracks are held out only to validate on, and validation is elsewhere
    train_tracks = find_tracks(root, subset=d.subset, split=train_split, holdout=d.valid_tracks)
    valid_set = None
    if config.train.validate:
        valid_tracks = find_tracks(root, subset=d.valid_subset, split=d.valid_split, holdout=d.valid_tracks)
        if d.valid_tracks is not None:
            valid_tracks = valid_tracks[: d.valid_tracks]
        if not valid_tracks:
            raise DataError(f"{root}: no validation tracks (subset {d.valid_subset}, split {d.valid_split}); "
                            f"choose data.valid_subset / data.valid_split, or set train.validate false")
        if held_out and d.valid_split == "valid":
            # Tracks held out because the folder lists none are never trained on, even by
            # a recipe with data.split null (which on MUSDB18 trains on its 14 too).
            held = {t.path for t in valid_tracks}
            train_tracks = [t for t in train_tracks if t.path not in held]
        where = split.describe() if d.valid_split == "valid" else f"subset {d.valid_subset}, split {d.valid_split}"
        log.info("validating on %d track(s) (%s): %s", len(valid_tracks), where,
                 ", ".join(t.name for t in valid_tracks))
        valid_segment = None if d.valid_segment_seconds is None else int(round(d.valid_segment_seconds * SAMPLERATE))
        valid_set = FixedChunks(valid_tracks, valid_segment)
    if not train_tracks:
        raise DataError(f"{root}: no training tracks (subset {d.subset}, split {d.split})")
    dataset = RemixSegments(train_tracks, segment=int(round(d.segment_seconds * SAMPLERATE)),
                            samples_per_track=d.samples_per_track, remix=d.remix, seed=config.train.seed)
    names, options = augment_arguments(d.augment, source)
    augment = build_augment(names, **options)
    song_stats = song_statistics(train_tracks) if d.normalize == "song" else None
    return RunData(train_tracks, dataset, augment, valid_set, song_stats)


def epoch_batches(total: int, seed: int, epoch: int, batch_size: int, place: Distributed) -> List[List[int]]:
    """This process's micro-batches of segment indices for one epoch (whole batches only).

    The permutation depends on (seed, epoch) only; it is padded to a multiple of the
    number of processes and dealt out like DistributedSampler does.
    """
    generator = torch.Generator().manual_seed(seed * 1000003 + epoch)
    order = torch.randperm(total, generator=generator).tolist()
    world = place.world
    if total % world:
        order += order[: world - total % world]
    mine = order[place.rank::world]
    return [mine[i:i + batch_size] for i in range(0, len(mine) - batch_size + 1, batch_size)]


def normalize_by_song(batch: torch.Tensor, indices: Sequence[int], data: RunData) -> torch.Tensor:
    """The z-score of Défossez et al. 2019: each source scaled by the mono mean and std of its
    own song's mixture (with remixing, the sources of an example come from different songs).

    The mean is shared out over the sources so that they still sum to the normalised mixture.
    """
    if data.song_stats is None:
        return batch
    picks = torch.tensor([[track for track, _ in data.dataset.draw(i)] for i in indices])  # (batch, sources)
    mean = data.song_stats[picks, 0][:, :, None, None]
    std = data.song_stats[picks, 1][:, :, None, None]
    return (batch - mean / batch.shape[1]) / std


@torch.no_grad()
def input_statistics(tracks: Sequence[Any], max_bin: int, chunk_seconds: float = 30.0,
                     progress: Optional[TaskProgressFn] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mean and std per bin of the channel-averaged mixture magnitudes of `tracks` `(bins,)`.

    The std is floored at 1e-4 times its maximum, as Stöter et al. 2019 do, so silent bins do
    not blow up the input scale. Tracks are read in chunks of `chunk_seconds`.
    """
    from .run import TrainError

    total = torch.zeros(max_bin, dtype=torch.float64)
    total_sq = torch.zeros(max_bin, dtype=torch.float64)
    frames = 0
    chunk = int(chunk_seconds * SAMPLERATE)
    if progress:
        progress("input statistics", 0, len(tracks), "")
    for index, track in enumerate(tracks, start=1):
        for start in range(0, track.num_samples, chunk):
            length = min(chunk, track.num_samples - start)
            if length <= spectral.N_FFT // 2:  # too short for a centred STFT frame
                break
            stems = track.read(start, length, stems=SOURCES)
            mix = sum(stems[name] for name in SOURCES)
            mag = spectral.stft(mix.double()).abs().mean(dim=0)[:max_bin]  # (bins, frames)
            total += mag.sum(dim=-1)
            total_sq += mag.square().sum(dim=-1)
            frames += mag.shape[-1]
        if progress:
            progress("input statistics", index, len(tracks), "")
    if frames == 0:
        raise TrainError("no audio to compute input statistics from")
    mean = total / frames
    std = (total_sq / frames - mean.square()).clamp_min(0).sqrt()
    std = torch.maximum(std, 1e-4 * std.max())
    return mean.float(), std.float()


@torch.no_grad()
def song_statistics(tracks: Sequence[Any], chunk_seconds: float = 60.0) -> torch.Tensor:
    """Mean and std of each track's mono mixture (the sum of its sources): `(tracks, 2)`."""
    out = torch.zeros(len(tracks), 2)
    chunk = int(chunk_seconds * SAMPLERATE)
    for index, track in enumerate(tracks):
        total = total_sq = 0.0
        count = 0
        start = 0
        while start < track.num_samples:
            stems = track.read(start, min(chunk, track.num_samples - start), stems=SOURCES)
            mono = sum(stems[name] for name in SOURCES).double().mean(dim=0)
            total += float(mono.sum())
            total_sq += float(mono.square().sum())
            count += mono.numel()
            start += chunk
        mean = total / max(count, 1)
        std = math.sqrt(max(total_sq / max(count, 1) - mean * mean, 0.0))
        out[index, 0] = mean
        out[index, 1] = std + 1e-5
    return out
