"""The multitrack corpus generator: composed songs rendered stem by stem.

Songs are composed from a seed (tempo, key and mode, form, chord progressions, drums
with fills, bass lines, one or two accompaniment parts, a sung melody with lyrics),
each stem is rendered apart through a General MIDI soundfont with FluidSynth, vocals are
sung by espeak-ng words re-timed and re-pitched with the WORLD vocoder, and the mixture
is the exact integer sum of the 16-bit stems.

    generate_corpus(out, tracks, seconds, seed)   # MUSDB18-HQ layout on disk
    render_track(seed, index, seconds)            # one track in memory (int16 + meta)
    render_song(seed, seconds)                    # float32 (2, samples) stems + mixture

Needs the `corpus` extra (pyfluidsynth, pyworld) and the programs/files of the Debian
packages libfluidsynth3, fluid-soundfont-gm and espeak-ng.
"""

from .generate import CorpusReport, TrackExistsError, check_dependencies, generate_corpus, subset_of, track_name
from .render import DEFAULT_SOUNDFONT, CorpusError, DependencyError, SoundfontError
from .track import GENERATOR_VERSION, RenderedTrack, render_song, render_track

__all__ = [
    "DEFAULT_SOUNDFONT",
    "GENERATOR_VERSION",
    "CorpusError",
    "CorpusReport",
    "DependencyError",
    "RenderedTrack",
    "SoundfontError",
    "TrackExistsError",
    "check_dependencies",
    "generate_corpus",
    "render_song",
    "render_track",
    "subset_of",
    "track_name",
]
