"""Audio files in and out.

Reading turns any file into float32 `(channels, samples)`: soundfile (libsndfile) first,
for wav, flac, ogg, mp3 and friends; PyAV (ffmpeg, shipped inside the wheel) for the rest
(m4a, aac, mp4, MUSDB18 `.stem.mp4`, opus in webm, wma, ...). `load` then makes the
44.1 kHz stereo track the models expect. Writing is atomic: a hidden temporary file in the
target folder, renamed onto the final name only once complete.

Every problem with a file raises `AudioError` with one line that names the file.
"""

from __future__ import annotations

import logging
import contextlib
import errno
import hashlib
import math
import os
import re
import secrets
import stat
import struct
import sys
import threading
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, List, Literal, Optional, Sequence, Tuple, Union

import numpy as np
import soundfile
import soxr
import torch

from . import SAMPLERATE
from .errors import DannaSepError, DiskFullError, disk_full, is_no_space

if TYPE_CHECKING:  # pragma: no cover
    from .spool import Spool

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

#: Lower-case file extensions (with the leading dot, as `Path.suffix` gives them) that a
#: folder scan treats as audio. ".stem.mp4" is covered by ".mp4".
AUDIO_EXTENSIONS: frozenset = frozenset(
    {
        ".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".mp2", ".m4a", ".m4b",
        ".aac", ".mp4", ".aiff", ".aif", ".aifc", ".wma", ".webm", ".mka", ".caf", ".w64",
        ".rf64", ".au", ".snd", ".ac3", ".eac3", ".dts", ".ape", ".wv", ".alac", ".amr",
        ".3gp", ".mkv", ".mov",
    }
)

#: Output formats of `write_audio`.
Format = Literal["wav", "flac", "mp3"]
BitDepth = Literal[16, 24, 32]

#: File extensions that name an output format; a target named so is written in it.
FORMAT_EXTENSIONS = {".wav": "wav", ".wave": "wav", ".flac": "flac", ".mp3": "mp3"}

_WAV_SUBTYPES = {16: "PCM_16", 24: "PCM_24", 32: "FLOAT"}
_FLAC_SUBTYPES = {16: "PCM_16", 24: "PCM_24"}
# Sample rates an MP3 stream can carry (MPEG-1, MPEG-2 and MPEG-2.5 layer III).
_MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
# Formats whose frame count libsndfile reads from the header or an index, so that fewer
# frames decoded than declared means the file is cut short.
_EXACT_LENGTH_FORMATS = {"WAV", "WAVEX", "RF64", "W64", "AIFF", "CAF", "FLAC", "AU"}
# Compressed formats libsndfile decodes; where it gives up part way, PyAV tries.
_COMPRESSED_FORMATS = {"MP3", "OGG", "FLAC"}
# Declared data sizes that mean "length unknown, read to the end": what streaming writers put
# in a header they cannot go back to (ffmpeg 0xFFFFFFFF, sox 0x7FFFF000, arecord 0x7FFFFFFF,
# 0 for nothing yet). Any other size past the end of the file is a file cut short.
_UNKNOWN_SIZES = frozenset({0, 0xFFFFFFFF, 0x7FFFFFFF, 0x7FFFF000})
# ITU-R BS.775 weight of the centre and surround channels in a stereo downmix.
_ITU_WEIGHT = 1.0 / math.sqrt(2.0)


class AudioError(DannaSepError):
    """A problem with an audio file: one line that names the file and the problem."""


# --------------------------------------------------------------------------- helpers


def _one_line(error: BaseException) -> str:
    """An exception's message on a single line, without libsndfile's "Error opening ..." prefix."""
    text = " ".join(str(error).split())
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", text) or type(error).__name__
    if text.startswith("Error opening") and ": " in text:
        text = text.split(": ", 1)[1]
    return text


_FILE_KINDS = (
    (stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
    (stat.S_ISSOCK, "socket"),
)


def check_readable(path: PathLike) -> None:
    """Reject, as one line, what cannot be an audio file before anything opens it: a missing
    file, a symlink loop or one pointing nowhere, a folder, a FIFO or device (opening one
    could block or never end), an empty file or an unreadable one."""
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            raise AudioError(f"{path}: broken symlink (to {os.readlink(path)}, which does not exist)") from None
        raise AudioError(f"{path}: no such file") from None
    except NotADirectoryError:
        raise AudioError(f"{path}: no such file (a parent is not a folder)") from None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise AudioError(f"{path}: symlink loop") from None
        if error.errno == errno.ENAMETOOLONG:
            raise AudioError(f"{path}: name too long") from None
        raise AudioError(f"{path}: cannot read ({_one_line(error)})") from None
    if stat.S_ISDIR(info.st_mode):
        raise AudioError(f"{path}: is a folder, not an audio file")
    for test, kind in _FILE_KINDS:
        if test(info.st_mode):
            raise AudioError(f"{path}: not a regular file ({kind})")
    if info.st_size == 0:
        raise AudioError(f"{path}: empty file (0 bytes)")
    if not os.access(path, os.R_OK):
        raise AudioError(f"{path}: cannot read (permission denied)")


def _riff_chunks(path: Path, size: int) -> Iterator[Tuple[bytes, int, int, str]]:
    """(chunk id, declared size, offset of its data, byte order) of each chunk of a RIFF/RIFX
    wav or an AIFF file, in order, as far as the file goes; nothing for other files."""
    with path.open("rb") as handle:
        head = handle.read(12)
        if len(head) < 12:
            return
        if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
            endian = "<"
        elif (head[:4] == b"RIFX" and head[8:12] == b"WAVE") or (
                head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC")):
            endian = ">"
        else:  # RF64, W64, ...: sizes live elsewhere; not checked here
            return
        position = 12
        while position + 8 <= size:
            handle.seek(position)
            chunk = handle.read(8)
            if len(chunk) < 8:
                return
            (chunk_size,) = struct.unpack(endian + "I", chunk[4:])
            yield chunk[:4], chunk_size, position + 8, endian
            position += 8 + chunk_size + (chunk_size & 1)


def _declared_data_overrun(path: Path, size: int) -> Optional[str]:
    """For a RIFF/RIFX wav or an AIFF file: a message if the audio data chunk's declared
    size runs past the end of the file, else None.

    libsndfile quietly shortens such a file to the bytes present, so a cut-off download
    would otherwise read as a shorter song. Only the sizes that streaming writers put in
    when they cannot know the length (`_UNKNOWN_SIZES`) are taken as "read to the end".
    """
    try:
        for chunk_id, chunk_size, offset, _ in _riff_chunks(path, size):
            if chunk_id in (b"data", b"SSND"):
                present = size - offset
                if chunk_size in _UNKNOWN_SIZES or chunk_size <= present:
                    return None
                return f"header promises {chunk_size} bytes of audio data, only {present} present"
    except OSError:
        return None
    return None


def _header_channels(path: Path) -> Optional[int]:
    """The channel count a wav (fmt chunk) or AIFF (COMM chunk) header declares, or None."""
    try:
        size = path.stat().st_size
        for chunk_id, _, offset, endian in _riff_chunks(path, size):
            if chunk_id in (b"fmt ", b"COMM"):
                with path.open("rb") as handle:
                    handle.seek(offset + (2 if chunk_id == b"fmt " else 0))
                    raw = handle.read(2)
                return struct.unpack(endian + "H", raw)[0] if len(raw) == 2 else None
    except OSError:
        return None
    return None


def _mp3_declared_samples(path: Path) -> Optional[Tuple[int, int]]:
    """(samples, rate) an MP3's Xing/Info or VBRI header declares (less the encoder delay and
    padding of a LAME tag), or None for an MP3 without one (its length is only an estimate
    from the bitrate) or any other file."""
    try:
        with path.open("rb") as handle:
            head = handle.read(10)
            start = 0
            if len(head) == 10 and head[:3] == b"ID3":  # skip an ID3v2 tag (syncsafe size)
                start = 10 + ((head[6] & 0x7F) << 21 | (head[7] & 0x7F) << 14 | (head[8] & 0x7F) << 7
                              | (head[9] & 0x7F)) + (10 if head[5] & 0x10 else 0)
            handle.seek(start)
            data = handle.read(4096)
    except OSError:
        return None
    for i in range(len(data) - 3):  # the first frame header
        if data[i] != 0xFF or data[i + 1] & 0xE0 != 0xE0:
            continue
        version, layer = (data[i + 1] >> 3) & 3, (data[i + 1] >> 1) & 3
        rate_index, bitrate_index = (data[i + 2] >> 2) & 3, data[i + 2] >> 4
        if version != 1 and layer != 0 and rate_index != 3 and bitrate_index not in (0, 15):
            break
    else:
        return None
    frame = data[i:]
    mpeg1, mono = version == 3, data[i + 3] >> 6 == 3
    rate = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}[version][rate_index]
    per_frame = {3: 384, 2: 1152, 1: 1152 if mpeg1 else 576}[layer]
    at = 4 + ((17 if mono else 32) if mpeg1 else (9 if mono else 17))  # after the side information
    if frame[at:at + 4] in (b"Xing", b"Info") and len(frame) >= at + 12:
        (flags,) = struct.unpack(">I", frame[at + 4:at + 8])
        if not flags & 1:
            return None
        (frames,) = struct.unpack(">I", frame[at + 8:at + 12])
        tag = at + 8 + 4 * bool(flags & 1) + 4 * bool(flags & 2) + 100 * bool(flags & 4) + 4 * bool(flags & 8)
        trim = 0
        if len(frame) >= tag + 24 and frame[tag:tag + 4].isalnum():  # a LAME tag: "LAME3.100", "Lavc61.3"
            gap = frame[tag + 21:tag + 24]
            trim = (gap[0] << 4 | gap[1] >> 4) + ((gap[1] & 0xF) << 8 | gap[2])
        return max(0, frames * per_frame - trim), rate
    if frame[36:40] == b"VBRI" and len(frame) >= 54:
        (frames,) = struct.unpack(">I", frame[50:54])
        return frames * per_frame, rate
    return None


def _ogg_cut_short(path: Path, size: int) -> Optional[str]:
    """For an Ogg file (Vorbis, Opus, FLAC in Ogg): why it is cut short, if it is: a last page
    that runs past the end of the file, or a stream without its end-of-stream page. None for
    a whole Ogg file, one whose pages cannot be followed (left to the decoder), or any other file.

    Ogg has no length in its header; the decoders take the last page they find for the end,
    so half a file reads as a shorter song without this."""
    try:
        with path.open("rb") as handle:
            if handle.read(4) != b"OggS":
                return None
            position, begun, ended = 0, set(), set()
            while position < size:
                handle.seek(position)
                header = handle.read(27)
                if len(header) < 27:
                    return "the last page is cut off"
                if header[:4] != b"OggS":
                    return None  # junk between pages: the decoder decides
                flags, (serial,), count = header[5], struct.unpack("<I", header[14:18]), header[26]
                lacing = handle.read(count)
                if len(lacing) < count:
                    return "the last page is cut off"
                position += 27 + count + sum(lacing)
                if position > size:
                    return "the last page is cut off"
                if flags & 2:
                    begun.add(serial)
                if flags & 4:
                    ended.add(serial)
    except OSError:
        return None
    return "the stream stops without its end page" if begun - ended else None


def _finish(path: Path, data: np.ndarray) -> torch.Tensor:
    """Checks shared by every reader on float32 `(channels, samples)` data."""
    if data.ndim != 2 or data.shape[1] == 0 or data.shape[0] == 0:
        raise AudioError(f"{path}: no samples")
    if not np.isfinite(data).all():
        raise AudioError(f"{path}: contains NaN or infinite samples")
    return torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))


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


def _declared_samples(container, stream, rate: int) -> Optional[int]:
    """Length promised by an MP4/MOV index (edit list), used to drop the AAC padding that
    ffmpeg leaves at the end. None where the container's durations are only estimates."""
    if "mp4" not in container.format.name and "mov" not in container.format.name:
        return None
    if not stream.duration or stream.time_base is None:
        return None
    return int(round(Fraction(stream.duration) * stream.time_base * rate))


def _open_pyav(path: Path):
    """A PyAV container opened for reading, its audio streams, and PyAV's error type."""
    import av  # deferred: PyAV is only needed for formats libsndfile cannot read

    ffmpeg_error = getattr(av, "FFmpegError", None) or av.error.FFmpegError
    try:
        container = av.open(str(path), mode="r")
    except (ffmpeg_error, OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or _one_line(error)
        raise AudioError(f"{path}: not an audio file ({reason})") from None
    audio = list(container.streams.audio)
    if not audio:
        container.close()
        raise AudioError(f"{path}: not an audio file (no audio stream)")
    if any(stream.codec_context is None for stream in audio):  # ffmpeg has no decoder for it
        container.close()
        raise AudioError(f"{path}: unsupported audio coding (no decoder for it)")
    return container, audio, ffmpeg_error


def _read_pyav(path: Path, streams: Optional[Sequence[int]]) -> List[Tuple[np.ndarray, int]]:
    """Decode audio streams with PyAV: one float32 `(channels, samples)` array and rate per
    requested audio stream (`streams` indexes the file's audio streams; None = all)."""
    container, audio, ffmpeg_error = _open_pyav(path)
    with container:
        wanted = list(range(len(audio))) if streams is None else list(streams)
        for index in wanted:
            if not 0 <= index < len(audio):
                raise AudioError(
                    f"{path}: has {len(audio)} audio stream(s); stream {index} does not exist"
                )
        chosen = [audio[index] for index in wanted]
        blocks: dict = {s.index: [] for s in chosen}
        rates: dict = {}
        try:
            for packet in container.demux(*chosen):
                for frame in packet.decode():
                    key = packet.stream.index
                    rate = rates.setdefault(key, frame.sample_rate)
                    if frame.sample_rate != rate:
                        raise AudioError(
                            f"{path}: sample rate changes inside stream {key} "
                            f"({rate} -> {frame.sample_rate} Hz)"
                        )
                    blocks[key].append(_frame_to_array(frame))
        except AudioError:
            raise
        except (ffmpeg_error, OSError, ValueError, MemoryError) as error:
            raise AudioError(f"{path}: truncated or corrupt audio ({_one_line(error)})") from None
        results = []
        for s in chosen:
            parts = blocks[s.index]
            if not parts:
                raise AudioError(f"{path}: no samples")
            channels = {p.shape[0] for p in parts}
            if len(channels) != 1:
                raise AudioError(f"{path}: channel count changes inside stream {s.index}")
            data = np.concatenate(parts, axis=1)
            rate = rates[s.index]
            declared = _declared_samples(container, s, rate)
            if declared is not None and 0 < data.shape[1] - declared <= 8192:
                data = data[:, :declared]
            results.append((data, rate))
    return results


# --------------------------------------------------------------------------- reading

BLOCK = 1 << 16  # frames per block when reading in pieces

# libsndfile's limit on channels; a header declaring none, or more, is refused by name.
_MAX_CHANNELS = 1024
# How much shorter than its header declares a lossy stream may decode (encoder delay and
# padding, a last partial frame): 4096 samples and a twentieth of a second.
_LOSSY_SLACK_SAMPLES = 4096
_LOSSY_SLACK_SECONDS = 0.05


def _lossy_slack(rate: int) -> int:
    return _LOSSY_SLACK_SAMPLES + int(rate * _LOSSY_SLACK_SECONDS)


def _truncated(path: Path, what: str, allow_truncated: bool) -> None:
    """A file cut short: refused as one line, or with `allow_truncated`, a warning."""
    if allow_truncated:
        log.warning("%s: %s; going on with what is there (--allow-truncated)", path, what)
        return
    raise AudioError(f"{path}: {what}; --allow-truncated reads what is there")


def _judge_length(path: Path, decoded: int, declared: Optional[int], rate: int, slack: int,
                  allow_truncated: bool) -> None:
    """The same judgement for every format: fewer samples decoded than the header declares
    (less `slack`) is a file cut short."""
    if declared is None or decoded >= declared - slack:
        return
    _truncated(path, f"truncated or corrupt audio (header declares {declared} samples, {declared / rate:.2f} s; "
                     f"{decoded} decoded, {decoded / rate:.2f} s)", allow_truncated)


def _structure_problem(path: Path) -> Optional[str]:
    """What the file's own structure says is missing, before any decoding: a wav or AIFF
    data chunk running past the end of the file, an Ogg stream without its last page."""
    size = path.stat().st_size
    return _declared_data_overrun(path, size) or _ogg_cut_short(path, size)


class _SwitchDecoder(AudioError):
    """libsndfile gave up part way through a compressed file: it is decoded again, from the
    start, by PyAV (ffmpeg), which may get through (MP3 with junk between frames). An
    AudioError for callers that do not switch."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: truncated or corrupt audio ({reason})")
        self.reason = reason


_CHATTER_LOCK = threading.Lock()
_chatter_sink: Optional[int] = None
_CHATTER_SAID: set = set()


def _chatter_fd() -> Optional[int]:
    """An in-memory file that takes what C libraries print, made once; None where the system
    has no memfd (then their lines reach stderr as they are)."""
    global _chatter_sink
    if _chatter_sink is None:
        try:
            _chatter_sink = os.memfd_create("danna-sep-decoder", os.MFD_CLOEXEC)
        except (AttributeError, OSError):
            return None
    return _chatter_sink


@contextlib.contextmanager
def _decoder_chatter(path: Path) -> Iterator[None]:
    """What C libraries print on the process's stderr while they work on `path` (libmpg123
    inside libsndfile: "Warning: Xing stream size off by more than 1% ...") goes to the log
    instead, at info level (so -q hides it), naming the file.

    The process's file descriptor 2 points elsewhere for the call; lines another thread
    writes meanwhile that are not the decoder's (a progress bar's redraw, a line of our own
    log) are passed on to stderr as they were."""
    sink = _chatter_fd()
    if sink is None:
        yield
        return
    with _CHATTER_LOCK:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError, AttributeError):  # no stderr to take over
            yield
            return
        os.dup2(sink, 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.lseek(sink, 0, os.SEEK_SET)
            chunks = []
            while True:
                chunk = os.read(sink, 1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
            os.lseek(sink, 0, os.SEEK_SET)
            os.ftruncate(sink, 0)
    text = b"".join(chunks).decode("utf-8", "replace")
    for line in text.split("\n"):
        if not line.strip():
            continue
        if "\r" in line or "\x1b" in line or line.startswith("danna-sep"):
            try:
                os.write(2, (line + "\n").encode("utf-8", "replace"))
            except OSError:
                pass
        elif (str(path), line.strip()) not in _CHATTER_SAID:  # the same line from each opening, once
            if len(_CHATTER_SAID) > 1000:
                _CHATTER_SAID.clear()
            _CHATTER_SAID.add((str(path), line.strip()))
            log.info("%s: decoder says: %s", path, line.strip())


def _flac_crc_failure(path: Path) -> Optional[float]:
    """Where (seconds) the first FLAC frame that fails its CRC lies, found by ffmpeg with CRC
    checks on: it drops such a frame, leaving a gap before the next good one. None where
    every frame passes, or only the last ones fail (a file cut short, judged by its length)."""
    try:
        import av  # deferred import

        ffmpeg_error = getattr(av, "FFmpegError", None) or av.error.FFmpegError
        container = av.open(str(path), mode="r")
    except Exception:  # noqa: BLE001 - only a diagnosis; the caller reports the file as corrupt either way
        return None
    with container:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        stream.codec_context.options = {"err_detect": "crccheck+explode"}
        rate, decoded, failed = stream.codec_context.sample_rate or 1, 0, None
        try:
            for packet in container.demux(stream):
                if packet.pts is not None and stream.time_base is not None:
                    start = int(round(Fraction(packet.pts) * stream.time_base * rate))
                    if start > decoded and packet.size:
                        return decoded / rate if failed is None else failed
                try:
                    frames = packet.decode()
                except ffmpeg_error:
                    failed = decoded / rate if failed is None else failed
                    continue
                if frames and failed is not None:
                    return failed
                decoded += sum(frame.samples for frame in frames)
        except (ffmpeg_error, OSError, ValueError):
            return None
    return None


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


def _with_fallback(reader: AudioBlocks, consume: "Callable[[AudioBlocks], object]"):
    """`consume(reader)`; when libsndfile gives up on a compressed file part way, `consume`
    starts again on PyAV's decoding of it."""
    try:
        return consume(reader)
    except _SwitchDecoder as switch:
        if reader.fallback is None:
            raise
        log.info("%s: libsndfile stops (%s); decoding it with ffmpeg instead", reader.path, switch.reason)
        return consume(reader.fallback())


def _soundfile_blocks(path: Path, block: int, allow_truncated: bool = False) -> Optional[AudioBlocks]:
    """Blocks decoded by libsndfile, or None when it does not recognise the format (the
    caller then tries PyAV). A recognised but cut-off or corrupt file raises AudioError."""
    try:
        with _decoder_chatter(path):
            handle = soundfile.SoundFile(str(path))
    except (soundfile.SoundFileError, RuntimeError, TypeError, ValueError) as error:
        channels = _header_channels(path)
        if channels is not None and not 1 <= channels <= _MAX_CHANNELS:
            raise AudioError(f"{path}: unsupported channel count {channels}") from None
        log.debug("%s: libsndfile cannot open it (%s); trying ffmpeg", path, _one_line(error))
        return None
    kind, rate = handle.format, handle.samplerate
    declared, slack = None, 0
    if kind in _EXACT_LENGTH_FORMATS:
        declared = handle.frames
    elif kind == "MP3":
        found = _mp3_declared_samples(path)
        if found is not None and found[1] == rate:
            declared, slack = found[0], _lossy_slack(rate)

    def blocks() -> Iterator[np.ndarray]:
        with handle:
            decoded = 0
            while True:
                try:
                    with _decoder_chatter(path) if kind == "MP3" else contextlib.nullcontext():
                        data = handle.read(block, dtype="float32", always_2d=True)
                except (soundfile.SoundFileError, RuntimeError, ValueError, MemoryError) as error:
                    reason = f"{_one_line(error)} at {decoded / rate:.2f} s"
                    if kind == "FLAC":
                        at = _flac_crc_failure(path)
                        if at is not None:
                            raise AudioError(f"{path}: corrupt FLAC (CRC): the frame at {at:.2f} s fails its check") from None
                    if kind in _COMPRESSED_FORMATS:
                        raise _SwitchDecoder(path, reason) from None
                    raise AudioError(f"{path}: truncated or corrupt audio ({reason})") from None
                if not len(data):
                    break
                decoded += len(data)
                yield data.T
            _judge_length(path, decoded, declared, rate, slack, allow_truncated)

    fallback = (lambda: _pyav_blocks(path, 0, allow_truncated)) if kind in _COMPRESSED_FORMATS else None
    return AudioBlocks(path, rate, handle.channels, blocks(), fallback)


def _container_declared(path: Path, container, stream, rate: int) -> Tuple[Optional[int], int]:
    """(samples declared, slack) by the container or stream header PyAV opened: an MP3's
    Xing/VBRI header, FLAC's STREAMINFO, a Matroska/WebM duration, an MP4 index; (None, 0)
    where the container only estimates its length (MP3 without Xing, ADTS AAC, Ogg)."""
    name = container.format.name
    if "mp3" in name.split(","):
        found = _mp3_declared_samples(path)
        return (found[0], _lossy_slack(rate)) if found is not None and found[1] == rate else (None, 0)
    if name == "flac" and stream.duration and stream.time_base is not None:
        return int(round(Fraction(stream.duration) * stream.time_base * rate)), 0
    if "matroska" in name and container.duration:
        return int(round(container.duration * rate / 1_000_000)), _lossy_slack(rate)
    indexed = _declared_samples(container, stream, rate)
    return (indexed, _lossy_slack(rate)) if indexed is not None else (None, 0)


def _pyav_blocks(path: Path, stream: int, allow_truncated: bool = False) -> AudioBlocks:
    """Blocks of one audio stream decoded by PyAV (ffmpeg). A packet that does not decode is
    skipped with a warning (ffmpeg's own behaviour: junk between MP3 frames), and the length
    then judged against the header's."""
    container, audio, ffmpeg_error = _open_pyav(path)
    if not 0 <= stream < len(audio):
        container.close()
        raise AudioError(f"{path}: has {len(audio)} audio stream(s); stream {stream} does not exist")
    chosen = audio[stream]
    rate = chosen.codec_context.sample_rate or chosen.rate
    channels = chosen.codec_context.channels
    if not rate or not 1 <= channels <= _MAX_CHANNELS:
        container.close()
        raise AudioError(f"{path}: unsupported channel count {channels}" if rate else f"{path}: no sample rate")
    declared = _declared_samples(container, chosen, rate)
    expected, slack = _container_declared(path, container, chosen, rate)

    def blocks() -> Iterator[np.ndarray]:
        # The last 8192 samples are held back: an MP4 index may say they are AAC padding.
        parts: List[np.ndarray] = [np.zeros((channels, 0), np.float32)]
        pending = emitted = damaged = 0
        first_damage = ""
        with container:
            try:
                for packet in container.demux(chosen):
                    try:
                        frames = packet.decode()
                    except ffmpeg_error as error:
                        damaged += 1
                        first_damage = first_damage or _one_line(error)
                        continue
                    for frame in frames:
                        if frame.sample_rate != rate:
                            raise AudioError(
                                f"{path}: sample rate changes inside the stream ({rate} -> {frame.sample_rate} Hz)"
                            )
                        data = _frame_to_array(frame)
                        if data.shape[0] != channels:
                            raise AudioError(f"{path}: channel count changes inside the stream")
                        parts.append(data)
                        pending += data.shape[1]
                        if pending > 8192 + BLOCK:
                            held = np.concatenate(parts, axis=1)
                            cut = held.shape[1] - 8192
                            emitted += cut
                            yield held[:, :cut]
                            parts, pending = [held[:, cut:]], 8192
            except AudioError:
                raise
            except (ffmpeg_error, OSError, ValueError, MemoryError) as error:
                raise AudioError(f"{path}: truncated or corrupt audio ({_one_line(error)})") from None
        held = np.concatenate(parts, axis=1)
        total = emitted + held.shape[1]
        if declared is not None and 0 < total - declared <= 8192:
            held = held[:, : max(0, declared - emitted)]
        yield held
        _judge_length(path, emitted + held.shape[1], expected, rate, slack, allow_truncated)
        if damaged:
            log.warning("%s: %d damaged packet%s skipped (%s)", path, damaged, "s" * (damaged > 1), first_damage)

    return AudioBlocks(path, rate, channels, blocks())


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
    problem = _structure_problem(path)
    if problem is not None:
        _truncated(path, f"truncated or corrupt audio ({problem})", allow_truncated)
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

    return _with_fallback(open_blocks(path, stream, allow_truncated=allow_truncated), whole)


def read_audio_streams(path: PathLike) -> Tuple[List[torch.Tensor], int]:
    """Every audio stream of a file, each float32 `(channels, samples)`, cut to the shortest.

    Streams at another rate than the first are resampled to it (with a warning). A file
    with one stream gives a list of one.
    """
    path = Path(path)
    check_readable(path)
    problem = _structure_problem(path)
    if problem is not None:
        _truncated(path, f"truncated or corrupt audio ({problem})", False)
    single = _soundfile_blocks(path, BLOCK)
    if single is not None:
        return _with_fallback(single, lambda reader: (
            [torch.from_numpy(np.concatenate(list(reader), axis=1))], reader.samplerate))
    found = _read_pyav(path, None)
    rate = found[0][1]
    tensors = []
    for index, (data, stream_rate) in enumerate(found):
        wav = _finish(path, data)
        if stream_rate != rate:
            log.warning(
                "%s: audio stream %d is at %d Hz, resampled to %d Hz like stream 0",
                path, index, stream_rate, rate,
            )
            wav = resample(wav, stream_rate, rate)
        tensors.append(wav)
    length = min(t.shape[-1] for t in tensors)
    if max(t.shape[-1] for t in tensors) != length:
        log.debug("%s: streams cut to the shortest, %d samples", path, length)
    return [t[:, :length].contiguous() for t in tensors], rate


def downmix(wav: torch.Tensor, channels: int = 2) -> torch.Tensor:
    """`(in_channels, samples)` to `(channels, samples)` with channels 1 or 2.

    Mono is copied to both sides. Six channels are taken as 5.1 in the WAV/SMPTE/ffmpeg
    order (FL, FR, FC, LFE, BL, BR) and folded down as ITU-R BS.775 (centre and surrounds
    at -3 dB, LFE dropped), scaled down only if that would exceed full scale. Any other
    count above two is averaged.
    """
    if channels not in (1, 2):
        raise ValueError(f"channels must be 1 or 2, got {channels}")
    count = wav.shape[0]
    if count == channels:
        return wav
    if count == 1:
        return wav.expand(channels, -1).contiguous()
    if count == 2 or channels == 1 and count != 6:
        mono = wav.mean(dim=0, keepdim=True)
        return mono if channels == 1 else mono.expand(2, -1).contiguous()
    if count == 6:
        front_l, front_r, centre, _lfe, back_l, back_r = wav
        left = front_l + _ITU_WEIGHT * (centre + back_l)
        right = front_r + _ITU_WEIGHT * (centre + back_r)
        out = torch.stack([left, right])
        peak = float(out.abs().max()) if out.numel() else 0.0
        if peak > 1.0:
            out = out / peak
        return out if channels == 2 else out.mean(dim=0, keepdim=True)
    mono = wav.mean(dim=0, keepdim=True)
    return mono.expand(2, -1).contiguous()


def load(
    path: PathLike, samplerate: int = SAMPLERATE, channels: int = 2, allow_truncated: bool = False
) -> Tuple[torch.Tensor, int]:
    """Read any audio file for separation: float32 `(channels, samples)` at `samplerate`,
    plus the file's ORIGINAL sample rate (to write the stems back at it).

    Mono is duplicated; more channels are downmixed (see `downmix`) with a warning. A file
    cut short is refused unless `allow_truncated` (see `open_blocks`).
    """
    if channels not in (1, 2):
        raise ValueError(f"channels must be 1 or 2, got {channels}")
    wav, rate = read_audio(path, allow_truncated=allow_truncated)
    count = wav.shape[0]
    if count > 2:
        how = "ITU-R BS.775 5.1 downmix, LFE dropped" if count == 6 else "channels averaged"
        log.warning("%s: %d channels downmixed to %s (%s)", path, count,
                    "stereo" if channels == 2 else "mono", how)
    wav = downmix(wav, channels)
    if rate != samplerate:
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
    from .spool import Spool

    if channels not in (1, 2):
        raise ValueError(f"channels must be 1 or 2, got {channels}")

    def spooled(reader: AudioBlocks) -> Tuple["Spool", int, int]:
        if reader.channels > 2:
            how = "ITU-R BS.775 5.1 downmix, LFE dropped" if reader.channels == 6 else "channels averaged"
            log.warning("%s: %d channels downmixed to %s (%s)", path, reader.channels,
                        "stereo" if channels == 2 else "mono", how)
        resampler = None
        if reader.samplerate != samplerate:
            resampler = soxr.ResampleStream(reader.samplerate, samplerate, channels, dtype="float32", quality="HQ")
        spool = Spool(channels, directory, dtype=dtype)
        try:
            for block in reader:
                mixed = downmix(torch.from_numpy(block), channels).numpy()
                if resampler is not None:
                    mixed = resampler.resample_chunk(np.ascontiguousarray(mixed.T), last=False).T
                if mixed.shape[1]:
                    spool.append(mixed)
            if resampler is not None:
                tail = resampler.resample_chunk(np.zeros((0, channels), np.float32), last=True).T
                if tail.shape[1]:
                    spool.append(tail)
            if spool.length == 0:
                raise AudioError(f"{path}: no samples")
        except BaseException:
            spool.close()
            raise
        return spool, reader.samplerate, reader.frames_read

    return _with_fallback(open_blocks(path, allow_truncated=allow_truncated), spooled)


def resample(wav: torch.Tensor, from_rate: int, to_rate: int) -> torch.Tensor:
    """Resample `(..., samples)` (normally `(channels, samples)`) with soxr, high quality.

    Returns float32 `(..., round(samples * to_rate / from_rate))` on the input's device; the
    input itself when the rates are equal. The input is never modified.
    """
    for name, value in (("from_rate", from_rate), ("to_rate", to_rate)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if from_rate == to_rate:
        return wav
    lead, samples = wav.shape[:-1], wav.shape[-1]
    flat = wav.detach().to("cpu", torch.float32).reshape(-1, samples)
    if samples == 0 or flat.shape[0] == 0:
        length = round(samples * to_rate / from_rate)
        return torch.zeros(lead + (length,), dtype=torch.float32, device=wav.device)
    frames = np.ascontiguousarray(flat.numpy().T)  # soxr wants (samples, channels)
    out = soxr.resample(frames, int(from_rate), int(to_rate), quality="HQ")
    result = torch.from_numpy(np.ascontiguousarray(out.T, dtype=np.float32))
    return result.reshape(lead + (result.shape[-1],)).to(wav.device)


# --------------------------------------------------------------------------- writing


def is_audio_file(path: PathLike) -> bool:
    """True when the extension is in AUDIO_EXTENSIONS (".stem.mp4" counts). Hidden names
    (leading dot: macOS "._x.wav" forks, our own temporary files) never count. The file
    system is not consulted."""
    name = Path(path).name
    return not name.startswith(".") and Path(name).suffix.lower() in AUDIO_EXTENSIONS


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


def _quantise(frames: np.ndarray, bits: int) -> np.ndarray:
    """float `(samples, channels)` to integers for `bits`-bit PCM: scaled by 2**(bits-1),
    rounded and clamped (so +1.0 becomes the largest code, nothing wraps). 24-bit codes
    sit in the top of int32, as libsndfile expects."""
    if bits == 16:
        scaled = np.rint(np.clip(frames, -1.0, 1.0) * 32768.0)
        return np.clip(scaled, -32768, 32767).astype(np.int16)
    scaled = np.rint(np.clip(frames.astype(np.float64), -1.0, 1.0) * 8388608.0)
    return (np.clip(scaled, -8388608, 8388607).astype(np.int32) << 8).astype(np.int32)


def _mp3_rate(samplerate: int) -> int:
    """The MP3 sample rate to encode at: the input's when MP3 allows it, else a close one."""
    if samplerate in _MP3_RATES:
        return samplerate
    for base in (48000, 44100, 32000):
        if samplerate % base == 0:
            return base
    lower = [rate for rate in _MP3_RATES if rate <= samplerate]
    return lower[-1] if lower else _MP3_RATES[0]


def _write_errors(kind: str) -> tuple:
    """Exception types an encoder raises for a failed write (not programming errors)."""
    errors: tuple = (OSError, RuntimeError, ValueError, soundfile.SoundFileError)
    if kind == "mp3":
        import av  # deferred import

        errors += (getattr(av, "FFmpegError", None) or av.error.FFmpegError,)
    return errors


def name_max(folder: PathLike) -> int:
    """The longest file name (bytes) the file system of `folder`, or of its nearest existing
    ancestor, takes (255 on most)."""
    for candidate in [Path(folder), *Path(folder).parents]:
        try:
            return int(os.pathconf(candidate, "PC_NAME_MAX"))
        except (OSError, ValueError):
            continue
    return 255


def long_name(path: PathLike) -> Optional[str]:
    """"name too long (...)" when a part of `path` is longer than its file system takes, else None."""
    path = Path(path)
    for part, folder in zip(reversed(path.parts), [path.parent, *path.parent.parents]):
        size, limit = len(os.fsencode(part)), name_max(folder)
        if size > limit:
            return f"name too long ({size} bytes in {part[:24]}..., at most {limit} here)"
    return None


def _space_problem(folder: Path, error: BaseException) -> Optional[Exception]:
    """The error to raise for a write into `folder` that failed for want of space or because
    the file system is read-only, or None. Encoders that hide the system's error (libsndfile
    says "System error.") are judged by the space left."""
    if is_no_space(error):
        return disk_full(folder)
    if isinstance(error, OSError) and error.errno == errno.EROFS:
        return AudioError(f"{folder}: read-only file system")
    if isinstance(error, OSError) and error.errno == errno.ENAMETOOLONG:
        return AudioError(f"{folder}: name too long")
    if isinstance(error, OSError) and error.errno == errno.EFBIG:
        return AudioError(f"{folder}: file too large for this file system (use --format flac)")
    try:
        usage = os.statvfs(folder)
    except OSError:
        return None
    if usage.f_bavail * usage.f_frsize < _FULL_BELOW or (usage.f_files and usage.f_favail == 0):
        return disk_full(folder)
    return None


def _make_parent(path: Path, created: Optional[List[Path]] = None) -> Path:
    """The folder of `path`, made with its missing parents; those made are added to `created`
    (outermost first), so that a failed track can remove them again."""
    parent = path.parent
    if parent.is_dir():
        return parent
    try:
        for attempt in range(3):  # a failed track of another job may remove a shared empty folder meanwhile
            missing = [p for p in [parent, *parent.parents] if not p.exists() and not p.is_symlink()]
            try:
                for folder in reversed(missing):
                    try:
                        folder.mkdir()
                    except FileExistsError:
                        if folder.is_dir():  # made meanwhile by another job
                            continue
                        raise
                    if created is not None:
                        created.append(folder)
                break
            except FileNotFoundError:
                if attempt == 2:
                    raise
    except FileExistsError:
        if not parent.is_dir():
            return _make_parent_blocked(parent)
    except NotADirectoryError:
        return _make_parent_blocked(parent)
    except OSError as error:
        problem = _space_problem(parent, error) if error.errno != errno.EACCES else None
        if isinstance(problem, DiskFullError):
            raise problem from None
        if error.errno == errno.ENAMETOOLONG:
            raise AudioError(f"{parent}: cannot create the output folder (name too long)") from None
        raise AudioError(f"{parent}: cannot create the output folder ({_one_line(error)})") from None
    return parent


def _make_parent_blocked(parent: Path) -> Path:
    blocker = next((p for p in [parent, *parent.parents] if p.exists() and not p.is_dir()), None)
    reason = f"{blocker} is a file, not a folder" if blocker is not None else "a file is in the way"
    raise AudioError(f"{parent}: cannot create the output folder ({reason})")


def remove_empty_folders(folders: Sequence[Path]) -> None:
    """Remove those of `folders` that are empty, innermost first (a folder that holds anything stays)."""
    for folder in sorted(set(folders), key=lambda f: len(f.parts), reverse=True):
        try:
            folder.rmdir()
        except OSError:
            pass


# Our temporary files: ".NAME.tmp-PID-HOST4RAND4.EXT" (NAME shortened to "PREFIX~8HEX" where
# the whole would not fit in a file name). The pid lets a later run see the writer is gone;
# HOST, 4 hex digits of a hash of the machine's name, keeps a run from judging the pids of
# another machine or container writing into the same folder (a network share, a volume).
_TEMPORARY = re.compile(r"\..+\.tmp-(?P<pid>\d+)-(?P<host>[0-9a-f]{4})[0-9a-f]{4}\.[A-Za-z0-9]+")


def _host_tag() -> str:
    import socket

    return hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:4]
_FULL_BELOW = 1 << 20  # bytes free under which a failed write is taken for a full disk


def is_temporary_name(name: str) -> bool:
    """True for the name of one of our temporary files (".NAME.tmp-PID-8HEX.EXT")."""
    return _TEMPORARY.fullmatch(name) is not None


def _process_is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # it exists, under another user
        return False
    return False


def remove_stale_temporaries(folder: PathLike) -> List[Path]:
    """Delete the temporary files in `folder` left by writers of this machine that no longer
    run (killed while encoding: their names carry the writer's pid), say so, and return them."""
    folder = Path(folder)
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    removed = []
    for name in names:
        found = _TEMPORARY.fullmatch(name)
        if found is None:
            continue
        pid = int(found["pid"])
        if found["host"] == _host_tag() and pid != os.getpid() and _process_is_gone(pid):
            try:
                (folder / name).unlink()
            except OSError:
                continue
            removed.append(folder / name)
    if removed:
        pids = sorted({int(_TEMPORARY.fullmatch(p.name)["pid"]) for p in removed})
        log.info("%s: removed %d temporary file%s left by a killed run (process %s)", folder, len(removed),
                 "s" * (len(removed) > 1), ", ".join(map(str, pids)))
    return removed


def _temporary_name(name: str, extension: str, limit: int) -> str:
    """The hidden temporary name for target `name`: ".NAME.tmp-PID-8HEX.EXT", NAME cut to a
    prefix and a hash of the whole where that would be longer than `limit` bytes."""
    tail = f".tmp-{os.getpid()}-{_host_tag()}{secrets.token_hex(2)}.{extension}"
    whole = f".{name}{tail}"
    if len(os.fsencode(whole)) <= limit:
        return whole
    digest = hashlib.sha1(os.fsencode(name)).hexdigest()[:8]
    room = limit - len(os.fsencode(f".~{digest}{tail}"))
    prefix = os.fsencode(name)[:max(0, room)].decode("utf-8", "ignore") if room > 0 else ""
    return f".{prefix}~{digest}{tail}"


def _reserve_temporary(parent: Path, name: str, extension: str) -> Path:
    """Create an empty hidden temporary file next to the target (permissions from umask),
    after removing any that a killed writer left in the folder. Its name fits wherever
    the target's does."""
    remove_stale_temporaries(parent)
    limit = name_max(parent)
    for _ in range(16):
        candidate = parent / _temporary_name(name, extension, limit)
        try:
            fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        except OSError as error:
            problem = _space_problem(parent, error) if error.errno != errno.EACCES else None
            if problem is not None:
                raise problem from None
            raise AudioError(f"{parent}: folder is not writable ({_one_line(error)})") from None
        os.close(fd)
        return candidate
    raise AudioError(f"{parent}: cannot create a temporary file")


#: The largest wav data chunk a 32-bit RIFF size field holds, less room for the header.
WAV_LIMIT = 0xFFFFFFFF - (1 << 20)


def wav_container(frames: Optional[int], channels: int, bit_depth: int) -> str:
    """The container a wav of `frames` takes: "WAV", or "RF64" (EBU Tech 3306, the 64-bit
    wav) where the data would pass 4 GB, which a RIFF wav's 32-bit sizes cannot say. "WAV"
    when the length is not known."""
    if frames is None:
        return "WAV"
    return "RF64" if frames * channels * (bit_depth // 8) > WAV_LIMIT else "WAV"


def encoded_bytes(format: str, frames: int, channels: int, samplerate: int, bit_depth: Optional[int] = None,
                  mp3_bitrate: int = 320) -> int:
    """An upper bound on the size of a file of `frames` written as `format` (for the disk
    check before work): PCM's exact size for wav, as much for flac (which never needs more
    than a little over it), the bitrate's for mp3; headers included."""
    if format == "mp3":
        return int(math.ceil(mp3_bitrate * 1000 / 8 * frames / samplerate)) + (64 << 10)
    pcm = frames * channels * ((bit_depth or 16) // 8)
    return pcm + (pcm // 100 if format == "flac" else 0) + (8 << 10)


def declared_length(path: PathLike) -> Optional[Tuple[int, int]]:
    """(frames, sample rate) that an audio file's header declares or its decoder estimates,
    without decoding it; None where neither says (for the disk check before work)."""
    path = Path(path)
    try:
        with _decoder_chatter(path):
            info = soundfile.info(str(path))
        if info.frames > 0 and info.samplerate > 0:
            return int(info.frames), int(info.samplerate)
    except (soundfile.SoundFileError, RuntimeError, TypeError, ValueError):
        pass
    try:
        container, audio, _ = _open_pyav(path)
    except AudioError:
        return None
    with container:
        stream = audio[0]
        rate = stream.codec_context.sample_rate or stream.rate
        if not rate:
            return None
        if stream.duration and stream.time_base is not None:
            return int(round(Fraction(stream.duration) * stream.time_base * rate)), int(rate)
        if container.duration:
            return int(round(container.duration * rate / 1_000_000)), int(rate)
    return None


def output_format(path: PathLike, format: Optional[str] = None) -> str:
    """The format to write `path` in: the one its extension names (.wav, .flac, .mp3), else
    `format`, else wav. A `format` that the extension contradicts, or an audio extension
    that cannot be written (.ogg, .m4a, ...), is a ValueError: the file would lie about
    what it holds."""
    path = Path(path)
    suffix = path.suffix.lower()
    named = FORMAT_EXTENSIONS.get(suffix)
    if named is not None:
        if format is not None and format != named:
            raise ValueError(f"{path}: a {suffix} file cannot hold {format}; name it .{format} or write {named}")
        return named
    if suffix in AUDIO_EXTENSIONS:
        raise ValueError(f"{path}: cannot write {suffix} files; name it .wav, .flac or .mp3")
    return format or "wav"


def default_bit_depth(format: str, source: Optional[int]) -> Optional[int]:
    """The bit depth to write `format` at for a source of `source` bits (see `source_bit_depth`):
    the source's, as far as the format holds it (flac: at most 24), 16 for a source without
    one; None for mp3."""
    if format == "mp3":
        return None
    depth = source or 16
    return min(depth, 24) if format == "flac" else depth


def source_bit_depth(path: PathLike) -> Optional[int]:
    """The bit depth an audio file's samples carry, as an output would keep it: 16 or 24 for
    PCM (8-bit counts as 16, 32-bit integers as 32), 32 for floating point; None where the
    coding has none (mp3, aac, vorbis, opus: lossy) or the file cannot be read."""
    try:
        check_readable(path)
        with _decoder_chatter(Path(path)):
            subtype = soundfile.info(str(path)).subtype
    except AudioError:  # reading the file will say what is wrong with it
        return None
    except (soundfile.SoundFileError, RuntimeError, TypeError, ValueError):
        subtype = None
    if subtype is not None:
        return {"PCM_S8": 16, "PCM_U8": 16, "PCM_16": 16, "PCM_24": 24, "PCM_32": 32, "FLOAT": 32,
                "DOUBLE": 32, "ALAC_16": 16, "ALAC_20": 24, "ALAC_24": 24, "ALAC_32": 32}.get(subtype)
    try:
        container, audio, _ = _open_pyav(Path(path))
    except AudioError:  # reading the file will say what is wrong with it
        return None
    with container:
        codec = audio[0].codec_context
        # PyAV 14+ has no bits_per_raw_sample: a PCM codec's name says it (pcm_s24le), else
        # the decoded sample format's width (alac and flac decode 24-bit audio to s32).
        named = re.search(r"pcm_[su](\d+)", codec.name)
        bits = (getattr(codec, "bits_per_raw_sample", 0) or (int(named.group(1)) if named else 0)
                or (codec.format.bits if codec.format is not None else 0))
        if codec.name.startswith("pcm_f"):
            return 32
        if codec.name.startswith("pcm_") or codec.name in ("alac", "flac", "wavpack", "tta", "ape"):
            return 16 if bits <= 16 else 24 if bits <= 24 else 32
    return None


def _check_write_options(path: Path, format: str, bit_depth: int, mp3_bitrate: int, samplerate: int) -> None:
    if format not in ("wav", "flac", "mp3"):
        raise ValueError(f"format must be 'wav', 'flac' or 'mp3', got {format!r}")
    if format == "wav" and bit_depth not in _WAV_SUBTYPES:
        raise ValueError(f"wav bit depth must be 16, 24 or 32, got {bit_depth!r}")
    if format == "flac" and bit_depth not in _FLAC_SUBTYPES:
        raise AudioError(f"{path}: flac holds 16 or 24 bit samples, not {bit_depth!r} (use wav for 32-bit float)")
    if format == "mp3" and (
        isinstance(mp3_bitrate, bool) or not isinstance(mp3_bitrate, int) or not 8 <= mp3_bitrate <= 320
    ):
        raise ValueError(f"mp3 bitrate must be an integer from 8 to 320 kbps, got {mp3_bitrate!r}")
    if isinstance(samplerate, bool) or not isinstance(samplerate, (int, np.integer)) or samplerate <= 0:
        raise ValueError(f"samplerate must be a positive integer, got {samplerate!r}")


class AudioWriter:
    """Write one audio file block by block, atomically.

    The data goes to a hidden temporary file in the target folder; `commit()` flushes it
    and renames it onto the target, `abort()` (or leaving a `with` block by an exception,
    KeyboardInterrupt included) removes it. Blocks are float `(channels, samples)`
    tensors; PCM samples are clamped to [-1, 1] before quantisation. Formats: wav (PCM
    16/24 or 32-bit float), flac (16/24) and mp3 (constant bitrate; rates MP3 cannot carry
    are resampled to a close one with a warning); a target named .wav, .flac or .mp3 is
    written in that format (see `output_format`). An existing target is an AudioError
    unless `force`; missing folders are made, and listed in `created_folders`. A wav whose
    `frames` (when given) would pass 4 GB is written as RF64 (see `wav_container`), or
    always with `container="RF64"`. A full disk raises DiskFullError ("disk full: FOLDER").
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
    ):
        self.path = path = Path(path)
        format = output_format(path, format)
        _check_write_options(path, format, bit_depth, mp3_bitrate, samplerate)
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
        self._resampler = None
        self.container = (container or wav_container(frames, channels, bit_depth)) if format == "wav" else None
        if self.container == "RF64" and container is None:
            log.info("%s: over 4 GB, written as RF64, the wav for large files (some players read plain wav "
                     "only: --format flac)", path)
        self.created_folders: List[Path] = []
        parent = _make_parent(path, self.created_folders)
        self.temporary: Optional[Path] = None
        try:
            self.temporary = _reserve_temporary(parent, path.name, format)
            self._open(mp3_bitrate)
        except BaseException:
            self._remove_temporary()
            remove_empty_folders(self.created_folders)
            raise

    def _open(self, mp3_bitrate: int) -> None:
        assert self.temporary is not None
        try:
            if self.format == "mp3":
                import av  # deferred import

                rate = _mp3_rate(self.samplerate)
                if rate != self.samplerate:
                    log.warning("%s: MP3 cannot carry %d Hz; encoded at %d Hz", self.path, self.samplerate, rate)
                    self._resampler = soxr.ResampleStream(self.samplerate, rate, self.channels,
                                                          dtype="float32", quality="HQ")
                self._layout = "mono" if self.channels == 1 else "stereo"
                self._container = av.open(str(self.temporary), mode="w", format="mp3")
                self._stream = self._container.add_stream("libmp3lame", rate=rate, layout=self._layout)
                self._stream.bit_rate = int(mp3_bitrate) * 1000
                self._mp3_rate = rate
                self._pts = 0
            else:
                subtypes = _WAV_SUBTYPES if self.format == "wav" else _FLAC_SUBTYPES
                self._handle = soundfile.SoundFile(
                    str(self.temporary), mode="w", samplerate=self.samplerate, channels=self.channels,
                    subtype=subtypes[self.bit_depth], format=self.container or self.format.upper(),
                )
        except _write_errors(self.format) as error:
            raise self._failed(error) from None

    def _encode_mp3(self, frames: np.ndarray, final: bool) -> None:
        import av  # deferred import

        if self._resampler is not None:
            frames = self._resampler.resample_chunk(frames, last=final)
        if len(frames):
            planar = np.ascontiguousarray(np.clip(frames, -1.0, 1.0).T)
            frame = av.AudioFrame.from_ndarray(planar, format="fltp", layout=self._layout)
            frame.sample_rate = self._mp3_rate
            frame.pts = self._pts
            self._pts += planar.shape[1]
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
        if final:
            for packet in self._stream.encode(None):
                self._container.mux(packet)

    def write(self, wav: torch.Tensor) -> None:
        """Append float `(channels, samples)`."""
        if self.temporary is None:
            raise RuntimeError(f"{self.path}: writer already closed")
        frames = _as_frames(self.path, wav)
        if frames.shape[1] != self.channels:
            raise ValueError(f"{self.path}: expected {self.channels} channels, got {frames.shape[1]}")
        try:
            if self.format == "mp3":
                self._encode_mp3(frames, final=False)
            else:
                block = 1 << 18
                for start in range(0, len(frames), block):
                    chunk = frames[start:start + block]
                    self._handle.write(chunk if self.bit_depth == 32 else _quantise(chunk, self.bit_depth))
        except _write_errors(self.format) as error:
            self.abort()
            raise self._failed(error) from None
        self.frames_written += len(frames)

    def commit(self) -> Path:
        """Finish the file and move it onto the target name."""
        if self.temporary is None:
            raise RuntimeError(f"{self.path}: writer already closed")
        try:
            try:
                if self.format == "mp3":
                    self._encode_mp3(np.zeros((0, self.channels), np.float32), final=True)
                    self._container.close()
                else:
                    self._handle.close()
                fd = os.open(self.temporary, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(self.temporary, self.path)
            except _write_errors(self.format) as error:
                raise self._failed(error) from None
        except BaseException:
            self.abort()
            raise
        self.temporary = None
        log.debug("wrote %s (%s, %d Hz, %d channels)", self.path, self.format, self.samplerate, self.channels)
        return self.path

    def _failed(self, error: BaseException) -> Exception:
        """The one-line error for a failed write: "disk full: FOLDER" where that is why."""
        return _space_problem(self.path.parent, error) or AudioError(f"{self.path}: cannot write ({_one_line(error)})")

    def _remove_temporary(self) -> None:
        if self.temporary is None:
            return
        try:
            self.temporary.unlink()
        except FileNotFoundError:
            pass
        except OSError as error:  # pragma: no cover - only when the folder vanished or locked
            log.warning("%s: could not remove temporary file %s (%s)", self.path, self.temporary, error)
        self.temporary = None

    def abort(self) -> None:
        """Drop the temporary file, and the folders made for it if they are empty; the target
        is left as it was."""
        if self.temporary is None:
            return
        try:
            if self.format == "mp3":
                self._container.close()
            else:
                self._handle.close()
        except Exception:  # closing a half-written file may fail; it is deleted anyway
            pass
        self._remove_temporary()
        remove_empty_folders(self.created_folders)

    def __enter__(self) -> "AudioWriter":
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is not None:
            self.abort()
        elif self.temporary is not None:
            self.commit()


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
    _check_write_options(path, format, bit_depth, mp3_bitrate, samplerate)
    frames = _as_frames(path, wav)
    with AudioWriter(path, samplerate, frames.shape[1], format=format, bit_depth=bit_depth,
                     mp3_bitrate=mp3_bitrate, force=force) as writer:
        writer.write(wav)
    return path
