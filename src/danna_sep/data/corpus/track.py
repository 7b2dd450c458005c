"""One track: compose from the seed, render every stem apart, balance, quantise."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from ... import SOURCES
from .compose import Song, compose
from .mix import FULL_SCALE, active_seconds, balance, loudness_db, quantise, stereo_reverb
from .render import (
    DEFAULT_SOUNDFONT,
    SAMPLERATE,
    CorpusError,
    ReverbSettings,
    check_soundfont,
    renderer_for,
    soundfont_sha256,
)
from .vocals import sing

PathLike = Union[str, "os.PathLike[str]"]

#: Bumped whenever the same seed would give different audio; part of the resume check.
GENERATOR_VERSION = 1
MAX_SECONDS = 3600.0


@dataclass
class RenderedTrack:
    """Quantised stems and their description."""

    stems: Dict[str, np.ndarray]  # "drums", "bass", "other", "vocals", "mixture": int16 (channels=2, samples)
    meta: dict
    song: Song


def track_rngs(seed: int, index: int) -> Dict[str, np.random.Generator]:
    """Independent generators for each stage of track `index` of corpus `seed`.

    Separate streams keep a change in one stage (say, the mix) from moving every random
    draw after it.
    """
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be non-negative, not {seed} and {index}")
    children = np.random.SeedSequence([int(seed), int(index)]).spawn(4)
    return {name: np.random.default_rng(child) for name, child in zip(("soundfont", "compose", "vocals", "mix"), children)}


def resolve_soundfonts(soundfonts: Optional[Sequence[PathLike]]) -> List[Path]:
    """The soundfont paths (default: FluidR3_GM), each checked; SoundfontError otherwise."""
    paths = [Path(p) for p in soundfonts] if soundfonts else [DEFAULT_SOUNDFONT]
    return [check_soundfont(p) for p in paths]


def choose_soundfont(rng: np.random.Generator, count: int) -> int:
    """Index of the soundfont a track uses among `count`, from the track's own stream for
    this choice (so that passing more soundfonts changes the sound, not the song)."""
    return int(rng.integers(count))


def render_track(seed: int, index: int, seconds: float,
                 soundfonts: Optional[Sequence[PathLike]] = None) -> RenderedTrack:
    """Compose and render track `index` of the corpus made with `seed`.

    The result depends only on (seed, index, seconds, the soundfont files): stems are
    int16 `(channels=2, samples)` at 44.1 kHz, exactly `round(seconds * 44100)` long, and
    "mixture" is their exact integer sum; no file peaks above 0.9 of full scale.
    """
    if not 0 < seconds <= MAX_SECONDS:
        raise ValueError(f"seconds must be in (0, {MAX_SECONDS:g}], not {seconds}")
    fonts = resolve_soundfonts(soundfonts)
    rngs = track_rngs(seed, index)
    font = fonts[choose_soundfont(rngs["soundfont"], len(fonts))]
    song = compose(rngs["compose"], seconds)
    samples = int(round(seconds * SAMPLERATE))
    renderer = renderer_for(font)
    reverb = ReverbSettings(room=song.reverb_room, damping=song.reverb_damping)

    float_stems: Dict[str, np.ndarray] = {}
    for stem in ("drums", "bass", "other"):
        float_stems[stem] = renderer.render(song.parts_of(stem), samples, reverb)
    plan = song.vocals
    sung = sing(plan, samples, rngs["vocals"])
    vocals = stereo_reverb(sung, rngs["vocals"], plan.reverb_seconds, plan.reverb_wet).astype(np.float64)
    if plan.doubling is not None:
        doubling = renderer.render([plan.doubling], samples, reverb).astype(np.float64)
        sung_level, doubling_level = loudness_db(vocals), loudness_db(doubling)
        if np.isfinite(sung_level) and np.isfinite(doubling_level):
            doubling *= 10 ** ((sung_level + plan.doubling_gain_db - doubling_level) / 20)
        vocals = vocals + doubling
    float_stems["vocals"] = vocals
    for stem, audio in float_stems.items():
        if not np.isfinite(audio).all():
            raise CorpusError(f"track {seed}/{index}: the {stem} stem has non-finite samples")

    scaled, gains, levels = balance({s: float_stems[s] for s in SOURCES}, rngs["mix"])
    stems = quantise(scaled)
    meta = _describe(song, seed, index, seconds, samples, font, renderer, stems, gains, levels)
    return RenderedTrack(stems=stems, meta=meta, song=song)


def _describe(song: Song, seed: int, index: int, seconds: float, samples: int, font: Path, renderer,
              stems: Dict[str, np.ndarray], gains: Dict[str, float], levels: Dict[str, float]) -> dict:
    description = song.describe()
    for part in description["parts"]:
        bank, program = renderer.resolve_preset(part["bank"], part["program"])
        part["bank"], part["program"] = bank, program
        part["preset"] = renderer.preset_name(bank, program)
    levels = dict(levels)
    levels["mixture"] = loudness_db(stems["mixture"].astype(np.float64) / FULL_SCALE)
    return {
        "generator": "danna-sep corpus",
        "version": GENERATOR_VERSION,
        "seed": int(seed),
        "index": int(index),
        "samplerate": SAMPLERATE,
        "soundfont": {"name": font.name, "sha256": soundfont_sha256(font)},
        **description,
        "programs": {p["name"]: {"bank": p["bank"], "program": p["program"], "preset": p["preset"]}
                     for p in description["parts"]},
        "lyrics": " ".join(n.word for n in song.vocals.notes if n.start < seconds),
        "stems": {
            name: {
                "gain_db": round(gains[name], 3) if name in gains else None,
                "peak": round(float(np.abs(ints).max()) / FULL_SCALE, 5),
                "loudness_db": round(levels[name], 3) if name in levels and np.isfinite(levels[name]) else None,
            }
            for name, ints in stems.items()
        },
        "durations": {
            "seconds": seconds,
            "samples": samples,
            "active_seconds": {name: round(active_seconds(ints.astype(np.float64) / FULL_SCALE), 3)
                               for name, ints in stems.items()},
        },
    }


def render_song(seed: int, seconds: float, soundfont: Optional[PathLike] = None) -> Dict[str, np.ndarray]:
    """A realistic clip in memory: float32 `(channels=2, samples)` per stem and "mixture".

    Track 0 of the corpus made with `seed`; the values are the 16-bit samples divided by
    32768, so "mixture" is exactly the sum of the four stems, as in the written files.
    """
    track = render_track(seed, 0, seconds, None if soundfont is None else [soundfont])
    return {name: (ints.astype(np.float32) / FULL_SCALE) for name, ints in track.stems.items()}
