"""The corpus on disk: MUSDB18-HQ layout, one folder per track, written whole or not at all.

    OUT/{train,test}/NAME/{mixture,drums,bass,other,vocals}.wav + meta.json

A track is rendered into a hidden temporary folder next to its final place and renamed
when complete (`danna_sep.atomic`), so a killed run leaves no half-written track; the next
run removes such leftovers, skips complete tracks whose meta.json matches the request and renders the
rest. Tracks depend only on (seed, index, seconds, soundfonts), never on which worker or
in which order they are rendered.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable, Dict, List, Literal, Optional, Sequence, Tuple, Union

import soundfile

from ... import SAMPLERATE, SOURCES, atomic
from .render import CorpusError, _fluidsynth_module, soundfont_sha256
from .track import GENERATOR_VERSION, MAX_SECONDS, RenderedTrack, render_track, resolve_soundfonts
from .vocals import _load_pyworld, espeak_executable

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]
Subset = Literal["train", "test"]
FILES = ("mixture", *SOURCES)


class TrackExistsError(CorpusError):
    """A track folder exists and does not hold this very track; the message starts with its path."""


@dataclass
class CorpusReport:
    """What a `generate_corpus` run did."""

    written: List[str] = field(default_factory=list)  # relative paths, e.g. "train/synth-0-0003"
    skipped: List[str] = field(default_factory=list)  # complete and matching: left alone
    failed: List[Tuple[str, str]] = field(default_factory=list)  # (relative path, one-line reason)
    seconds: float = 0.0  # wall time of the run


@dataclass(frozen=True)
class _Job:
    index: int
    folder: str
    seed: int
    seconds: float
    soundfonts: Tuple[str, ...]
    request: Dict
    force: bool
    genre: Optional[str] = None


def track_name(seed: int, index: int) -> str:
    return f"synth-{seed}-{index:04d}"


def subset_of(index: int, test_fraction: float) -> Subset:
    """Train or test for track `index`: evenly spread, `floor(N * fraction)` test tracks among
    the first N for every N, and a track's subset never depends on how many are made."""
    fraction = Fraction(test_fraction).limit_denominator(10000)
    return "test" if math.floor((index + 1) * fraction) > math.floor(index * fraction) else "train"


def is_complete(folder: Path, request: Dict) -> bool:
    """Whether `folder` holds all five 16-bit stereo files of the right length and a
    meta.json made for exactly this request."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(meta, dict) or meta.get("request") != request:
        return False
    for name in FILES:
        try:
            info = soundfile.info(str(folder / f"{name}.wav"))
        except (OSError, RuntimeError):
            return False
        if (info.samplerate, info.channels, info.frames, info.subtype) != (SAMPLERATE, 2, request["samples"], "PCM_16"):
            return False
    return True


def write_track(folder: Path, track: RenderedTrack, request: Dict, force: bool) -> None:
    """Write the track into a hidden folder beside `folder`, renamed onto it when complete
    (`danna_sep.atomic`: an existing track is replaced whole, with `force`)."""
    with atomic.writing(folder, directory=True) as temporary:
        for name in FILES:
            soundfile.write(str(temporary / f"{name}.wav"), track.stems[name].T, SAMPLERATE,
                            subtype="PCM_16", format="WAV")
        meta = dict(track.meta)
        meta["name"] = folder.name
        meta["subset"] = folder.parent.name
        meta["request"] = request
        (temporary / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        if folder.exists() and not force:
            raise TrackExistsError(f"{folder}: already exists (use --force to overwrite)")


def _make_track(job: _Job) -> Tuple[int, Optional[str]]:
    """Render and write one track (in a worker or in-process): (index, error line or None)."""
    folder = Path(job.folder)
    try:
        track = render_track(job.seed, job.index, job.seconds, list(job.soundfonts), job.genre)
        write_track(folder, track, job.request, job.force)
    except CorpusError as exc:
        return job.index, str(exc) if str(folder) in str(exc) else f"{folder}: {exc}"
    except OSError as exc:
        return job.index, f"{folder}: {exc.strerror or exc}"
    except ValueError as exc:
        return job.index, f"{folder}: {exc}"
    return job.index, None


def _init_worker(level: int) -> None:
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")


def check_dependencies() -> None:
    """DependencyError (one line) unless FluidSynth, pyworld and espeak-ng are all usable."""
    _fluidsynth_module()
    _load_pyworld()
    espeak_executable()


def generate_corpus(
    out: PathLike,
    tracks: int,
    seconds: float,
    seed: int,
    soundfonts: Optional[Sequence[PathLike]] = None,
    workers: int = 1,
    test_fraction: float = 0.2,
    force: bool = False,
    progress: Optional[Callable[[int, int], None]] = None,
    genre: Optional[str] = None,
) -> CorpusReport:
    """Write `tracks` songs of `seconds` each under `out` in the MUSDB18-HQ layout.

    Tracks already complete for the same request are skipped (a killed run can simply be
    run again); a track folder holding something else is left alone and reported as
    failed unless `force`, which re-renders every track. `workers` > 1 renders in that
    many spawned processes; the bytes written do not depend on it. `progress(done, total)`
    is called as the run starts and after each track (the command line draws the bar).

    Raises SoundfontError / DependencyError before any work when a soundfont or a
    needed program is missing, ValueError for arguments out of range.
    """
    if tracks < 1:
        raise ValueError(f"tracks must be at least 1, not {tracks}")
    if not 0 < seconds <= MAX_SECONDS:
        raise ValueError(f"seconds must be in (0, {MAX_SECONDS:g}], not {seconds}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, not {seed}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, not {workers}")
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test fraction must be within [0, 1], not {test_fraction}")
    started = time.monotonic()
    fonts = resolve_soundfonts(soundfonts)
    check_dependencies()
    hashes = [soundfont_sha256(f) for f in fonts]
    out = Path(out)
    samples = int(round(seconds * SAMPLERATE))
    report = CorpusReport()
    jobs: List[_Job] = []
    names: Dict[int, str] = {}
    swept: set = set()
    for index in range(tracks):
        subset = subset_of(index, test_fraction)
        name = track_name(seed, index)
        folder = out / subset / name
        relative = f"{subset}/{name}"
        names[index] = relative
        request = {"version": GENERATOR_VERSION, "seed": seed, "index": index, "seconds": seconds,
                   "samples": samples, "soundfonts": hashes}
        if genre is not None:  # absent when drawn from the seed, so older requests still match
            request["genre"] = genre
        if folder.parent not in swept:  # what killed runs left: their temporary folders
            swept.add(folder.parent)
            atomic.remove_stale_temporaries(folder.parent)
        # and, by the names of versions before danna_sep.atomic, a track's own leftovers
        for leftover in sorted(folder.parent.glob(f".{name}.partial-*")) + sorted(folder.parent.glob(f".{name}.old-*")):
            log.info("removing %s left by an interrupted run", leftover)
            shutil.rmtree(leftover, ignore_errors=True)
        if folder.exists() and not force:
            if is_complete(folder, request):
                report.skipped.append(relative)
            else:
                report.failed.append((relative, f"{folder}: already exists and differs (use --force to overwrite)"))
            continue
        jobs.append(_Job(index=index, folder=str(folder), seed=seed, seconds=float(seconds),
                         soundfonts=tuple(str(f) for f in fonts), request=request, force=force,
                         genre=genre))

    total, done = tracks, tracks - len(jobs)
    if progress is not None:
        progress(done, total)
    pool = None
    try:
        if workers == 1 or len(jobs) <= 1:
            results = map(_make_track, jobs)
        else:
            context = multiprocessing.get_context("spawn")  # fork would copy FluidSynth's state
            pool = context.Pool(processes=min(workers, len(jobs)), initializer=_init_worker,
                                initargs=(logging.getLogger().getEffectiveLevel(),))
            results = pool.imap_unordered(_make_track, jobs, chunksize=1)
        for index, error in results:
            if error is None:
                report.written.append(names[index])
            else:
                log.debug("%s", error)  # the command reports each failure
                report.failed.append((names[index], error))
            done += 1
            if progress is not None:
                progress(done, total)
        if pool is not None:
            pool.close()
    finally:
        if pool is not None:
            pool.terminate()  # no-op after close(); stops the workers on an error or Ctrl-C
            pool.join()
    report.written.sort()
    report.failed.sort()
    report.seconds = time.monotonic() - started
    return report
