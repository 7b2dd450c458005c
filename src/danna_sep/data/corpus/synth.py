"""A small subtractive synthesizer in numpy for the electronic parts of the corpus.

Parts whose bank is `SYNTH_BANK` are played here instead of by FluidSynth; their program
picks a patch of `PATCHES`. Oscillators are band-limited with polyBLEP (saw, square) so
that high notes do not alias; each note has an amplitude envelope (attack, decay,
sustain, release) and a low-pass filter whose cutoff follows its own envelope (a pluck
opens and closes, a pad breathes), rendered per note with scipy's biquads. The 808 is a
sine whose pitch falls onto the note, saturated. Everything is a pure function of the
part's notes and the patch, so renders are deterministic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Sequence, Tuple

import numpy as np

from ... import SAMPLERATE

SYNTH_BANK = 1000  # not a MIDI bank: marks parts this module plays


@dataclass(frozen=True)
class Patch:
    name: str
    waves: Tuple[Tuple[str, float, float], ...]  # (wave, detune cents, level)
    attack: float
    decay: float
    sustain: float
    release: float
    cutoff: float  # Hz when the filter envelope is at rest
    cutoff_peak: float  # Hz at the top of the filter envelope
    filter_decay: float  # seconds for the filter to fall back
    resonance: float  # biquad Q
    drive: float = 0.0  # tanh saturation amount after the filter
    pitch_drop: float = 0.0  # semitones above the note the pitch starts at (808)
    drop_seconds: float = 0.04
    stereo_spread: float = 0.0  # detuned voices spread across the channels (0..1)


PATCHES: Tuple[Patch, ...] = (
    Patch("supersaw_pad", (("saw", -14, 1), ("saw", -5, 1), ("saw", 6, 1), ("saw", 15, 1)), 0.35, 0.6, 0.8, 0.8,
          1800, 3500, 1.2, 0.8, stereo_spread=0.8),
    Patch("warm_pad", (("square", -7, 0.6), ("saw", 7, 1)), 0.6, 1.0, 0.7, 1.2, 900, 2200, 2.0, 0.9,
          stereo_spread=0.6),
    Patch("saw_lead", (("saw", -6, 1), ("saw", 6, 1)), 0.01, 0.25, 0.75, 0.15, 2500, 6000, 0.3, 1.5, drive=0.3,
          stereo_spread=0.3),
    Patch("square_lead", (("square", 0, 1), ("saw", 10, 0.4)), 0.01, 0.2, 0.7, 0.1, 2000, 5000, 0.25, 1.2,
          drive=0.2),
    Patch("pluck", (("saw", -8, 1), ("square", 8, 0.5)), 0.003, 0.25, 0.0, 0.2, 500, 7000, 0.15, 2.0,
          stereo_spread=0.4),
    Patch("stab", (("saw", -10, 1), ("saw", 10, 1), ("square", 0, 0.5)), 0.005, 0.18, 0.3, 0.12, 800, 5000,
          0.12, 1.8, stereo_spread=0.5),
    Patch("acid_bass", (("saw", 0, 1),), 0.003, 0.2, 0.5, 0.06, 300, 2500, 0.18, 6.0, drive=0.8),
    Patch("reese_bass", (("saw", -12, 1), ("saw", 12, 1)), 0.01, 0.3, 0.8, 0.1, 600, 1200, 0.4, 0.9, drive=0.4),
    Patch("sub_bass", (("sine", 0, 1), ("square", 0, 0.12)), 0.005, 0.3, 0.85, 0.08, 900, 1200, 0.3, 0.7),
    Patch("808", (("sine", 0, 1),), 0.001, 1.2, 0.0, 0.25, 4000, 4000, 0.1, 0.7, drive=1.5, pitch_drop=12.0),
)
PATCH_INDEX: Dict[str, int] = {p.name: i for i, p in enumerate(PATCHES)}
PAD_PATCHES = ("supersaw_pad", "warm_pad")
LEAD_PATCHES = ("saw_lead", "square_lead", "pluck", "stab")
BASS_PATCHES = ("acid_bass", "reese_bass", "sub_bass", "808")


def _poly_blep(phase: np.ndarray, step: np.ndarray) -> np.ndarray:
    """The polyBLEP correction of a unit discontinuity at phase 0 (phase in [0, 1))."""
    out = np.zeros_like(phase)
    rising = phase < step
    t = phase[rising] / step[rising]
    out[rising] = t + t - t * t - 1.0
    falling = phase > 1.0 - step
    t = (phase[falling] - 1.0) / step[falling]
    out[falling] = t * t + t + t + 1.0
    return out


def oscillator(wave: str, freq: np.ndarray, start_phase: float = 0.0) -> np.ndarray:
    """One band-limited oscillator at per-sample frequency `freq` (Hz)."""
    step = np.clip(freq / SAMPLERATE, 1e-6, 0.45)
    phase = (start_phase + np.cumsum(step) - step[0]) % 1.0
    if wave == "sine":
        return np.sin(2 * math.pi * phase)
    if wave == "saw":
        return 2.0 * phase - 1.0 - _poly_blep(phase, step)
    if wave == "square":
        shifted = (phase + 0.5) % 1.0
        return (np.where(phase < 0.5, 1.0, -1.0) + _poly_blep(phase, step) - _poly_blep(shifted, step))
    raise ValueError(f"unknown wave {wave!r}")


def _envelope(patch: Patch, held: int, total: int) -> np.ndarray:
    t = np.arange(total) / SAMPLERATE
    attack = np.clip(t / max(patch.attack, 1e-4), 0.0, 1.0)
    decay = patch.sustain + (1 - patch.sustain) * np.exp(-np.maximum(t - patch.attack, 0.0) / max(patch.decay, 1e-3) * 3)
    level = np.where(t < patch.attack, attack, decay)
    if held < total:
        at_release = level[held - 1] if held > 0 else 0.0
        after = np.arange(total - held) / SAMPLERATE
        level[held:] = at_release * np.exp(-after / max(patch.release, 1e-3) * 5)
    return level


def _filtered(signal: np.ndarray, cutoff: np.ndarray, q: float, settle: int) -> np.ndarray:
    """A resonant low-pass whose cutoff changes every 64 samples (state carried across) up
    to sample `settle`, after which the cutoff is held."""
    from scipy.signal import lfilter

    out = np.empty_like(signal)
    state = np.zeros(2)
    block = 64 if settle < SAMPLERATE else 256  # slow sweeps need fewer steps
    start = 0
    while start < len(signal):
        stop = min(len(signal), start + block) if start < settle else len(signal)
        fc = float(np.clip(cutoff[start], 30.0, 0.45 * SAMPLERATE))
        w = 2 * math.pi * fc / SAMPLERATE
        alpha = math.sin(w) / (2 * q)
        cos_w = math.cos(w)
        a0 = 1 + alpha
        b = np.array([(1 - cos_w) / 2, 1 - cos_w, (1 - cos_w) / 2]) / a0
        a = np.array([1.0, -2 * cos_w / a0, (1 - alpha) / a0])
        out[start:stop], state = lfilter(b, a, signal[start:stop], zi=state)
        start = stop
    return out


def render_note(patch: Patch, pitch: int, velocity: int, seconds: float) -> np.ndarray:
    """One note `(2, samples)`: held for `seconds`, then released."""
    held = max(1, int(seconds * SAMPLERATE))
    total = held + int(patch.release * SAMPLERATE)
    t = np.arange(total) / SAMPLERATE
    base = 440.0 * 2 ** ((pitch - 69) / 12)
    semis = patch.pitch_drop * np.exp(-t / patch.drop_seconds) if patch.pitch_drop else 0.0
    out = np.zeros((2, total))
    voices = len(patch.waves)
    for index, (wave, cents, level) in enumerate(patch.waves):
        freq = base * 2 ** ((semis + cents / 100.0) / 12)
        freq = np.broadcast_to(freq, (total,)).astype(np.float64)
        tone = oscillator(wave, freq, start_phase=(index * 0.37) % 1.0) * level
        side = 0.0 if voices == 1 else (index / (voices - 1) * 2 - 1) * patch.stereo_spread
        out[0] += tone * math.sqrt((1 - side) / 2) * math.sqrt(2)
        out[1] += tone * math.sqrt((1 + side) / 2) * math.sqrt(2)
    out /= sum(level for _, _, level in patch.waves)
    cutoff = patch.cutoff + (patch.cutoff_peak - patch.cutoff) * np.exp(-t / max(patch.filter_decay, 1e-3))
    cutoff = cutoff * (0.6 + 0.8 * velocity / 127)
    for ch in range(2):
        out[ch] = _filtered(out[ch], cutoff, patch.resonance, settle=int(3 * patch.filter_decay * SAMPLERATE))
    if patch.drive:
        out = np.tanh(out * (1 + 3 * patch.drive)) / math.tanh(1 + 3 * patch.drive)
    return out * _envelope(patch, held, total) * (velocity / 127) ** 1.5


def render_synth_part(notes: Sequence, program: int, samples: int) -> np.ndarray:
    """The part's notes (`start`, `end`, `pitch`, `velocity` in seconds) as `(2, samples)` float32."""
    patch = PATCHES[program]
    out = np.zeros((2, samples))
    for note in notes:
        start = int(round(note.start * SAMPLERATE))
        if start >= samples:
            continue
        sound = render_note(patch, int(note.pitch), int(note.velocity), max(0.01, note.end - note.start))
        stop = min(samples, start + sound.shape[1])
        out[:, start:stop] += sound[:, : stop - start]
    return out.astype(np.float32)
