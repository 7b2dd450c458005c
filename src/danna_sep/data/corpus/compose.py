"""Song composition: tempo, key, form, chords and the notes of every part.

Everything here is pure: a `numpy.random.Generator` goes in, a `Song` (notes in seconds,
General MIDI programs, mix settings) comes out. Nothing reads files or makes sound, so a
song is fully decided before any rendering starts and the same generator state always
gives the same song.

Times are composed in beats (4/4 bars), pushed through the track's swing, converted to
seconds at the tempo, then humanised per note (timing and velocity jitter).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Literal, Optional, Sequence, Tuple

import numpy as np

from .synth import LEAD_PATCHES, PAD_PATCHES, PATCH_INDEX, SYNTH_BANK

Stem = Literal["drums", "bass", "other", "vocals"]
Mode = Literal["major", "minor", "dorian", "mixolydian"]

BEATS_PER_BAR = 4
KEY_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
SCALES: Dict[str, Tuple[int, ...]] = {
    "major": (0, 2, 4, 5, 7, 9, 11),
    "minor": (0, 2, 3, 5, 7, 8, 10),
    "dorian": (0, 2, 3, 5, 7, 9, 10),
    "mixolydian": (0, 2, 4, 5, 7, 9, 10),
}
MODE_WEIGHTS = {"major": 0.48, "minor": 0.38, "dorian": 0.07, "mixolydian": 0.07}

# Progressions as 0-based scale degrees; the chords are the diatonic triads (or sevenths)
# of the mode, so every progression fits every key.
PROGRESSIONS: Dict[str, Tuple[Tuple[int, ...], ...]] = {
    "major": ((0, 4, 5, 3), (0, 5, 3, 4), (5, 3, 0, 4), (0, 3, 4, 3), (0, 3, 0, 4),
              (1, 4, 0, 0), (0, 2, 3, 4), (3, 4, 0, 5), (0, 3, 5, 4), (0, 4, 3, 4)),
    "minor": ((0, 5, 2, 6), (0, 3, 4, 0), (0, 6, 5, 6), (0, 3, 6, 2), (5, 6, 0, 0),
              (0, 5, 3, 4), (0, 2, 6, 3), (0, 3, 0, 6)),
    "dorian": ((0, 3, 0, 3), (0, 6, 3, 0), (0, 2, 3, 0), (0, 3, 6, 0)),
    "mixolydian": ((0, 6, 3, 0), (0, 3, 6, 3), (0, 6, 0, 3), (0, 4, 6, 3)),
}
PRE_PROGRESSIONS = ((3, 4), (5, 4), (3, 5), (1, 4), (5, 3))

# Song forms; a track is an excerpt that starts at some section of its form.
FORMS = (
    ("intro", "verse", "chorus", "verse", "chorus", "bridge", "chorus", "chorus"),
    ("intro", "verse", "pre", "chorus", "verse", "pre", "chorus", "breakdown", "chorus"),
    ("verse", "verse", "chorus", "verse", "chorus", "bridge", "chorus"),
    ("intro", "chorus", "verse", "chorus", "breakdown", "verse", "chorus", "chorus"),
)
SECTION_ENERGY = {"intro": 0, "verse": 1, "pre": 1, "chorus": 2, "bridge": 1, "breakdown": 0}

# General MIDI programs per accompaniment family (0-based program numbers).
FAMILIES: Dict[str, Tuple[int, ...]] = {
    "piano": (0, 1, 2, 4, 5),
    "guitar": (24, 25, 26, 27, 28, 29, 30),
    "organ": (16, 17, 18),
    "strings": (48, 49, 50, 51),
    "pad": (88, 89, 90, 92, 93, 95),
    # Overdriven and distortion guitars, played as power chords and put through an amp.
    "drive": (29, 30),
    # The numpy synthesizer's pads, leads, plucks and stabs (bank SYNTH_BANK).
    "synth": tuple(PATCH_INDEX[name] for name in PAD_PATCHES + LEAD_PATCHES),
}
SUSTAINED_FAMILIES = ("organ", "strings", "pad")
VOCAL_DOUBLING_PROGRAMS = (52, 53, 54)  # Choir Aahs, Voice Oohs, Synth Voice
# Bank 128 drum kits of the General MIDI / GS layout (FluidR3_GM has all of them).
DRUM_KITS = {"standard": 0, "room": 8, "power": 16, "electronic": 24, "tr808": 25, "jazz": 32, "brush": 40}


@dataclass(frozen=True)
class Genre:
    """How a genre biases the composer: tempo, grooves, bass and accompaniment."""

    name: str
    tempo: Tuple[int, int]
    drum_styles: Dict[str, float]
    bass: Dict[Tuple[int, int], float]  # (bank, program) -> weight
    bass_styles: Dict[str, float]
    families: Dict[str, float]  # the first accompaniment part
    second: Dict[str, float]  # the second one (it may repeat the first family: double-tracking)
    second_p: float
    kits: Optional[Tuple[str, ...]] = None  # drum kits, instead of the groove's usual ones
    programs: Optional[Dict[str, Tuple[int, ...]]] = None  # per family, instead of FAMILIES
    swing_p: float = 0.15


_SYNTH_BASS = {(SYNTH_BANK, PATCH_INDEX[name]): w for name, w in
               (("acid_bass", 0.2), ("reese_bass", 0.2), ("sub_bass", 0.3), ("808", 0.3))}
GENRES: Dict[str, Genre] = {
    "pop": Genre(
        "pop", (84, 132),
        {"pop": 0.3, "rock": 0.15, "disco": 0.15, "halftime": 0.1, "ballad": 0.1, "hiphop": 0.1, "shuffle": 0.1},
        {(0, 33): 0.3, (0, 34): 0.2, (0, 32): 0.1, (0, 35): 0.05, (0, 38): 0.15, (0, 39): 0.1,
         (SYNTH_BANK, PATCH_INDEX["sub_bass"]): 0.1},
        {"whole": 0.12, "eighths": 0.25, "root_fifth": 0.18, "octave": 0.1, "walking": 0.05, "syncopated": 0.2,
         "arp": 0.1},
        {"piano": 0.3, "guitar": 0.3, "synth": 0.15, "organ": 0.05, "strings": 0.1, "pad": 0.05, "drive": 0.05},
        {"strings": 0.25, "pad": 0.2, "synth": 0.2, "guitar": 0.15, "piano": 0.1, "organ": 0.1}, 0.6),
    "rock": Genre(
        "rock", (92, 160),
        {"rock": 0.55, "halftime": 0.2, "pop": 0.15, "shuffle": 0.1},
        {(0, 34): 0.4, (0, 33): 0.4, (0, 35): 0.1, (0, 32): 0.1},
        {"eighths": 0.45, "root_fifth": 0.2, "octave": 0.15, "whole": 0.1, "syncopated": 0.1},
        {"drive": 0.7, "guitar": 0.15, "piano": 0.05, "organ": 0.1},
        {"drive": 0.5, "guitar": 0.2, "organ": 0.15, "strings": 0.1, "piano": 0.05}, 0.75,
        kits=("standard", "room", "power")),
    "electronic": Genre(
        "electronic", (96, 132),
        {"disco": 0.35, "hiphop": 0.25, "pop": 0.25, "halftime": 0.15},
        {**_SYNTH_BASS, (0, 38): 0.15, (0, 39): 0.15},
        {"eighths": 0.2, "syncopated": 0.3, "octave": 0.2, "whole": 0.15, "arp": 0.15},
        {"synth": 0.75, "pad": 0.1, "piano": 0.15},
        {"synth": 0.6, "pad": 0.25, "strings": 0.15}, 0.85,
        kits=("electronic", "tr808"), programs={"piano": (4, 5)}, swing_p=0.1),
    "ballad": Genre(
        "ballad", (60, 86),
        {"ballad": 0.7, "halftime": 0.15, "pop": 0.15},
        {(0, 33): 0.4, (0, 32): 0.25, (0, 35): 0.25, (0, 34): 0.1},
        {"whole": 0.35, "root_fifth": 0.35, "eighths": 0.1, "walking": 0.05, "arp": 0.15},
        {"piano": 0.6, "guitar": 0.3, "strings": 0.1},
        {"strings": 0.5, "pad": 0.25, "guitar": 0.1, "piano": 0.15}, 0.75,
        programs={"guitar": (24, 25)}, swing_p=0.05),
    "funk": Genre(
        "funk", (88, 116),
        {"funk": 0.6, "disco": 0.25, "shuffle": 0.15},
        {(0, 36): 0.35, (0, 37): 0.25, (0, 33): 0.3, (0, 38): 0.1},
        {"syncopated": 0.55, "octave": 0.25, "eighths": 0.1, "walking": 0.1},
        {"guitar": 0.45, "piano": 0.3, "organ": 0.25},
        {"organ": 0.25, "piano": 0.2, "guitar": 0.2, "synth": 0.15, "strings": 0.2}, 0.75,
        programs={"guitar": (27, 28), "piano": (4, 5, 0)}, swing_p=0.25),
}
GENRE_WEIGHTS: Dict[str, float] = {"pop": 0.3, "rock": 0.25, "electronic": 0.17, "ballad": 0.13, "funk": 0.15}

DRUM_STYLES = ("rock", "pop", "disco", "funk", "halftime", "ballad", "shuffle", "hiphop")
STYLE_KITS = {
    "rock": ("standard", "room", "power"), "pop": ("standard", "room", "electronic"),
    "disco": ("standard", "electronic", "room"), "funk": ("standard", "room"),
    "halftime": ("standard", "power", "room"), "ballad": ("standard", "jazz", "brush", "room"),
    "shuffle": ("standard", "jazz", "room"), "hiphop": ("tr808", "electronic", "standard"),
}
BASS_STYLES = ("whole", "eighths", "root_fifth", "octave", "walking", "syncopated", "arp")

# General MIDI drum keys.
KICK, SIDE_STICK, SNARE, CLAP, CLOSED_HAT, PEDAL_HAT, OPEN_HAT = 36, 37, 38, 39, 42, 44, 46
CRASH, RIDE, TAMBOURINE, CRASH2, SHAKER = 49, 51, 54, 57, 70
TOMS = (50, 48, 47, 45, 43, 41)  # high to low

# One-syllable words the singer draws from (sung one word per note).
LEXICON = (
    "love", "night", "heart", "fire", "dream", "home", "light", "rain", "sky", "run", "stay",
    "go", "know", "fall", "call", "high", "time", "way", "day", "say", "feel", "real", "gold",
    "cold", "road", "soul", "free", "see", "be", "me", "you", "we", "all", "now", "down",
    "town", "blue", "true", "sun", "one", "hold", "on", "tell", "why", "away", "baby", "fly",
    "shine", "mine", "alone", "tonight", "never", "oh", "yeah", "come", "back", "world",
    "stars", "burn", "wait",
)
ESPEAK_VOICES: Dict[str, Tuple[str, ...]] = {
    "male": ("m1", "m2", "m3", "m4", "m6", "m7"),
    "female": ("f1", "f2", "f3", "f4", "f5"),
}
# Sung languages: espeak-ng voice, its one-syllable lexicon, and how often songs use it.
# Most released songs are in English; the rest give other vowels and consonants.
LEXICONS: Dict[str, Tuple[str, ...]] = {
    "en-us": LEXICON,
    "en-gb": LEXICON,
    "cmn-latn-pinyin": ("wo3", "ni3", "ai4", "xin1", "tian1", "meng4", "feng1", "yu3", "qing2", "lei4", "ye4",
                        "xiang3", "yue4", "liang4", "hua1", "shui3", "zou3", "lai2", "ge1", "hai3", "shan1",
                        "yun2", "xing1", "guang1", "chun1", "qiu1", "ren2", "sheng1", "de5", "ta1", "men5",
                        "kan4", "shuo1", "wang4", "ji4", "yi1", "ge4", "hen3", "xi3", "huan1", "bu4", "zai4"),
    "es": ("sol", "mar", "luz", "voy", "yo", "tu", "paz", "fue", "sin", "mas", "ver", "ser", "hoy", "amor",
           "cielo", "noche", "vida", "alma", "fuego", "corazon", "quiero", "siempre", "nunca", "baila"),
    "it": ("amore", "cuore", "notte", "sole", "mare", "vita", "sempre", "ancora", "canto", "stella", "luna",
           "io", "tu", "per", "non", "ma", "che", "sei", "mio", "dolce", "cielo", "bella"),
    "pt-br": ("amor", "saudade", "vida", "noite", "mar", "sol", "luz", "voce", "eu", "sem", "mais", "sonho",
              "lua", "coracao", "danca", "canto", "tempo", "nunca"),
}
LANGUAGE_WEIGHTS: Dict[str, float] = {"en-us": 0.45, "en-gb": 0.15, "cmn-latn-pinyin": 0.15, "es": 0.1, "it": 0.08,
                                      "pt-br": 0.07}


@dataclass(frozen=True)
class Note:
    """One MIDI note, in seconds from the start of the track."""

    start: float
    end: float
    pitch: int
    velocity: int


@dataclass(frozen=True)
class SungNote:
    """One sung syllable: a note of the vocal melody with its word."""

    start: float
    end: float
    pitch: int
    velocity: int
    word: str


@dataclass
class Part:
    """One instrument on one MIDI channel; several parts may make one stem."""

    name: str
    stem: Stem
    bank: int
    program: int
    style: str
    notes: List[Note] = field(default_factory=list)
    pan: int = 64  # CC10, 0 left .. 127 right
    volume: int = 100  # CC7
    reverb: int = 40  # CC91: reverb send, set per part on purpose (FluidSynth's default is on)
    role: str = ""  # what the mix engineer treats it as (production.draw_part_chain)

    def describe(self) -> dict:
        return {"name": self.name, "stem": self.stem, "bank": self.bank, "program": self.program,
                "style": self.style, "pan": self.pan, "volume": self.volume, "reverb": self.reverb,
                "role": self.role, "notes": len(self.notes)}


@dataclass(frozen=True)
class Chord:
    root: int  # pitch class 0..11
    intervals: Tuple[int, ...]  # semitones above the root, starting with 0
    symbol: str  # roman numeral in the mode, e.g. "vi" or "IVmaj7"

    @property
    def pitch_classes(self) -> Tuple[int, ...]:
        return tuple((self.root + i) % 12 for i in self.intervals)


@dataclass
class Section:
    kind: str
    start_bar: int
    bars: int  # bars inside the excerpt
    full_bars: int  # bars of the whole section (it may be cut by the end of the excerpt)
    progression: Tuple[Chord, ...]
    bars_per_chord: float
    energy: int

    @property
    def start_beat(self) -> float:
        return float(self.start_bar * BEATS_PER_BAR)

    @property
    def end_bar(self) -> int:
        return self.start_bar + self.bars


@dataclass
class BackingLine:
    """A second sung line in the vocals stem: a harmony a third or so from the lead, or a
    double of it (the same words a few milliseconds off), panned to one side."""

    kind: str  # "harmony" | "double"
    notes: List[SungNote]
    espeak_voice: str
    formant_shift: float
    pan: float  # -1 left .. 1 right
    gain_db: float  # relative to the lead


@dataclass
class VocalPlan:
    """The sung melody and how the vocals stem is made from it."""

    notes: List[SungNote]
    voice_type: str  # male | female
    espeak_voice: str  # espeak-ng voice, e.g. "en-us+f3"
    formant_shift: float  # spectral envelope stretch (>1 brighter, <1 darker)
    vibrato_hz: float
    vibrato_cents: float
    low: int
    high: int
    doubling: Optional[Part]  # a General MIDI voice patch playing the melody, or None
    doubling_gain_db: float  # level of the doubling relative to the sung words
    reverb_wet: float  # 0..1 share of the vocal reverb
    reverb_seconds: float  # RT60 of the vocal reverb
    language: str = "en-us"
    breath_db: float = -28.0  # level of the breaths before phrases, relative to the singing
    backing: List[BackingLine] = field(default_factory=list)


@dataclass
class Song:
    seconds: float
    tempo: int
    key: int
    mode: str
    swing: float
    sections: List[Section]
    parts: List[Part]  # drums, bass, accompaniment (and the vocal doubling, if any)
    vocals: VocalPlan
    reverb_room: float  # FluidSynth reverb room size for the whole track
    reverb_damping: float
    genre: str = "pop"

    @property
    def key_name(self) -> str:
        return KEY_NAMES[self.key]

    def parts_of(self, stem: Stem) -> List[Part]:
        return [p for p in self.parts if p.stem == stem]

    def describe(self) -> dict:
        heard = [n for n in self.vocals.notes if n.start < self.seconds]
        return {
            "genre": self.genre, "tempo": self.tempo, "key": self.key_name, "mode": self.mode, "swing": round(self.swing, 4),
            "sections": [{"kind": s.kind, "start_bar": s.start_bar, "bars": s.bars,
                          "progression": [c.symbol for c in s.progression],
                          "bars_per_chord": s.bars_per_chord} for s in self.sections],
            "parts": [p.describe() for p in self.parts],
            "vocals": {
                "voice_type": self.vocals.voice_type, "espeak_voice": self.vocals.espeak_voice,
                "formant_shift": round(self.vocals.formant_shift, 4),
                "range": [self.vocals.low, self.vocals.high], "notes": len(heard),
                "words": sorted({n.word for n in heard}),
                "doubling_program": None if self.vocals.doubling is None else self.vocals.doubling.program,
                "doubling_gain_db": round(self.vocals.doubling_gain_db, 2),
                "reverb_wet": round(self.vocals.reverb_wet, 3),
                "reverb_seconds": round(self.vocals.reverb_seconds, 3),
                "language": self.vocals.language, "breath_db": round(self.vocals.breath_db, 2),
                "backing": [{"kind": b.kind, "espeak_voice": b.espeak_voice, "notes": len(b.notes),
                             "pan": round(b.pan, 3), "gain_db": round(b.gain_db, 2)} for b in self.vocals.backing],
            },
        }


# --------------------------------------------------------------------------- harmony


_NUMERALS = ("I", "II", "III", "IV", "V", "VI", "VII")


def diatonic_chord(key: int, mode: str, degree: int, seventh: bool = False, major_five: bool = False) -> Chord:
    """The triad (or seventh chord) built in thirds on `degree` of the mode."""
    scale = SCALES[mode]
    steps = (0, 2, 4, 6) if seventh else (0, 2, 4)
    absolute = [scale[(degree + s) % 7] + 12 * ((degree + s) // 7) for s in steps]
    intervals = [a - absolute[0] for a in absolute]
    if major_five and degree == 4:  # harmonic-minor dominant: raise the third
        intervals[1] = 4
    third, fifth = intervals[1], intervals[2]
    numeral = _NUMERALS[degree]
    if third == 4:
        symbol = numeral
    elif fifth == 6:
        symbol = numeral.lower() + "°"
    else:
        symbol = numeral.lower()
    if seventh:
        symbol += "maj7" if intervals[3] == 11 else "7"
    return Chord(root=(key + scale[degree]) % 12, intervals=tuple(intervals), symbol=symbol)


class Clock:
    """Beats to seconds at a fixed tempo, with swing on the off-beat eighths."""

    def __init__(self, tempo: float, swing: float) -> None:
        self.beat_seconds = 60.0 / tempo
        self.swing = swing  # where the off-beat eighth falls within the beat: 0.5 is straight

    def seconds(self, beat: float) -> float:
        whole = math.floor(beat)
        frac = beat - whole
        if self.swing != 0.5:
            s = self.swing
            frac = frac * 2 * s if frac < 0.5 else s + (frac - 0.5) * 2 * (1 - s)
        return (whole + frac) * self.beat_seconds


@dataclass
class _Context:
    """What every part composer needs: timing, harmony over time and the form."""

    rng: np.random.Generator
    seconds: float
    tempo: int
    key: int
    mode: str
    clock: Clock
    sections: List[Section]
    total_bars: int
    chord_spans: List[Tuple[float, float, Chord]]  # (start beat, end beat, chord)
    genre: Genre = None  # type: ignore[assignment]

    def chord_at(self, beat: float) -> Chord:
        for start, end, chord in self.chord_spans:
            if start <= beat < end:
                return chord
        return self.chord_spans[-1][2]

    def next_chord_after(self, beat: float) -> Chord:
        for start, end, chord in self.chord_spans:
            if start > beat:
                return chord
        return self.chord_spans[-1][2]

    def chord_starts_in(self, bar: int) -> List[float]:
        lo, hi = bar * BEATS_PER_BAR, (bar + 1) * BEATS_PER_BAR
        return [s for s, _, _ in self.chord_spans if lo <= s < hi]

    def section_of(self, bar: int) -> Section:
        for section in self.sections:
            if section.start_bar <= bar < section.end_bar:
                return section
        return self.sections[-1]

    @property
    def scale_pcs(self) -> Tuple[int, ...]:
        return tuple((self.key + s) % 12 for s in SCALES[self.mode])

    def time(self, beat: float, jitter_ms: float = 0.0) -> float:
        """Seconds for a beat position, with Gaussian timing jitter (humanisation)."""
        offset = self.rng.normal(0.0, jitter_ms) / 1000.0 if jitter_ms > 0 else 0.0
        return max(0.0, self.clock.seconds(beat) + offset)

    def velocity(self, base: float, spread: float) -> int:
        return int(np.clip(round(base + self.rng.normal(0.0, spread)), 1, 127))


def _choice(rng: np.random.Generator, options: Sequence, weights: Optional[Sequence[float]] = None):
    """Pick one element (any type) with optional weights, normalised here."""
    if weights is None:
        return options[int(rng.integers(len(options)))]
    p = np.asarray(weights, dtype=np.float64)
    return options[int(rng.choice(len(options), p=p / p.sum()))]


# --------------------------------------------------------------------------- form


def _plan_sections(rng: np.random.Generator, key: int, mode: str, tempo: int, total_bars: int,
                   short: bool) -> List[Section]:
    form = _choice(rng, FORMS)
    seventh = bool(rng.random() < 0.3)
    major_five = mode == "minor" and bool(rng.random() < 0.4)

    def progression(degrees: Sequence[int]) -> Tuple[Chord, ...]:
        return tuple(diatonic_chord(key, mode, d, seventh=seventh and rng.random() < 0.5,
                                    major_five=major_five) for d in degrees)

    verse = progression(_choice(rng, PROGRESSIONS[mode]))
    chorus = verse if rng.random() < 0.3 else progression(_choice(rng, PROGRESSIONS[mode]))
    bridge = progression(_choice(rng, PROGRESSIONS[mode]))
    pre = progression(_choice(rng, PRE_PROGRESSIONS))
    progressions = {"intro": _choice(rng, (verse, chorus)), "verse": verse, "pre": pre,
                    "chorus": chorus, "bridge": bridge, "breakdown": chorus}
    # Fast songs change chords less often per bar, slow songs more often.
    fast = tempo >= 115
    harmonic = {kind: float(_choice(rng, (0.5, 1.0, 2.0), (0.1, 0.7, 0.2) if fast else (0.25, 0.65, 0.1)))
                for kind in progressions}
    harmonic["pre"] = min(harmonic["pre"], 1.0)
    lengths = {"intro": int(_choice(rng, (2, 4))), "verse": int(_choice(rng, (8, 8, 4))), "pre": 4,
               "chorus": 8, "bridge": int(_choice(rng, (4, 8))), "breakdown": int(_choice(rng, (2, 4)))}

    # Where the excerpt starts in the form: at the top, or anywhere (short clips never
    # start in an intro or breakdown so that every stem sounds within them).
    candidates = [i for i, kind in enumerate(form) if not short or kind not in ("intro", "breakdown")]
    position = 0 if (not short and rng.random() < 0.35) else int(_choice(rng, candidates))
    sections: List[Section] = []
    bar = 0
    while bar < total_bars:
        kind = form[position % len(form)]
        position += 1
        if short and kind in ("intro", "breakdown"):
            continue
        full = lengths[kind]
        bars = min(full, total_bars - bar)
        sections.append(Section(kind=kind, start_bar=bar, bars=bars, full_bars=full,
                                progression=progressions[kind], bars_per_chord=harmonic[kind],
                                energy=SECTION_ENERGY[kind]))
        bar += bars
    return sections


def _chord_spans(sections: Sequence[Section]) -> List[Tuple[float, float, Chord]]:
    spans = []
    for section in sections:
        step = section.bars_per_chord * BEATS_PER_BAR
        count = int(math.ceil(section.bars * BEATS_PER_BAR / step))
        for i in range(count):
            start = section.start_beat + i * step
            end = min(start + step, section.start_beat + section.bars * BEATS_PER_BAR)
            spans.append((start, end, section.progression[i % len(section.progression)]))
    return spans


# --------------------------------------------------------------------------- drums


def _drum_bar(rng: np.random.Generator, style: str, energy: int, variant: int) -> Dict[int, List[Tuple[float, float]]]:
    """One bar of a groove: drum key -> [(16th step, velocity)]."""
    hits: Dict[int, List[Tuple[float, float]]] = {}

    def add(key: int, steps: Sequence[float], vel: float) -> None:
        hits.setdefault(key, []).extend((float(s), vel) for s in steps)

    backbeat = SNARE
    if style == "rock":
        add(KICK, [0, 8] + ([10] if variant % 2 else [6, 10][: variant % 3]), 108)
        add(backbeat, [4, 12], 110)
        hat_steps = range(0, 16, 2)
    elif style == "pop":
        add(KICK, [0, 7, 8] if variant % 2 == 0 else [0, 6, 10], 105)
        add(CLAP if variant % 4 == 3 else SNARE, [4, 12], 108)
        hat_steps = range(0, 16, 1) if energy >= 1 else range(0, 16, 2)
    elif style == "disco":
        add(KICK, [0, 4, 8, 12], 110)
        add(SNARE, [4, 12], 104)
        add(OPEN_HAT, [2, 6, 10, 14], 85)
        hat_steps = [0, 4, 8, 12] if energy < 2 else [0, 1, 3, 4, 5, 7, 8, 9, 11, 12, 13, 15]
    elif style == "funk":
        pool = [3, 6, 10, 11, 14]
        extra = sorted(int(s) for s in rng.choice(pool, size=2, replace=False))
        add(KICK, [0] + extra, 106)
        add(SNARE, [4, 12], 112)
        ghosts = [s for s in (1, 7, 9, 13, 15) if rng.random() < 0.35]
        add(SNARE, ghosts, 34)
        hat_steps = range(0, 16, 1)
    elif style == "halftime":
        add(KICK, [0] + ([10, 11] if variant % 2 else [7]), 108)
        add(SNARE, [8], 115)
        hat_steps = range(0, 16, 2)
    elif style == "ballad":
        add(KICK, [0] + ([10] if variant % 2 else []), 96)
        add(SNARE if energy >= 2 else SIDE_STICK, [4, 12], 92)
        hat_steps = range(0, 16, 2)
    elif style == "shuffle":
        add(KICK, [0, 8] + ([14] if variant % 2 else []), 104)
        add(SNARE, [4, 12], 106)
        hat_steps = range(0, 16, 2)
    else:  # hiphop
        add(KICK, [0, 3, 10] if variant % 2 == 0 else [0, 7, 10, 11], 112)
        add(CLAP if variant % 3 == 0 else SNARE, [4, 12], 110)
        hat_steps = range(0, 16, 2) if rng.random() < 0.6 else range(0, 16, 1)

    if energy == 0:  # intros and breakdowns: a lighter groove
        hat_steps = range(0, 16, 4)
        hits[KICK] = [h for h in hits.get(KICK, []) if h[0] in (0.0, 8.0)]
    ride = energy == 2 and style in ("rock", "ballad", "shuffle") and variant >= 2
    cymbal = RIDE if ride else CLOSED_HAT
    for step in hat_steps:
        accent = 88 if step % 4 == 0 else (72 if step % 2 == 0 else 55)
        hits.setdefault(cymbal, []).append((float(step), accent))
    if energy == 2 and style in ("rock", "pop", "halftime") and variant == 3:
        hits.setdefault(OPEN_HAT, []).append((14.0, 80))
    return hits


def _fill(rng: np.random.Generator, beats: int) -> Dict[int, List[Tuple[float, float]]]:
    """A fill over the last `beats` beats of a bar."""
    start = 16 - 4 * beats
    steps = list(range(start, 16))
    kind = _choice(rng, ("snare", "toms", "mixed", "eighths"))
    hits: Dict[int, List[Tuple[float, float]]] = {}
    for i, step in enumerate(steps):
        vel = 70 + 45 * (i + 1) / len(steps)
        if kind == "snare":
            key = SNARE
        elif kind == "toms":
            key = TOMS[min(len(TOMS) - 1, i * len(TOMS) // len(steps))]
        elif kind == "mixed":
            key = SNARE if i < len(steps) // 2 else TOMS[min(len(TOMS) - 1, 2 + (i - len(steps) // 2))]
        else:
            if step % 2:
                continue
            key = SNARE
        hits.setdefault(key, []).append((float(step), vel))
    hits.setdefault(KICK, []).append((float(start), 100))
    return hits


def _compose_drums(ctx: _Context, allow_tacet: bool) -> Tuple[Part, Dict[int, List[float]]]:
    rng = ctx.rng
    style = _choice(rng, tuple(ctx.genre.drum_styles), tuple(ctx.genre.drum_styles.values()))
    kit_name = _choice(rng, ctx.genre.kits or STYLE_KITS[style])
    part = Part(name="drums", stem="drums", bank=128, program=DRUM_KITS[kit_name], style=f"{style}/{kit_name}",
                pan=64, volume=100, reverb=int(rng.integers(15, 60)), role="drums")
    jitter = float(rng.uniform(2.0, 7.0))  # ms: how tight the drummer is
    snare_lag = float(rng.uniform(0.0, 8.0))  # ms: laid-back backbeat
    vel_spread = float(rng.uniform(3.0, 8.0))
    percussion = _choice(rng, (None, TAMBOURINE, SHAKER), (0.6, 0.2, 0.2))
    kicks: Dict[int, List[float]] = {}
    tacet_bars = set()
    for section in ctx.sections:
        if allow_tacet and section.kind == "breakdown" and rng.random() < 0.5:
            tacet_bars.update(range(section.start_bar, section.end_bar))
        if allow_tacet and section.kind == "intro" and rng.random() < 0.25:
            tacet_bars.update(range(section.start_bar, section.start_bar + min(2, section.bars)))
    crash_next = True  # a crash on the first downbeat
    for bar in range(ctx.total_bars):
        section = ctx.section_of(bar)
        in_section = bar - section.start_bar
        if bar in tacet_bars:
            crash_next = True
            continue
        variant = in_section % 4
        hits = _drum_bar(rng, style, section.energy, variant)
        last_of_section = in_section == section.full_bars - 1
        if (last_of_section and rng.random() < 0.85) or (in_section % 4 == 3 and rng.random() < 0.3):
            fill = _fill(rng, int(_choice(rng, (1, 2), (0.65, 0.35))))
            start = min(s for v in fill.values() for s, _ in v)
            hits = {k: [h for h in v if h[0] < start] for k, v in hits.items()}
            for k, v in fill.items():
                hits.setdefault(k, []).extend(v)
            next_crash = True
        else:
            next_crash = False
        if crash_next and section.energy >= 1 or (in_section == 0 and section.energy == 2):
            hits.setdefault(_choice(rng, (CRASH, CRASH2)), []).append((0.0, 112))
            hits = {k: (v if k not in (CLOSED_HAT, RIDE) else [h for h in v if h[0] != 0.0]) for k, v in hits.items()}
        crash_next = next_crash
        if percussion is not None and section.energy == 2:
            for step in range(0, 16, 2):
                hits.setdefault(percussion, []).append((float(step), 70 if step % 4 else 82))
        kicks[bar] = sorted(s for s, _ in hits.get(KICK, []))
        energy_gain = (-12.0, 0.0, 6.0)[section.energy]
        for key, events in hits.items():
            for step, vel in events:
                beat = bar * BEATS_PER_BAR + step / 4.0
                lag = snare_lag if key in (SNARE, CLAP, SIDE_STICK) else 0.0
                start = ctx.time(beat, jitter) + lag / 1000.0
                part.notes.append(Note(start, start + 0.12, key, ctx.velocity(vel + energy_gain, vel_spread)))
    return part, kicks


# --------------------------------------------------------------------------- bass


def _bass_pitch(pc: int, low: int) -> int:
    return low + (pc - low) % 12


def _compose_bass(ctx: _Context, kicks: Dict[int, List[float]], allow_tacet: bool) -> Part:
    rng = ctx.rng
    style = _choice(rng, tuple(ctx.genre.bass_styles), tuple(ctx.genre.bass_styles.values()))
    bank, program = _choice(rng, tuple(ctx.genre.bass), tuple(ctx.genre.bass.values()))
    role = "synth_bass" if bank == SYNTH_BANK else "slap_bass" if program in (36, 37) else "bass"
    part = Part(name="bass", stem="bass", bank=bank, program=program, style=style,
                pan=int(rng.integers(58, 71)), volume=100, reverb=int(rng.integers(0, 20)), role=role)
    low = int(rng.integers(28, 34))  # E1 .. A1: the lowest root of the line
    legato = float(rng.uniform(0.75, 0.97))
    jitter = float(rng.uniform(2.0, 6.0))
    tacet_bars = set()
    for section in ctx.sections:
        if allow_tacet and section.kind in ("intro", "breakdown") and rng.random() < 0.45:
            tacet_bars.update(range(section.start_bar, section.end_bar))
    for bar in range(ctx.total_bars):
        if bar in tacet_bars:
            continue
        section = ctx.section_of(bar)
        bar_style = "whole" if section.energy == 0 and style not in ("whole", "walking") else style
        onsets: List[Tuple[float, float, str]] = []  # (beat in bar, length in beats, role)
        if bar_style == "whole":
            starts = sorted(set([0.0] + [s - bar * BEATS_PER_BAR for s in ctx.chord_starts_in(bar)]))
            bounds = starts + [4.0]
            onsets = [(starts[i], bounds[i + 1] - starts[i], "root") for i in range(len(starts))]
        elif bar_style == "eighths":
            onsets = [(i * 0.5, 0.5, "root") for i in range(8)]
            if rng.random() < 0.3:
                onsets[-1] = (3.5, 0.5, "approach")
        elif bar_style == "root_fifth":
            onsets = [(0, 1, "root"), (1, 1, "root"), (2, 1, "fifth"), (3, 1, _choice(rng, ("root", "octave", "approach")))]
        elif bar_style == "octave":
            onsets = [(i * 0.5, 0.5, "root" if i % 2 == 0 else "octave") for i in range(8)]
        elif bar_style == "walking":
            onsets = [(0, 1, "root"), (1, 1, "tone"), (2, 1, "tone"), (3, 1, "approach")]
        elif bar_style == "syncopated":
            steps = kicks.get(bar) or [0.0, 8.0]
            steps = sorted(set(steps) | ({14.0} if rng.random() < 0.4 else set()))
            bounds = steps + [16.0]
            onsets = [(steps[i] / 4, min(2.0, (bounds[i + 1] - steps[i]) / 4),
                       "root" if i == 0 or rng.random() < 0.7 else _choice(rng, ("fifth", "octave")))
                      for i in range(len(steps))]
        else:  # arp
            roles = ("root", "third", "fifth", "octave", "fifth", "third", "root", "fifth")
            onsets = [(i * 0.5, 0.5, roles[i]) for i in range(8)]
        prev = None
        for offset, length, role in onsets:
            beat = bar * BEATS_PER_BAR + offset
            chord = ctx.chord_at(beat)
            root = _bass_pitch(chord.root, low)
            if role == "fifth":
                pitch = root + chord.intervals[2]
                if pitch > low + 19:
                    pitch -= 12
            elif role == "third":
                pitch = root + chord.intervals[1]
            elif role == "octave":
                pitch = root + 12
            elif role == "tone":
                pitch = root + int(_choice(rng, chord.intervals[1:] + (12,)))
            elif role == "approach":
                target = _bass_pitch(ctx.next_chord_after(beat).root, low)
                pitch = target + int(_choice(rng, (-1, 1, -2, 2)))
            else:
                pitch = root
            accent = 104 if offset == 0 else (94 if offset == int(offset) else 84)
            start = ctx.time(beat, jitter)
            end = ctx.time(beat + length * legato, jitter / 2)
            if prev is not None and start <= prev:
                continue
            prev = start
            part.notes.append(Note(start, max(end, start + 0.05), int(pitch), ctx.velocity(accent, 6)))
    return part


# --------------------------------------------------------------------------- accompaniment


def _voicing(chord: Chord, center: int, voices: int, previous: Optional[List[int]]) -> List[int]:
    """Close-position voicing near `center`, moving as little as possible from `previous`."""
    pcs = list(chord.pitch_classes)
    while len(pcs) < voices:
        pcs.append(pcs[len(pcs) % len(chord.intervals)])
    best, best_cost = None, math.inf
    for inversion in range(len(chord.intervals)):
        order = pcs[inversion:] + pcs[:inversion]
        for base in range(center - 12, center + 1):
            if base % 12 != order[0]:
                continue
            notes = [base]
            for pc in order[1:]:
                nxt = notes[-1] + 1
                while nxt % 12 != pc:
                    nxt += 1
                notes.append(nxt)
            cost = abs(sum(notes) / len(notes) - center)
            if previous is not None and len(previous) == len(notes):
                cost += 0.5 * sum(abs(a - b) for a, b in zip(sorted(previous), notes))
            if cost < best_cost:
                best, best_cost = notes, cost
    assert best is not None
    return best


def _guitar_voicing(chord: Chord, low: int, power: bool) -> List[int]:
    """A strummed shape: the root low, then chord tones stacked upward over ~2 octaves."""
    root = low + (chord.root - low) % 12
    if power:
        return [root, root + 7, root + 12]
    notes = [root]
    pcs = chord.pitch_classes
    i = 1
    while len(notes) < 6 and notes[-1] < root + 24:
        nxt = notes[-1] + 3
        while nxt % 12 not in pcs:
            nxt += 1
        notes.append(nxt)
        i += 1
    return notes


STRUM_PATTERNS = ("D-DU-UDU", "D-D-D-D-", "D--UD-DU", "DUDUDUDU", "D---D---", "D-DUD-DU", "--D---D-")
COMP_PATTERNS = (
    ((0, 1.5), (1.5, 1.0), (2.5, 1.5)),
    ((0, 1.0), (1, 1.0), (2, 1.0), (3, 1.0)),
    ((0.5, 0.5), (1.5, 0.5), (2.5, 0.5), (3.5, 0.5)),
    ((0, 0.75), (0.75, 0.75), (1.5, 1.0), (3, 0.5), (3.5, 0.5)),
    ((0, 2.0), (2, 1.5), (3.5, 0.5)),
)


def _family_patterns(family: str, program: int) -> Tuple[str, ...]:
    if family == "synth":
        if program in tuple(PATCH_INDEX[name] for name in PAD_PATCHES):
            return ("sustain",)
        return ("arp", "arp", "comp", "ostinato")
    if family == "drive":
        return ("power",)
    if family == "piano":
        return ("block", "comp", "arp", "ballad")
    if family == "guitar":
        if program in (29, 30):
            return ("power",)
        if program == 28:
            return ("muted",)
        return ("strum", "strum", "picking", "skank")
    if family == "organ":
        return ("sustain", "sustain", "skank")
    if family == "strings":
        return ("sustain", "sustain", "ostinato")
    return ("sustain",)


def _compose_accompaniment(ctx: _Context, family: str, index: int, allow_tacet: bool,
                           enters_in_chorus: bool) -> Part:
    rng = ctx.rng
    programs = (ctx.genre.programs or {}).get(family, FAMILIES[family])
    program = int(_choice(rng, programs))
    pattern = _choice(rng, _family_patterns(family, program))
    centers = {"piano": (60, 72), "guitar": (55, 67), "organ": (57, 70), "strings": (60, 76), "pad": (55, 70),
               "drive": (52, 60), "synth": (57, 74)}
    center = int(rng.integers(*centers[family]))
    pan = int(rng.integers(28, 100))
    if index == 1:  # the second part sits on the other side
        pan = 128 - pan
    reverb_range = {"piano": (25, 70), "guitar": (20, 60), "organ": (20, 60), "strings": (50, 95), "pad": (50, 95),
                    "drive": (10, 40), "synth": (30, 80)}
    if family == "synth":
        is_pad = program in tuple(PATCH_INDEX[name] for name in PAD_PATCHES)
        role = "pad" if is_pad else "synth"
    else:
        role = {"piano": "keys", "guitar": "guitar", "organ": "organ", "strings": "strings", "pad": "pad",
                "drive": "guitar_drive"}[family]
    part = Part(name=f"{family}{index + 1}", stem="other", bank=SYNTH_BANK if family == "synth" else 0,
                program=program, style=pattern, pan=pan,
                volume=100 if index == 0 else int(rng.integers(62, 100)),
                reverb=int(rng.integers(*reverb_range[family])), role=role)
    voices = int(_choice(rng, (3, 4, 4, 5)))
    jitter = float(rng.uniform(3.0, 9.0))
    base_vel = float(rng.uniform(62, 92))
    strum_ms = float(rng.uniform(6.0, 18.0))
    strum = _choice(rng, STRUM_PATTERNS)
    comp = _choice(rng, COMP_PATTERNS)
    arp_step = 0.5 if ctx.tempo > 110 or rng.random() < 0.5 else 0.25
    previous: Optional[List[int]] = None

    def add(beat: float, length: float, pitches: Sequence[int], vel: float, spread_ms: float = 0.0,
            downward: bool = False) -> None:
        start = ctx.time(beat, jitter)
        end = ctx.clock.seconds(beat + length)
        order = list(pitches)[::-1] if downward else list(pitches)
        for i, pitch in enumerate(order):
            onset = start + i * spread_ms / 1000.0
            if end - onset > 0.03:
                part.notes.append(Note(onset, end, int(pitch), ctx.velocity(vel, 5)))

    for bar in range(ctx.total_bars):
        section = ctx.section_of(bar)
        if enters_in_chorus and section.kind != "chorus":
            continue
        if allow_tacet and section.kind == "intro" and index == 0 and family not in SUSTAINED_FAMILIES \
                and bar - section.start_bar < 1 and rng.random() < 0.3:
            continue
        vel = base_vel + (-10, 0, 8)[section.energy]
        b0 = bar * BEATS_PER_BAR
        if pattern in ("sustain",):
            for start, end, chord in ctx.chord_spans:
                if b0 <= start < b0 + BEATS_PER_BAR:
                    previous = _voicing(chord, center, voices, previous)
                    add(start, (end - start) * 0.98, previous, vel)
        elif pattern == "block":
            for offset in ((0.0, 2.0) if section.energy else (0.0,)):
                chord = ctx.chord_at(b0 + offset)
                previous = _voicing(chord, center, voices, previous)
                add(b0 + offset, (2.0 if section.energy else 4.0) * 0.95, previous, vel)
        elif pattern in ("comp", "ostinato", "skank"):
            if pattern == "comp":
                rhythm = comp
            elif pattern == "ostinato":  # repeated short chords on every eighth
                rhythm = tuple((i * 0.5, 0.35) for i in range(8))
            elif ctx.tempo > 100:  # skank: stabs on the backbeats at fast tempos...
                rhythm = ((1.0, 0.4), (3.0, 0.4))
            else:  # ...on every off-beat eighth at slow ones
                rhythm = tuple((i + 0.5, 0.3) for i in range(4))
            for offset, length in rhythm:
                chord = ctx.chord_at(b0 + offset)
                previous = _voicing(chord, center, voices, previous)
                add(b0 + offset, length, previous, vel + (6 if offset == 0 else 0))
        elif pattern == "ballad":
            for offset in (0.0, 2.0):
                chord = ctx.chord_at(b0 + offset)
                root = 36 + (chord.root - 36) % 12
                add(b0 + offset, 1.9, [root, root + 12], vel)
                previous = _voicing(chord, center, 3, previous)
                for eighth in range(4):
                    add(b0 + offset + eighth * 0.5, 0.45, previous, vel - 14 - 4 * (eighth % 2))
        elif pattern == "arp":
            steps = int(BEATS_PER_BAR / arp_step)
            for i in range(steps):
                beat = b0 + i * arp_step
                chord = ctx.chord_at(beat)
                tones = _voicing(chord, center, 3, None)
                ladder = tones + [t + 12 for t in tones]
                up_down = ladder + ladder[-2:0:-1]
                add(beat, arp_step * 1.8, [up_down[i % len(up_down)]], vel - (0 if i % 4 == 0 else 8))
        elif pattern in ("strum", "power", "muted"):
            low = 40 if pattern != "power" else int(rng.integers(40, 46))
            for i, stroke in enumerate(strum):
                if stroke not in "DU":
                    continue
                offset = i * 0.5
                nxt = next((j for j in range(i + 1, 8) if strum[j] in "DU"), 8)
                length = (nxt - i) * 0.5 * (0.45 if pattern == "muted" else 0.95)
                chord = ctx.chord_at(b0 + offset)
                shape = _guitar_voicing(chord, low, power=pattern == "power")
                if stroke == "U":
                    shape = shape[-4:]
                add(b0 + offset, length, shape, vel - (10 if stroke == "U" else 0),
                    spread_ms=strum_ms, downward=stroke == "U")
        else:  # picking: guitar arpeggio over a strummed shape
            for i in range(8):
                beat = b0 + i * 0.5
                chord = ctx.chord_at(beat)
                shape = _guitar_voicing(chord, 40, power=False)
                order = (0, 2, 3, 4, 1, 3, 4, 2)
                add(beat, 0.9, [shape[order[i] % len(shape)]], vel - (0 if i % 2 == 0 else 8))
    return part


# --------------------------------------------------------------------------- vocals


def _melody_scale(ctx: _Context, chord: Chord) -> Tuple[int, ...]:
    """The mode's scale, with a note a semitone from a chord tone bent onto the chord tone."""
    pcs = set(ctx.scale_pcs)
    for pc in chord.pitch_classes:
        if pc not in pcs:
            for neighbour in ((pc - 1) % 12, (pc + 1) % 12):
                pcs.discard(neighbour)
            pcs.add(pc)
    return tuple(sorted(pcs))


def _phrase_rhythm(rng: np.random.Generator, beats: float, tempo: int) -> List[Tuple[float, float]]:
    """Onsets and lengths (in beats) of the notes of one phrase, leaving a rest at its end."""
    start = float(_choice(rng, (0.0, 0.5, 1.0, 1.5), (0.4, 0.25, 0.2, 0.15)))
    end = beats - float(_choice(rng, (1.0, 1.5, 2.0), (0.45, 0.25, 0.3)))
    min_beats = 0.16 * tempo / 60.0  # shorter than ~160 ms is too short for a word
    lengths = (0.5, 1.0, 1.5, 2.0)
    events: List[Tuple[float, float]] = []
    pos = start
    while pos < end - 1e-9:
        if events and rng.random() < 0.08:
            pos += 0.5
            continue
        length = float(_choice(rng, lengths, (0.45, 0.32, 0.12, 0.11)))
        length = min(length, end - pos)
        if length < min_beats and events:
            prev_start, prev_len = events[-1]
            events[-1] = (prev_start, prev_len + length)
            break
        events.append((pos, length))
        pos += length
    if not events:
        events.append((start, max(min_beats, 1.0)))
    return events


def _phrase_pitches(ctx: _Context, rhythm: Sequence[Tuple[float, float]], base_beat: float, low: int, high: int,
                    center: float, previous: int) -> List[int]:
    rng = ctx.rng
    pitches = []
    for i, (offset, length) in enumerate(rhythm):
        beat = base_beat + offset
        chord = ctx.chord_at(beat)
        strong = abs(offset - round(offset)) < 1e-6 and (round(offset) % 2 == 0 or length >= 1.0)
        last = i == len(rhythm) - 1
        pcs = chord.pitch_classes if (strong or last) else _melody_scale(ctx, chord)
        if last:
            pcs = chord.pitch_classes[:2]
        candidates = np.array([p for p in range(low, high + 1) if p % 12 in pcs])
        if candidates.size == 0:
            candidates = np.arange(low, high + 1)
        leap = np.abs(candidates - previous)
        weights = np.exp(-leap / 2.2) * np.exp(-np.abs(candidates - center) / 5.0)
        weights[leap > 7] *= 0.1
        weights[leap == 0] *= 0.6
        pitch = int(candidates[int(rng.choice(candidates.size, p=weights / weights.sum()))])
        pitches.append(pitch)
        previous = pitch
    return pitches


def _compose_vocals(ctx: _Context, short: bool) -> VocalPlan:
    rng = ctx.rng
    voice_type = _choice(rng, ("male", "female"))
    variant = _choice(rng, ESPEAK_VOICES[voice_type])
    language = _choice(rng, tuple(LANGUAGE_WEIGHTS), tuple(LANGUAGE_WEIGHTS.values()))
    lexicon = LEXICONS[language]
    low = (48 if voice_type == "male" else 55) + int(rng.integers(0, 5))
    high = low + int(rng.integers(14, 18))
    jitter = float(rng.uniform(5.0, 15.0))
    phrase_bars = int(_choice(rng, (1, 2, 2, 2)))
    cache: Dict[Tuple[str, int], List[Tuple[float, float, int, int, str]]] = {}
    notes: List[SungNote] = []
    previous = (low + high) // 2
    for s_index, section in enumerate(ctx.sections):
        if section.kind in ("intro", "breakdown"):
            continue
        key = (section.kind, section.full_bars)
        if key not in cache:
            lift = {"chorus": 3.0, "pre": 1.5, "bridge": 1.0}.get(section.kind, -1.0)
            center = (low + high) / 2 + lift
            motif = _phrase_rhythm(rng, phrase_bars * BEATS_PER_BAR, ctx.tempo)
            events: List[Tuple[float, float, int, int, str]] = []
            first_phrase: Optional[List[Tuple[float, float, int, int, str]]] = None
            for p, bar in enumerate(range(0, section.full_bars, phrase_bars)):
                # A phrase may rest (vocals silent for a bar or two), never the first one.
                if p > 0 and rng.random() < 0.15 and not (short and s_index == 0):
                    continue
                base = section.start_beat + bar * BEATS_PER_BAR
                if p % 2 == 1 and rng.random() < 0.6:
                    rhythm = _phrase_rhythm(rng, phrase_bars * BEATS_PER_BAR, ctx.tempo)
                else:
                    rhythm = motif
                if p == 2 and first_phrase is not None and rng.random() < 0.5:
                    # Melodies repeat: the third phrase takes the first one's line when the
                    # chords under it are the same.
                    same = all(ctx.chord_at(section.start_beat + o) == ctx.chord_at(base + o)
                               for o, _, _, _, _ in first_phrase)
                    if same:
                        events.extend((bar * BEATS_PER_BAR + o, l, pi, v, w) for o, l, pi, v, w in first_phrase)
                        previous = first_phrase[-1][2]
                        continue
                pitches = _phrase_pitches(ctx, rhythm, base, low, high, center, previous)
                previous = pitches[-1]
                words = [lexicon[int(rng.integers(len(lexicon)))] for _ in rhythm]
                phrase = [(bar * BEATS_PER_BAR + o, l, pi, int(np.clip(88 + (8 if i == 0 else 0) + rng.normal(0, 6), 40, 120)), w)
                          for i, ((o, l), pi, w) in enumerate(zip(rhythm, pitches, words))]
                if first_phrase is None:
                    first_phrase = [(o - bar * BEATS_PER_BAR, l, pi, v, w) for o, l, pi, v, w in phrase]
                events.extend(phrase)
            cache[key] = events
        for offset, length, pitch, velocity, word in cache[key]:
            if offset >= section.bars * BEATS_PER_BAR:
                continue
            beat = section.start_beat + offset
            start = ctx.time(beat, jitter)
            end = ctx.clock.seconds(beat + length) - 0.03
            if notes and start < notes[-1].end:
                start = notes[-1].end + 0.01
            if end - start > 0.08:
                notes.append(SungNote(start, end, pitch, velocity, word))

    doubling: Optional[Part] = None
    # A GM choir or synth voice under the lead, in the vocals stem: some records have one,
    # most real vocal stems do not.
    if rng.random() < 0.25:
        program = int(_choice(rng, VOCAL_DOUBLING_PROGRAMS, (0.4, 0.4, 0.2)))
        doubling = Part(name="vocal_doubling", stem="vocals", bank=0, program=program, style="unison",
                        pan=64, volume=100, reverb=int(rng.integers(40, 90)),
                        notes=[Note(n.start, n.end, n.pitch, n.velocity) for n in notes], role="vocal_patch")
    backing = _compose_backing(ctx, notes, voice_type, language, low, high)
    return VocalPlan(
        notes=notes, voice_type=voice_type, espeak_voice=f"{language}+{variant}",
        formant_shift=float(rng.uniform(0.88, 1.1) if voice_type == "male" else rng.uniform(0.96, 1.22)),
        vibrato_hz=float(rng.uniform(4.5, 6.8)), vibrato_cents=float(rng.uniform(15.0, 70.0)),
        low=low, high=high, doubling=doubling, doubling_gain_db=float(rng.uniform(-18.0, -8.0)),
        reverb_wet=float(rng.uniform(0.08, 0.3)), reverb_seconds=float(rng.uniform(0.7, 2.0)),
        language=language, breath_db=float(rng.uniform(-34.0, -20.0)), backing=backing,
    )


def _harmony_pitch(ctx: _Context, pitch: int, beat: float, above: bool) -> int:
    """The chord tone (else scale tone) nearest a third above or below `pitch`."""
    chord = set(ctx.chord_at(beat).pitch_classes)
    scale = set(ctx.scale_pcs)
    candidates = [pitch + d for d in ((3, 4, 5, 2) if above else (-3, -4, -5, -2))]
    for pool in (chord, scale):
        for c in candidates:
            if c % 12 in pool:
                return c
    return candidates[0]


def _compose_backing(ctx: _Context, lead: Sequence[SungNote], voice_type: str, language: str,
                     low: int, high: int) -> List[BackingLine]:
    """Backing vocals: harmonies in the choruses and doubles of the lead, as on records."""
    rng = ctx.rng
    lines: List[BackingLine] = []
    chorus_spans = [(ctx.clock.seconds(s.start_beat), ctx.clock.seconds(s.start_beat + s.bars * BEATS_PER_BAR))
                    for s in ctx.sections if s.kind in ("chorus", "pre")]
    if rng.random() < 0.45 and chorus_spans:
        above = rng.random() < 0.7
        other_type = voice_type if rng.random() < 0.6 else ("female" if voice_type == "male" else "male")
        voice = f"{language}+{_choice(rng, ESPEAK_VOICES[other_type])}"
        notes = []
        for n in lead:
            if any(a <= n.start < b for a, b in chorus_spans):
                beat = n.start / ctx.clock.beat_seconds
                pitch = _harmony_pitch(ctx, n.pitch, beat, above)
                if other_type != voice_type:
                    pitch += 12 if other_type == "female" else -12
                offset = rng.normal(0.0, 0.012)
                notes.append(SungNote(max(0.0, n.start + offset), n.end + offset, pitch, max(30, n.velocity - 10),
                                      n.word))
        if notes:
            side = float(rng.uniform(0.3, 0.8)) * (1 if rng.random() < 0.5 else -1)
            for copy in range(2 if rng.random() < 0.5 else 1):  # stacked on both sides
                lines.append(BackingLine("harmony", notes, voice, float(rng.uniform(0.9, 1.15)),
                                         side * (1 if copy == 0 else -1), float(rng.uniform(-12.0, -5.0))))
    if rng.random() < 0.3:
        notes = [SungNote(max(0.0, n.start + rng.normal(0.0, 0.015)), n.end + rng.normal(0.0, 0.015),
                          n.pitch, n.velocity, n.word) for n in lead]
        notes = [n for n in notes if n.end - n.start > 0.08]
        voice = f"{language}+{_choice(rng, ESPEAK_VOICES[voice_type])}"
        lines.append(BackingLine("double", notes, voice, float(rng.uniform(0.95, 1.08)),
                                 float(rng.uniform(-0.7, 0.7)), float(rng.uniform(-10.0, -4.0))))
    return lines


# --------------------------------------------------------------------------- the song


def _sounds_early(notes: Sequence, seconds: float) -> bool:
    """Whether some note starts early enough to be heard within the excerpt."""
    return any(n.start < seconds - 0.3 for n in notes)


def compose(rng: np.random.Generator, seconds: float, genre: Optional[str] = None) -> Song:
    """Compose a song of `seconds` (the excerpt is cut from a longer form) from `rng`, in
    `genre` (one of GENRES; drawn from `rng` when None)."""
    if seconds <= 0:
        raise ValueError(f"seconds must be positive, not {seconds}")
    drawn = _choice(rng, tuple(GENRE_WEIGHTS), tuple(GENRE_WEIGHTS.values()))
    genre = drawn if genre is None else genre
    if genre not in GENRES:
        raise ValueError(f"genre must be one of {', '.join(GENRES)}, not {genre!r}")
    profile = GENRES[genre]
    tempo = int(rng.integers(profile.tempo[0], profile.tempo[1] + 1))
    key = int(rng.integers(12))
    mode = _choice(rng, tuple(MODE_WEIGHTS), tuple(MODE_WEIGHTS.values()))
    swing = float(rng.uniform(0.58, 0.66)) if rng.random() < profile.swing_p else 0.5
    clock = Clock(tempo, swing)
    bar_seconds = BEATS_PER_BAR * 60.0 / tempo
    total_bars = int(math.ceil(seconds / bar_seconds)) + 1  # one more for notes across the end
    short = seconds < 16.0
    sections = _plan_sections(rng, key, mode, tempo, total_bars, short)
    ctx = _Context(rng=rng, seconds=seconds, tempo=tempo, key=key, mode=mode, clock=clock, sections=sections,
                   total_bars=total_bars, chord_spans=_chord_spans(sections), genre=profile)
    drums, kicks = _compose_drums(ctx, allow_tacet=not short)
    if drums.style.startswith("shuffle") and swing == 0.5:
        # A shuffle groove swings the whole band: re-time with a swung clock.
        ctx.clock = Clock(tempo, float(rng.uniform(0.6, 0.67)))
        drums, kicks = _compose_drums(ctx, allow_tacet=not short)
    if not _sounds_early(drums.notes, seconds):
        drums, kicks = _compose_drums(ctx, allow_tacet=False)
    bass = _compose_bass(ctx, kicks, allow_tacet=not short)
    if not _sounds_early(bass.notes, seconds):
        bass = _compose_bass(ctx, kicks, allow_tacet=False)

    first = _choice(rng, tuple(profile.families), tuple(profile.families.values()))
    accompaniment = [_compose_accompaniment(ctx, first, 0, allow_tacet=not short, enters_in_chorus=False)]
    if rng.random() < profile.second_p:
        second = _choice(rng, tuple(profile.second), tuple(profile.second.values()))
        enters = not short and rng.random() < 0.3 and any(s.kind == "chorus" for s in sections)
        accompaniment.append(_compose_accompaniment(ctx, second, 1, allow_tacet=not short, enters_in_chorus=enters))
    if not _sounds_early([n for p in accompaniment for n in p.notes], seconds):
        accompaniment[0] = _compose_accompaniment(ctx, first, 0, allow_tacet=False, enters_in_chorus=False)

    vocals = _compose_vocals(ctx, short)
    parts = [drums, bass, *accompaniment]
    if vocals.doubling is not None:
        parts.append(vocals.doubling)
    return Song(seconds=seconds, tempo=tempo, key=key, mode=mode, swing=ctx.clock.swing, sections=sections,
                parts=parts, vocals=vocals, reverb_room=float(rng.uniform(0.2, 0.8)),
                reverb_damping=float(rng.uniform(0.2, 0.6)), genre=genre)
