"""Track sources, segment samplers and augmentations for training and evaluation.

- `find_tracks(root, subset, split)` -> `[Track]`: MUSDB18-HQ folders, MUSDB18 `.stem.mp4`
  files or any folder of stem folders, checked up front; `Track.read(start, length)`;
  `validation_split(root)`: which tracks validate (valid.txt, MUSDB18's list, or held out).
- `RemixSegments` (training, random remixed segments) and `FixedChunks` (validation):
  datasets of sources `(sources, channels, samples)`; the mixture is their sum.
- Augmentations on batches `(batch, sources, channels, samples)`: `RandomGain`,
  `ChannelSwap`, `SignFlip`, `RandomEQ`, `PitchSpeed`, `RemixBatch`, `build_augment(names)`.
"""

from .augment import (
    AUGMENTATIONS,
    AugmentSequence,
    ChannelSwap,
    PitchSpeed,
    RandomGain,
    RemixBatch,
    RandomEQ,
    SignFlip,
    build_augment,
    change_speed,
    pitch_shift,
    resample_fft,
    time_stretch,
)
from .datasets import FixedChunks, RemixSegments
from .tracks import MUSDB_VALIDATION, STEM_MP4_STREAMS, DataError, Track, ValidationSplit, find_tracks, validation_split

__all__ = [
    "AUGMENTATIONS", "AugmentSequence", "ChannelSwap", "DataError", "FixedChunks",
    "MUSDB_VALIDATION", "PitchSpeed", "RandomGain", "RemixBatch", "RemixSegments",
    "STEM_MP4_STREAMS", "RandomEQ", "SignFlip", "Track", "ValidationSplit", "build_augment", "change_speed", "find_tracks",
    "pitch_shift", "resample_fft", "time_stretch", "validation_split",
]
