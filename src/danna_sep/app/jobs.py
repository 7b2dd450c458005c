"""What the web app does with a song, with none of Gradio in it: take an upload in and check
it, run a `Separator` over it into stem files (`Separator.write_stems`, as `danna-sep
separate` does), draw each stem's spectrogram and pack the stems into a zip. The page
(`danna_sep.app.page`) calls these and shows what they return or raise.

Every problem a user can fix raises a `DannaSepError` whose message names the file by the
name it was uploaded with (never by its path on the server), so the page can show it as is.
"""

from __future__ import annotations

import math
import re
import shutil
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Tuple

from .. import SOURCES, catalog
from ..errors import DannaSepError
from .workspace import Workspace

if TYPE_CHECKING:  # torch is imported by the first job, not when the app starts
    from ..separator import Separator

FORMATS = ("wav", "flac", "mp3")
PRECISIONS = ("auto", "float32", "bfloat16")
MAX_SHIFTS = 20
# An upload keeps its extension (a hint for the decoders) only when it looks like one.
_EXTENSION = re.compile(r"\.[a-z0-9]{1,5}")
_NAME_LIMIT = 120

ReportFn = Callable[[float, str], None]
"""`report(fraction, text)`: how far a job has got (0 to 1) and what it is doing, in words."""


class TooLong(DannaSepError):
    """A track longer than the app's limit (`--max-minutes`)."""


class Cancelled(Exception):
    """The app is shutting down: the job under way stops at its next progress report."""


def display_name(name: Optional[str]) -> str:
    """A file's name as the page shows it: its last part, without control characters, shortened."""
    text = re.split(r"[\\/]", name or "")[-1]
    text = "".join(ch for ch in text if ch.isprintable()).strip() or "upload"
    return text if len(text) <= _NAME_LIMIT else text[:_NAME_LIMIT - 1] + "…"


def clock(seconds: float) -> str:
    """12.3 -> "0:12.3"; 754 -> "12:34"."""
    if seconds < 60:
        return f"0:{seconds:04.1f}"
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes}:{rest:02d}"


def _named(error: DannaSepError, path: Path, name: str) -> DannaSepError:
    """`error` with the server's path of the file replaced by the name it was uploaded as (and
    without the command line's advice to use --allow-truncated, which the page does not have)."""
    text = str(error).replace(str(path), name).replace("; --allow-truncated reads what is there", "")
    error.args = (text,) + error.args[1:]
    return error


@dataclass(frozen=True)
class Limits:
    max_seconds: float
    """The longest track a job takes (`--max-minutes`)."""


@dataclass(frozen=True)
class Track:
    """An input the app holds in its workspace, checked: where it is and what it is."""

    token: str
    path: Path
    name: str
    """The name it was uploaded as, for the page only (see `display_name`)."""
    samplerate: int
    seconds: Optional[float]
    """Its length as the file's header declares it, None where the header does not say (then
    the length is checked as the separation reads it)."""


def inspect(path: Path, name: str, limits: Limits) -> Tuple[int, Optional[float]]:
    """(sample rate, declared seconds or None) of an audio file; the first block is decoded, so
    that a file which opens but does not decode is refused here. Raises AudioError (empty, not
    audio, damaged) or TooLong, each naming the file as `name`."""
    from ..audio import AudioError, declared_length, open_blocks

    try:
        reader = open_blocks(path)
        try:
            next(iter(reader))
        except AudioError:
            if reader.fallback is None:  # the other decoder may read what this one cannot
                raise
            reader = reader.fallback()
            next(iter(reader))
        declared = declared_length(path)
    except AudioError as error:
        raise _named(error, path, name) from None
    seconds = declared[0] / declared[1] if declared is not None else None
    if seconds is not None and seconds > limits.max_seconds:
        raise TooLong(f"{name}: {clock(seconds)} long, and this app takes at most {clock(limits.max_seconds)} "
                      f"(start it with a larger --max-minutes)")
    return reader.samplerate, seconds


def adopt(workspace: Workspace, upload: Path, name: Optional[str], limits: Limits) -> Track:
    """Take a file Gradio received into the workspace and check it.

    The file is moved at once into a folder of its own under a fixed name (`input`, plus its
    extension when that is a plain one), so the uploaded name never becomes a path here;
    Gradio's copy and its folder go. On any problem nothing of it is left, and the error
    names the file as it was uploaded."""
    shown = display_name(name)
    token, folder = workspace.new_folder()
    extension = Path(shown).suffix.lower()
    target = folder / ("input" + (extension if _EXTENSION.fullmatch(extension) else ""))
    try:
        shutil.move(str(upload), target)
        workspace.discard_upload(upload)
        rate, seconds = inspect(target, shown, limits)
        workspace.make_room(0, keep={token})
    except BaseException:
        workspace.remove(token)
        workspace.discard_upload(upload)
        raise
    return Track(token, target, shown, rate, seconds)


def copy_in(workspace: Workspace, source: Path, limits: Limits) -> Track:
    """A file of the server's own (the bundled example) as a `Track`, copied into the workspace."""
    token, folder = workspace.new_folder()
    target = folder / ("input" + source.suffix.lower())
    try:
        shutil.copyfile(source, target)
        rate, seconds = inspect(target, source.name, limits)
        workspace.make_room(0, keep={token})
    except BaseException:
        workspace.remove(token)
        raise
    return Track(token, target, source.name, rate, seconds)


@dataclass(frozen=True)
class BundleChoice:
    """One of the bundles the page offers: `key` is what the page sends back."""

    key: str
    label: str
    bundle: Optional[str] = None
    """A bundle folder or name, for `resolve_bundle`."""
    checkpoints: Optional[str] = None
    """The original tool's checkpoints folder."""


def bundle_choices(bundle: Optional[str] = None, checkpoints: Optional[str] = None) -> List[BundleChoice]:
    """The bundles to offer, the one to start with first: `bundle` or `checkpoints` when given
    (the command line's --bundle / --checkpoints), else what `Separator()` picks (the
    `$DANNA_CHECKPOINTS` folder when set, else the shipped default); then every bundle
    `danna-sep models` lists, and the original checkpoints when their folder exists."""
    choices: List[BundleChoice] = []
    entries, _ = catalog.list_bundles()
    named = {e.name: e for e in entries if not e.shadowed and e.problem is None}
    folder = Path(checkpoints) if checkpoints else catalog.checkpoints_folder()
    original = None
    if folder is not None and folder.is_dir():
        present = [f for f in list(catalog.ORIGINAL_FILES.values()) + [catalog.ORIGINAL_XUMX_ONNX]
                   if (folder / f).is_file()]
        original = BundleChoice("checkpoints", f"original Danna-Sep checkpoints ({folder}: {len(present)} files)",
                                checkpoints=str(folder))
    if bundle is not None:
        entry = named.get(bundle)
        if entry is not None:
            choices.append(BundleChoice(f"bundle:{entry.name}", _label(entry), bundle=str(entry.path)))
        else:
            path = Path(bundle).resolve()
            choices.append(BundleChoice("command-line", f"{path.name} ({path})", bundle=str(path)))
    elif original is not None:
        choices.append(original)
    for entry in named.values():
        if all(c.key != f"bundle:{entry.name}" for c in choices):
            choices.append(BundleChoice(f"bundle:{entry.name}", _label(entry), bundle=str(entry.path)))
    if original is not None and original not in choices:
        choices.append(original)
    return choices


def _label(entry: "catalog.BundleEntry") -> str:
    return f"{entry.name} ({entry.origin}: {' + '.join(entry.models)})"


@dataclass(frozen=True)
class JobOptions:
    """What the page's options say, checked (`check`)."""

    stems: Tuple[str, ...] = tuple(SOURCES)
    two_stems: Optional[str] = None
    """X: write X and no_X (everything but X) instead of `stems`."""
    shifts: int = 0
    precision: str = "auto"
    format: str = "wav"

    def check(self) -> None:
        if self.format not in FORMATS:
            raise DannaSepError(f"format {self.format!r}: choose {', '.join(FORMATS)}")
        if self.precision not in PRECISIONS:
            raise DannaSepError(f"precision {self.precision!r}: choose {', '.join(PRECISIONS)}")
        if not 0 <= self.shifts <= MAX_SHIFTS:
            raise DannaSepError(f"shifts {self.shifts}: from 0 to {MAX_SHIFTS}")
        if self.two_stems is None and not self.stems:
            raise DannaSepError("no stems chosen: tick at least one, or pick two stems")

    def targets(self, sources: List[str]) -> List[str]:
        """The stems to write, of a bundle that separates `sources`."""
        if self.two_stems is not None:
            if self.two_stems not in sources:
                raise DannaSepError(f"two stems {self.two_stems}: this bundle separates {', '.join(sources)} only")
            return [self.two_stems, f"no_{self.two_stems}"]
        missing = [s for s in self.stems if s not in sources]
        if missing:
            raise DannaSepError(f"{', '.join(missing)}: this bundle separates {', '.join(sources)} only")
        return [s for s in sources if s in self.stems]


class Separators:
    """The Separator of the last job, kept for the next one with the same bundle, precision and
    shifts (a bundle loads once); only one is held, so memory stays that of one bundle."""

    def __init__(self, device: str = "auto"):
        self.device = device
        self._key: Optional[tuple] = None
        self._separator: Optional["Separator"] = None
        self._lock = threading.Lock()

    def get(self, choice: BundleChoice, options: JobOptions) -> "Separator":
        key = (choice, options.precision, options.shifts)
        with self._lock:
            if self._key != key:
                from ..separator import Separator

                self._separator = self._key = None  # the old bundle's memory goes before the new one loads
                self._separator = Separator(choice.bundle, checkpoints=choice.checkpoints, device=self.device,
                                            shifts=options.shifts, precision=options.precision)
                self._key = key
            return self._separator


@dataclass(frozen=True)
class Separation:
    """One finished job: its stems, their pictures and the zip, in the folder of `token`."""

    token: str
    folder: Path
    track: str
    stems: Dict[str, Path]
    pictures: Dict[str, Path]
    archive: Path
    seconds: float
    samplerate: int
    format: str
    took: float


# Bytes per second of stereo audio at most, per format (the zip holds the same again).
def _bytes_per_second(format: str, samplerate: int) -> float:
    return 40_000 if format == "mp3" else samplerate * 2 * 4


class _Remaining:
    """Time left, from the speed so far of the stage under way."""

    def __init__(self) -> None:
        self.stage = ""
        self.started = time.monotonic()

    def __call__(self, stage: str, done: float, total: float) -> Optional[float]:
        now = time.monotonic()
        if stage != self.stage:
            self.stage, self.started = stage, now
            return None
        if done <= 0:
            return None
        return (now - self.started) / done * (total - done)


def separate(separator: "Separator", track: Track, options: JobOptions, workspace: Workspace, limits: Limits,
             report: ReportFn, cancel: threading.Event) -> Separation:
    """Separate `track` into stem files with `Separator.write_stems`, then draw their
    spectrograms and zip them, all in a new workspace folder; on any error that folder goes."""
    from ..audio import AudioError
    from ..separator import OutputOptions
    from .pictures import write_spectrogram

    options.check()
    stems = options.targets(separator.sources)
    seconds = track.seconds if track.seconds is not None else limits.max_seconds
    needed = 2 * len(stems) * seconds * _bytes_per_second(options.format, track.samplerate) + len(stems) * 300_000
    workspace.make_room(int(needed), keep={track.token})
    token, folder = workspace.new_folder()
    targets = {stem: folder / f"{stem}.{options.format}" for stem in stems}
    remaining = _Remaining()
    started = time.monotonic()

    def progress(stage: str, done: float, total: float) -> None:
        if cancel.is_set():
            raise Cancelled()
        if total > limits.max_seconds:  # a file whose header did not say its length
            raise TooLong(f"{track.name}: {clock(total)} long, and this app takes at most "
                          f"{clock(limits.max_seconds)} (start it with a larger --max-minutes)")
        left = remaining(stage, done, total)
        eta = "estimating the time left" if left is None else f"about {math.ceil(left)} s left"
        if stage == "separating":
            report(0.9 * done / max(total, 1e-9), f"Separating: {done:.1f} of {total:.1f} s of audio, {eta}")
        else:
            report(0.9 + 0.07 * done / max(total, 1e-9), f"Writing the stems: {eta}")

    try:
        report(0.0, "Separating: starting")
        try:
            written = separator.write_stems(track.path, targets, OutputOptions(format=options.format),
                                            progress=progress)
        except AudioError as error:
            raise _named(error, track.path, track.name) from None
        pictures = {}
        for index, (stem, path) in enumerate(written.paths.items()):
            report(0.97 + 0.02 * index / len(stems), "Drawing the spectrograms")
            if cancel.is_set():
                raise Cancelled()
            pictures[stem] = folder / f"{stem}.png"
            write_spectrogram(path, pictures[stem])
        report(0.99, "Packing the zip")
        archive = folder / "stems.zip"
        with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as packed:
            for stem, path in written.paths.items():
                packed.write(path, arcname=path.name)
    except BaseException:
        workspace.remove(token)
        raise
    return Separation(token, folder, track.name, dict(written.paths), pictures, archive, written.seconds,
                      written.samplerate, options.format, time.monotonic() - started)
