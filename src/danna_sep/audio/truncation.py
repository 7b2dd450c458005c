"""Whether a file is cut short, judged the same way for every format.

A file's own structure (a wav or AIFF data chunk running past the end of the file, an Ogg
stream without its last page) is read before decoding; after it, fewer samples decoded
than a header declares (wav, FLAC, MP3 Xing/VBRI, Matroska/WebM, MP4) less a lossy
codec's slack. Either is refused in one line unless `allow_truncated`, which warns.
"""

from __future__ import annotations

import logging
import struct
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Optional, Tuple

from .common import AudioError

log = logging.getLogger(__name__)

# Declared data sizes that mean "length unknown, read to the end": what streaming writers put
# in a header they cannot go back to (ffmpeg 0xFFFFFFFF, sox 0x7FFFF000, arecord 0x7FFFFFFF,
# 0 for nothing yet). Any other size past the end of the file is a file cut short.
_UNKNOWN_SIZES = frozenset({0, 0xFFFFFFFF, 0x7FFFFFFF, 0x7FFFF000})
# How much shorter than its header declares a lossy stream may decode (encoder delay and
# padding, a last partial frame): 4096 samples and a twentieth of a second.
_LOSSY_SLACK_SAMPLES = 4096
_LOSSY_SLACK_SECONDS = 0.05


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


def header_channels(path: Path) -> Optional[int]:
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


def mp3_declared_samples(path: Path) -> Optional[Tuple[int, int]]:
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


def structure_problem(path: Path) -> Optional[str]:
    """What the file's own structure says is missing, before any decoding: a wav or AIFF
    data chunk running past the end of the file, an Ogg stream without its last page."""
    size = path.stat().st_size
    return _declared_data_overrun(path, size) or _ogg_cut_short(path, size)


def lossy_slack(rate: int) -> int:
    return _LOSSY_SLACK_SAMPLES + int(rate * _LOSSY_SLACK_SECONDS)


def truncated(path: Path, what: str, allow_truncated: bool) -> None:
    """A file cut short: refused as one line, or with `allow_truncated`, a warning."""
    if allow_truncated:
        log.warning("%s: %s; going on with what is there (--allow-truncated)", path, what)
        return
    raise AudioError(f"{path}: {what}; --allow-truncated reads what is there")


def check_structure(path: Path, allow_truncated: bool) -> None:
    """`structure_problem`, refused or warned about (see `truncated`)."""
    problem = structure_problem(path)
    if problem is not None:
        truncated(path, f"truncated or corrupt audio ({problem})", allow_truncated)


def judge_length(path: Path, decoded: int, declared: Optional[int], rate: int, slack: int,
                 allow_truncated: bool) -> None:
    """The same judgement for every format: fewer samples decoded than the header declares
    (less `slack`) is a file cut short."""
    if declared is None or decoded >= declared - slack:
        return
    truncated(path, f"truncated or corrupt audio (header declares {declared} samples, {declared / rate:.2f} s; "
                    f"{decoded} decoded, {decoded / rate:.2f} s)", allow_truncated)


def mp4_declared_samples(container, stream, rate: int) -> Optional[int]:
    """Length promised by an MP4/MOV index (edit list), used to drop the AAC padding that
    ffmpeg leaves at the end. None where the container's durations are only estimates."""
    if "mp4" not in container.format.name and "mov" not in container.format.name:
        return None
    if not stream.duration or stream.time_base is None:
        return None
    return int(round(Fraction(stream.duration) * stream.time_base * rate))


def container_declared(path: Path, container, stream, rate: int) -> Tuple[Optional[int], int]:
    """(samples declared, slack) by the container or stream header PyAV opened: an MP3's
    Xing/VBRI header, FLAC's STREAMINFO, a Matroska/WebM duration, an MP4 index; (None, 0)
    where the container only estimates its length (MP3 without Xing, ADTS AAC, Ogg)."""
    name = container.format.name
    if "mp3" in name.split(","):
        found = mp3_declared_samples(path)
        return (found[0], lossy_slack(rate)) if found is not None and found[1] == rate else (None, 0)
    if name == "flac" and stream.duration and stream.time_base is not None:
        return int(round(Fraction(stream.duration) * stream.time_base * rate)), 0
    if "matroska" in name and container.duration:
        return int(round(container.duration * rate / 1_000_000)), lossy_slack(rate)
    indexed = mp4_declared_samples(container, stream, rate)
    return (indexed, lossy_slack(rate)) if indexed is not None else (None, 0)


def flac_crc_failure(path: Path) -> Optional[float]:
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

