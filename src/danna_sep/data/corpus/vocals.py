"""Sung words: espeak-ng speaks each word, the WORLD vocoder sings it on the melody.

For each word of the lyrics espeak-ng (called as a program) writes a WAV; WORLD (pyworld)
splits it into a spectral envelope, an aperiodicity and an f0 track at 5 ms frames. A
note re-times the word's frames onto its duration (consonants at their natural speed,
the vowel held, the glide out of it kept short), replaces f0 with the note's pitch
(with a scoop into the note, glides between legato notes and delayed vibrato), and WORLD
resynthesises the phrase. Words are analysed once per process and voice.
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import logging
import math
import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import numpy as np
import soundfile
import soxr

from .compose import SungNote, VocalPlan
from ... import SAMPLERATE
from .render import CorpusError, DependencyError

log = logging.getLogger(__name__)

ESPEAK_RATE = 22050  # espeak-ng's output rate; WORLD works at it, then we resample
FRAME_MS = 5.0
ESPEAK_SPEED = 105  # words per minute: slow speech leaves long vowels to hold
_SILENT_POWER = 1e-12  # spectral envelope of frames between notes
_PHRASE_GAP = 0.3  # seconds: notes closer than this are synthesised in one piece

_pyworld = None


def _load_pyworld():
    """Import pyworld. Its package __init__ (0.3.5) imports pkg_resources only to read its own
    version, and setuptools >= 82 no longer has pkg_resources: then load the compiled
    module directly from the installed package, which is all this code uses."""
    global _pyworld
    if _pyworld is not None:
        return _pyworld
    try:
        import pyworld

        _pyworld = pyworld
        return _pyworld
    except ImportError as exc:
        if getattr(exc, "name", None) != "pkg_resources":
            raise DependencyError(f"pyworld is not usable ({exc}): pip install pyworld") from None
    spec = importlib.util.find_spec("pyworld")
    folder = list(spec.submodule_search_locations or []) if spec else []
    for directory in folder:
        for name in sorted(os.listdir(directory)):
            if name.startswith("pyworld.") and name.endswith((".so", ".pyd")):
                module_spec = importlib.util.spec_from_file_location("pyworld.pyworld", os.path.join(directory, name))
                module = importlib.util.module_from_spec(module_spec)
                module_spec.loader.exec_module(module)
                _pyworld = module
                return module
    raise DependencyError("pyworld: compiled module not found; reinstall with pip install pyworld")


def espeak_executable() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise DependencyError("espeak-ng: program not found (install the espeak-ng package)")
    return exe


def speak(word: str, voice: str) -> np.ndarray:
    """espeak-ng's rendition of `word`: float64 `(samples,)` at ESPEAK_RATE."""
    command = [espeak_executable(), "-v", voice, "-s", str(ESPEAK_SPEED), "--stdout", word]
    try:
        done = subprocess.run(command, capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CorpusError(f"espeak-ng failed on {word!r} with voice {voice}: {exc}") from None
    if done.returncode != 0 or not done.stdout:
        message = " ".join(done.stderr.decode("utf-8", "replace").split()) or f"exit status {done.returncode}"
        raise CorpusError(f"espeak-ng failed on {word!r} with voice {voice}: {message}")
    try:
        audio, rate = soundfile.read(io.BytesIO(done.stdout), dtype="float64", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError) as exc:
        raise CorpusError(f"espeak-ng output for {word!r} is not a WAV file: {exc}") from None
    if rate != ESPEAK_RATE:
        audio = soxr.resample(audio, rate, ESPEAK_RATE)
    return np.ascontiguousarray(audio.mean(axis=1))


@dataclass(frozen=True)
class WordSound:
    """WORLD's parameters of one spoken word, trimmed of leading and trailing silence."""

    sp: np.ndarray  # (frames, bins) power spectral envelope
    ap: np.ndarray  # (frames, bins) aperiodicity, 0 periodic .. 1 noise
    voiced: np.ndarray  # (frames,) bool
    voiced_start: int  # first voiced frame
    voiced_end: int  # one past the last voiced frame
    nucleus: int  # the loudest voiced frame: the middle of the vowel

    @property
    def frames(self) -> int:
        return int(self.sp.shape[0])


_WORDS: Dict[Tuple[str, str], WordSound] = {}


def analyse(word: str, voice: str) -> WordSound:
    """WORLD analysis of espeak-ng speaking `word` (cached per process)."""
    key = (word, voice)
    if key in _WORDS:
        return _WORDS[key]
    pw = _load_pyworld()
    audio = speak(word, voice)
    hop = int(round(ESPEAK_RATE * FRAME_MS / 1000))
    usable = len(audio) // hop * hop
    energy = (audio[:usable].reshape(-1, hop) ** 2).mean(axis=1)
    loud = np.flatnonzero(energy > energy.max() * 1e-3) if usable else np.array([], dtype=int)
    if loud.size == 0:
        raise CorpusError(f"espeak-ng said nothing audible for {word!r} with voice {voice}")
    first, last = max(0, loud[0] - 2), min(len(energy), loud[-1] + 3)
    audio = np.ascontiguousarray(audio[first * hop:last * hop])
    f0, times = pw.dio(audio, ESPEAK_RATE, f0_floor=60.0, f0_ceil=500.0, frame_period=FRAME_MS)
    f0 = pw.stonemask(audio, f0, times, ESPEAK_RATE)
    sp = pw.cheaptrick(audio, f0, times, ESPEAK_RATE)
    ap = pw.d4c(audio, f0, times, ESPEAK_RATE)
    voiced = f0 > 0
    if not voiced.any():  # whispered or mis-tracked: treat the middle as the vowel
        voiced[len(voiced) // 4: max(len(voiced) // 4 + 1, 3 * len(voiced) // 4)] = True
    indices = np.flatnonzero(voiced)
    start, end = int(indices[0]), int(indices[-1]) + 1
    power = sp[start:end].sum(axis=1)
    smooth = np.convolve(power, np.ones(5) / 5, mode="same")
    nucleus = start + int(np.argmax(smooth))
    sound = WordSound(sp=sp, ap=ap, voiced=voiced, voiced_start=start, voiced_end=end, nucleus=nucleus)
    _WORDS[key] = sound
    return sound


def shift_formants(sp: np.ndarray, factor: float) -> np.ndarray:
    """Stretch a spectral envelope `(frames, bins)` along frequency: >1 moves formants up."""
    if abs(factor - 1.0) < 1e-6:
        return sp
    bins = sp.shape[1]
    source = np.clip(np.arange(bins) / factor, 0, bins - 1)
    low = np.floor(source).astype(int)
    high = np.minimum(low + 1, bins - 1)
    frac = source - low
    return sp[:, low] * (1 - frac) + sp[:, high] * frac


def time_map(sound: WordSound, frames: int) -> np.ndarray:
    """Source frame position (float) for each of `frames` output frames.

    Onset consonant, attack into the vowel, release and coda keep (at most) their natural
    length; the vowel around its loudest frame is held for whatever time is left.
    """
    total = sound.frames
    v0, v1, nucleus = sound.voiced_start, min(sound.voiced_end, total - 1), sound.nucleus
    hold_end = min(v1, nucleus + max(1, (v1 - nucleus) // 2))
    # Source knots: start, vowel onset, nucleus, end of the hold, end of voicing, last frame.
    src_knots = np.array([0, v0, nucleus, hold_end, v1, total - 1], dtype=np.float64)
    natural = np.diff(src_knots)  # steps of onset, attack, hold, release, coda
    caps = (0.3, 0.2, None, 0.2, 0.25)
    steps = [0.0 if cap is None else float(min(n, int(cap * frames))) for n, cap in zip(natural, caps)]
    steps[2] = (frames - 1) - sum(steps)
    if steps[2] < 2 or natural[2] <= 0:
        return np.linspace(0.0, total - 1.0, frames)
    out_knots = np.concatenate([[0.0], np.cumsum(steps)])
    return np.interp(np.arange(frames, dtype=np.float64), out_knots, src_knots)


def _take(array: np.ndarray, positions: np.ndarray) -> np.ndarray:
    low = np.floor(positions).astype(int)
    high = np.minimum(low + 1, array.shape[0] - 1)
    frac = (positions - low)[:, None]
    return array[low] * (1 - frac) + array[high] * frac


def _note_f0(note: SungNote, frames: int, previous: SungNote | None, plan: VocalPlan,
             rng: np.random.Generator) -> np.ndarray:
    """f0 in Hz for each frame of a note: scoop or glide in, then delayed vibrato."""
    t = np.arange(frames) * FRAME_MS / 1000.0
    cents = np.full(frames, rng.normal(0.0, 6.0))  # a singer is never exactly in tune
    if previous is not None and note.start - previous.end < 0.06:
        start, glide = (previous.pitch - note.pitch) * 100.0, 0.07
    else:
        start, glide = -rng.uniform(20.0, 70.0), rng.uniform(0.04, 0.09)
    cents += start * np.clip(1.0 - t / glide, 0.0, 1.0) ** 2
    depth = plan.vibrato_cents * np.clip((t - 0.25) / 0.2, 0.0, 1.0)
    cents += depth * np.sin(2 * math.pi * plan.vibrato_hz * t + rng.uniform(0, 2 * math.pi))
    return 440.0 * 2.0 ** ((note.pitch - 69 + cents / 100.0) / 12.0)


def _phrases(notes: Sequence[SungNote]) -> List[List[SungNote]]:
    phrases: List[List[SungNote]] = []
    for note in notes:
        if phrases and note.start - phrases[-1][-1].end < _PHRASE_GAP:
            phrases[-1].append(note)
        else:
            phrases.append([note])
    return phrases


def sing(plan: VocalPlan, samples: int, rng: np.random.Generator) -> np.ndarray:
    """The sung melody as float32 mono `(samples,)` at 44.1 kHz."""
    pw = _load_pyworld()
    period = FRAME_MS / 1000.0
    out = np.zeros(int(math.ceil(samples * ESPEAK_RATE / SAMPLERATE)) + ESPEAK_RATE, dtype=np.float64)
    sounds: Dict[str, WordSound] = {}
    for word in sorted({n.word for n in plan.notes if n.start < samples / SAMPLERATE}):
        raw = analyse(word, plan.espeak_voice)
        sounds[word] = WordSound(sp=shift_formants(raw.sp, plan.formant_shift), ap=raw.ap, voiced=raw.voiced,
                                 voiced_start=raw.voiced_start, voiced_end=raw.voiced_end, nucleus=raw.nucleus)
    previous: SungNote | None = None
    heard = [n for n in plan.notes if n.start < samples / SAMPLERATE]  # the song runs past the excerpt
    for phrase in _phrases(heard):
        begin = max(0.0, phrase[0].start - 0.02)
        frames = int(math.ceil((phrase[-1].end + 0.15 - begin) / period)) + 1
        bins = next(iter(sounds.values())).sp.shape[1]
        f0 = np.zeros(frames)
        sp = np.full((frames, bins), _SILENT_POWER)
        ap = np.ones((frames, bins))
        for note in phrase:
            a = int(round((note.start - begin) / period))
            b = min(frames, int(round((note.end - begin) / period)))
            count = b - a
            if count < 3:
                continue
            sound = sounds[note.word]
            where = time_map(sound, count)
            voiced = sound.voiced[np.round(where).astype(int)]
            envelope = _take(sound.sp, where)
            gain = (note.velocity / 96.0) ** 1.2
            ramp = np.ones(count)
            ramp[:2] = (0.3, 0.7)
            ramp[-3:] = (0.6, 0.3, 0.1)
            envelope *= (gain * ramp)[:, None] ** 2
            sp[a:b] = np.maximum(envelope, _SILENT_POWER)
            ap[a:b] = _take(sound.ap, where)
            f0[a:b] = np.where(voiced, _note_f0(note, count, previous, plan, rng), 0.0)
            previous = note
        audio = pw.synthesize(f0, np.ascontiguousarray(sp), np.ascontiguousarray(ap), ESPEAK_RATE, FRAME_MS)
        offset = int(round(begin * ESPEAK_RATE))
        stop = min(len(out), offset + len(audio))
        if stop > offset:
            out[offset:stop] += audio[: stop - offset]
    sung = soxr.resample(out, ESPEAK_RATE, SAMPLERATE)
    result = np.zeros(samples, dtype=np.float32)
    take = min(samples, len(sung))
    result[:take] = sung[:take]
    return result


def breaths(plan: VocalPlan, samples: int, rng: np.random.Generator, level: float) -> np.ndarray:
    """Inhales before most phrases: float32 mono `(samples,)` at 44.1 kHz.

    Each is band-passed noise (about 0.8 to 6 kHz, as an open-mouth breath) that swells
    over 0.15 to 0.35 s and stops just before the phrase; `level` is the RMS of the
    singing, and the breaths sit `plan.breath_db` below it.
    """
    from scipy.signal import butter, sosfilt

    out = np.zeros(samples, dtype=np.float64)
    heard = [n for n in plan.notes if n.start < samples / SAMPLERATE]
    sos = butter(2, (rng.uniform(600.0, 1000.0), rng.uniform(4000.0, 7000.0)), btype="bandpass", fs=SAMPLERATE,
                 output="sos")
    for phrase in _phrases(heard):
        if rng.random() > 0.7:
            continue
        length = int(rng.uniform(0.15, 0.35) * SAMPLERATE)
        end = int((phrase[0].start - rng.uniform(0.03, 0.08)) * SAMPLERATE)
        start = end - length
        if start < 0 or end > samples:
            continue
        noise = sosfilt(sos, rng.standard_normal(length + 2048))[2048:]
        swell = np.sin(np.linspace(0.0, math.pi, length)) ** 1.5 * np.linspace(0.6, 1.0, length)
        noise = noise / (np.sqrt(np.mean(noise ** 2)) + 1e-12) * swell
        out[start:end] += noise * level * 10 ** (plan.breath_db / 20) * 2.0
    return out.astype(np.float32)
