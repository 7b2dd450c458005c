"""The corpus' studio layer: effect chains, the numpy synthesizer, and one render per genre."""

import json

import numpy as np
import pytest

from danna_sep import SOURCES
from danna_sep.data.corpus import compose as composer
from danna_sep.data.corpus import production, synth
from danna_sep.data.corpus.track import render_track

from test_corpus import needs_renderer

SR = 44100
ROLES = ("drums", "bass", "slap_bass", "synth_bass", "guitar_drive", "guitar", "keys", "organ", "strings", "pad",
         "synth", "vocal_lead", "vocal_backing", "vocal_patch")
pedalboard = pytest.importorskip("pedalboard")


def noise(seconds=1.0, seed=0):
    return np.random.default_rng(seed).standard_normal((2, int(seconds * SR))) * 0.1


def sine(hz, seconds=1.0, amplitude=0.5):
    t = np.arange(int(seconds * SR)) / SR
    return np.stack([amplitude * np.sin(2 * np.pi * hz * t)] * 2)


def band_energy(x, low, high):
    spectrum = np.abs(np.fft.rfft(x, axis=-1)) ** 2
    freqs = np.fft.rfftfreq(x.shape[-1], 1 / SR)
    return spectrum[..., (freqs >= low) & (freqs < high)].sum()


# --------------------------------------------------------------------------- chains


@pytest.mark.parametrize("role", ROLES)
def test_each_chain_is_drawn_and_applied_deterministically(role):
    chains = [production.draw_part_chain(np.random.default_rng(seed), role, genre, 120.0)
              for seed in range(6) for genre in ("pop", "rock")]
    again = [production.draw_part_chain(np.random.default_rng(seed), role, genre, 120.0)
             for seed in range(6) for genre in ("pop", "rock")]
    assert chains == again
    assert json.loads(json.dumps(chains)) == chains  # stored in meta.json as it is
    assert len({json.dumps(c) for c in chains}) > 1  # the seed changes the settings
    audio = production.normalise(noise(0.5))
    for chain in chains[:4]:
        assert all(step["effect"] in production.EFFECTS for step in chain)
        first = production.apply_chain(chain, audio)
        assert first.shape == audio.shape and first.dtype == np.float64 and np.isfinite(first).all()
        assert np.array_equal(first, production.apply_chain(chain, audio))
        assert np.abs(first).max() > 1e-4


def test_bus_chains_are_deterministic_and_never_reverberate():
    for stem in SOURCES:
        chains = [production.draw_bus_chain(np.random.default_rng(s), stem) for s in range(20)]
        assert chains == [production.draw_bus_chain(np.random.default_rng(s), stem) for s in range(20)]
        assert not {step["effect"] for c in chains for step in c} & {"reverb", "room", "delay"}


def test_normalise_reaches_the_reference_level_and_keeps_silence():
    audio = noise(2.0) * 0.01
    out = production.normalise(audio, -20.0)
    assert 20 * np.log10(np.sqrt(np.mean(out ** 2))) == pytest.approx(-20.0, abs=0.05)
    assert not production.normalise(np.zeros((2, 5000))).any()


def test_pan_and_width_known_answers():
    audio = noise(0.2)
    mono = np.stack([audio[0], audio[0]])
    left = production.pan(mono, -1.0)
    assert np.allclose(left[1], 0.0, atol=1e-12) and np.allclose(left[0], mono[0] * np.sqrt(2))
    centre = production.pan(mono, 0.0)
    assert np.allclose(centre, mono)  # constant power: unity at the centre
    for position in (-0.6, 0.3, 0.9):  # the total power of a centred mono signal is kept
        panned = production.pan(mono, position)
        assert (panned ** 2).sum() == pytest.approx((mono ** 2).sum(), rel=1e-9)
    assert np.allclose(production.apply_chain([{"effect": "width", "amount": 1.0}], audio), audio)
    collapsed = production.apply_chain([{"effect": "width", "amount": 0.0}], audio)
    assert np.allclose(collapsed[0], collapsed[1]) and np.allclose(collapsed[0], audio.mean(axis=0))


def test_gain_and_filters_do_what_they_say():
    audio = noise(1.0)
    assert np.allclose(production.apply_chain([{"effect": "gain", "db": -6.0206}], audio), audio / 2, atol=1e-6)
    low = production.apply_chain([{"effect": "lowpass", "hz": 500.0}], audio)
    assert band_energy(low, 5000, 20000) < 0.02 * band_energy(audio, 5000, 20000)
    high = production.apply_chain([{"effect": "highpass", "hz": 2000.0}], audio)
    assert band_energy(high, 20, 200) < 0.02 * band_energy(audio, 20, 200)


def test_drive_makes_harmonics_and_the_exciter_adds_air():
    tone = sine(220.0)
    for effect in ({"effect": "tube", "drive_db": 20.0, "bias": 0.2}, {"effect": "distortion", "drive_db": 25.0}):
        driven = production.apply_chain([effect], tone)
        # Harmonics appear at 440 / 660 Hz, where the sine had (almost) nothing.
        assert band_energy(driven, 400, 1400) > 0.05 * band_energy(driven, 200, 240), effect
        assert band_energy(tone, 400, 1400) < 1e-6 * band_energy(tone, 200, 240)
    voice = sine(3000.0, amplitude=0.3)
    excited = production.apply_chain([{"effect": "exciter", "hz": 2500.0, "amount": 0.1, "drive": 4.0}], voice)
    assert band_energy(excited, 8000, 16000) > 1e3 * band_energy(voice, 8000, 16000)
    assert np.allclose(band_energy(excited, 2900, 3100), band_energy(voice, 2900, 3100), rtol=0.3)


def test_room_impulse_is_normalised_and_decays():
    impulse = production.room_impulse(1.2, 20.0, 0.5, seed=3)
    assert impulse.shape[0] == 2 and np.allclose((impulse ** 2).sum(axis=1), 1.0)
    assert not impulse[:, : int(0.02 * SR) - 1].any()  # the pre-delay
    assert np.array_equal(impulse, production.room_impulse(1.2, 20.0, 0.5, seed=3))
    assert not np.array_equal(impulse[0], impulse[1])  # a wide tail
    early = (impulse[:, : SR // 4] ** 2).sum()
    late = (impulse[:, SR // 2: 3 * SR // 4] ** 2).sum()
    assert late < 0.1 * early
    wet = production.apply_chain([{"effect": "room", "seconds": 1.0, "predelay_ms": 10.0, "brightness": 0.5,
                                   "wet": 1.0, "seed": 1}], np.concatenate([np.ones((2, 1)), np.zeros((2, SR))], 1))
    assert np.abs(wet[:, : int(0.01 * SR) - 1]).max() < 1e-12 and np.abs(wet).max() > 0.01  # FFT round-off only


def test_unknown_effect_is_refused():
    with pytest.raises(ValueError, match="unknown effect"):
        production.apply_chain([{"effect": "flanger-of-doom"}], noise(0.1))
    with pytest.raises(ValueError, match="unknown part role"):
        production.draw_part_chain(np.random.default_rng(0), "kazoo", "pop", 100.0)


# --------------------------------------------------------------------------- synthesizer


def test_oscillators_are_in_tune_and_band_limited():
    freq = np.full(SR, 1000.0)
    for wave in ("sine", "saw", "square"):
        tone = synth.oscillator(wave, freq)
        spectrum = np.abs(np.fft.rfft(tone))
        assert np.argmax(spectrum) == 1000  # 1 Hz bins: the fundamental
    # polyBLEP: a 3 kHz saw has far less aliasing (energy off its harmonics) than the naive one.
    freq = np.full(SR, 3000.0)
    blep = synth.oscillator("saw", freq)
    naive = 2.0 * ((np.cumsum(freq / SR) - freq[0] / SR) % 1.0) - 1.0

    def off_harmonic(x):
        spectrum = np.abs(np.fft.rfft(x)) ** 2
        mask = np.ones_like(spectrum, dtype=bool)
        for k in range(1, 8):
            mask[k * 3000 - 3: k * 3000 + 4] = False
        return spectrum[mask].sum() / spectrum.sum()

    assert off_harmonic(blep) < 0.3 * off_harmonic(naive)


def test_synth_notes_have_their_length_pitch_and_envelope():
    for patch in synth.PATCHES:
        note = synth.render_note(patch, 57, 100, 0.5)
        assert note.shape == (2, int(0.5 * SR) + int(patch.release * SR)) and np.isfinite(note).all()
        assert np.abs(note).max() > 0.01
        assert np.abs(note[:, -64:]).max() < 0.1 * np.abs(note).max()  # released
    lead = synth.render_note(synth.PATCHES[synth.PATCH_INDEX["square_lead"]], 69, 100, 1.0)
    spectrum = np.abs(np.fft.rfft(lead[0, : SR // 2]))
    assert abs(np.argmax(spectrum) * 2 - 440) <= 4  # 2 Hz bins
    kick = synth.render_note(synth.PATCHES[synth.PATCH_INDEX["808"]], 36, 110, 0.5)
    # The 808 starts an octave above its note and falls onto it.
    crossings = lambda x: np.count_nonzero(np.diff(np.signbit(x)))  # noqa: E731
    assert crossings(kick[0, :1000]) > crossings(kick[0, 8000:9000])
    part = synth.render_synth_part([composer.Note(0.1, 0.3, 60, 90), composer.Note(0.5, 0.9, 64, 90)],
                                   synth.PATCH_INDEX["pluck"], SR)
    assert part.dtype == np.float32 and part.shape == (2, SR)
    assert not part[:, : int(0.1 * SR) - 1].any() and np.abs(part[:, int(0.1 * SR):]).max() > 0


# --------------------------------------------------------------------------- one render per genre


@needs_renderer
@pytest.mark.parametrize("genre", sorted(composer.GENRES))
def test_one_render_per_genre_sums_exactly_and_never_clips(genre):
    track = render_track(21, 0, 3.0, genre=genre)
    stems = {name: ints.astype(np.int32) for name, ints in track.stems.items()}
    assert track.meta["genre"] == genre == track.song.genre
    assert np.array_equal(stems["mixture"], sum(stems[name] for name in SOURCES))
    for name, ints in stems.items():
        assert ints.shape == (2, 3 * SR)
        assert np.abs(ints).max() <= 0.9 * 32768, name
        assert np.sqrt((ints.astype(np.float64) ** 2).mean()) / 32768 > 10 ** (-50 / 20), f"{name} is silent"
    for part in track.meta["parts"]:
        assert part["preset"] and part["role"]
    assert set(track.meta["production"]["parts"]) == {p["name"] for p in track.meta["parts"]}


@needs_renderer
def test_a_render_is_the_same_twice():
    first = render_track(22, 3, 2.0, genre="electronic")
    second = render_track(22, 3, 2.0, genre="electronic")
    for name in first.stems:
        assert np.array_equal(first.stems[name], second.stems[name]), name
    assert first.meta == second.meta


def test_the_cabinet_is_steep_above_its_corner():
    audio = noise(1.0)
    cab = production.apply_chain([{"effect": "cabinet", "low_hz": 100.0, "high_hz": 4000.0}], audio)
    # Fourth order: about 48 dB down two octaves above the corner; a first-order filter is only 12.
    assert band_energy(cab, 15000, 17000) < 10 ** (-4.0) * band_energy(audio, 15000, 17000)
    assert band_energy(cab, 1000, 2000) > 0.8 * band_energy(audio, 1000, 2000)


def test_the_cli_knows_every_genre():
    from danna_sep.commands.corpus import GENRE_NAMES

    assert sorted(GENRE_NAMES) == sorted(composer.GENRES)


@needs_renderer
def test_corpus_genre_option_makes_songs_of_that_genre(tmp_path):
    from danna_sep.cli import main

    out = tmp_path / "funk"
    assert main(["corpus", str(out), "--tracks", "2", "--seconds", "2", "--seed", "3", "--genre", "funk", "-q"]) == 0
    metas = [json.loads(p.read_text()) for p in sorted(out.rglob("meta.json"))]
    assert [m["genre"] for m in metas] == ["funk", "funk"] and metas[0]["request"]["genre"] == "funk"


def test_the_filter_envelope_closes_a_pluck():
    pluck = synth.render_note(synth.PATCHES[synth.PATCH_INDEX["pluck"]], 48, 110, 0.6)[0]

    def brightness(x):
        return band_energy(x[None], 3000, 20000) / band_energy(x[None], 20, 20000)

    early, late = pluck[: int(0.03 * SR)], pluck[int(0.3 * SR): int(0.33 * SR)]
    assert brightness(early) > 3 * brightness(late)  # bright attack, dull tail (about 5x; 1x unfiltered)


def test_a_light_mix_keeps_tone_and_drops_time_effects():
    """lighten(): no delay, chorus or phaser; reverbs at 0.3 of their wet share; everything
    else as drawn, and the drawn chain itself untouched."""
    rng = np.random.default_rng(3)
    chains = [production.draw_part_chain(rng, role, "rock", 120.0) for role in ROLES for _ in range(6)]
    drawn = json.loads(json.dumps(chains))
    seen = set()
    for chain, original in zip(chains, drawn):
        light = production.lighten(chain)
        assert chain == original
        kept = [e for e in original if e["effect"] not in ("delay", "chorus", "phaser")]
        assert [e["effect"] for e in light] == [e["effect"] for e in kept]
        for before, after in zip(kept, light):
            seen.add(before["effect"])
            if before["effect"] in ("reverb", "room"):
                assert after["wet"] == pytest.approx(0.3 * before["wet"], abs=1e-3)
                assert {k: v for k, v in after.items() if k != "wet"} == {k: v for k, v in before.items() if k != "wet"}
            else:
                assert after == before
    assert {"reverb", "room", "compressor", "distortion"} <= seen


@needs_renderer
def test_some_tracks_are_mixed_light_and_their_meta_says_so():
    """The style is drawn per track from its own stream: a light track's chains hold no time
    effects."""
    styles = {}
    for index in range(8):
        track = render_track(23, index, 1.0)
        style = track.meta["production"]["style"]
        styles.setdefault(style, track)
        if style == "light":
            chains = list(track.meta["production"]["parts"].values()) + [track.meta["production"]["vocal_lead"]]
            assert not any(e["effect"] in ("delay", "chorus", "phaser") for chain in chains for e in chain)
    assert set(styles) == {"light", "produced"}
