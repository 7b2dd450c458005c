"""Levels, the vocal reverb and the 16-bit stems whose integer sum is the mixture."""

from __future__ import annotations

from typing import Dict, Mapping, Sequence, Tuple

import numpy as np

from ... import SAMPLERATE

PEAK_LIMIT = 0.9  # no file of the corpus peaks above this
_PEAK_TARGET = (0.55, 0.88)  # the loudest of mixture and stems lands here (margin for rounding)
FULL_SCALE = 32768  # soundfile reads 16-bit PCM as int / 32768
_FRAME = 4096
_GATE_DB = -40.0

# Loudness of each stem relative to the vocals (dB), drawn per track: vocals in front,
# as in released music; the gated K-weighted loudness below makes bass and cymbals count
# about as the ear counts them.
LEVEL_RANGES: Dict[str, Tuple[float, float]] = {
    "vocals": (0.0, 0.0),
    "drums": (-3.5, 0.5),
    "bass": (-5.5, -1.0),
    "other": (-5.0, -0.5),
}


def _biquad_power(b: Sequence[float], a: Sequence[float], freqs: np.ndarray, samplerate: float) -> np.ndarray:
    """|H(e^jw)|^2 of a biquad at the given frequencies (Hz)."""
    z = np.exp(-2j * np.pi * np.asarray(freqs, dtype=np.float64) / samplerate)
    numerator = b[0] + b[1] * z + b[2] * z * z
    denominator = a[0] + a[1] * z + a[2] * z * z
    return np.abs(numerator / denominator) ** 2


def k_weighting(freqs: np.ndarray, samplerate: float = SAMPLERATE) -> np.ndarray:
    """Power response of ITU-R BS.1770's K-weighting at any sample rate.

    The standard gives the two biquads for 48 kHz only; these are the same filters from
    their analogue parameters (high shelf: 1681.97 Hz, +4.0 dB, Q 0.7072; high-pass:
    38.14 Hz, Q 0.5003), bilinear-transformed at `samplerate`.
    """
    k = np.tan(np.pi * 1681.974450955533 / samplerate)
    q = 0.7071752369554196
    vh = 10 ** (3.999843853973347 / 20)
    vb = vh ** 0.4996667741545416
    a0 = 1 + k / q + k * k
    shelf_b = ((vh + vb * k / q + k * k) / a0, 2 * (k * k - vh) / a0, (vh - vb * k / q + k * k) / a0)
    shelf_a = (1.0, 2 * (k * k - 1) / a0, (1 - k / q + k * k) / a0)
    k = np.tan(np.pi * 38.13547087602444 / samplerate)
    q = 0.5003270373238773
    a0 = 1 + k / q + k * k
    high_b = (1.0, -2.0, 1.0)
    high_a = (1.0, 2 * (k * k - 1) / a0, (1 - k / q + k * k) / a0)
    return _biquad_power(shelf_b, shelf_a, freqs, samplerate) * _biquad_power(high_b, high_a, freqs, samplerate)


_WEIGHTS = k_weighting(np.fft.rfftfreq(_FRAME, 1.0 / SAMPLERATE))


def loudness_db(audio: np.ndarray) -> float:
    """Gated, K-weighted loudness of `(channels, samples)` audio, in LUFS-like dB (-inf when silent).

    BS.1770's weighting and channel sum, measured on 4096-sample frames in the frequency
    domain; frames more than 40 dB below the loudest one do not count, so a stem that
    rests for a while is measured by what it plays. A 997 Hz sine at full scale in one
    channel reads -3.01.
    """
    channels, samples = audio.shape
    count = max(1, -(-samples // _FRAME))
    padded = np.zeros((channels, count * _FRAME))
    padded[:, :samples] = audio
    spectra = np.fft.rfft(padded.reshape(channels, count, _FRAME), axis=-1)
    # One-sided spectrum: double every bin but DC and Nyquist (Parseval).
    side = np.full(_WEIGHTS.shape, 2.0)
    side[0] = side[-1] = 1.0
    power = (np.abs(spectra) ** 2 * _WEIGHTS * side).sum(axis=-1).sum(axis=0) / (_FRAME ** 2)
    loudest = power.max()
    if loudest <= 1e-20:
        return float("-inf")
    active = power[power >= loudest * 10 ** (_GATE_DB / 10)]
    return float(-0.691 + 10 * np.log10(active.mean()))


def active_seconds(audio: np.ndarray) -> float:
    """Seconds of `(channels, samples)` audio within 40 dB of its loudest 4096-sample frame."""
    channels, samples = audio.shape
    count = -(-samples // _FRAME)
    padded = np.zeros((channels, count * _FRAME))
    padded[:, :samples] = audio
    power = (padded.reshape(channels, count, _FRAME) ** 2).mean(axis=-1).sum(axis=0)
    if power.max() <= 1e-20:
        return 0.0
    active = power >= power.max() * 10 ** (_GATE_DB / 10)
    lengths = np.minimum(_FRAME, samples - np.arange(count) * _FRAME)  # the last frame may be short
    return float(lengths[active].sum() / SAMPLERATE)


def stereo_reverb(mono: np.ndarray, rng: np.random.Generator, seconds: float, wet: float) -> np.ndarray:
    """Centre `mono` `(samples,)` in a stereo room: `(2, samples)` float32.

    The impulse response is decaying noise (independent per channel, so the tail is wide),
    softened by a short moving average, after a short pre-delay; `wet` is the share of
    reverberated signal in the result.
    """
    samples = mono.shape[0]
    length = int(min(2.5, seconds * 1.2) * SAMPLERATE)
    predelay = int(rng.uniform(0.01, 0.035) * SAMPLERATE)
    t = np.arange(length) / SAMPLERATE
    decay = np.exp(-6.91 * t / seconds)  # -60 dB after `seconds`
    impulse = np.zeros((2, predelay + length))
    box = np.ones(5) / 5
    for ch in range(2):
        tail = np.convolve(rng.standard_normal(length), box, mode="same") * decay
        impulse[ch, predelay:] = tail / np.sqrt((tail ** 2).sum())
    size = 1 << int(np.ceil(np.log2(samples + impulse.shape[1])))
    spectrum = np.fft.rfft(mono.astype(np.float64), size)
    wet_signal = np.fft.irfft(spectrum[None, :] * np.fft.rfft(impulse, size, axis=-1), size, axis=-1)[:, :samples]
    dry = np.repeat(mono[None, :].astype(np.float64), 2, axis=0)
    return ((1 - wet) * dry + wet * wet_signal).astype(np.float32)


def balance(stems: Mapping[str, np.ndarray], rng: np.random.Generator
            ) -> Tuple[Dict[str, np.ndarray], Dict[str, float], Dict[str, float]]:
    """Scale float stems `(2, samples)` to per-track relative levels, then all together so
    that the loudest of the mixture and the stems peaks within `_PEAK_TARGET`.

    Returns the scaled float64 stems, each stem's gain in dB and its loudness after it.
    """
    gains: Dict[str, float] = {}
    levels: Dict[str, float] = {}
    scaled: Dict[str, np.ndarray] = {}
    for name, audio in stems.items():
        low, high = LEVEL_RANGES[name]
        target = float(rng.uniform(low, high)) if high > low else low
        level = loudness_db(audio)
        gain = 0.0 if not np.isfinite(level) else target - level
        gains[name] = gain
        levels[name] = level + gain
        scaled[name] = audio.astype(np.float64) * 10 ** (gain / 20)
    mixture = sum(scaled.values())
    peak = max([float(np.abs(mixture).max())] + [float(np.abs(a).max()) for a in scaled.values()])
    target_peak = float(rng.uniform(*_PEAK_TARGET))
    common = target_peak / peak if peak > 0 else 1.0
    for name in scaled:
        scaled[name] = scaled[name] * common
        gains[name] += float(20 * np.log10(common))
        levels[name] += float(20 * np.log10(common))
    return scaled, gains, levels


def quantise(stems: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """16-bit stems `(2, samples)` and their exact integer sum as "mixture".

    Raises ValueError if any file would peak above PEAK_LIMIT (balance() keeps them at most
    0.88, and rounding moves the sum of four stems by at most 2 steps).
    """
    limit = int(np.floor(PEAK_LIMIT * FULL_SCALE))
    out: Dict[str, np.ndarray] = {}
    total = None
    for name, audio in stems.items():
        ints = np.round(np.asarray(audio, dtype=np.float64) * FULL_SCALE).astype(np.int32)
        total = ints if total is None else total + ints
        out[name] = ints
    out["mixture"] = total
    for name, ints in out.items():
        peak = int(np.abs(ints).max()) if ints.size else 0
        if peak > limit:
            raise ValueError(f"{name}: peak {peak / FULL_SCALE:.4f} above {PEAK_LIMIT}")
    return {name: ints.astype(np.int16) for name, ints in out.items()}
