"""One track: compose from the seed, render every stem apart, balance, quantise."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from ... import SAMPLERATE, SOURCES
from .compose import GENRES, Part, Song, compose
from .mix import FULL_SCALE, active_seconds, balance, loudness_db, quantise
from .production import LIGHT_SHARE, apply_chain, draw_bus_chain, draw_part_chain, lighten, normalise
from .render import (
    DEFAULT_SOUNDFONT,
    CorpusError,
    check_soundfont,
    renderer_for,
    soundfont_sha256,
)
from .synth import SYNTH_BANK, PATCHES, render_synth_part
from .vocals import breaths, sing

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

#: Bumped whenever the same seed would give different audio; part of the resume check.
GENERATOR_VERSION = 3
MAX_SECONDS = 3600.0

#: The soundfonts a corpus draws from when none are named: FluidR3_GM (required) and, where
#: their Debian packages are installed, TimGM6mb, MuseScore General and the two recorded
#: acoustic kits of AVLdrums (drums only).
OPTIONAL_SOUNDFONTS = (
    Path("/usr/share/sounds/sf2/TimGM6mb.sf2"),
    Path("/usr/share/sounds/sf3/MuseScore_General_Full.sf3"),
    Path("/usr/share/sounds/sf2/Black_Pearl_4_LV2.sf2"),
    Path("/usr/share/sounds/sf2/Red_Zeppelin_4_LV2.sf2"),
)


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
    names = ("soundfont", "compose", "vocals", "mix", "production", "style")
    children = np.random.SeedSequence([int(seed), int(index)]).spawn(len(names))
    return {name: np.random.default_rng(child) for name, child in zip(names, children)}


def resolve_soundfonts(soundfonts: Optional[Sequence[PathLike]]) -> List[Path]:
    """The soundfont paths, each checked; SoundfontError otherwise. Default: FluidR3_GM and
    whichever of OPTIONAL_SOUNDFONTS are installed."""
    if soundfonts:
        return [check_soundfont(p) for p in soundfonts]
    return [check_soundfont(DEFAULT_SOUNDFONT)] + [p for p in OPTIONAL_SOUNDFONTS if p.is_file()]


def choose_soundfont(rng: np.random.Generator, count: int) -> int:
    """Index of the soundfont a track uses among `count`, from the track's own stream for
    this choice (so that passing more soundfonts changes the sound, not the song)."""
    return int(rng.integers(count))


def _fonts_for(part: Part, fonts: Sequence[Path]) -> List[Path]:
    """The soundfonts that can play `part`: any for drums, those with melodic presets otherwise."""
    if part.bank == 128:
        return list(fonts)
    melodic = [f for f in fonts if not renderer_for(f).kit_only]
    if not melodic:
        raise CorpusError(f"no soundfont among {', '.join(f.name for f in fonts)} has melodic presets")
    return melodic


def _volume_db(part: Part) -> float:
    """MIDI volume (CC7) as a gain, on the usual 40 log10 curve, 100 being 0 dB."""
    return 40.0 * float(np.log10(max(part.volume, 1) / 100.0))


def _play(part: Part, font: Optional[Path], samples: int) -> np.ndarray:
    if part.bank == SYNTH_BANK:
        audio = render_synth_part(part.notes, part.program, samples)
        position = (part.pan - 64) / 64.0
        return apply_chain([{"effect": "pan", "position": position}], audio) if position else audio
    return renderer_for(font).render([part], samples, None)


def render_track(seed: int, index: int, seconds: float,
                 soundfonts: Optional[Sequence[PathLike]] = None, genre: Optional[str] = None) -> RenderedTrack:
    """Compose and render track `index` of the corpus made with `seed`.

    The result depends only on (seed, index, seconds, the soundfont files, `genre`): stems
    are int16 `(channels=2, samples)` at 44.1 kHz, exactly `round(seconds * 44100)` long,
    and "mixture" is their exact integer sum; no file peaks above 0.9 of full scale.
    Every part is rendered alone (FluidSynth with a soundfont drawn for it, or the numpy
    synthesizer), brought to a reference level and put through its own effect chain;
    the parts of a stem are summed and the stem through a bus chain; the mix balances
    the stems. `genre` (one of compose.GENRES) is drawn from the seed when None.
    """
    if not 0 < seconds <= MAX_SECONDS:
        raise ValueError(f"seconds must be in (0, {MAX_SECONDS:g}], not {seconds}")
    if genre is not None and genre not in GENRES:
        raise ValueError(f"genre must be one of {', '.join(GENRES)}, not {genre!r}")
    fonts = resolve_soundfonts(soundfonts)
    rngs = track_rngs(seed, index)
    song = compose(rngs["compose"], seconds, genre)
    samples = int(round(seconds * SAMPLERATE))
    fx = rngs["production"]

    chosen: Dict[str, Optional[Path]] = {}
    for part in song.parts:
        if part.bank == SYNTH_BANK:
            chosen[part.name] = None
        else:
            candidates = _fonts_for(part, fonts)
            chosen[part.name] = candidates[choose_soundfont(rngs["soundfont"], len(candidates))]
    # Chains are drawn in full whatever the style, so a light mix differs from its produced
    # twin only in the time effects and reverb levels, not in every later draw.
    style = "light" if rngs["style"].random() < LIGHT_SHARE else "produced"
    shape = lighten if style == "light" else list

    def draw(role: str) -> list:
        return shape(draw_part_chain(fx, role, song.genre, song.tempo))

    chains = {part.name: draw(part.role) for part in song.parts}
    buses = {stem: draw_bus_chain(fx, stem) for stem in SOURCES}

    def produce(part: Part) -> np.ndarray:
        audio = normalise(_play(part, chosen[part.name], samples)) * 10 ** (_volume_db(part) / 20)
        return apply_chain(chains[part.name], audio)

    float_stems: Dict[str, np.ndarray] = {}
    for stem in ("drums", "bass", "other"):
        mixed = sum(produce(part) for part in song.parts_of(stem))
        float_stems[stem] = apply_chain(buses[stem], mixed)

    plan = song.vocals
    lead = sing(plan, samples, rngs["vocals"])
    sung_rms = float(np.sqrt(np.mean(lead.astype(np.float64) ** 2) / max(1e-9, (np.abs(lead) > 1e-4).mean())))
    lead = lead + breaths(plan, samples, rngs["vocals"], sung_rms)
    lead_chain = draw("vocal_lead")
    vocals = apply_chain(lead_chain, normalise(np.stack([lead, lead])))
    lines = []
    for line in plan.backing:
        sung = sing(replace(plan, notes=line.notes, espeak_voice=line.espeak_voice, formant_shift=line.formant_shift,
                            vibrato_cents=plan.vibrato_cents * 0.6, backing=[]), samples, rngs["vocals"])
        chain = [{"effect": "pan", "position": line.pan}] + draw("vocal_backing")
        voice = normalise(np.stack([sung, sung])) * 10 ** (line.gain_db / 20)
        vocals = vocals + apply_chain(chain, voice)
        lines.append({"kind": line.kind, "chain": chain})
    if plan.doubling is not None:
        doubling = normalise(_play(plan.doubling, chosen[plan.doubling.name], samples))
        doubling = apply_chain(chains[plan.doubling.name], doubling * 10 ** (plan.doubling_gain_db / 20))
        vocals = vocals + doubling
    float_stems["vocals"] = apply_chain(buses["vocals"], vocals)
    for stem, audio in float_stems.items():
        if not np.isfinite(audio).all():
            raise CorpusError(f"track {seed}/{index}: the {stem} stem has non-finite samples")

    scaled, gains, levels = balance({s: float_stems[s] for s in SOURCES}, rngs["mix"])
    stems = quantise(scaled)
    production = {"style": style, "parts": chains, "buses": buses, "vocal_lead": lead_chain, "vocal_backing": lines}
    meta = _describe(song, seed, index, seconds, samples, fonts, chosen, stems, gains, levels, production)
    return RenderedTrack(stems=stems, meta=meta, song=song)


def _describe(song: Song, seed: int, index: int, seconds: float, samples: int, fonts: Sequence[Path],
              chosen: Dict[str, Optional[Path]], stems: Dict[str, np.ndarray], gains: Dict[str, float],
              levels: Dict[str, float], production: dict) -> dict:
    description = song.describe()
    for part in description["parts"]:
        font = chosen[part["name"]]
        if font is None:
            part["soundfont"] = None
            part["preset"] = f"danna-sep synth: {PATCHES[part['program']].name}"
            continue
        renderer = renderer_for(font)
        bank, program = renderer.resolve_preset(part["bank"], part["program"])
        part["bank"], part["program"] = bank, program
        part["preset"] = renderer.preset_name(bank, program)
        part["soundfont"] = font.name
    levels = dict(levels)
    levels["mixture"] = loudness_db(stems["mixture"].astype(np.float64) / FULL_SCALE)
    return {
        "generator": "danna-sep corpus",
        "version": GENERATOR_VERSION,
        "seed": int(seed),
        "index": int(index),
        "samplerate": SAMPLERATE,
        "soundfonts": [{"name": f.name, "sha256": soundfont_sha256(f)} for f in fonts],
        **description,
        "programs": {p["name"]: {"bank": p["bank"], "program": p["program"], "preset": p["preset"],
                                 "soundfont": p["soundfont"]}
                     for p in description["parts"]},
        "production": production,
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


def render_song(seed: int, seconds: float, soundfont: Optional[PathLike] = None,
                genre: Optional[str] = None) -> Dict[str, np.ndarray]:
    """A realistic clip in memory: float32 `(channels=2, samples)` per stem and "mixture".

    Track 0 of the corpus made with `seed`; the values are the 16-bit samples divided by
    32768, so "mixture" is exactly the sum of the four stems, as in the written files.
    """
    track = render_track(seed, 0, seconds, None if soundfont is None else [soundfont], genre)
    return {name: (ints.astype(np.float32) / FULL_SCALE) for name, ints in track.stems.items()}
