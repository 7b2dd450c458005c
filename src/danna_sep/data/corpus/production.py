"""Studio processing of the rendered parts: per-part and per-stem effect chains.

A chain is a list of plain dicts, `{"effect": NAME, **settings}`, drawn from a track's own
random stream (`draw_part_chain`, `draw_bus_chain`) and stored in the track's meta.json; it
is applied by `apply_chain` with Spotify's `pedalboard` (JUCE's DSP: compressor,
distortion, chorus, phaser, delay, Freeverb, IIR filters, ladder filter) plus a few
effects written here (constant-power panning, mid/side width, a convolution room whose
impulse response comes from a seed in the chain, an exciter that puts back the air above
11 kHz that the WORLD vocoder cannot make). Applying a chain depends only on the chain and
the audio, so a corpus stays byte-identical for a seed whatever the number of workers.

Each part is brought to a reference level before its chain, so a drive of 20 dB means the
same thing for a quiet harp patch and a loud organ; the mix sets the final levels after.
"""

from __future__ import annotations

import math
from typing import Dict, List, Mapping, Sequence

import numpy as np

from ... import SAMPLERATE
from .render import DependencyError

Chain = List[Dict[str, object]]

REFERENCE_RMS_DB = -20.0  # every part enters its chain at this RMS (dBFS, active frames)

_pedalboard = None


def _pb():
    global _pedalboard
    if _pedalboard is None:
        try:
            import pedalboard
        except ImportError as exc:
            raise DependencyError(f"pedalboard is not available ({exc}): pip install pedalboard") from None
        _pedalboard = pedalboard
    return _pedalboard


# --------------------------------------------------------------------------- drawing chains


def _u(rng: np.random.Generator, low: float, high: float, digits: int = 3) -> float:
    return round(float(rng.uniform(low, high)), digits)


def _reverb(rng: np.random.Generator, size: tuple, wet: tuple) -> Dict[str, object]:
    """Freeverb or a convolution room, with a wet share in `wet`."""
    if rng.random() < 0.5:
        return {"effect": "reverb", "room_size": _u(rng, *size), "damping": _u(rng, 0.2, 0.7),
                "wet": _u(rng, *wet), "width": _u(rng, 0.6, 1.0)}
    return {"effect": "room", "seconds": _u(rng, 0.3 + 2.0 * size[0], 0.4 + 2.4 * size[1]),
            "predelay_ms": _u(rng, 5.0, 40.0, 1), "brightness": _u(rng, 0.3, 1.0),
            "wet": _u(rng, *wet), "seed": int(rng.integers(2 ** 31))}


def _delay(rng: np.random.Generator, tempo: float, mix: tuple) -> Dict[str, object]:
    beats = float(rng.choice([0.5, 0.75, 1.0, 0.375]))
    return {"effect": "delay", "seconds": round(beats * 60.0 / tempo, 4), "feedback": _u(rng, 0.15, 0.45),
            "mix": _u(rng, *mix)}


def _modulation(rng: np.random.Generator, kind: str, rate: tuple, depth: tuple, mix: tuple) -> Dict[str, object]:
    """A chorus or phaser (pedalboard's), its rate, depth and mix drawn in that order."""
    return {"effect": kind, "rate_hz": _u(rng, *rate), "depth": _u(rng, *depth), "mix": _u(rng, *mix)}


def _compressor(rng: np.random.Generator, ratio: tuple, threshold: tuple) -> Dict[str, object]:
    return {"effect": "compressor", "threshold_db": _u(rng, *threshold, 1), "ratio": _u(rng, *ratio, 2),
            "attack_ms": _u(rng, 1.0, 30.0, 1), "release_ms": _u(rng, 50.0, 300.0, 0)}


def _amp(rng: np.random.Generator, drive: tuple) -> Chain:
    """A guitar amp and cabinet: drive, mid bump, scooped or pushed tone, speaker roll-off."""
    chain: Chain = [{"effect": "highpass", "hz": _u(rng, 70.0, 140.0, 0)}]
    if rng.random() < 0.5:
        chain.append({"effect": "distortion", "drive_db": _u(rng, *drive, 1)})
    else:  # an asymmetric soft clipper: even harmonics, as a tube stage
        chain.append({"effect": "tube", "drive_db": _u(rng, *drive, 1), "bias": _u(rng, 0.05, 0.3)})
    chain.append({"effect": "peak", "hz": _u(rng, 500.0, 1800.0, 0), "gain_db": _u(rng, -4.0, 6.0, 1),
                  "q": _u(rng, 0.5, 1.5)})
    # The speaker cabinet: steep on both sides (pedalboard's filters fall only 6 dB per octave).
    chain.append({"effect": "cabinet", "low_hz": _u(rng, 70.0, 130.0, 0), "high_hz": _u(rng, 3500.0, 7000.0, 0)})
    return chain


def draw_part_chain(rng: np.random.Generator, role: str, genre: str, tempo: float) -> Chain:
    """The effects of one part before it joins its stem.

    `role` is what the part is: drums, bass, slap_bass, synth_bass, guitar_drive, guitar,
    keys, organ, strings, pad, synth, vocal_lead, vocal_backing, vocal_patch.
    """
    chain: Chain = []
    heavy = genre in ("rock",)
    if role in ("guitar_drive",):
        chain += _amp(rng, (14.0, 32.0) if heavy else (8.0, 24.0))
        chain.append(_compressor(rng, (2.0, 4.0), (-24.0, -12.0)))
        if rng.random() < 0.25:
            chain.append(_modulation(rng, "phaser" if rng.random() < 0.5 else "chorus", (0.2, 1.5), (0.2, 0.6),
                                     (0.2, 0.5)))
        if rng.random() < 0.3:
            chain.append(_delay(rng, tempo, (0.08, 0.25)))
        chain.append(_reverb(rng, (0.2, 0.6), (0.05, 0.25)))
    elif role == "guitar":
        if rng.random() < 0.35:  # a little amp grit on a clean guitar
            chain += _amp(rng, (2.0, 9.0))
        chain.append(_compressor(rng, (2.0, 5.0), (-28.0, -14.0)))
        roll = rng.random()
        if roll < 0.3:
            chain.append(_modulation(rng, "chorus", (0.3, 2.0), (0.15, 0.5), (0.2, 0.5)))
        elif roll < 0.45:
            chain.append(_modulation(rng, "phaser", (0.2, 1.2), (0.3, 0.7), (0.3, 0.6)))
        if rng.random() < 0.4:
            chain.append(_delay(rng, tempo, (0.1, 0.3)))
        chain.append(_reverb(rng, (0.2, 0.8), (0.08, 0.35)))
    elif role in ("keys", "organ"):
        if role == "organ" and rng.random() < 0.5:
            chain.append({"effect": "tube", "drive_db": _u(rng, 4.0, 14.0, 1), "bias": _u(rng, 0.05, 0.2)})
        if rng.random() < (0.5 if role == "organ" else 0.25):
            chain.append(_modulation(rng, "chorus", (0.5, 6.0), (0.1, 0.4), (0.2, 0.5)))
        chain.append({"effect": "peak", "hz": _u(rng, 200.0, 4000.0, 0), "gain_db": _u(rng, -4.0, 4.0, 1),
                      "q": _u(rng, 0.5, 1.2)})
        chain.append(_compressor(rng, (1.5, 3.0), (-24.0, -10.0)))
        chain.append(_reverb(rng, (0.2, 0.8), (0.08, 0.35)))
    elif role in ("strings", "pad"):
        chain.append({"effect": "highpass", "hz": _u(rng, 80.0, 250.0, 0)})
        if rng.random() < 0.3:
            chain.append(_modulation(rng, "chorus", (0.2, 1.0), (0.2, 0.5), (0.2, 0.5)))
        chain.append(_reverb(rng, (0.5, 0.95), (0.2, 0.5)))
        chain.append({"effect": "width", "amount": _u(rng, 1.0, 1.6)})
    elif role == "synth":
        roll = rng.random()
        if roll < 0.3:
            chain.append(_modulation(rng, "chorus", (0.3, 2.0), (0.2, 0.6), (0.3, 0.6)))
        elif roll < 0.45:
            chain.append(_modulation(rng, "phaser", (0.1, 1.0), (0.3, 0.8), (0.3, 0.6)))
        if rng.random() < 0.5:
            chain.append(_delay(rng, tempo, (0.15, 0.35)))
        chain.append(_reverb(rng, (0.4, 0.9), (0.1, 0.4)))
        chain.append({"effect": "width", "amount": _u(rng, 1.0, 1.5)})
    elif role in ("bass", "slap_bass", "synth_bass"):
        chain.append({"effect": "highpass", "hz": _u(rng, 25.0, 45.0, 0)})
        if rng.random() < (0.45 if heavy else 0.15) and role != "slap_bass":
            chain.append({"effect": "tube" if rng.random() < 0.5 else "distortion",
                          "drive_db": _u(rng, 6.0, 22.0, 1), "bias": _u(rng, 0.05, 0.25)})
            chain.append({"effect": "lowpass", "hz": _u(rng, 2500.0, 6000.0, 0)})
        chain.append({"effect": "low_shelf", "hz": _u(rng, 80.0, 200.0, 0), "gain_db": _u(rng, -2.0, 5.0, 1)})
        chain.append(_compressor(rng, (3.0, 8.0), (-30.0, -16.0)))
        if rng.random() < 0.3:
            chain.append({"effect": "lowpass", "hz": _u(rng, 1200.0, 5000.0, 0)})
    elif role == "drums":
        chain.append({"effect": "low_shelf", "hz": _u(rng, 60.0, 120.0, 0), "gain_db": _u(rng, -1.0, 5.0, 1)})
        chain.append({"effect": "high_shelf", "hz": _u(rng, 5000.0, 10000.0, 0), "gain_db": _u(rng, -3.0, 4.0, 1)})
        chain.append(_compressor(rng, (2.0, 6.0), (-26.0, -12.0)))
        if rng.random() < 0.3:
            chain.append({"effect": "tube", "drive_db": _u(rng, 2.0, 10.0, 1), "bias": _u(rng, 0.0, 0.1)})
        chain.append(_reverb(rng, (0.1, 0.5), (0.05, 0.25)))
    elif role in ("vocal_lead", "vocal_backing"):
        chain.append({"effect": "highpass", "hz": _u(rng, 70.0, 140.0, 0)})
        chain.append({"effect": "peak", "hz": _u(rng, 2500.0, 5000.0, 0), "gain_db": _u(rng, 0.0, 5.0, 1),
                      "q": _u(rng, 0.5, 1.2)})
        chain.append(_compressor(rng, (3.0, 7.0), (-30.0, -16.0)))
        chain.append({"effect": "exciter", "hz": _u(rng, 2500.0, 5000.0, 0), "amount": _u(rng, 0.05, 0.3),
                      "drive": _u(rng, 2.0, 6.0)})
        if rng.random() < 0.2:  # a distorted or telephone-like vocal
            chain.append({"effect": "tube", "drive_db": _u(rng, 4.0, 14.0, 1), "bias": _u(rng, 0.05, 0.2)})
        if rng.random() < (0.5 if role == "vocal_lead" else 0.3):
            chain.append(_delay(rng, tempo, (0.08, 0.25)))
        chain.append(_reverb(rng, (0.3, 0.9), (0.08, 0.35) if role == "vocal_lead" else (0.15, 0.45)))
    elif role == "vocal_patch":
        chain.append(_reverb(rng, (0.4, 0.9), (0.15, 0.45)))
    else:
        raise ValueError(f"unknown part role {role!r}")
    return chain


#: Share of tracks mixed light: real records range from near-dry to drenched, and a corpus
#: that is all reverb and modulation teaches a model nothing about the plainer ones.
LIGHT_SHARE = 0.3
_TIME_EFFECTS = ("delay", "chorus", "phaser")


def lighten(chain: Sequence[Mapping[str, object]], wet_scale: float = 0.3) -> Chain:
    """`chain` as a light mix would have it: no delay, chorus or phaser, reverbs `wet_scale`
    as wet; tone, drive, dynamics and placement stay."""
    light: Chain = []
    for effect in chain:
        if effect["effect"] in _TIME_EFFECTS:
            continue
        effect = dict(effect)
        if effect["effect"] in ("reverb", "room"):
            effect["wet"] = round(float(effect["wet"]) * wet_scale, 3)
        light.append(effect)
    return light


def draw_bus_chain(rng: np.random.Generator, stem: str) -> Chain:
    """Glue on a whole stem: gentle compression and tone, never reverb (that is per part)."""
    chain: Chain = []
    if rng.random() < 0.6:
        chain.append(_compressor(rng, (1.5, 3.0), (-20.0, -8.0)))
    if rng.random() < 0.5:
        chain.append({"effect": "high_shelf", "hz": _u(rng, 6000.0, 12000.0, 0), "gain_db": _u(rng, -3.0, 3.0, 1)})
    if stem == "bass" and rng.random() < 0.3:
        chain.append({"effect": "lowpass", "hz": _u(rng, 3000.0, 9000.0, 0)})
    return chain


# --------------------------------------------------------------------------- applying chains


def _active_rms(audio: np.ndarray) -> float:
    frames = audio.shape[-1] // 4096
    if frames == 0:
        return float(np.sqrt(np.mean(audio ** 2))) if audio.size else 0.0
    power = (audio[:, : frames * 4096].reshape(audio.shape[0], frames, 4096) ** 2).mean(axis=(0, 2))
    if power.max() <= 1e-20:
        return 0.0
    return float(np.sqrt(power[power >= power.max() * 1e-4].mean()))


def normalise(audio: np.ndarray, rms_db: float = REFERENCE_RMS_DB) -> np.ndarray:
    """`audio` scaled so its RMS over active frames is `rms_db` (silence stays silence)."""
    rms = _active_rms(audio)
    if rms <= 1e-10:
        return audio.astype(np.float64)
    return audio.astype(np.float64) * (10 ** (rms_db / 20) / rms)


def room_impulse(seconds: float, predelay_ms: float, brightness: float, seed: int) -> np.ndarray:
    """A stereo room response `(2, taps)`: sparse early reflections, then decaying noise
    whose high frequencies die faster the darker the room (`brightness` 0..1)."""
    rng = np.random.default_rng(seed)
    length = int(min(3.0, seconds * 1.1) * SAMPLERATE)
    predelay = int(predelay_ms * SAMPLERATE / 1000)
    t = np.arange(length) / SAMPLERATE
    out = np.zeros((2, predelay + length))
    for ch in range(2):
        noise = rng.standard_normal(length)
        # Two bands: the low band decays at RT60 = seconds, the high band faster.
        smooth = np.convolve(noise, np.ones(8) / 8, mode="same")
        high = noise - smooth
        high_rt = seconds * (0.25 + 0.6 * brightness)
        tail = smooth * np.exp(-6.91 * t / seconds) + high * np.exp(-6.91 * t / high_rt)
        early = np.zeros(length)
        for _ in range(10):
            at = int(rng.uniform(0.002, 0.06) * SAMPLERATE)
            early[at] += rng.uniform(-1, 1) * 3.0
        response = tail + early
        out[ch, predelay:] = response / np.sqrt((response ** 2).sum())
    return out


def _convolve(audio: np.ndarray, impulse: np.ndarray) -> np.ndarray:
    samples = audio.shape[-1]
    size = 1 << int(np.ceil(np.log2(samples + impulse.shape[-1])))
    spectrum = np.fft.rfft(audio, size, axis=-1) * np.fft.rfft(impulse, size, axis=-1)
    return np.fft.irfft(spectrum, size, axis=-1)[..., :samples]


def _butter(audio: np.ndarray, hz: float, kind: str, order: int = 2) -> np.ndarray:
    from scipy.signal import butter, sosfilt

    sos = butter(order, hz, btype=kind, fs=SAMPLERATE, output="sos")
    return sosfilt(sos, audio, axis=-1)


def _native(effect: Mapping[str, object]):
    """The pedalboard plugin for one step, or None when the step is ours."""
    pb = _pb()
    kind = effect["effect"]
    e = effect
    if kind == "compressor":
        return pb.Compressor(threshold_db=e["threshold_db"], ratio=e["ratio"], attack_ms=e["attack_ms"],
                             release_ms=e["release_ms"])
    if kind == "distortion":
        return pb.Distortion(drive_db=e["drive_db"])
    if kind == "chorus":
        return pb.Chorus(rate_hz=e["rate_hz"], depth=e["depth"], mix=e["mix"])
    if kind == "phaser":
        return pb.Phaser(rate_hz=e["rate_hz"], depth=e["depth"], mix=e["mix"])
    if kind == "delay":
        return pb.Delay(delay_seconds=e["seconds"], feedback=e["feedback"], mix=e["mix"])
    if kind == "reverb":
        return pb.Reverb(room_size=e["room_size"], damping=e["damping"], wet_level=e["wet"],
                         dry_level=1.0 - e["wet"], width=e["width"])
    if kind == "highpass":
        return pb.HighpassFilter(cutoff_frequency_hz=e["hz"])
    if kind == "lowpass":
        return pb.LowpassFilter(cutoff_frequency_hz=e["hz"])
    if kind == "peak":
        return pb.PeakFilter(cutoff_frequency_hz=e["hz"], gain_db=e["gain_db"], q=e["q"])
    if kind == "low_shelf":
        return pb.LowShelfFilter(cutoff_frequency_hz=e["hz"], gain_db=e["gain_db"])
    if kind == "high_shelf":
        return pb.HighShelfFilter(cutoff_frequency_hz=e["hz"], gain_db=e["gain_db"])
    return None


def _tube(audio: np.ndarray, drive_db: float, bias: float) -> np.ndarray:
    drive = 10 ** (drive_db / 20)
    # Asymmetric soft clipping around a bias point; the bias' own DC is taken back out.
    shaped = np.tanh(drive * audio * 4.0 + bias) - math.tanh(bias)
    return shaped / (drive ** 0.5 * 4.0)


def _exciter(audio: np.ndarray, hz: float, amount: float, drive: float) -> np.ndarray:
    """Harmonics of the upper band, added back: content above what the source had."""
    band = _butter(audio, hz, "highpass")
    level = _active_rms(band)
    if level <= 1e-10:
        return audio
    # Driven relative to the band's RMS, so the loud syllables saturate whatever the level.
    harmonics = _butter(np.tanh(drive * band / (3 * level)), hz * 2, "highpass") * level
    return audio + amount * harmonics


def _width(audio: np.ndarray, amount: float) -> np.ndarray:
    mid = (audio[0] + audio[1]) / 2
    side = (audio[0] - audio[1]) / 2 * amount
    return np.stack([mid + side, mid - side])


def pan(audio: np.ndarray, position: float) -> np.ndarray:
    """Constant-power pan of `(2, samples)` audio; `position` in [-1 (left), 1 (right)]."""
    angle = (position + 1) * math.pi / 4
    gains = np.array([math.cos(angle), math.sin(angle)]) * math.sqrt(2)
    return audio * gains[:, None]


def apply_chain(chain: Sequence[Mapping[str, object]], audio: np.ndarray) -> np.ndarray:
    """Run `(2, samples)` float audio through `chain`; float64 `(2, samples)`, same length."""
    pb = _pb()
    out = np.asarray(audio, dtype=np.float64)
    pending: list = []

    def flush(signal: np.ndarray) -> np.ndarray:
        if not pending:
            return signal
        board = pb.Pedalboard(list(pending))
        pending.clear()
        processed = board(signal.astype(np.float32), float(SAMPLERATE), reset=True)
        return processed.astype(np.float64)

    for effect in chain:
        plugin = _native(effect)
        if plugin is not None:
            pending.append(plugin)
            continue
        out = flush(out)
        kind = effect["effect"]
        if kind == "tube":
            out = _tube(out, float(effect["drive_db"]), float(effect.get("bias", 0.0)))
        elif kind == "exciter":
            out = _exciter(out, float(effect["hz"]), float(effect["amount"]), float(effect["drive"]))
        elif kind == "cabinet":
            out = _butter(_butter(out, float(effect["low_hz"]), "highpass"), float(effect["high_hz"]), "lowpass", 4)
        elif kind == "width":
            out = _width(out, float(effect["amount"]))
        elif kind == "pan":
            out = pan(out, float(effect["position"]))
        elif kind == "gain":
            out = out * 10 ** (float(effect["db"]) / 20)
        elif kind == "room":
            impulse = room_impulse(float(effect["seconds"]), float(effect["predelay_ms"]),
                                   float(effect["brightness"]), int(effect["seed"]))
            wet = float(effect["wet"])
            out = (1 - wet) * out + wet * _convolve(out, impulse) * 1.0
        else:
            raise ValueError(f"unknown effect {kind!r}")
    out = flush(out)
    if not np.isfinite(out).all():
        raise ValueError("an effect chain produced non-finite samples")
    return out


EFFECTS = ("compressor", "distortion", "chorus", "phaser", "delay", "reverb", "highpass", "lowpass", "peak",
           "low_shelf", "high_shelf", "tube", "exciter", "width", "pan", "gain", "room", "cabinet")
