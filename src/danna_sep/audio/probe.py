"""What an audio file's header says, without decoding it: its length (for the disk check
before work) and the bit depth its samples carry (for the stems' default)."""

from __future__ import annotations

import re
from fractions import Fraction
from pathlib import Path
from typing import Optional, Tuple

import soundfile

from .chatter import decoder_chatter
from .common import AudioError, PathLike, check_readable
from .read import open_pyav


def declared_length(path: PathLike) -> Optional[Tuple[int, int]]:
    """(frames, sample rate) that an audio file's header declares or its decoder estimates,
    without decoding it; None where neither says (for the disk check before work)."""
    path = Path(path)
    try:
        with decoder_chatter(path):
            info = soundfile.info(str(path))
        if info.frames > 0 and info.samplerate > 0:
            return int(info.frames), int(info.samplerate)
    except (soundfile.SoundFileError, RuntimeError, TypeError, ValueError):
        pass
    try:
        container, audio, _ = open_pyav(path)
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


def source_bit_depth(path: PathLike) -> Optional[int]:
    """The bit depth an audio file's samples carry, as an output would keep it: 16 or 24 for
    PCM (8-bit counts as 16, 32-bit integers as 32), 32 for floating point; None where the
    coding has none (mp3, aac, vorbis, opus: lossy) or the file cannot be read."""
    try:
        check_readable(path)
        with decoder_chatter(Path(path)):
            subtype = soundfile.info(str(path)).subtype
    except AudioError:  # reading the file will say what is wrong with it
        return None
    except (soundfile.SoundFileError, RuntimeError, TypeError, ValueError):
        subtype = None
    if subtype is not None:
        return {"PCM_S8": 16, "PCM_U8": 16, "PCM_16": 16, "PCM_24": 24, "PCM_32": 32, "FLOAT": 32,
                "DOUBLE": 32, "ALAC_16": 16, "ALAC_20": 24, "ALAC_24": 24, "ALAC_32": 32}.get(subtype)
    try:
        container, audio, _ = open_pyav(Path(path))
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
