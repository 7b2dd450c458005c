"""Reading any audio file, block by block, as float32 `(channels, samples)`.

Two decoders: libsndfile (soundfile) first, the fast path for wav, flac, ogg, mp3 and
friends; PyAV (ffmpeg, shipped inside the wheel) for the rest (m4a, aac, mp4, MUSDB18
`.stem.mp4`, opus in webm, wma, ...), and again for a compressed file on which libsndfile
gives up part way. Each block is checked as it is decoded (NaN, infinite samples, a
channel count that changes) and the length judged at the end (`truncation`), so no more
than a block is held at a time.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import soundfile
import torch

from .chatter import decoder_chatter
from .common import AudioError, PathLike, check_readable, one_line
from .truncation import (check_structure, container_declared, flac_crc_failure, header_channels, judge_length,
                         lossy_slack, mp3_declared_samples, mp4_declared_samples)

log = logging.getLogger(__name__)

BLOCK = 1 << 16  # frames per block when reading in pieces

# libsndfile's limit on channels; a header declaring none, or more, is refused by name.
_MAX_CHANNELS = 1024
# Formats whose frame count libsndfile reads from the header or an index, so that fewer
# frames decoded than declared means the file is cut short.
_EXACT_LENGTH_FORMATS = {"WAV", "WAVEX", "RF64", "W64", "AIFF", "CAF", "FLAC", "AU"}
# Compressed formats libsndfile decodes; where it gives up part way, PyAV tries.
_COMPRESSED_FORMATS = {"MP3", "OGG", "FLAC"}
# Samples at the end of a PyAV stream held back until the end: an MP4 index may say they
# are AAC padding.
_PADDING = 8192


class AudioBlocks:
    """An audio file opened for reading in order, block by block.

    `samplerate` and `channels` are known on opening; iterating yields float32
    `(channels, n)` numpy blocks, each checked (NaN and infinite samples, a file cut
    short or corrupt) as it is decoded, so no more than a block is held at a time.
    Iterate once. `fallback`, where there is one, opens the same file with the other decoder.
    """

    def __init__(self, path: Path, samplerate: int, channels: int, blocks: Iterator[np.ndarray],
                 fallback: Optional["Callable[[], AudioBlocks]"] = None):
        self.path = path
        self.samplerate = samplerate
        self.channels = channels
        self._blocks = blocks
        self.frames_read = 0
        self.fallback = fallback

    def __iter__(self) -> Iterator[np.ndarray]:
        for data in self._blocks:
            if data.shape[1] == 0:
                continue
            if data.shape[0] != self.channels:
                raise AudioError(f"{self.path}: channel count changes inside the stream")
            if not np.isfinite(data).all():
                raise AudioError(f"{self.path}: contains NaN or infinite samples")
            self.frames_read += data.shape[1]
            yield np.ascontiguousarray(data, dtype=np.float32)
        if self.frames_read == 0:
            raise AudioError(f"{self.path}: no samples")


class _SwitchDecoder(AudioError):
    """libsndfile gave up part way through a compressed file: it is decoded again, from the
    start, by PyAV (ffmpeg), which may get through (MP3 with junk between frames). An
    AudioError for callers that do not switch."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: truncated or corrupt audio ({reason})")
        self.reason = reason


def with_fallback(reader: AudioBlocks, consume: "Callable[[AudioBlocks], object]"):
    """`consume(reader)`; when libsndfile gives up on a compressed file part way, `consume`
    starts again on PyAV's decoding of it."""
    try:
        return consume(reader)
    except _SwitchDecoder as switch:
        if reader.fallback is None:
            raise
        log.info("%s: libsndfile stops (%s); decoding it with ffmpeg instead", reader.path, switch.reason)
        return consume(reader.fallback())


# --------------------------------------------------------------------------- libsndfile


def _soundfile_blocks(path: Path, block: int, allow_truncated: bool = False) -> Optional[AudioBlocks]:
    """Blocks decoded by libsndfile, or None when it does not recognise the format (the
    caller then tries PyAV). A recognised but cut-off or corrupt file raises AudioError."""
    try:
        with decoder_chatter(path):
            handle = soundfile.SoundFile(str(path))
    except (soundfile.SoundFileError, RuntimeError, TypeError, ValueError) as error:
        channels = header_channels(path)
        if channels is not None and not 1 <= channels <= _MAX_CHANNELS:
            raise AudioError(f"{path}: unsupported channel count {channels}") from None
        log.debug("%s: libsndfile cannot open it (%s); trying ffmpeg", path, one_line(error))
        return None
    kind, rate = handle.format, handle.samplerate
    declared, slack = None, 0
    if kind in _EXACT_LENGTH_FORMATS:
        declared = handle.frames
    elif kind == "MP3":
        found = mp3_declared_samples(path)
        if found is not None and found[1] == rate:
            declared, slack = found[0], lossy_slack(rate)

    def blocks() -> Iterator[np.ndarray]:
        with handle:
            decoded = 0
            while True:
                try:
                    with decoder_chatter(path) if kind == "MP3" else contextlib.nullcontext():
                        data = handle.read(block, dtype="float32", always_2d=True)
                except (soundfile.SoundFileError, RuntimeError, ValueError, MemoryError) as error:
                    reason = f"{one_line(error)} at {decoded / rate:.2f} s"
                    if kind == "FLAC":
                        at = flac_crc_failure(path)
                        if at is not None:
                            raise AudioError(f"{path}: corrupt FLAC (CRC): the frame at {at:.2f} s fails its check") from None
                    if kind in _COMPRESSED_FORMATS:
                        raise _SwitchDecoder(path, reason) from None
                    raise AudioError(f"{path}: truncated or corrupt audio ({reason})") from None
                if not len(data):
                    break
                decoded += len(data)
                yield data.T
            judge_length(path, decoded, declared, rate, slack, allow_truncated)

    fallback = (lambda: _pyav_blocks(path, 0, allow_truncated)) if kind in _COMPRESSED_FORMATS else None
    return AudioBlocks(path, rate, handle.channels, blocks(), fallback)


# --------------------------------------------------------------------------- PyAV (ffmpeg)


def open_pyav(path: Path):
    """A PyAV container opened for reading, its audio streams, and PyAV's error type."""
    import av  # deferred: PyAV is only needed for formats libsndfile cannot read

    ffmpeg_error = getattr(av, "FFmpegError", None) or av.error.FFmpegError
    try:
        container = av.open(str(path), mode="r")
    except (ffmpeg_error, OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or one_line(error)
        raise AudioError(f"{path}: not an audio file ({reason})") from None
    audio = list(container.streams.audio)
    if not audio:
        container.close()
        raise AudioError(f"{path}: not an audio file (no audio stream)")
    if any(stream.codec_context is None for stream in audio):  # ffmpeg has no decoder for it
        container.close()
        raise AudioError(f"{path}: unsupported audio coding (no decoder for it)")
    return container, audio, ffmpeg_error


def _frame_to_array(frame) -> np.ndarray:
    """A decoded PyAV audio frame as float32 `(channels, samples)`."""
    array = frame.to_ndarray()
    channels = len(frame.layout.channels)
    if not frame.format.is_planar:
        array = array.reshape(-1, channels).T
    kind = frame.format.name.rstrip("p")
    if kind in ("flt", "dbl"):
        return array.astype(np.float32, copy=False)
    if kind == "u8":
        return ((array.astype(np.float32) - 128.0) / 128.0).astype(np.float32)
    scale = {"s16": 2.0**15, "s32": 2.0**31, "s64": 2.0**63}.get(kind)
    if scale is None:
        raise ValueError(f"unsupported sample format {frame.format.name}")
    return (array.astype(np.float64) / scale).astype(np.float32)


class _PyavDecoder:
    """One pass of ffmpeg over some audio streams of a file (`streams` indexes the file's
    audio streams; None: all), the one PyAV decoder behind every reader.

    `frames()` yields `(position in streams, float32 (channels, n))` in file order. A packet
    that does not decode is skipped (ffmpeg's own behaviour: junk between MP3 frames) and
    counted, to be warned about by `finish`, which also judges each stream's length against
    its header's and says how much of its end is AAC padding by its MP4 index."""

    def __init__(self, path: Path, streams: Optional[Sequence[int]]):
        self.path = path
        self.container, audio, self.ffmpeg_error = open_pyav(path)
        try:
            wanted = list(range(len(audio))) if streams is None else list(streams)
            for index in wanted:
                if not 0 <= index < len(audio):
                    raise AudioError(f"{path}: has {len(audio)} audio stream(s); stream {index} does not exist")
            self.streams = [audio[index] for index in wanted]
            self.rates = [s.codec_context.sample_rate or s.rate for s in self.streams]
            self.channels = [s.codec_context.channels for s in self.streams]
            for rate, channels in zip(self.rates, self.channels):
                if not rate:
                    raise AudioError(f"{path}: no sample rate")
                if not 1 <= channels <= _MAX_CHANNELS:
                    raise AudioError(f"{path}: unsupported channel count {channels}")
            self.indexed = [mp4_declared_samples(self.container, s, r) for s, r in zip(self.streams, self.rates)]
            self.expected = [container_declared(path, self.container, s, r) for s, r in zip(self.streams, self.rates)]
        except BaseException:
            self.container.close()
            raise
        self.damaged = 0
        self.first_damage = ""

    def frames(self) -> Iterator[Tuple[int, np.ndarray]]:
        positions = {stream.index: position for position, stream in enumerate(self.streams)}
        with self.container:
            try:
                for packet in self.container.demux(*self.streams):
                    position = positions.get(packet.stream.index)
                    if position is None:
                        continue
                    try:
                        decoded = packet.decode()
                    except self.ffmpeg_error as error:
                        self.damaged += 1
                        self.first_damage = self.first_damage or one_line(error)
                        continue
                    for frame in decoded:
                        if frame.sample_rate != self.rates[position]:
                            raise AudioError(f"{self.path}: sample rate changes inside the stream "
                                             f"({self.rates[position]} -> {frame.sample_rate} Hz)")
                        data = _frame_to_array(frame)
                        if data.shape[0] != self.channels[position]:
                            raise AudioError(f"{self.path}: channel count changes inside the stream")
                        yield position, data
            except AudioError:
                raise
            except (self.ffmpeg_error, OSError, ValueError, MemoryError) as error:
                raise AudioError(f"{self.path}: truncated or corrupt audio ({one_line(error)})") from None

    def keep(self, position: int, total: int) -> int:
        """How many of a stream's `total` decoded samples are audio: all but the AAC padding
        that its MP4 index leaves out (at most `_PADDING`)."""
        indexed = self.indexed[position]
        return indexed if indexed is not None and 0 < total - indexed <= _PADDING else total

    def finish(self, position: int, kept: int, allow_truncated: bool) -> None:
        declared, slack = self.expected[position]
        judge_length(self.path, kept, declared, self.rates[position], slack, allow_truncated)
        if self.damaged:
            log.warning("%s: %d damaged packet%s skipped (%s)", self.path, self.damaged, "s" * (self.damaged > 1),
                        self.first_damage)
            self.damaged = 0


def _pyav_blocks(path: Path, stream: int, allow_truncated: bool = False) -> AudioBlocks:
    """Blocks of one audio stream decoded by PyAV (see `_PyavDecoder`)."""
    decoder = _PyavDecoder(path, [stream])
    channels = decoder.channels[0]

    def blocks() -> Iterator[np.ndarray]:
        parts: List[np.ndarray] = [np.zeros((channels, 0), np.float32)]
        pending = emitted = 0
        for _, data in decoder.frames():
            parts.append(data)
            pending += data.shape[1]
            if pending > _PADDING + BLOCK:
                held = np.concatenate(parts, axis=1)
                cut = held.shape[1] - _PADDING
                emitted += cut
                yield held[:, :cut]
                parts, pending = [held[:, cut:]], _PADDING
        held = np.concatenate(parts, axis=1)
        kept = decoder.keep(0, emitted + held.shape[1])
        yield held[:, :max(0, kept - emitted)]
        decoder.finish(0, kept, allow_truncated)

    return AudioBlocks(path, decoder.rates[0], channels, blocks())


def _pyav_streams(path: Path) -> List[Tuple[np.ndarray, int]]:
    """Every audio stream of a file in one pass of PyAV: `(channels, samples)` and rate each."""
    decoder = _PyavDecoder(path, None)
    parts: Dict[int, List[np.ndarray]] = {position: [] for position in range(len(decoder.streams))}
    for position, data in decoder.frames():
        parts[position].append(data)
    found = []
    for position, blocks in parts.items():
        reader = AudioBlocks(path, decoder.rates[position], decoder.channels[position], iter(blocks))
        data = np.concatenate(list(reader), axis=1)
        data = data[:, :decoder.keep(position, data.shape[1])]
        decoder.finish(position, data.shape[1], allow_truncated=False)
        found.append((data, decoder.rates[position]))
    return found


# --------------------------------------------------------------------------- readers


def open_blocks(path: PathLike, stream: int = 0, block: int = BLOCK, allow_truncated: bool = False) -> AudioBlocks:
    """Open any audio file to read in order, block by block (see `AudioBlocks`).

    Raises AudioError for a missing, empty, cut-off, corrupt or non-audio file (some of
    these only while iterating). A file shorter than its header declares (a wav's data
    chunk past the end of the file, an Ogg stream without its last page, fewer samples
    than a wav, FLAC, MP3 Xing/VBRI, Matroska or MP4 header declares) is refused, the same
    way for every format, unless `allow_truncated`, which warns and reads what is there.
    """
    path = Path(path)
    if isinstance(stream, bool) or not isinstance(stream, int) or stream < 0:
        raise ValueError(f"stream must be a non-negative integer, got {stream!r}")
    check_readable(path)
    check_structure(path, allow_truncated)
    if stream == 0:
        found = _soundfile_blocks(path, block, allow_truncated)
        if found is not None:
            return found
    return _pyav_blocks(path, stream, allow_truncated)


def read_audio(path: PathLike, stream: int = 0, allow_truncated: bool = False) -> Tuple[torch.Tensor, int]:
    """Read an audio file as it is: float32 `(channels, samples)` and its sample rate.

    `stream` picks the audio stream of a multi-stream file (MUSDB18 `.stem.mp4`: 0 mixture,
    1 drums, 2 bass, 3 other, 4 vocals). Raises AudioError for a missing, empty, cut-off,
    corrupt or non-audio file, one without samples, or one with NaN/infinite samples
    (see `open_blocks` for `allow_truncated`).
    """
    def whole(reader: AudioBlocks) -> Tuple[torch.Tensor, int]:
        return torch.from_numpy(np.concatenate(list(reader), axis=1)), reader.samplerate

    return with_fallback(open_blocks(path, stream, allow_truncated=allow_truncated), whole)


def read_audio_streams(path: PathLike) -> Tuple[List[torch.Tensor], int]:
    """Every audio stream of a file, each float32 `(channels, samples)`, cut to the shortest.

    Streams at another rate than the first are resampled to it (with a warning). A file
    with one stream gives a list of one. The streams are decoded in one pass.
    """
    from .resample import resample

    path = Path(path)
    check_readable(path)
    check_structure(path, False)
    single = _soundfile_blocks(path, BLOCK)
    if single is not None:
        return with_fallback(single, lambda reader: (
            [torch.from_numpy(np.concatenate(list(reader), axis=1))], reader.samplerate))
    found = _pyav_streams(path)
    rate = found[0][1]
    tensors = []
    for index, (data, stream_rate) in enumerate(found):
        wav = torch.from_numpy(data)
        if stream_rate != rate:
            log.warning("%s: audio stream %d is at %d Hz, resampled to %d Hz like stream 0",
                        path, index, stream_rate, rate)
            wav = resample(wav, stream_rate, rate)
        tensors.append(wav)
    length = min(t.shape[-1] for t in tensors)
    if max(t.shape[-1] for t in tensors) != length:
        log.debug("%s: streams cut to the shortest, %d samples", path, length)
    return [t[:, :length].contiguous() for t in tensors], rate
