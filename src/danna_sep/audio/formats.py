"""The output formats: which one a target's name asks for, the bit depth it gets, the
container a long wav needs, and how large a file will be (for the disk check)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal, Optional

from .common import AUDIO_EXTENSIONS, AudioError, PathLike
from .resample import check_rate

#: Output formats of `write_audio`.
Format = Literal["wav", "flac", "mp3"]
BitDepth = Literal[16, 24, 32]

#: File extensions that name an output format; a target named so is written in it.
FORMAT_EXTENSIONS = {".wav": "wav", ".wave": "wav", ".flac": "flac", ".mp3": "mp3"}

WAV_SUBTYPES = {16: "PCM_16", 24: "PCM_24", 32: "FLOAT"}
FLAC_SUBTYPES = {16: "PCM_16", 24: "PCM_24"}
# Sample rates an MP3 stream can carry (MPEG-1, MPEG-2 and MPEG-2.5 layer III).
_MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)

#: The largest wav data chunk a 32-bit RIFF size field holds, less room for the header.
WAV_LIMIT = 0xFFFFFFFF - (1 << 20)


def mp3_rate(samplerate: int) -> int:
    """The MP3 sample rate to encode at: the input's when MP3 allows it, else a close one."""
    if samplerate in _MP3_RATES:
        return samplerate
    for base in (48000, 44100, 32000):
        if samplerate % base == 0:
            return base
    lower = [rate for rate in _MP3_RATES if rate <= samplerate]
    return lower[-1] if lower else _MP3_RATES[0]


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


def check_write_options(path: Path, format: str, bit_depth: int, mp3_bitrate: int, samplerate: int) -> None:
    """Options `AudioWriter` cannot write with: a ValueError (a caller's mistake), or an AudioError
    naming `path` (flac at 32 bits, which the user asked for)."""
    if format not in ("wav", "flac", "mp3"):
        raise ValueError(f"format must be 'wav', 'flac' or 'mp3', got {format!r}")
    if format == "wav" and bit_depth not in WAV_SUBTYPES:
        raise ValueError(f"wav bit depth must be 16, 24 or 32, got {bit_depth!r}")
    if format == "flac" and bit_depth not in FLAC_SUBTYPES:
        raise AudioError(f"{path}: flac holds 16 or 24 bit samples, not {bit_depth!r} (use wav for 32-bit float)")
    if format == "mp3" and (
        isinstance(mp3_bitrate, bool) or not isinstance(mp3_bitrate, int) or not 8 <= mp3_bitrate <= 320
    ):
        raise ValueError(f"mp3 bitrate must be an integer from 8 to 320 kbps, got {mp3_bitrate!r}")
    check_rate("samplerate", samplerate)
