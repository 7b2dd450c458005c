"""Small synthetic datasets in the MUSDB18-HQ and MUSDB18 (`.stem.mp4`) layouts, for tests.

Tests import it as `from fakemusdb import make_musdb_hq`: pytest's default ("prepend")
import mode puts this folder on sys.path for every test module in it, as it does for
`conftest`.

Each track has four distinct stems, so that a separator or an oracle can tell them apart:
drums are decaying noise bursts on a beat grid, bass a low sine line, other a three-note
chord, vocals a vibrato tone with harmonics. Every track gets its own tempo, notes, panning
and levels from the seed. Stems are written as 16 bit PCM (as MUSDB18-HQ is), and the
mixture is the exact sum of the written stems.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Sequence, Union

import numpy as np
import soundfile

STEMS = ("drums", "bass", "other", "vocals")

# The first names of MUSDB18's official validation list (musdb `configs/mus.yaml`), so
# that a fake train subset splits into train and valid like the real one.
VALIDATION_NAMES = (
    "Actions - One Minute Smile",
    "Clara Berry And Wooldog - Waltz For My Victims",
    "Johnny Lokke - Promises & Lies",
    "Patrick Talbot - A Reason To Leave",
)


def _midi_hz(note: float) -> float:
    return 440.0 * 2.0 ** ((note - 69.0) / 12.0)


def synth_stems(
    seconds: float, samplerate: int = 44100, seed: int = 0, channels: int = 2
) -> Dict[str, np.ndarray]:
    """Four synthetic stems, each float64 `(channels, samples)` with peaks below 0.25."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * samplerate))
    t = np.arange(n) / samplerate
    out: Dict[str, np.ndarray] = {}

    # drums: noise bursts with an exponential decay, on a beat grid with a random tempo
    beat = 60.0 / rng.uniform(90, 150)
    drums = np.zeros(n)
    decay = np.exp(-np.arange(int(0.15 * samplerate)) / (0.03 * samplerate))
    for start in np.arange(rng.uniform(0, beat / 2), seconds, beat / 2):
        i = int(start * samplerate)
        burst = rng.standard_normal(len(decay)) * decay
        stop = min(n, i + len(burst))
        drums[i:stop] += burst[: stop - i]
    out["drums"] = drums

    # bass: a sine line, one note per beat, notes around A1..A2
    root = rng.integers(33, 45)
    notes = root + rng.choice([0, 3, 5, 7, 10, 12], size=int(seconds / beat) + 2)
    freq = 440.0 * 2.0 ** ((notes[(t / beat).astype(int)] - 69.0) / 12.0)
    out["bass"] = np.sin(2 * np.pi * np.cumsum(freq) / samplerate)

    # other: a sustained minor or major triad in the middle register
    base = rng.integers(55, 67)
    triad = [0, rng.choice([3, 4]), 7]
    out["other"] = sum(np.sin(2 * np.pi * _midi_hz(base + k) * t + rng.uniform(0, 2 * np.pi)) for k in triad)

    # vocals: a tone with 5.5 Hz vibrato and three harmonics, phrases with gaps
    centre = _midi_hz(rng.integers(62, 74))
    inst = centre * (1 + 0.01 * np.sin(2 * np.pi * 5.5 * t))
    phase = 2 * np.pi * np.cumsum(inst) / samplerate
    tone = sum(np.sin(h * phase) / h for h in (1, 2, 3))
    gate = (np.sin(2 * np.pi * t / rng.uniform(0.8, 1.6)) > -0.3).astype(float)
    out["vocals"] = tone * np.convolve(gate, np.ones(441) / 441, mode="same")

    for name in STEMS:
        mono = out[name] / (np.abs(out[name]).max() + 1e-12) * rng.uniform(0.12, 0.24)
        if channels == 1:
            out[name] = mono[None]
        else:
            pan = rng.uniform(0.2, 0.8)
            left, right = np.sqrt(1 - pan), np.sqrt(pan)
            out[name] = np.stack([mono * left, mono * right] + [mono * 0.5] * (channels - 2))
    return out


def _quantize16(x: np.ndarray) -> np.ndarray:
    """Round to the 16 bit PCM grid, as float (what reading the written file gives back)."""
    return np.clip(np.round(x * 32768.0), -32768, 32767) / 32768.0


def write_track(folder: Path, stems: Dict[str, np.ndarray], samplerate: int,
                mixture: bool = True) -> Path:
    """One MUSDB18-HQ track folder: `{drums,bass,other,vocals}.wav` (+ `mixture.wav`)."""
    folder.mkdir(parents=True, exist_ok=True)
    quantized = {name: _quantize16(stems[name]) for name in STEMS}
    if mixture:
        quantized["mixture"] = sum(quantized[name] for name in STEMS)
    for name, data in quantized.items():
        soundfile.write(str(folder / f"{name}.wav"), data.T, samplerate, subtype="PCM_16")
    return folder


def track_names(subset: str, tracks: int, musdb_names: bool = True) -> list:
    """Names of the fake tracks of a subset: in "train", the last quarter (at least one
    track when there are two or more) carries MUSDB18 validation names, unless not
    `musdb_names` (a stems folder with no validation list)."""
    if subset != "train" or tracks < 2 or not musdb_names:
        return [f"Fake Artist {i:02d} - {subset.title()} Song" for i in range(tracks)]
    valid = min(len(VALIDATION_NAMES), max(1, tracks // 4))
    plain = [f"Fake Artist {i:02d} - Train Song" for i in range(tracks - valid)]
    return plain + list(VALIDATION_NAMES[:valid])


def make_musdb_hq(
    root: Union[str, Path],
    tracks: int = 4,
    seconds: float = 3.0,
    subsets: Sequence[str] = ("train", "test"),
    seed: int = 0,
    samplerate: int = 44100,
    musdb_names: bool = True,
) -> Path:
    """Write `root/{subset}/{track}/{mixture,drums,bass,other,vocals}.wav` and return root.

    `tracks` per subset; in "train", 4 tracks split into 3 train + 1 MUSDB18 validation
    track ("Actions - One Minute Smile"), or with `musdb_names=False` all get plain names
    (no validation list: training holds some out). Tracks differ by seed; lengths are all
    `seconds`.
    """
    root = Path(root)
    for s_index, subset in enumerate(subsets):
        for t_index, name in enumerate(track_names(subset, tracks, musdb_names)):
            stems = synth_stems(seconds, samplerate, seed=seed * 1000 + s_index * 100 + t_index)
            write_track(root / subset / name, stems, samplerate)
    return root


def write_stem_mp4(
    path: Union[str, Path],
    stems: Dict[str, np.ndarray],
    samplerate: int = 44100,
    bitrate: int = 256_000,
    mixture: Optional[np.ndarray] = None,
) -> Path:
    """A MUSDB18-style `.stem.mp4`: five AAC streams, mixture, drums, bass, other, vocals.

    stems: `{name: (channels, samples)}` floats; the mixture defaults to their sum.
    """
    mix = sum(stems[name] for name in STEMS) if mixture is None else mixture
    return write_streams_mp4(path, [mix] + [stems[name] for name in STEMS], samplerate, bitrate)


def write_streams_mp4(path: Union[str, Path], signals: Sequence[np.ndarray], samplerate: int = 44100,
                      bitrate: int = 256_000) -> Path:
    """An mp4 with one AAC stream per signal `(channels, samples)`, in the order given."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = signals[0].shape[0]
    layout = "stereo" if channels == 2 else "mono"
    with av.open(str(path), mode="w", format="mp4") as container:
        streams = []
        for _ in signals:
            stream = container.add_stream("aac", rate=samplerate)
            stream.layout = layout
            stream.bit_rate = bitrate
            streams.append(stream)
        block = 1024  # AAC frame size: feed the encoder whole frames
        total = signals[0].shape[1]
        for start in range(0, total, block):
            for stream, signal in zip(streams, signals):
                chunk = np.ascontiguousarray(signal[:, start:start + block], dtype=np.float32)
                frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
                frame.sample_rate = samplerate
                frame.pts = start
                for packet in stream.encode(frame):
                    container.mux(packet)
        for stream in streams:
            for packet in stream.encode(None):
                container.mux(packet)
    return path
