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
import math
import os
import re
import secrets
import struct
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, List, Literal, Optional, Sequence, Tuple, Union

import numpy as np
import soundfile
import soxr
import torch

from . import SAMPLERATE
from .errors import DannaSepError

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
# A declared data size at or above this is a "length unknown" placeholder left by
# streaming writers (ffmpeg writes 0xFFFFFFFF, sox 0x7FFFF000), not a promise.
_UNKNOWN_SIZE = 0x7FFF0000
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


def _check_readable(path: Path) -> None:
    """Reject a missing file, a folder, an empty file or an unreadable one before decoding."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise AudioError(f"{path}: no such file") from None
    except NotADirectoryError:
        raise AudioError(f"{path}: no such file (a parent is not a folder)") from None
    except OSError as error:
        raise AudioError(f"{path}: cannot read ({_one_line(error)})") from None
    if path.is_dir():
        raise AudioError(f"{path}: is a folder, not an audio file")
    if info.st_size == 0:
        raise AudioError(f"{path}: empty file (0 bytes)")
    if not os.access(path, os.R_OK):
        raise AudioError(f"{path}: cannot read (permission denied)")


def _declared_data_overrun(path: Path, size: int) -> Optional[str]:
    """For a RIFF/RIFX wav or an AIFF file: a message if the audio data chunk's declared
    size runs past the end of the file, else None.

    libsndfile quietly shortens such a file to the bytes present, so a cut-off download
    would otherwise read as a shorter song.
    """
    try:
        with path.open("rb") as handle:
            head = handle.read(12)
            if len(head) < 12:
                return None
            if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
                endian, target = "<", b"data"
            elif head[:4] == b"RIFX" and head[8:12] == b"WAVE":
                endian, target = ">", b"data"
            elif head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
                endian, target = ">", b"SSND"
            else:  # RF64, W64, ...: sizes live elsewhere; not checked here
                return None
            position = 12
            while position + 8 <= size:
                handle.seek(position)
                chunk = handle.read(8)
                if len(chunk) < 8:
                    return None
                chunk_id = chunk[:4]
                (chunk_size,) = struct.unpack(endian + "I", chunk[4:])
                if chunk_id == target:
                    if chunk_size == 0 or chunk_size >= _UNKNOWN_SIZE:
                        return None
                    present = size - (position + 8)
                    if chunk_size > present:
                        return (
                            f"header promises {chunk_size} bytes of audio data, "
                            f"only {present} present"
                        )
                    return None
                position += 8 + chunk_size + (chunk_size & 1)
    except OSError:
        return None
    return None


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


class AudioBlocks:
    """An audio file opened for reading in order, block by block.

    `samplerate` and `channels` are known on opening; iterating yields float32
    `(channels, n)` numpy blocks, each checked (NaN and infinite samples, a file cut
    short or corrupt) as it is decoded, so no more than a block is held at a time.
    Iterate once.
    """

    def __init__(self, path: Path, samplerate: int, channels: int, blocks: Iterator[np.ndarray]):
        self.path = path
        self.samplerate = samplerate
        self.channels = channels
        self._blocks = blocks
        self.frames_read = 0

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


def _soundfile_blocks(path: Path, block: int) -> Optional[AudioBlocks]:
    """Blocks decoded by libsndfile, or None when it does not recognise the format (the
    caller then tries PyAV). A recognised but cut-off or corrupt file raises AudioError."""
    try:
        handle = soundfile.SoundFile(str(path))
    except (soundfile.SoundFileError, RuntimeError, TypeError, ValueError) as error:
        log.debug("%s: libsndfile cannot open it (%s); trying ffmpeg", path, _one_line(error))
        return None
    if handle.format in ("WAV", "WAVEX", "AIFF"):
        overrun = _declared_data_overrun(path, path.stat().st_size)
        if overrun:
            handle.close()
            raise AudioError(f"{path}: truncated or corrupt audio ({overrun})")

    def blocks() -> Iterator[np.ndarray]:
        with handle:
            declared, decoded = handle.frames, 0
            while True:
                try:
                    data = handle.read(block, dtype="float32", always_2d=True)
                except (soundfile.SoundFileError, RuntimeError, ValueError, MemoryError) as error:
                    raise AudioError(f"{path}: truncated or corrupt audio ({_one_line(error)})") from None
                if not len(data):
                    break
                decoded += len(data)
                yield data.T
            if handle.format in _EXACT_LENGTH_FORMATS and decoded < declared:
                raise AudioError(
                    f"{path}: truncated or corrupt audio "
                    f"(header declares {declared} frames, only {decoded} decoded)"
                )

    return AudioBlocks(path, handle.samplerate, handle.channels, blocks())


def _pyav_blocks(path: Path, stream: int) -> AudioBlocks:
    """Blocks of one audio stream decoded by PyAV (ffmpeg)."""
    container, audio, ffmpeg_error = _open_pyav(path)
    if not 0 <= stream < len(audio):
        container.close()
        raise AudioError(f"{path}: has {len(audio)} audio stream(s); stream {stream} does not exist")
    chosen = audio[stream]
    rate = chosen.codec_context.sample_rate or chosen.rate
    channels = chosen.codec_context.channels
    declared = _declared_samples(container, chosen, rate)

    def blocks() -> Iterator[np.ndarray]:
        # The last 8192 samples are held back: an MP4 index may say they are AAC padding.
        parts: List[np.ndarray] = [np.zeros((channels, 0), np.float32)]
        pending = emitted = 0
        with container:
            try:
                for packet in container.demux(chosen):
                    for frame in packet.decode():
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

    return AudioBlocks(path, rate, channels, blocks())


def open_blocks(path: PathLike, stream: int = 0, block: int = BLOCK) -> AudioBlocks:
    """Open any audio file to read in order, block by block (see `AudioBlocks`).

    Raises AudioError for a missing, empty, cut-off, corrupt or non-audio file (some of
    these only while iterating).
    """
    path = Path(path)
    if isinstance(stream, bool) or not isinstance(stream, int) or stream < 0:
        raise ValueError(f"stream must be a non-negative integer, got {stream!r}")
    _check_readable(path)
    if stream == 0:
        found = _soundfile_blocks(path, block)
        if found is not None:
            return found
    return _pyav_blocks(path, stream)


def read_audio(path: PathLike, stream: int = 0) -> Tuple[torch.Tensor, int]:
    """Read an audio file as it is: float32 `(channels, samples)` and its sample rate.

    `stream` picks the audio stream of a multi-stream file (MUSDB18 `.stem.mp4`: 0 mixture,
    1 drums, 2 bass, 3 other, 4 vocals). Raises AudioError for a missing, empty, cut-off,
    corrupt or non-audio file, one without samples, or one with NaN/infinite samples.
    """
    reader = open_blocks(path, stream)
    data = np.concatenate(list(reader), axis=1)
    return torch.from_numpy(data), reader.samplerate


def read_audio_streams(path: PathLike) -> Tuple[List[torch.Tensor], int]:
    """Every audio stream of a file, each float32 `(channels, samples)`, cut to the shortest.

    Streams at another rate than the first are resampled to it (with a warning). A file
    with one stream gives a list of one.
    """
    path = Path(path)
    _check_readable(path)
    single = _soundfile_blocks(path, BLOCK)
    if single is not None:
        return [torch.from_numpy(np.concatenate(list(single), axis=1))], single.samplerate
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
    path: PathLike, samplerate: int = SAMPLERATE, channels: int = 2
) -> Tuple[torch.Tensor, int]:
    """Read any audio file for separation: float32 `(channels, samples)` at `samplerate`,
    plus the file's ORIGINAL sample rate (to write the stems back at it).

    Mono is duplicated; more channels are downmixed (see `downmix`) with a warning.
    """
    if channels not in (1, 2):
        raise ValueError(f"channels must be 1 or 2, got {channels}")
    wav, rate = read_audio(path)
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
    path: PathLike, samplerate: int = SAMPLERATE, channels: int = 2, directory: Optional[str] = None
) -> Tuple["Spool", int, int]:
    """Like `load`, but block by block into a `Spool` on disk, so that memory does not
    grow with the track: returns the spool (float32 `(channels, samples)` at
    `samplerate`), the file's original rate and its original number of samples."""
    from .spool import Spool

    if channels not in (1, 2):
        raise ValueError(f"channels must be 1 or 2, got {channels}")
    reader = open_blocks(path)
    if reader.channels > 2:
        how = "ITU-R BS.775 5.1 downmix, LFE dropped" if reader.channels == 6 else "channels averaged"
        log.warning("%s: %d channels downmixed to %s (%s)", path, reader.channels,
                    "stereo" if channels == 2 else "mono", how)
    resampler = None
    if reader.samplerate != samplerate:
        resampler = soxr.ResampleStream(reader.samplerate, samplerate, channels, dtype="float32", quality="HQ")
    spool = Spool(channels, directory)
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


def _make_parent(path: Path) -> Path:
    parent = path.parent
    if parent.is_dir():
        return parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in [parent, *parent.parents] if p.exists() and not p.is_dir()), None)
        reason = f"{blocker} is a file, not a folder" if blocker is not None else "a file is in the way"
        raise AudioError(f"{parent}: cannot create the output folder ({reason})") from None
    except OSError as error:
        raise AudioError(f"{parent}: cannot create the output folder ({_one_line(error)})") from None
    return parent


def _process_is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # it exists, under another user
        return False
    return False


def _remove_stale_temporaries(parent: Path, name: str, extension: str) -> None:
    """Delete temporaries of `name` left by a process of this machine that no longer runs
    (killed while encoding): their names carry the writer's pid."""
    for leftover in parent.glob(f".{name}.tmp-*-*.{extension}"):
        pid = leftover.name[len(name) + 6:].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and _process_is_gone(int(pid)):
            log.info("removing %s, left by a killed run", leftover)
            try:
                leftover.unlink()
            except OSError:
                pass


def _reserve_temporary(parent: Path, name: str, extension: str) -> Path:
    """Create an empty hidden temporary file next to the target (permissions from umask),
    after removing any a killed writer of the same target left."""
    _remove_stale_temporaries(parent, name, extension)
    for _ in range(16):
        candidate = parent / f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}.{extension}"
        try:
            fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        except OSError as error:
            raise AudioError(f"{parent}: folder is not writable ({_one_line(error)})") from None
        os.close(fd)
        return candidate
    raise AudioError(f"{parent}: cannot create a temporary file")


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
        subtype = soundfile.info(str(path)).subtype
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
        bits = codec.bits_per_raw_sample or 0
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
    unless `force`; missing folders are made.
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
    ):
        self.path = path = Path(path)
        format = output_format(path, format)
        _check_write_options(path, format, bit_depth, mp3_bitrate, samplerate)
        if format == "mp3" and channels > 2:
            raise AudioError(f"{path}: mp3 holds 1 or 2 channels, got {channels}")
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
        parent = _make_parent(path)
        self.temporary: Optional[Path] = _reserve_temporary(parent, path.name, format)
        try:
            self._open(mp3_bitrate)
        except BaseException:
            self._remove_temporary()
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
                    subtype=subtypes[self.bit_depth], format=self.format.upper(),
                )
        except _write_errors(self.format) as error:
            raise AudioError(f"{self.path}: cannot write ({_one_line(error)})") from None

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
            raise AudioError(f"{self.path}: cannot write ({_one_line(error)})") from None
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
                raise AudioError(f"{self.path}: cannot write ({_one_line(error)})") from None
        except BaseException:
            self.abort()
            raise
        self.temporary = None
        log.debug("wrote %s (%s, %d Hz, %d channels)", self.path, self.format, self.samplerate, self.channels)
        return self.path

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
        """Drop the temporary file; the target is left as it was."""
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
