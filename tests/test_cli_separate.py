"""End to end through the command line, with a tiny bundle and generated songs."""

import math

import numpy as np
import pytest
import soundfile as sf
import torch

from danna_sep import bundle as bundles
from danna_sep.cli import main
from test_bundle import tiny_members


def song(seconds: float, rate: int, seed: int = 0) -> np.ndarray:
    """A stereo test song: a bass line, a chord, a hi-hat-like noise burst pattern. (samples, 2)"""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    bass = 0.3 * np.sin(2 * math.pi * 55 * t * (1 + 0.5 * (np.floor(t * 2) % 2)))
    chord = sum(0.1 * np.sin(2 * math.pi * f * t) for f in (261.6, 329.6, 392.0))
    hats = 0.2 * rng.standard_normal(t.size) * ((t * 8) % 1 < 0.05)
    left, right = bass + chord + hats, bass + 0.8 * chord + hats
    return np.stack([left, right], axis=1).astype(np.float32)


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli") / "bundle"
    bundles.save_bundle(folder, tiny_members(seed=10))
    return folder


@pytest.mark.parametrize("fmt,depth,subtype", [("wav", 16, "PCM_16"), ("flac", 24, "PCM_24"), ("wav", 32, "FLOAT")])
def test_separates_a_20_second_song(tmp_path, tiny_bundle, fmt, depth, subtype, capsys):
    rate = 48000
    source = tmp_path / "my song.wav"
    sf.write(source, song(20.0, rate), rate, subtype="PCM_16")
    out = tmp_path / "out"
    code = main(["separate", str(source), "-o", str(out), "--bundle", str(tiny_bundle),
                 "--format", fmt, "--bit-depth", str(depth), "--device", "cpu"])
    assert code == 0
    folder = out / "my song"
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{s}.{fmt}" for s in ("drums", "bass", "other", "vocals"))
    for path in folder.iterdir():
        info = sf.info(path)
        assert info.samplerate == rate
        assert info.frames == 20 * rate
        assert info.channels == 2
        assert info.subtype == subtype
    assert "my song.wav -> " in capsys.readouterr().err


def test_two_stems_selection_and_no_overwrite(tmp_path, tiny_bundle):
    source = tmp_path / "Chanson d'été.flac"
    sf.write(source, song(6.0, 44100, seed=1), 44100)
    out = tmp_path / "stems"
    args = ["separate", str(source), "-o", str(out), "--bundle", str(tiny_bundle), "--device", "cpu", "-q",
            "--clip", "none", "--bit-depth", "32"]
    assert main(args + ["--two-stems", "vocals"]) == 0
    vocals, rate = sf.read(out / "Chanson d'été" / "vocals.wav")
    rest, _ = sf.read(out / "Chanson d'été" / "no_vocals.wav")
    mix, _ = sf.read(source)
    assert vocals.shape == rest.shape == mix.shape
    # no_vocals is the other three stems exactly, and vocals + no_vocals is the whole separation.
    four = tmp_path / "four"
    assert main(args[:3] + [str(four)] + args[4:]) == 0
    stems = {s: sf.read(four / "Chanson d'été" / f"{s}.wav")[0] for s in ("drums", "bass", "other", "vocals")}
    assert np.array_equal(stems["vocals"], vocals)
    assert np.abs(rest - (stems["drums"] + stems["bass"] + stems["other"])).max() < 1e-5
    assert np.abs(rest).max() > 1e-3 and np.abs(vocals).max() > 1e-3  # neither side is empty
    assert main(args + ["--stems", "drums,bass", "--filename", "{stem}-{track}.{ext}"]) == 0
    assert sorted(p.name for p in out.glob("*.wav")) == ["bass-Chanson d'été.wav", "drums-Chanson d'été.wav"]

    before = (out / "Chanson d'été" / "vocals.wav").read_bytes()
    assert main(args + ["--two-stems", "vocals"]) == 1
    assert (out / "Chanson d'été" / "vocals.wav").read_bytes() == before
    assert main(args + ["--two-stems", "vocals", "--force"]) == 0


def test_usage_errors_and_missing_inputs(tmp_path, tiny_bundle, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["separate"])
    assert exc.value.code == 2
    assert main(["separate", str(tmp_path / "nope.wav"), "--bundle", str(tiny_bundle)]) == 1
    assert "nope.wav: no such file" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["separate", str(empty), "--bundle", str(tiny_bundle)]) == 1
    assert "folder holds no audio files" in capsys.readouterr().err
    real = tmp_path / "ok.wav"
    sf.write(real, song(2.0, 44100), 44100)
    assert main(["separate", str(real), "--bundle", str(tiny_bundle), "--two-stems", "guitar"]) == 2


def test_one_bad_input_does_not_stop_the_others(tmp_path, tiny_bundle, capsys):
    good = tmp_path / "in" / "good.wav"
    good.parent.mkdir()
    sf.write(good, song(3.0, 44100), 44100)
    (tmp_path / "in" / "bad.wav").write_text("this is not audio")
    out = tmp_path / "out"
    assert main(["separate", str(tmp_path / "in"), "-o", str(out), "--bundle", str(tiny_bundle), "-q"]) == 1
    err = capsys.readouterr().err
    assert "bad.wav" in err and len(err.strip().splitlines()) == 1
    assert len(list((out / "good").glob("*.wav"))) == 4
    assert not (out / "bad").exists()
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]


def test_the_readme_command_separates_the_example_with_the_default_bundle(tmp_path):
    """`danna-sep separate examples/synth-song.mp3 -o out`: the shipped bundle, four stems."""
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "examples" / "synth-song.mp3"
    assert example.stat().st_size <= 2 * 2**20
    assert main(["separate", str(example), "-o", str(tmp_path / "out"), "-q"]) == 0
    mixture, rate = sf.read(example, dtype="float32")
    stems = {s: sf.read(tmp_path / "out" / "synth-song" / f"{s}.wav", dtype="float32") for s in bundles.SOURCES}
    for name, (audio, stem_rate) in stems.items():
        assert stem_rate == rate and audio.shape == mixture.shape, name
        assert np.sqrt(np.mean(audio**2)) > 1e-3, f"{name} is silent"
    # the stems add up to the mixture, up to the Wiener filter and the 16-bit output
    total = sum(audio for audio, _ in stems.values())
    residual = 10 * np.log10(np.sum(mixture**2) / np.sum((mixture - total) ** 2))
    assert residual > 15
