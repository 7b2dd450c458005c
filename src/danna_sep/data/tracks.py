"""Multitrack datasets on disk: MUSDB18-HQ folders, MUSDB18 `.stem.mp4` files, any stems folder.

`find_tracks(root)` lists the tracks of a dataset and checks each one up front from file
headers only (every stem present, one sample rate, one length), so that a broken track
stops training at start-up with one line that names it, not hours later in a worker.
`Track.read(start, length)` returns the stems as float32 `(channels, samples)` tensors.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Dict, FrozenSet, List, Literal, Optional, Sequence, Tuple, Union

import numpy as np
import soundfile
import torch

from ..audio.common import one_line
from ..audio.resample import fit_length
from ..errors import DannaSepError
from ..models import SOURCES

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]
Layout = Literal["musdb-hq", "stem-mp4"]
Subset = Literal["train", "test"]
Split = Literal["train", "valid"]

#: MUSDB18's official validation tracks (the musdb package's `configs/mus.yaml`,
#: `validation_tracks`), all from the train subset.
MUSDB_VALIDATION: Tuple[str, ...] = (
    "Actions - One Minute Smile",
    "Clara Berry And Wooldog - Waltz For My Victims",
    "Johnny Lokke - Promises & Lies",
    "Patrick Talbot - A Reason To Leave",
    "Triviul - Angelsaint",
    "Alexander Ross - Goodbye Bolero",
    "Fergessen - Nos Palpitants",
    "Leaf - Summerghost",
    "Skelpolu - Human Mistakes",
    "Young Griffo - Pennies",
    "ANiMAL - Rockshow",
    "James May - On The Line",
    "Meaxic - Take A Step",
    "Traffic Experiment - Sirens",
)

#: Streams of a MUSDB18 `.stem.mp4`, in file order.
STEM_MP4_STREAMS: Tuple[str, ...] = ("mixture", "drums", "bass", "other", "vocals")
STEM_MP4_SUFFIX = ".stem.mp4"
# Extensions of per-stem files in a track folder, in order of preference. Both are read
# with libsndfile, which seeks to a segment without decoding the whole file.
STEM_EXTENSIONS: Tuple[str, ...] = (".wav", ".flac")
MIXTURE = "mixture"


class DataError(DannaSepError):
    """A problem with a dataset: one line that starts with the offending track or root path."""


@dataclass(frozen=True)
class Track:
    """One multitrack song: four sources (and usually the mixture) of equal length and rate.

    `path` is the track folder (`musdb-hq`: `{mixture,drums,bass,other,vocals}.wav`) or the
    `.stem.mp4` file (`stem-mp4`: five AAC streams in the order of `STEM_MP4_STREAMS`).
    """

    name: str
    path: Path
    layout: Layout
    samplerate: int
    num_samples: int
    channels: int
    extension: str = ".wav"
    """File extension of the stems of a `musdb-hq` track folder."""
    has_mixture: bool = True
    """False for a folder without a mixture file: `read` then returns the sum of the sources."""

    @property
    def seconds(self) -> float:
        return self.num_samples / self.samplerate

    def read(
        self, start: int = 0, length: Optional[int] = None, stems: Optional[Sequence[str]] = None
    ) -> Dict[str, torch.Tensor]:
        """Stems as float32 `(channels, length)` tensors, keyed by SOURCES and "mixture".

        Samples `[start, start + length)`; `length=None` reads to the end of the track, and
        a range that runs past the end is zero-padded, so every tensor has `length` samples.
        `stems` limits the keys read (default: all four sources and the mixture).
        Raises DataError naming the file when a stem cannot be read.
        """
        wanted = list(SOURCES) + [MIXTURE] if stems is None else list(stems)
        unknown = [s for s in wanted if s not in SOURCES and s != MIXTURE]
        if unknown:
            raise ValueError(f"unknown stems {unknown}; expected some of {list(SOURCES) + [MIXTURE]}")
        if start < 0:
            raise ValueError(f"start must be 0 or more, got {start}")
        if length is None:
            length = max(0, self.num_samples - start)
        if length < 0:
            raise ValueError(f"length must be 0 or more, got {length}")
        if self.layout == "stem-mp4":
            out = self._read_stem_mp4(start, length, wanted)
        else:
            out = self._read_folder(start, length, wanted)
        return {name: out[name] for name in wanted}

    def _read_folder(self, start: int, length: int, wanted: List[str]) -> Dict[str, torch.Tensor]:
        out: Dict[str, torch.Tensor] = {}
        files = [s for s in wanted if s != MIXTURE or self.has_mixture]
        if MIXTURE in wanted and not self.has_mixture:
            files += [s for s in SOURCES if s not in files]
        available = max(0, min(length, self.num_samples - start))
        for name in files:
            path = self.path / f"{name}{self.extension}"
            if available == 0:
                data = np.zeros((self.channels, 0), dtype=np.float32)
            else:
                try:
                    frames, _ = soundfile.read(
                        str(path), start=start, frames=available, dtype="float32", always_2d=True
                    )
                except (soundfile.SoundFileError, RuntimeError, ValueError) as error:
                    raise DataError(f"{path}: cannot read ({one_line(error)})") from None
                data = frames.T
            out[name] = fit_length(torch.from_numpy(np.ascontiguousarray(data)), length)
        if MIXTURE in wanted and not self.has_mixture:
            out[MIXTURE] = sum(out[s] for s in SOURCES)
        return out

    def _read_stem_mp4(self, start: int, length: int, wanted: List[str]) -> Dict[str, torch.Tensor]:
        from ..audio import AudioError, read_audio, read_audio_streams

        # AAC cannot be cut without decoding from the start: the streams are decoded whole
        # (in one pass when several are wanted), then sliced. Convert to MUSDB18-HQ-style
        # folders for fast random access in training.
        try:
            if len(wanted) == 1:
                wav, rate = read_audio(self.path, stream=STEM_MP4_STREAMS.index(wanted[0]))
                decoded = {wanted[0]: wav}
            else:
                streams, rate = read_audio_streams(self.path)
                decoded = dict(zip(STEM_MP4_STREAMS, streams))
        except AudioError as error:
            raise DataError(str(error)) from None
        out: Dict[str, torch.Tensor] = {}
        for name in wanted:
            wav = decoded[name]
            if rate != self.samplerate or wav.shape[0] != self.channels:
                raise DataError(
                    f"{self.path}: stream {name} decodes as {wav.shape[0]} channels at {rate} Hz, "
                    f"the header says {self.channels} at {self.samplerate} Hz"
                )
            # Stream lengths of a lossy file may differ by a few samples: every stem is cut
            # or padded to the track's length, so the stems of a read always line up.
            wav = fit_length(wav, self.num_samples)
            # contiguous, like a folder's read (a slice of the decoded stream is not)
            out[name] = fit_length(wav[:, start:start + length], length).contiguous()
        return out


# --------------------------------------------------------------------------- header checks


def _folder_track(folder: Path) -> Track:
    """Check a track folder's stem headers; a Track, or DataError naming the folder."""
    found: Dict[str, Path] = {}
    for name in list(SOURCES) + [MIXTURE]:
        for ext in STEM_EXTENSIONS:
            candidate = folder / f"{name}{ext}"
            if candidate.is_file():
                found[name] = candidate
                break
    missing = [s for s in SOURCES if s not in found]
    if missing:
        listed = ", ".join(f"{s}.wav" for s in missing)
        raise DataError(f"{folder}: missing stem{'s' if len(missing) > 1 else ''} {listed}")
    extensions = {p.suffix for p in found.values()}
    if len(extensions) > 1:
        raise DataError(f"{folder}: stems mix file types ({', '.join(sorted(extensions))}); use one")
    infos = {}
    for name, path in found.items():
        try:
            infos[name] = soundfile.info(str(path))
        except (soundfile.SoundFileError, RuntimeError, ValueError) as error:
            raise DataError(f"{folder}: cannot read {path.name} ({one_line(error)})") from None
        if infos[name].frames <= 0:
            raise DataError(f"{folder}: {path.name} has no samples")
    rates = {name: info.samplerate for name, info in infos.items()}
    if len(set(rates.values())) > 1:
        detail = ", ".join(f"{found[n].name} {r} Hz" for n, r in rates.items())
        raise DataError(f"{folder}: stems have different sample rates ({detail})")
    lengths = {name: info.frames for name, info in infos.items()}
    if len(set(lengths.values())) > 1:
        detail = ", ".join(f"{found[n].name} {f} samples" for n, f in lengths.items())
        raise DataError(f"{folder}: stems have different lengths ({detail})")
    channels = {name: info.channels for name, info in infos.items()}
    if len(set(channels.values())) > 1:
        detail = ", ".join(f"{found[n].name} {c}" for n, c in channels.items())
        raise DataError(f"{folder}: stems have different channel counts ({detail})")
    return Track(
        name=folder.name,
        path=folder,
        layout="musdb-hq",
        samplerate=next(iter(rates.values())),
        num_samples=next(iter(lengths.values())),
        channels=next(iter(channels.values())),
        extension=extensions.pop(),
        has_mixture=MIXTURE in found,
    )


def _stem_mp4_track(path: Path) -> Track:
    """Check a `.stem.mp4` file's container header (no decoding); a Track or DataError."""
    import av

    name = path.name[: -len(STEM_MP4_SUFFIX)]
    ffmpeg_error = getattr(av, "FFmpegError", None) or av.error.FFmpegError
    try:
        container = av.open(str(path), mode="r")
    except (ffmpeg_error, OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot open ({one_line(error)})") from None
    with container:
        streams = list(container.streams.audio)
        if len(streams) < len(STEM_MP4_STREAMS):
            raise DataError(
                f"{path}: {len(streams)} audio stream(s); a MUSDB18 stem file has "
                f"{len(STEM_MP4_STREAMS)} ({', '.join(STEM_MP4_STREAMS)})"
            )
        streams = streams[: len(STEM_MP4_STREAMS)]
        rates = [s.codec_context.sample_rate for s in streams]
        if len(set(rates)) > 1:
            detail = ", ".join(f"{n} {r} Hz" for n, r in zip(STEM_MP4_STREAMS, rates))
            raise DataError(f"{path}: streams have different sample rates ({detail})")
        channels = [s.codec_context.channels for s in streams]
        if len(set(channels)) > 1:
            detail = ", ".join(f"{n} {c}" for n, c in zip(STEM_MP4_STREAMS, channels))
            raise DataError(f"{path}: streams have different channel counts ({detail})")
        rate = rates[0]
        lengths = []
        for stream in streams:
            if stream.duration and stream.time_base is not None:
                lengths.append(int(round(Fraction(stream.duration) * stream.time_base * rate)))
            elif container.duration:
                lengths.append(int(container.duration * rate // 1_000_000))
        if not lengths or min(lengths) <= 0:
            raise DataError(f"{path}: the container does not declare the streams' durations")
        # AAC streams of one file may differ by an encoder frame: the shortest is the track.
        if max(lengths) - min(lengths) > 2048:
            detail = ", ".join(f"{n} {f} samples" for n, f in zip(STEM_MP4_STREAMS, lengths))
            raise DataError(f"{path}: streams have different lengths ({detail})")
    return Track(name=name, path=path, layout="stem-mp4", samplerate=rate,
                 num_samples=min(lengths), channels=channels[0])


def _visible_children(folder: Path) -> List[Path]:
    return sorted((p for p in folder.iterdir() if not p.name.startswith(".")), key=lambda p: p.name)


def _track_paths(folder: Path) -> List[Tuple[str, Path]]:
    """(name, path) of every track in a folder, unchecked: subfolders of stems and `.stem.mp4` files."""
    found: List[Tuple[str, Path]] = []
    for child in _visible_children(folder):
        if child.is_dir():
            found.append((child.name, child))
        elif child.is_file() and child.name.lower().endswith(STEM_MP4_SUFFIX):
            found.append((child.name[: -len(STEM_MP4_SUFFIX)], child))
    return found


def _tracks_in(folder: Path) -> List[Track]:
    """Every track in a folder, each checked from its headers."""
    return [_folder_track(path) if path.is_dir() else _stem_mp4_track(path) for _, path in _track_paths(folder)]


VALID_LIST = "valid.txt"
#: Seed of the hash that picks the validation tracks of a folder without a validation list.
HOLDOUT_SEED = 0


def _read_valid_list(root: Path) -> Optional[FrozenSet[str]]:
    listing = root / VALID_LIST
    if not listing.is_file():
        return None
    names = set()
    for line in listing.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            names.add(line)
    return frozenset(names)


def holdout_count(tracks: int) -> int:
    """How many of `tracks` a folder without a validation list holds out: one in ten, 1 to 10."""
    return min(10, max(1, tracks // 10))


def held_out(names: Sequence[str], count: int, seed: int = HOLDOUT_SEED) -> List[str]:
    """The `count` names whose seeded sha256 ranks first, sorted.

    A track keeps its place whatever else the folder holds, so adding tracks changes the
    choice only where a new name ranks among the first `count`.
    """
    import hashlib

    def rank(name: str) -> bytes:
        return hashlib.sha256(f"{seed}:{name}".encode("utf-8")).digest()

    return sorted(sorted(names, key=rank)[:count])


@dataclass(frozen=True)
class ValidationSplit:
    """Which tracks of a dataset's train subset (or of a plain folder) are its validation tracks."""

    names: FrozenSet[str]
    origin: Literal["musdb", "list", "held out"]
    """musdb: MUSDB18's official list; list: the root's valid.txt; held out: chosen by
    `held_out` because the folder has no list."""
    folder: Path
    """The folder whose tracks are split (ROOT/train, or a plain folder itself)."""

    def describe(self) -> str:
        if self.origin == "musdb":
            return "MUSDB18's validation list"
        if self.origin == "list":
            return f"listed in {VALID_LIST}"
        return f"held out of {self.folder} (no {VALID_LIST}, not MUSDB18; seed {HOLDOUT_SEED})"


def _is_musdb_root(root: Path) -> bool:
    return (root / "train").is_dir() or (root / "test").is_dir()


def validation_split(root: PathLike, holdout: Optional[int] = None) -> ValidationSplit:
    """The validation tracks of `root`'s train subset (or of `root`, a plain folder of tracks):
    those listed in `root/valid.txt` when it exists, else MUSDB18's official 14 when the
    tracks include any of them, else `holdout` tracks (default `holdout_count`) chosen by
    `held_out` (all of them when there are no more).
    """
    root = Path(root)
    folder = root / "train" if _is_musdb_root(root) else root
    listed = _read_valid_list(root)
    if listed is not None:
        return ValidationSplit(listed, "list", folder)
    names = [name for name, _ in _track_paths(folder)] if folder.is_dir() else []
    if set(names) & set(MUSDB_VALIDATION):
        return ValidationSplit(frozenset(MUSDB_VALIDATION), "musdb", folder)
    count = holdout_count(len(names)) if holdout is None else holdout
    return ValidationSplit(frozenset(held_out(names, count)), "held out", folder)


def find_tracks(
    root: PathLike,
    subset: Optional[Subset] = "train",
    split: Optional[Split] = None,
    holdout: Optional[int] = None,
) -> List[Track]:
    """The tracks of a dataset, sorted by name, each checked from its headers.

    `root` holds `train/` and `test/` (MUSDB18-HQ track folders, or MUSDB18 `.stem.mp4`
    files); `subset` picks one (None: both). When `root` has neither folder it is itself a
    folder of tracks (`TRACK/{mixture,drums,bass,other,vocals}.wav`, mixture optional,
    `.flac` also read, or `.stem.mp4` files) and `subset` is ignored.

    `split` divides the train subset (or the plain folder) by `validation_split(root,
    holdout)`: "valid" its validation tracks, "train" the rest. The validation tracks are
    those listed in `root/valid.txt` (one name per line), else MUSDB18's official 14
    (`MUSDB_VALIDATION`) when the tracks include any of them, else `holdout` tracks held
    out by a seeded hash of their names (default: one in ten, 1 to 10).

    Raises DataError naming the root when it is missing or holds no tracks, and naming the
    track when a stem is missing or the stems differ in sample rate, length or channels.
    """
    root = Path(root)
    if subset not in ("train", "test", None):
        raise ValueError(f"subset must be 'train', 'test' or None, got {subset!r}")
    if split not in ("train", "valid", None):
        raise ValueError(f"split must be 'train', 'valid' or None, got {split!r}")
    if not root.exists():
        raise DataError(f"{root}: no such folder")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")

    if _is_musdb_root(root):
        if split is not None and subset != "train":
            raise ValueError("split applies to the MUSDB18 train subset only: pass subset='train'")
        tracks: List[Track] = []
        for name in ("train", "test") if subset is None else (subset,):
            folder = root / name
            if not folder.is_dir():
                raise DataError(f"{root}: no {name}/ folder (a MUSDB18 root holds train/ and test/)")
            tracks.extend(_tracks_in(folder))
        where = root if subset is None else root / subset
    else:
        tracks = _tracks_in(root)
        where = root
    if not tracks:
        raise DataError(
            f"{where}: no tracks found (expected track folders of "
            f"{{mixture,drums,bass,other,vocals}}.wav or {STEM_MP4_SUFFIX} files)"
        )
    if split is not None:
        valid = validation_split(root, holdout)
        if valid.origin == "held out" and len(valid.names) >= len(tracks):
            advice = f"list validation tracks in {root / VALID_LIST}"
            if valid.folder != root:
                advice += " or validate on the test subset, --valid-subset test"
            raise DataError(f"{where}: {len(tracks)} track(s), too few to hold {len(valid.names)} out for "
                            f"validation and train on the rest ({advice})")
        tracks = [t for t in tracks if (t.name in valid.names) == (split == "valid")]
    if not tracks:
        log.warning("%s: no tracks in the %s split", where, split)
    log.debug("%s: %d tracks (subset %s, split %s)", root, len(tracks), subset, split)
    return tracks
