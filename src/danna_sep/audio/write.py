"""Writing audio files block by block, atomically, one file or several together.

`AudioWriter` owns everything between float blocks and a finished file: the one streaming
resampler (from the blocks' rate to the file's, or to the nearest rate MP3 can carry), the
exact length, quantisation, the encoder and the temporary file (`danna_sep.atomic`).
`AudioWriters` commits several of them all or none, which is how a track's stems appear.
"""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Literal, Mapping, Optional

import numpy as np
import soundfile
import torch

from .. import atomic
from .common import AudioError, PathLike, check_readable, one_line
from .folders import long_name, make_parent, remove_empty_folders, space_problem
from .formats import (FLAC_SUBTYPES, WAV_SUBTYPES, BitDepth, Format, check_write_options, default_bit_depth,
                      encoded_bytes, mp3_rate, output_format, wav_container)
from .mix import quantise
from .probe import source_bit_depth
from .resample import StreamResampler

log = logging.getLogger(__name__)

_ENCODER_BLOCK = 1 << 18  # frames handed to libsndfile at once


def _as_frames(path: Path, wav: torch.Tensor) -> np.ndarray:
    """Validate `(channels, samples)` and return float32 `(samples, channels)` numpy."""
    if not isinstance(wav, torch.Tensor):
        raise TypeError(f"{path}: expected a torch.Tensor (channels, samples), got {type(wav).__name__}")
    if wav.dim() != 2:
        raise ValueError(f"{path}: expected a (channels, samples) tensor, got shape {tuple(wav.shape)}")
    if not wav.is_floating_point():
        raise ValueError(f"{path}: expected floating-point samples, got {wav.dtype}")
    channels = wav.shape[0]
    if channels == 0 or channels > 256:
        raise ValueError(
            f"{path}: {channels} channels; expected (channels, samples), is the tensor transposed?"
        )
    frames = wav.detach().to("cpu", torch.float32)
    if not torch.isfinite(frames).all():
        raise AudioError(f"{path}: cannot write NaN or infinite samples")
    return np.ascontiguousarray(frames.numpy().T)


def _write_errors(kind: str) -> tuple:
    """Exception types an encoder raises for a failed write (not programming errors)."""
    errors: tuple = (OSError, RuntimeError, ValueError, soundfile.SoundFileError)
    if kind == "mp3":
        import av  # deferred import

        errors += (getattr(av, "FFmpegError", None) or av.error.FFmpegError,)
    return errors


class AudioWriter:
    """Write one audio file block by block, atomically.

    The data goes to a hidden temporary file in the target folder; `commit()` finishes it
    and renames it onto the target, `abort()` (or leaving a `with` block by an exception,
    KeyboardInterrupt included) removes it. Blocks are float `(channels, samples)` tensors
    at `source_rate` (default: `samplerate`), resampled on the way in where the rates
    differ; PCM samples are clamped to [-1, 1] before quantisation. Formats: wav (PCM
    16/24 or 32-bit float), flac (16/24) and mp3 (constant bitrate; rates MP3 cannot carry
    are encoded at a close one, with a warning); a target named .wav, .flac or .mp3 is
    written in that format (see `output_format`). `length`, where given, is the file's
    exact length in frames at `samplerate`: what comes past it is dropped and a shortfall
    is padded with silence at the end (resampling rounds). An existing target is an
    AudioError unless `force`; missing folders are made, and listed in `created_folders`.
    A wav whose `frames` (the length announced, default `length`) would pass 4 GB is
    written as RF64 (see `wav_container`), or always with `container="RF64"`. A full disk
    raises DiskFullError ("disk full: FOLDER").
    """

    def __init__(
        self,
        path: PathLike,
        samplerate: int,
        channels: int,
        format: Optional[Format] = None,
        bit_depth: BitDepth = 16,
        mp3_bitrate: int = 320,
        force: bool = False,
        frames: Optional[int] = None,
        container: Optional[Literal["WAV", "RF64"]] = None,
        source_rate: Optional[int] = None,
        length: Optional[int] = None,
    ):
        self.path = path = Path(path)
        format = output_format(path, format)
        check_write_options(path, format, bit_depth, mp3_bitrate, samplerate)
        if format == "mp3" and channels > 2:
            raise AudioError(f"{path}: mp3 holds 1 or 2 channels, got {channels}")
        too_long = long_name(path)
        if too_long is not None:
            raise AudioError(f"{path}: {too_long}")
        if path.is_dir():
            raise AudioError(f"{path}: is a folder")
        if (path.exists() or path.is_symlink()) and not force:
            raise AudioError(f"{path}: already exists (use --force to overwrite)")
        self.format = format
        self.bit_depth = bit_depth
        self.channels = channels
        self.samplerate = int(samplerate)
        self.frames_written = 0
        # The rate the encoder runs at, and the one resampler from the blocks' rate to it.
        self.encoded_rate = mp3_rate(self.samplerate) if format == "mp3" else self.samplerate
        if self.encoded_rate != self.samplerate:
            log.warning("%s: MP3 cannot carry %d Hz; encoded at %d Hz", path, self.samplerate, self.encoded_rate)
        source = self.samplerate if source_rate is None else int(source_rate)
        self._resampler = StreamResampler(source, self.encoded_rate, channels) if source != self.encoded_rate else None
        self._length = None if length is None else round(length * self.encoded_rate / self.samplerate)
        announced = frames if frames is not None else length
        self.container = (container or wav_container(announced, channels, bit_depth)) if format == "wav" else None
        if self.container == "RF64" and container is None:
            log.info("%s: over 4 GB, written as RF64, the wav for large files (some players read plain wav "
                     "only: --format flac)", path)
        self._finished = False
        self.created_folders: List[Path] = []
        parent = make_parent(path, self.created_folders)
        self.temporary: Optional[Path] = None
        try:
            self.temporary = self._reserve(parent)
            self._open(mp3_bitrate)
        except BaseException:
            self._discard()
            remove_empty_folders(self.created_folders)
            raise

    def _reserve(self, parent: Path) -> Path:
        """An empty hidden temporary file next to the target; its name fits wherever the target's does."""
        try:
            return atomic.reserve(parent, self.path.name, self.format)
        except OSError as error:
            problem = space_problem(parent, error) if error.errno != errno.EACCES else None
            if problem is not None:
                raise problem from None
            raise AudioError(f"{parent}: folder is not writable ({one_line(error)})") from None

    def _open(self, mp3_bitrate: int) -> None:
        assert self.temporary is not None
        try:
            if self.format == "mp3":
                import av  # deferred import

                self._layout = "mono" if self.channels == 1 else "stereo"
                self._container = av.open(str(self.temporary), mode="w", format="mp3")
                self._stream = self._container.add_stream("libmp3lame", rate=self.encoded_rate, layout=self._layout)
                self._stream.bit_rate = int(mp3_bitrate) * 1000
                self._pts = 0
            else:
                subtypes = WAV_SUBTYPES if self.format == "wav" else FLAC_SUBTYPES
                self._handle = soundfile.SoundFile(
                    str(self.temporary), mode="w", samplerate=self.samplerate, channels=self.channels,
                    subtype=subtypes[self.bit_depth], format=self.container or self.format.upper(),
                )
        except _write_errors(self.format) as error:
            raise self._failed(error) from None

    def _encode(self, frames: np.ndarray) -> None:
        """Encode float32 `(samples, channels)` at the encoder's rate, up to the file's length."""
        if self._length is not None:
            frames = frames[:max(0, self._length - self.frames_written)]
        if not len(frames):
            return
        if self.format == "mp3":
            import av  # deferred import

            planar = np.ascontiguousarray(np.clip(frames, -1.0, 1.0).T)
            frame = av.AudioFrame.from_ndarray(planar, format="fltp", layout=self._layout)
            frame.sample_rate = self.encoded_rate
            frame.pts = self._pts
            self._pts += planar.shape[1]
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
        else:
            for start in range(0, len(frames), _ENCODER_BLOCK):
                chunk = frames[start:start + _ENCODER_BLOCK]
                self._handle.write(chunk if self.bit_depth == 32 else quantise(chunk, self.bit_depth))
        self.frames_written += len(frames)

    def write(self, wav: torch.Tensor) -> None:
        """Append float `(channels, samples)` at the source rate."""
        if self.temporary is None or self._finished:
            raise RuntimeError(f"{self.path}: writer already closed")
        frames = _as_frames(self.path, wav)
        if frames.shape[1] != self.channels:
            raise ValueError(f"{self.path}: expected {self.channels} channels, got {frames.shape[1]}")
        try:
            self._encode(frames if self._resampler is None else self._resampler(frames))
        except _write_errors(self.format) as error:
            self.abort()
            raise self._failed(error) from None

    def finish(self) -> None:
        """Encode what the resampler holds, pad to `length`, and close the temporary file;
        `commit` (or `AudioWriters.commit`) then renames it. Idempotent."""
        if self.temporary is None:
            raise RuntimeError(f"{self.path}: writer already closed")
        if self._finished:
            return
        try:
            try:
                if self._resampler is not None:
                    self._encode(self._resampler.flush())
                while self._length is not None and self.frames_written < self._length:
                    missing = min(self._length - self.frames_written, _ENCODER_BLOCK)
                    self._encode(np.zeros((missing, self.channels), np.float32))
                if self.format == "mp3":
                    for packet in self._stream.encode(None):
                        self._container.mux(packet)
                self._close()
            except _write_errors(self.format) as error:
                raise self._failed(error) from None
        except BaseException:
            self.abort()
            raise

    def commit(self) -> Path:
        """Finish the file and move it onto the target name (durably: `danna_sep.atomic`)."""
        self.finish()
        try:
            try:
                atomic.commit(self.temporary, self.path)
            except OSError as error:
                raise self._failed(error) from None
        except BaseException:
            self.abort()
            raise
        self.temporary = None
        log.debug("wrote %s (%s, %d Hz, %d channels)", self.path, self.format, self.samplerate, self.channels)
        return self.path

    def _failed(self, error: BaseException) -> Exception:
        """The one-line error for a failed write: "disk full: FOLDER" where that is why."""
        return space_problem(self.path.parent, error) or AudioError(f"{self.path}: cannot write ({one_line(error)})")

    def _close(self) -> None:
        if self._finished:
            return
        self._finished = True
        if self.format == "mp3":
            self._container.close()
        else:
            self._handle.close()

    def _discard(self) -> None:
        atomic.discard(self.temporary)
        self.temporary = None

    def abort(self, remove_folders: bool = True) -> None:
        """Drop the temporary file, and (unless told not to) the folders made for it if they
        are empty; the target is left as it was."""
        if self.temporary is None:
            return
        try:
            self._close()
        except Exception:  # closing a half-written file may fail; it is deleted anyway
            pass
        self._discard()
        if remove_folders:
            remove_empty_folders(self.created_folders)

    def __enter__(self) -> "AudioWriter":
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is not None:
            self.abort()
        elif self.temporary is not None:
            self.commit()


class AudioWriters:
    """Several files written together, committed all or none: every writer is finished first,
    then each renamed; on any error, or an interrupt, the temporaries, the files already
    renamed and the folders made for any of them (once empty) are removed."""

    def __init__(self) -> None:
        self.writers: List[AudioWriter] = []
        self.created_folders: List[Path] = []

    def open(self, path: PathLike, samplerate: int, channels: int, **options) -> AudioWriter:
        """A new `AudioWriter` (same arguments) that belongs to the set."""
        writer = AudioWriter(path, samplerate, channels, **options)
        self.writers.append(writer)
        self.created_folders.extend(writer.created_folders)
        return writer

    def commit(self, before_rename: Optional[Callable[[List[Path]], None]] = None) -> List[Path]:
        """Finish every file, then rename each to its name. `before_rename` gets the complete
        temporary files, in the order opened, before any is renamed (a batch's manifest
        hashes and records them there); if it raises, nothing is left."""
        committed: List[Path] = []
        try:
            for writer in self.writers:
                writer.finish()
            if before_rename is not None:
                before_rename([writer.temporary for writer in self.writers])
            for writer in self.writers:
                committed.append(writer.commit())
        except BaseException:
            for path in committed:  # written whole or not at all
                path.unlink(missing_ok=True)
            self.abort()
            raise
        return committed

    def abort(self) -> None:
        for writer in self.writers:
            writer.abort(remove_folders=False)
        remove_empty_folders(self.created_folders)

    def __enter__(self) -> "AudioWriters":
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is not None:
            self.abort()


@dataclass(frozen=True)
class Target:
    """One file to write for a source: where, in which format, at which bit depth (None: mp3)."""

    path: Path
    format: str
    bit_depth: Optional[int]

    def size(self, frames: int, channels: int, samplerate: int, mp3_bitrate: int = 320) -> int:
        """An upper bound on its size for `frames` (see `encoded_bytes`)."""
        return encoded_bytes(self.format, frames, channels, samplerate, self.bit_depth, mp3_bitrate)


def plan_targets(source: PathLike, targets: Mapping[str, PathLike], format: Optional[str] = None,
                 bit_depth: Optional[int] = None, force: bool = False) -> Dict[str, Target]:
    """The files to write from `source`, by name: each in the format its extension names,
    else `format` (see `output_format`), at `bit_depth`, else the source's as far as the
    format holds it (see `default_bit_depth`). Checked before any work, each as one line: a
    source that cannot be read (see `check_readable`), a name too long for its file system,
    and an existing file unless `force`."""
    paths = {name: Path(target) for name, target in targets.items()}
    formats = {name: output_format(target, format) for name, target in paths.items()}
    check_readable(source)  # before anything opens it: a FIFO would block, a loop never resolve
    for target in paths.values():
        too_long = long_name(target)
        if too_long is not None:
            raise AudioError(f"{target}: {too_long}")
    depth = source_bit_depth(source) if bit_depth is None else None
    planned = {name: Target(paths[name], fmt, bit_depth or default_bit_depth(fmt, depth))
               for name, fmt in formats.items()}
    if not force:
        for target in paths.values():
            if target.exists() or target.is_symlink():
                raise AudioError(f"{target}: already exists (use --force to overwrite)")
    return planned


def write_audio(
    path: PathLike,
    wav: torch.Tensor,
    samplerate: int,
    format: Optional[Format] = None,
    bit_depth: BitDepth = 16,
    mp3_bitrate: int = 320,
    force: bool = False,
) -> Path:
    """Write float `(channels, samples)` audio atomically and return the final path.

    See `AudioWriter` for the formats; this writes the whole tensor at once.
    """
    path = Path(path)
    format = output_format(path, format)
    check_write_options(path, format, bit_depth, mp3_bitrate, samplerate)
    frames = _as_frames(path, wav)
    with AudioWriter(path, samplerate, frames.shape[1], format=format, bit_depth=bit_depth,
                     mp3_bitrate=mp3_bitrate, force=force) as writer:
        writer.write(wav)
    return path
