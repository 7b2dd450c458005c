"""The multitrack corpus generator: composition, rendering, mixing, files and the CLI."""

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from danna_sep import SOURCES
from danna_sep.cli import main
from danna_sep.data.corpus import (
    DEFAULT_SOUNDFONT,
    DependencyError,
    check_dependencies,
    generate_corpus,
    render_song,
    subset_of,
    track_name,
)
from danna_sep.data.corpus import compose as composer
from danna_sep.data.corpus import mix, vocals
from danna_sep.data.corpus.production import EFFECTS
from danna_sep.data.corpus.track import choose_soundfont, resolve_soundfonts, track_rngs

SR = 44100
FILES = ("mixture", *SOURCES)


def _missing() -> str:
    """Why rendering cannot run here ('' when it can)."""
    try:
        check_dependencies()
    except DependencyError as exc:
        return str(exc)
    if not DEFAULT_SOUNDFONT.exists():
        return f"{DEFAULT_SOUNDFONT}: not installed (apt-get install fluid-soundfont-gm)"
    return ""


MISSING = _missing()
needs_renderer = pytest.mark.skipif(bool(MISSING), reason=f"corpus renderer unavailable: {MISSING}")


def read_ints(folder: Path, name: str) -> np.ndarray:
    data, rate = sf.read(str(folder / f"{name}.wav"), dtype="int16", always_2d=True)
    assert rate == SR
    return data.T.astype(np.int32)


# --------------------------------------------------------------------------- composition (pure)


def test_compose_is_deterministic_and_varied():
    songs = [composer.compose(track_rngs(3, i)["compose"], 30.0) for i in range(40)]
    again = composer.compose(track_rngs(3, 5)["compose"], 30.0)
    assert again.describe() == songs[5].describe()
    assert [n for p in again.parts for n in p.notes] == [n for p in songs[5].parts for n in p.notes]
    assert all(composer.GENRES[s.genre].tempo[0] <= s.tempo <= composer.GENRES[s.genre].tempo[1] for s in songs)
    assert {s.genre for s in songs} == set(composer.GENRES)
    assert len({s.mode for s in songs}) >= 3
    assert len({s.key for s in songs}) >= 8
    assert len({s.parts_of("drums")[0].style.split("/")[0] for s in songs}) >= 5
    assert len({s.parts_of("bass")[0].style for s in songs}) >= 5
    families = {p.name.rstrip("12") for s in songs for p in s.parts_of("other")}
    assert families >= set(composer.FAMILIES) - {"pad"}
    assert {len(s.parts_of("other")) for s in songs} == {1, 2}
    doubled = [s.vocals.doubling is not None for s in songs]
    assert any(doubled) and not all(doubled)
    for song in songs:
        for part in song.parts:
            for note in part.notes:
                assert 0 <= note.pitch <= 127 and 1 <= note.velocity <= 127 and note.end > note.start >= 0
        plan = song.vocals
        assert all(plan.low <= n.pitch <= plan.high and n.word in composer.LEXICONS[plan.language]
                   for n in plan.notes)
        assert plan.espeak_voice.startswith(plan.language + "+")
        for line in plan.backing:  # backing lines sing the lead's words, a third or so away
            assert line.notes and {n.word for n in line.notes} <= {n.word for n in plan.notes}
            assert line.kind in ("harmony", "double") and -1 <= line.pan <= 1 and line.gain_db < 0
        starts = [n.start for n in plan.notes]
        assert starts == sorted(starts)
        assert all(b.start >= a.end for a, b in zip(plan.notes, plan.notes[1:]))  # one voice
    # Vocals rest for a while in some songs: gaps of more than a bar between sung notes.
    def longest_rest(song):
        bar = 4 * 60 / song.tempo
        notes = [n for n in song.vocals.notes if n.start < song.seconds]
        return max((b.start - a.end) / bar for a, b in zip(notes, notes[1:]))
    assert max(longest_rest(s) for s in songs) > 1.0
    assert len({s.vocals.language for s in songs}) >= 3
    assert {b.kind for s in songs for b in s.vocals.backing} == {"harmony", "double"}


@pytest.mark.parametrize("genre", sorted(composer.GENRES))
def test_each_genre_composes_what_it_names(genre):
    songs = [composer.compose(track_rngs(4, i)["compose"], 20.0, genre) for i in range(12)]
    assert all(s.genre == genre for s in songs)
    roles = {p.role for s in songs for p in s.parts}
    if genre == "rock":
        assert "guitar_drive" in roles
        assert all(any(p.role == "guitar_drive" and p.style == "power" for p in s.parts) or
                   s.parts_of("other")[0].role != "guitar_drive" for s in songs)
    if genre == "electronic":
        assert "synth" in roles or "pad" in roles
        assert any(s.parts_of("bass")[0].role == "synth_bass" for s in songs)
    if genre == "funk":
        assert any(s.parts_of("bass")[0].role == "slap_bass" for s in songs)
    if genre == "ballad":
        assert all(s.tempo <= 86 for s in songs)
    with pytest.raises(ValueError, match="genre must be one of"):
        composer.compose(track_rngs(4, 0)["compose"], 20.0, "polka")


def test_short_songs_sound_in_every_stem():
    for i in range(30):
        song = composer.compose(track_rngs(11, i)["compose"], 5.0)
        for stem in ("drums", "bass", "other"):
            assert any(n.start < 4.7 for p in song.parts_of(stem) for n in p.notes), (i, stem)
        assert any(n.start < 4.7 for n in song.vocals.notes), i


def test_diatonic_chords_and_swing_clock():
    assert composer.diatonic_chord(0, "major", 0).pitch_classes == (0, 4, 7)
    assert composer.diatonic_chord(0, "major", 5).symbol == "vi"
    assert composer.diatonic_chord(9, "minor", 4).pitch_classes == (4, 7, 11)  # e minor in A minor
    assert composer.diatonic_chord(9, "minor", 4, major_five=True).pitch_classes == (4, 8, 11)
    assert composer.diatonic_chord(7, "major", 4, seventh=True).symbol == "V7"  # D7 in G
    clock = composer.Clock(120, 2 / 3)
    assert clock.seconds(1.0) == pytest.approx(0.5)
    assert clock.seconds(1.5) == pytest.approx(0.5 + 0.5 * 2 / 3)  # the off-beat eighth comes late
    assert composer.Clock(120, 0.5).seconds(2.25) == pytest.approx(1.125)


def test_subsets_are_spread_evenly_and_stable():
    for fraction in (0.0, 0.1, 0.2, 0.25, 1 / 3, 0.5, 1.0):
        labels = [subset_of(i, fraction) for i in range(60)]
        for n in range(61):
            assert labels[:n].count("test") == math.floor(n * fraction + 1e-9)
    assert [subset_of(i, 0.2) for i in range(5)] == ["train"] * 4 + ["test"]
    assert track_name(7, 3) == "synth-7-0003"


def test_soundfont_choice_uses_both_and_is_stable():
    picks = [choose_soundfont(track_rngs(5, i)["soundfont"], 2) for i in range(40)]
    assert set(picks) == {0, 1}
    assert picks == [choose_soundfont(track_rngs(5, i)["soundfont"], 2) for i in range(40)]


# --------------------------------------------------------------------------- mixing (pure)


def test_k_weighting_matches_the_standard_48k_filters():
    # ITU-R BS.1770-4 gives both stages as coefficients at 48 kHz.
    def power(b, a, f):
        z = np.exp(-2j * np.pi * f / 48000)
        return np.abs((b[0] + b[1] * z + b[2] * z * z) / (a[0] + a[1] * z + a[2] * z * z)) ** 2

    freqs = np.array([20.0, 38.0, 100.0, 997.0, 1681.0, 5000.0, 15000.0])
    expected = power([1.53512485958697, -2.69169618940638, 1.19839281085285],
                     [1.0, -1.69065929318241, 0.73248077421585], freqs) * \
        power([1.0, -2.0, 1.0], [1.0, -1.99004745483398, 0.99007225036621], freqs)
    got = mix.k_weighting(freqs, samplerate=48000)
    np.testing.assert_allclose(10 * np.log10(got), 10 * np.log10(expected), atol=0.01)


def test_loudness_known_answers():
    n = 4096 * 30
    t = np.arange(n) / SR
    sine = np.zeros((2, n))
    sine[0] = np.sin(2 * np.pi * 997 * t)
    # BS.1770's calibration: a full-scale 997 Hz sine in one channel reads -3.01.
    assert mix.loudness_db(sine) == pytest.approx(-3.01, abs=0.05)
    assert mix.loudness_db(np.stack([sine[0], sine[0]])) == pytest.approx(0.0, abs=0.05)
    assert mix.loudness_db(0.1 * sine) == pytest.approx(-23.01, abs=0.05)
    # Gating: resting for as long as it plays does not change the reading.
    rests = np.concatenate([sine, np.zeros_like(sine)], axis=1)
    assert mix.loudness_db(rests) == pytest.approx(mix.loudness_db(sine), abs=0.01)
    assert mix.active_seconds(rests) == pytest.approx(n / SR, abs=0.1)
    assert mix.loudness_db(np.zeros((2, 1000))) == float("-inf")


def test_balance_and_quantise_give_an_exact_integer_mixture_below_the_limit():
    rng = np.random.default_rng(0)
    stems = {name: rng.standard_normal((2, 20000)) * scale for name, scale in zip(SOURCES, (3.0, 0.2, 1.0, 0.01))}
    original = {k: v.copy() for k, v in stems.items()}
    scaled, gains, levels = mix.balance(stems, rng)
    assert all(np.array_equal(original[k], stems[k]) for k in stems)  # inputs left alone
    for name in SOURCES:
        assert levels[name] == pytest.approx(mix.loudness_db(scaled[name]), abs=1e-6)
        low, high = mix.LEVEL_RANGES[name]
        assert low - 1e-6 <= levels[name] - levels["vocals"] <= high + 1e-6
    ints = mix.quantise(scaled)
    assert set(ints) == set(SOURCES) | {"mixture"}
    total = sum(ints[name].astype(np.int32) for name in SOURCES)
    assert np.array_equal(total, ints["mixture"].astype(np.int32))
    assert all(v.dtype == np.int16 and np.abs(v.astype(np.int32)).max() <= 0.9 * 32768 for v in ints.values())
    with pytest.raises(ValueError, match="above 0.9"):
        mix.quantise({"drums": np.full((2, 10), 0.5), "bass": np.full((2, 10), 0.45)})


def test_stereo_reverb():
    rng = np.random.default_rng(1)
    burst = np.zeros(SR * 2)
    burst[:2000] = rng.standard_normal(2000)
    dry = mix.stereo_reverb(burst, np.random.default_rng(2), seconds=0.5, wet=0.0)
    assert dry.shape == (2, burst.size) and dry.dtype == np.float32
    np.testing.assert_allclose(dry, np.stack([burst, burst]), atol=1e-6)
    wet = mix.stereo_reverb(burst, np.random.default_rng(2), seconds=0.5, wet=0.5).astype(np.float64)
    tail = wet[:, 4000:8000]  # after the burst: reverberation only, different in each channel
    assert np.abs(tail).max() > 1e-3
    assert abs(np.corrcoef(tail[0], tail[1])[0, 1]) < 0.5
    early = np.sqrt((wet[:, 2000:4000] ** 2).mean())
    late = np.sqrt((wet[:, 2000 + SR // 2:4000 + SR // 2] ** 2).mean())  # one RT60 later
    assert 20 * np.log10(late / early) < -45


def test_time_map_holds_the_vowel_and_keeps_consonants():
    sound = vocals.WordSound(sp=np.ones((60, 4)), ap=np.ones((60, 4)), voiced=np.r_[[False] * 10, [True] * 40, [False] * 10],
                             voiced_start=10, voiced_end=50, nucleus=20)
    for frames in (30, 61, 200, 400):
        where = vocals.time_map(sound, frames)
        assert where.shape == (frames,)
        assert where[0] == 0 and where[-1] == pytest.approx(59)
        assert np.all(np.diff(where) >= 0)
    where = vocals.time_map(sound, 400)
    assert np.allclose(where[:10], np.arange(10))  # onset consonant at its natural speed
    assert np.allclose(where[-10:], np.arange(50, 60))  # and the coda
    held = np.sum((where >= 20) & (where <= 35))
    assert held > 300  # the vowel takes most of a long note


# --------------------------------------------------------------------------- rendering


@needs_renderer
def test_fluidsynth_renders_deterministically_on_its_block_grid():
    from danna_sep.data.corpus.render import FLUID_BLOCK, ReverbSettings, renderer_for

    renderer = renderer_for(DEFAULT_SOUNDFONT)
    reverb = ReverbSettings(room=0.6, damping=0.3)
    lead = composer.Part(name="lead", stem="other", bank=0, program=80, style="test", reverb=60,
                         notes=[composer.Note(1000 / SR, 6000 / SR, 72, 110), composer.Note(7000 / SR, 9000 / SR, 76, 90)])
    kit = composer.Part(name="drums", stem="drums", bank=128, program=0, style="test",
                        notes=[composer.Note(0.0, 0.1, composer.KICK, 120), composer.Note(0.05, 0.1, composer.SNARE, 100)])
    first = renderer.render([lead], 12000, reverb)
    renderer.render([kit, lead], 20000, reverb)  # a render in between leaves nothing behind
    second = renderer.render([lead], 12000, reverb)
    assert first.shape == (2, 12000) and first.dtype == np.float32
    assert np.array_equal(first, second)
    onset = np.flatnonzero(np.abs(first).sum(axis=0) > 1e-6)[0]  # the reverb's anti-denormal noise is ~3e-8
    assert onset - round(1000 / FLUID_BLOCK) * FLUID_BLOCK in (0, 1)  # the nearest block, within 0.73 ms
    assert not np.array_equal(first[0], first[1])  # panned and reverberated: a stereo signal
    assert np.corrcoef(first[0], first[1])[0, 1] > 0.3  # chorus off: no anti-phase channels
    assert renderer.preset_name(128, 0) and renderer.resolve_preset(0, 300) == (0, 0)


@needs_renderer
def test_sung_vocals_follow_the_melody():
    pw = vocals._load_pyworld()
    # The first song of seed 7 with at least four notes ending within its first 5 s.
    index = next(i for i in range(50)
                 if sum(n.end <= 5.0 for n in composer.compose(track_rngs(7, i)["compose"], 5.0).vocals.notes) >= 4)
    rngs = track_rngs(7, index)
    song = composer.compose(rngs["compose"], 5.0)
    sung = vocals.sing(song.vocals, 5 * SR, rngs["vocals"]).astype(np.float64)
    assert sung.shape == (5 * SR,) and np.abs(sung).max() > 0.01
    # An independent pitch tracker (WORLD's Harvest, not the Dio used to analyse the words).
    f0, times = pw.harvest(soxr.resample(sung, SR, 16000), 16000, f0_floor=60.0, f0_ceil=900.0, frame_period=5.0)
    errors = []
    for note in song.vocals.notes:
        if note.end > 5.0:
            break
        middle = (times >= note.start + 0.4 * (note.end - note.start)) & (times <= note.start + 0.8 * (note.end - note.start))
        voiced = f0[middle & (f0 > 0)]
        assert voiced.size, f"no pitch found in the note at {note.start:.2f} s"
        errors.append(1200 * np.log2(np.median(voiced) / (440 * 2 ** ((note.pitch - 69) / 12))))
    assert len(errors) >= 4
    assert np.median(np.abs(errors)) < 25  # cents
    assert np.max(np.abs(errors)) < 100  # never a semitone off
    silent = np.ones(sung.size, dtype=bool)
    for note in song.vocals.notes:
        silent[max(0, int(note.start * SR) - 2000):int(note.end * SR) + SR] = False  # allow for the release
    assert np.abs(sung[silent]).max(initial=0.0) < 1e-3  # rests are rests


# --------------------------------------------------------------------------- the corpus on disk


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """One 5 s track, written through the command line."""
    if MISSING:
        pytest.skip(f"corpus renderer unavailable: {MISSING}")
    out = tmp_path_factory.mktemp("corpus") / "out"
    code = main(["corpus", str(out), "--tracks", "1", "--seconds", "5", "--seed", "7", "-q"])
    assert code == 0
    return out


@needs_renderer
def test_track_files_and_exact_mixture(corpus):
    folder = corpus / "train" / "synth-7-0000"
    assert sorted(p.name for p in folder.iterdir()) == sorted([f"{n}.wav" for n in FILES] + ["meta.json"])
    assert not [p for p in corpus.rglob(".*")]  # no temporary folders left behind
    for name in FILES:
        info = sf.info(str(folder / f"{name}.wav"))
        assert (info.samplerate, info.channels, info.frames, info.subtype) == (SR, 2, 5 * SR, "PCM_16")
    stems = {name: read_ints(folder, name) for name in FILES}
    assert np.array_equal(stems["mixture"], sum(stems[name] for name in SOURCES))
    for name, ints in stems.items():
        assert np.abs(ints).max() <= 0.9 * 32768, name
        rms = np.sqrt((ints.astype(np.float64) ** 2).mean()) / 32768
        assert rms > 10 ** (-45 / 20), f"{name} is (nearly) silent"


@needs_renderer
def test_meta(corpus):
    folder = corpus / "train" / "synth-7-0000"
    meta = json.loads((folder / "meta.json").read_text())
    fonts = resolve_soundfonts(None)
    digests = [hashlib.sha256(f.read_bytes()).hexdigest() for f in fonts]
    assert meta["soundfonts"] == [{"name": f.name, "sha256": d} for f, d in zip(fonts, digests)]
    assert (meta["seed"], meta["index"], meta["name"], meta["subset"]) == (7, 0, "synth-7-0000", "train")
    low, high = composer.GENRES[meta["genre"]].tempo
    assert low <= meta["tempo"] <= high
    assert meta["key"] in composer.KEY_NAMES and meta["mode"] in composer.SCALES
    assert meta["durations"]["seconds"] == 5.0 and meta["durations"]["samples"] == 5 * SR
    assert all(0 < s <= 5.0 for s in meta["durations"]["active_seconds"].values())
    assert all(p["preset"] for p in meta["parts"])
    assert all(p["soundfont"] in {f.name for f in fonts} or p["preset"].startswith("danna-sep synth")
               for p in meta["parts"])
    assert {p["stem"] for p in meta["parts"]} >= {"drums", "bass", "other"}
    assert meta["vocals"]["espeak_voice"].startswith(meta["vocals"]["language"] + "+") and meta["lyrics"]
    # Every part's effect chain is recorded, and only effects that exist.
    production = meta["production"]
    assert set(production["parts"]) == {p["name"] for p in meta["parts"]}
    for chain in [*production["parts"].values(), *production["buses"].values(), production["vocal_lead"]]:
        assert all(step["effect"] in EFFECTS for step in chain)
    for name in FILES:
        peak = np.abs(read_ints(folder, name)).max() / 32768
        assert meta["stems"][name]["peak"] == pytest.approx(peak, abs=1e-5)
    assert meta["request"]["samples"] == 5 * SR and meta["request"]["soundfonts"] == digests


@needs_renderer
def test_render_song_equals_the_files_and_seeds_differ(corpus):
    folder = corpus / "train" / "synth-7-0000"
    same = render_song(7, 5.0)
    assert set(same) == set(FILES)
    for name in FILES:
        assert same[name].dtype == np.float32 and same[name].shape == (2, 5 * SR)
        assert np.array_equal(same[name], read_ints(folder, name).astype(np.float32) / 32768), name
    assert np.array_equal(same["mixture"], same["drums"] + same["bass"] + same["other"] + same["vocals"])
    other = render_song(8, 5.0)
    for name in FILES:
        assert not np.array_equal(other[name], same[name]), name


@needs_renderer
def test_cli_refuses_to_overwrite_resumes_and_forces(corpus, capsys):
    folder = corpus / "train" / "synth-7-0000"
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir()}
    capsys.readouterr()
    # Same request: the complete track is skipped (resume), nothing rewritten.
    assert main(["corpus", str(corpus), "--tracks", "1", "--seconds", "5", "--seed", "7", "-q"]) == 0
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir()} == before
    # A different request for the same folder: refused, one line naming it, exit 1.
    (folder.parent / ".synth-7-0000.partial-1-abcd").mkdir()  # left by a killed run
    assert main(["corpus", str(corpus), "--tracks", "1", "--seconds", "4", "--seed", "7", "-q"]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"danna-sep: {folder}: already exists and differs (use --force to overwrite)"]
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir()} == before
    assert not (folder.parent / ".synth-7-0000.partial-1-abcd").exists()
    # --force renders again: same seed, same bytes.
    calls = []
    report = generate_corpus(corpus, tracks=1, seconds=5.0, seed=7, force=True, progress=lambda *a: calls.append(a))
    assert report.written == ["train/synth-7-0000"] and not report.failed
    assert calls == [(0, 1), (1, 1)]
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir()}
    assert {k: v[0] for k, v in after.items()} == {k: v[0] for k, v in before.items()}
    assert all(after[k][1] != before[k][1] for k in after)  # really rewritten
    assert not [p for p in corpus.rglob(".*")]


def test_missing_or_bad_soundfont_is_one_line(tmp_path, capsys):
    missing = tmp_path / "nothing.sf2"
    assert main(["corpus", str(tmp_path / "out"), "--tracks", "1", "--seconds", "1", "--soundfont", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [f"danna-sep: {missing}: soundfont not found"]
    bad = tmp_path / "bad.sf2"
    bad.write_bytes(b"not a soundfont at all")
    assert main(["corpus", str(tmp_path / "out"), "--soundfont", str(bad)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith(f"danna-sep: {bad}: not a SoundFont")
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_missing_default_soundfont_says_what_to_install(tmp_path, monkeypatch, capsys):
    from danna_sep.data.corpus import render, track

    absent = tmp_path / "sf2" / "FluidR3_GM.sf2"
    monkeypatch.setattr(render, "DEFAULT_SOUNDFONT", absent)
    monkeypatch.setattr(track, "DEFAULT_SOUNDFONT", absent)
    assert main(["corpus", str(tmp_path / "out"), "--tracks", "2"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"danna-sep: {absent}: soundfont not found (install the fluid-soundfont-gm package or pass --soundfont)"]


@pytest.mark.parametrize("flags,words", [
    (["--tracks", "0"], "argument --tracks: 0 is out of range (at least 1)"),
    (["--test-fraction", "1.5"], "argument --test-fraction: 1.5 is out of range (from 0 to 1)"),
    (["--seconds", "0"], "argument --seconds: 0 is out of range (from 0.1 to 3600 s)"),
    (["--workers", "0"], "argument --workers: 0 is out of range (at least 1)"),
    (["--seed", "-1"], "argument --seed: -1 is out of range (at least 0)"),
])
def test_cli_argument_checks(tmp_path, capsys, flags, words):
    assert main(["corpus", str(tmp_path / "out")] + flags) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and words in err[0], err
    assert not (tmp_path / "out").exists()


@needs_renderer
def test_workers_do_not_change_the_bytes(tmp_path):
    # About 30 s here (spawned workers load every soundfont): in CI, since the effect
    # chains, the synthesizer and per-part soundfonts all have to agree across processes.
    one = generate_corpus(tmp_path / "one", tracks=3, seconds=3.0, seed=4, test_fraction=0.34)
    two = generate_corpus(tmp_path / "two", tracks=3, seconds=3.0, seed=4, test_fraction=0.34, workers=2)
    assert one.written == two.written == ["test/synth-4-0002", "train/synth-4-0000", "train/synth-4-0001"]
    for relative in one.written:
        for name in [f"{n}.wav" for n in FILES] + ["meta.json"]:
            assert (tmp_path / "one" / relative / name).read_bytes() == (tmp_path / "two" / relative / name).read_bytes()
