"""End to end through the command line, with a tiny bundle and generated songs."""

import math
import re
from pathlib import Path

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
    assert main(["separate"]) == 2
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


# --- output and processing options, each through the command line ------------------------

def _stems(folder, ext="wav"):
    """{stem: (samples, channels) float64 array} of the four stems in `folder`, and their rate."""
    read = {s: sf.read(folder / f"{s}.{ext}") for s in bundles.SOURCES}
    rates = {rate for _, rate in read.values()}
    assert len(rates) == 1, rates
    return {s: data for s, (data, _) in read.items()}, rates.pop()


def test_clip_clamp_clips_each_sample_where_none_passes_full_scale(tmp_path, tiny_bundle):
    loud = tmp_path / "loud.wav"
    sf.write(loud, song(2.0, 44100) * 20, 44100, subtype="FLOAT")  # a float wav may pass full scale
    common = ["separate", str(loud), "--bundle", str(tiny_bundle), "--device", "cpu", "-q", "--bit-depth", "32"]
    for mode in ("none", "clamp", "rescale"):
        assert main(common + ["-o", str(tmp_path / mode), "--clip", mode]) == 0
    free, _ = _stems(tmp_path / "none" / "loud")
    clamped, _ = _stems(tmp_path / "clamp" / "loud")
    rescaled, _ = _stems(tmp_path / "rescale" / "loud")
    peak = max(np.abs(a).max() for a in free.values())
    assert peak > 1.5, "the test needs stems well past full scale"
    for stem in bundles.SOURCES:
        over = np.abs(free[stem]) > 1.0
        assert over.any(), f"{stem} never passes full scale; the clamp would go untested"
        # 32-bit float output: only the clip mode can keep the samples inside [-1, 1]
        assert np.abs(clamped[stem]).max() == 1.0, stem
        np.testing.assert_array_equal(clamped[stem], np.clip(free[stem], -1.0, 1.0))
        # clamp clips the loud samples only; rescale scales every sample of every stem by one factor
        np.testing.assert_array_equal(clamped[stem][~over], free[stem][~over])
        np.testing.assert_allclose(rescaled[stem], free[stem] / peak, atol=1e-6)
        assert np.abs(rescaled[stem] - clamped[stem]).max() > 0.1


def test_samplerate_writes_stems_at_the_asked_rate_and_scaled_length(tmp_path, tiny_bundle):
    import soxr

    source = tmp_path / "odd.wav"
    sf.write(source, song(3.0, 44100, seed=4)[:100_001], 44100, subtype="FLOAT")
    common = ["separate", str(source), "--bundle", str(tiny_bundle), "--device", "cpu", "-q",
              "--bit-depth", "32", "--clip", "none"]
    assert main(common + ["-o", str(tmp_path / "native")]) == 0
    native, rate = _stems(tmp_path / "native" / "odd")
    assert rate == 44100 and native["bass"].shape == (100_001, 2)
    # 100001 * 48000 / 44100 = 108844.63 and 100001 * 16000 / 44100 = 36281.54: rounded, not truncated
    for asked, frames in ((48000, 108_845), (16000, 36_282)):
        out = tmp_path / str(asked)
        assert main(common + ["-o", str(out), "--samplerate", str(asked)]) == 0
        for stem in bundles.SOURCES:
            info = sf.info(out / "odd" / f"{stem}.wav")
            assert (info.samplerate, info.frames, info.channels) == (asked, frames, 2), stem
        stems, _ = _stems(out / "odd")
        for stem in bundles.SOURCES:
            # the same separation, resampled: compare with the native-rate stem resampled in one go
            want = soxr.resample(native[stem], 44100, asked, quality="HQ")[:frames]
            inner = slice(2000, frames - 2000)
            error = np.abs(stems[stem][inner] - want[inner]).max()
            assert error < 1e-3 * max(np.abs(want).max(), 1e-3), (asked, stem, error)


def test_shifts_average_the_separation_over_the_seeded_random_offsets(tmp_path, tiny_bundle):
    """--shifts N: each segment separated at N random earlier starts (up to 0.5 s, zeros before
    the track) and the N results averaged; offsets drawn from a generator seeded with 0."""
    from danna_sep.separator import Separator

    rate = 44100
    source = tmp_path / "short.wav"
    sf.write(source, song(1.5, rate, seed=6), rate, subtype="FLOAT")  # one segment at the default 10 s
    common = ["separate", str(source), "--bundle", str(tiny_bundle), "--device", "cpu", "-q",
              "--bit-depth", "32", "--clip", "none", "--precision", "float32"]
    assert main(common + ["-o", str(tmp_path / "s0")]) == 0
    assert main(common + ["-o", str(tmp_path / "s2"), "--shifts", "2"]) == 0
    plain, _ = _stems(tmp_path / "s0" / "short")
    shifted, _ = _stems(tmp_path / "s2" / "short")

    mixture = torch.from_numpy(sf.read(source, dtype="float32")[0].T.copy())
    generator = torch.Generator().manual_seed(0)
    max_shift = round(0.5 * rate)
    offsets = [int(torch.randint(0, max_shift + 1, (1,), generator=generator)) for _ in range(2)]
    assert len(set(offsets)) == 2 and min(offsets) > 0
    once = Separator(tiny_bundle, device="cpu", precision="float32")  # shifts=0
    runs = [once.separate_tensor(torch.nn.functional.pad(mixture, [offset, 0])) for offset in offsets]
    for stem in bundles.SOURCES:
        want = sum(run[stem][:, offset:] for run, offset in zip(runs, offsets)) / 2
        assert shifted[stem].shape == plain[stem].shape == (mixture.shape[1], 2)
        np.testing.assert_allclose(shifted[stem], want.T.numpy(), atol=1e-5, err_msg=stem)
        assert np.abs(shifted[stem] - plain[stem]).max() > 1e-3, stem


def test_fast_without_checkpoints_is_a_usage_error(tmp_path, capsys):
    """--fast picks members of the original checkpoints; alone it would be silently ignored."""
    source = tmp_path / "in.wav"
    sf.write(source, song(1.0, 44100), 44100)
    code = main(["separate", str(source), "--fast", "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.strip().splitlines() == [
        "danna-sep: --fast picks members of the original checkpoints: give --checkpoints too"]
    assert not (tmp_path / "out").exists()


def test_fast_runs_the_original_unet_and_demucs_only(tmp_path, tiny_bundle):
    """--fast with --checkpoints: the U-Net and Demucs files blended with the paper's fast table;
    the X-UMX file is neither needed nor read."""
    from danna_sep.bundle import Bundle, Member
    from danna_sep.separator import Separator

    loaded = bundles.load_bundle(tiny_bundle)
    checkpoints = bundles.export_original(loaded, tmp_path / "checkpoints")
    source = tmp_path / "t.wav"
    sf.write(source, song(2.0, 44100, seed=7), 44100, subtype="FLOAT")
    common = ["separate", str(source), "--checkpoints", str(checkpoints), "--device", "cpu", "-q",
              "--bit-depth", "32", "--clip", "none", "--precision", "float32"]
    assert main(common + ["-o", str(tmp_path / "full")]) == 0
    assert main(common + ["-o", str(tmp_path / "fast"), "--fast"]) == 0
    full, _ = _stems(tmp_path / "full" / "t")
    fast, _ = _stems(tmp_path / "fast" / "t")

    mixture = torch.from_numpy(sf.read(source, dtype="float32")[0].T.copy())
    alone = {}
    for member in loaded.members:
        solo = Bundle([Member(member.model, {s: 1.0 for s in bundles.SOURCES})], list(bundles.SOURCES))
        alone[member.name] = Separator(solo, device="cpu", precision="float32").separate_tensor(mixture)
    for stem in bundles.SOURCES:
        want = sum(weights[stem] * alone[name][stem] for name, weights in bundles.FAST_BLEND.items())
        np.testing.assert_allclose(fast[stem], want.T.numpy(), atol=1e-5, err_msg=stem)
        if bundles.PAPER_BLEND["xumx"][stem]:  # the full blend gives X-UMX no weight for `other`
            assert np.abs(fast[stem] - full[stem]).max() > 1e-3, stem
        else:
            np.testing.assert_allclose(fast[stem], full[stem], atol=1e-6, err_msg=stem)

    # X-UMX's file out of the way: --fast separates the same, the full blend cannot start
    (checkpoints / bundles.ORIGINAL_FILES["xumx"]).write_text("not TorchScript")
    assert main(common + ["-o", str(tmp_path / "fast again"), "--fast"]) == 0
    again, _ = _stems(tmp_path / "fast again" / "t")
    for stem in bundles.SOURCES:  # (the bytes differ: a float wav's PEAK chunk holds a time stamp)
        np.testing.assert_array_equal(again[stem], fast[stem], err_msg=stem)
    assert main(common + ["-o", str(tmp_path / "full again")]) == 1
    assert not (tmp_path / "full again").exists()


def test_mp3_output_decodes_at_the_right_rate_length_and_channels(tmp_path, tiny_bundle):
    import av

    rate = 48000
    source = tmp_path / "m.wav"
    # unlike song()'s, these two channels differ, so that a swap or a copy of one would show
    stereo = np.stack([song(3.0, rate, seed=8)[:, 0], song(3.0, rate, seed=9)[::-1, 1]], axis=1)
    sf.write(source, stereo, rate, subtype="PCM_16")
    common = ["separate", str(source), "--bundle", str(tiny_bundle), "--device", "cpu", "-q"]
    assert main(common + ["-o", str(tmp_path / "mp3"), "--format", "mp3", "--mp3-bitrate", "128"]) == 0
    assert main(common + ["-o", str(tmp_path / "wav"), "--bit-depth", "32"]) == 0
    folder = tmp_path / "mp3" / "m"
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{s}.mp3" for s in bundles.SOURCES)
    reference, _ = _stems(tmp_path / "wav" / "m")
    for stem in bundles.SOURCES:
        path = folder / f"{stem}.mp3"
        info = sf.info(path)
        assert (info.format, info.samplerate, info.channels) == ("MP3", rate, 2), stem
        # constant bitrate: ~128 kbps over 3 s, plus a header
        assert abs(path.stat().st_size - 128_000 * 3 / 8) < 0.1 * 128_000 * 3 / 8
        decoded, _ = sf.read(path)
        # the LAME header lets a decoder drop the encoder delay and padding: ffmpeg's decoder
        # (in PyAV) gives the exact length; allow libsndfile one MP3 frame in case it does not
        assert abs(decoded.shape[0] - 3 * rate) <= 1152, (stem, decoded.shape)
        with av.open(str(path)) as container:
            frames = [f.to_ndarray() for f in container.decode(audio=0)]
        assert sum(f.shape[-1] for f in frames) == 3 * rate, stem
        assert {f.shape[0] for f in frames} == {2}, stem  # planar float: one row per channel
        # the same stem as the float wav, up to the coding noise of 128 kbps (about 20 dB down)
        want = reference[stem]
        for channel in range(2):
            error = decoded[:, channel] - want[:, channel]
            snr = 10 * np.log10(np.sum(want[:, channel] ** 2) / np.sum(error**2))
            assert snr > 12, (stem, channel, snr)
            other = want[:, 1 - channel] - want[:, channel]
            assert 10 * np.log10(np.sum(want[:, channel] ** 2) / np.sum(other**2)) < 6, "channels too alike"


@pytest.fixture
def no_model_loads(monkeypatch):
    """Any attempt to find a bundle or build a model fails the test loudly (not a user error)."""
    import danna_sep.models
    import danna_sep.separator

    def loud(*args, **kwargs):
        raise AssertionError("a model was loaded before the usage error was found")

    monkeypatch.setattr(danna_sep.separator, "resolve_bundle", loud)
    monkeypatch.setattr(danna_sep.models, "build", loud)


def usage_error(argv, capsys):
    """(exit code, the single stderr line) of `main(argv)`, asserting there is one line and no traceback."""
    code = main(argv)
    captured = capsys.readouterr()
    err = captured.err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert captured.out == ""
    return code, err.strip()


@pytest.mark.parametrize("extra,words", [
    (["--mp3-bitrate", "999", "--format", "mp3"], "argument --mp3-bitrate: 999 is out of range (from 8 to 320 kbps)"),
    (["--samplerate", "7"], "argument --samplerate: 7 is out of range (from 8000 to 384000 Hz)"),
    (["--overlap", "0.9"], "argument --overlap: 0.9 is out of range (from 0 to 0.5)"),
    (["--segment", "0.1"], "argument --segment: 0.1 is out of range (from 1 to 600 s)"),
    (["--segment", "nan"], "argument --segment: nan is out of range (from 1 to 600 s)"),
    (["--shifts", "two"], "argument --shifts: invalid int value: 'two'"),
    (["--batch-segments", "0"], "argument --batch-segments: 0 is out of range (from 1 to 256)"),
    (["--batch-segments", "many"], "argument --batch-segments: invalid batch_segments value: 'many'"),
    (["-j", "0"], "argument -j/--jobs: 0 is out of range (from 1 to 64)"),
    (["--two-stems", "guitar"], "argument --two-stems: invalid choice: 'guitar'"),
    (["--stems", "drums,guitar"], "argument --stems: 'drums,guitar': unknown guitar (choose from drums, bass, other"),
    (["--stems", "drums,drums"], "argument --stems: 'drums,drums': names a stem twice"),
    (["--format", "mp3", "--bit-depth", "24"], "--bit-depth is for wav and flac: mp3 has no bit depth"),
    (["--mp3-bitrate", "128"], "--mp3-bitrate is for --format mp3, not wav"),
    (["--format", "flac", "--bit-depth", "32"], "flac takes --bit-depth 16 or 24"),
    (["--stems", "drums", "--two-stems", "vocals"], "--stems and --two-stems exclude each other"),
    (["--fast"], "--fast picks members of the original checkpoints: give --checkpoints too"),
    (["--force", "--skip-existing"], "--force overwrites existing stems, --skip-existing keeps them: give one"),
    (["-q", "-v"], "argument -v/--verbose: not allowed with argument -q/--quiet"),
    (["--filename", "{album}/{stem}.{ext}"], "argument --filename: '{album}/{stem}.{ext}': unknown field {album}"),
    (["--filename", "/tmp/{stem}.{ext}"], "--filename '/tmp/{stem}.{ext}' writes /tmp/drums.wav, outside --out"),
    (["--filename", "../{track}/{stem}.{ext}"], "--filename '../{track}/{stem}.{ext}' writes "),
    (["--samplerate", "4000000000"], "argument --samplerate: 4000000000 is out of range (from 8000 to 384000 Hz)"),
    (["--samplerate", "0"], "argument --samplerate: 0 is out of range (from 8000 to 384000 Hz)"),
    (["--stems", ""], "argument --stems: '': names nothing"),
    (["--filename", "{nope}/{stem}.{ext}"], "argument --filename: '{nope}/{stem}.{ext}': unknown field {nope}"),
    (["--filename", "{track"], "argument --filename: invalid template value: '{track'"),
    (["--filename", "{track}.{ext}"], "argument --filename: '{track}.{ext}': needs {stem}"),
    (["--device", "gpu"], "argument --device: gpu: not a device (auto, cpu, cuda, cuda:N or mps)"),
    (["--device", "mps"], "argument --device: mps: Apple's MPS is not available on this machine"),
    (["--device", "cuda:7"], "argument --device: cuda:7: "),
    (["--bundle", "no-such-bundle"], "--bundle no-such-bundle: no such bundle folder or name"),
])
def test_usage_errors_are_one_line_and_come_before_any_model_loads(tmp_path, capsys, monkeypatch, no_model_loads,
                                                                   extra, words):
    """Exit 2 with one line naming the problem, before any bundle is looked for or model built."""
    import torch

    if "mps" in extra:
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    source = tmp_path / "in.wav"
    sf.write(source, song(1.0, 44100), 44100)
    argv = ["separate", str(source), "-o", str(tmp_path / "out")] + extra
    code, line = usage_error(argv, capsys)
    assert code == 2, line
    assert words in line, line
    assert line.startswith("danna-sep")
    assert not (tmp_path / "out").exists()


def test_a_programming_error_raises_with_its_traceback(tmp_path, tiny_bundle, monkeypatch):
    """Only a DannaSepError is a user's problem; a bug elsewhere (here a ValueError from deep in
    the library) is not turned into a one-line message and an exit code."""
    from danna_sep import separator

    def bug(*args, **kwargs):
        raise ValueError("a bug, not a user error")

    monkeypatch.setattr(separator, "_stem_block", bug)
    source = tmp_path / "in.wav"
    sf.write(source, song(1.0, 44100), 44100)
    with pytest.raises(ValueError, match="a bug"):
        main(["separate", str(source), "-o", str(tmp_path / "out"), "--bundle", str(tiny_bundle), "-q"])
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()] if (tmp_path / "out").exists() else True


def test_user_errors_map_to_their_exit_codes_in_main_alone():
    """No command decides an exit code by catching ValueError or by reading an error's text."""
    import re
    from pathlib import Path

    import danna_sep

    package = Path(danna_sep.__file__).parent
    for path in [package / "cli.py", *sorted((package / "commands").glob("*.py"))]:
        text = path.read_text()
        assert not re.search(r"except\s*\(?[^:]*\bValueError\b", text), path
        assert not re.search(r"return\s+\d+\s+if\s+[^\n]*\bin\s+str\(", text), path
        assert not re.search(r"return\s+\d+\s+if\s+[^\n]*\.startswith\(", text), path


# --- output paths that never collide --------------------------------------------------------

def _tree(folder):
    """Every file below `folder`, as sorted POSIX paths relative to it."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_a_folder_keeps_its_subfolders_and_trackext_tells_formats_apart(tmp_path, tiny_bundle):
    albums = tmp_path / "albums"
    for sub in ("a", "b"):
        (albums / sub).mkdir(parents=True)
        sf.write(albums / sub / "x.wav", song(1.0, 44100, seed=len(sub)), 44100)
    sf.write(albums / "top.wav", song(1.0, 44100), 44100)
    out = tmp_path / "out"
    common = ["--bundle", str(tiny_bundle), "-q", "--stems", "vocals"]
    assert main(["separate", str(albums), "-o", str(out)] + common) == 0
    assert _tree(out) == ["a/x/vocals.wav", "b/x/vocals.wav", "top/vocals.wav"]
    # the output folder inside the input folder: its stems are never taken for songs
    inside = albums / "sep"
    assert main(["separate", str(albums), "-o", str(inside)] + common) == 0
    assert main(["separate", str(albums), "-o", str(inside), "--force"] + common) == 0
    assert _tree(inside) == ["a/x/vocals.wav", "b/x/vocals.wav", "top/vocals.wav"]

    both = tmp_path / "both"
    both.mkdir()
    sf.write(both / "song.wav", song(1.0, 44100), 44100)
    sf.write(both / "song.flac", song(1.0, 44100, seed=5), 44100)
    flat = tmp_path / "flat"
    assert main(["separate", str(both / "song.wav"), str(both / "song.flac"), str(both / "song.wav"), "-o", str(flat),
                 "--filename", "{track}.{trackext}/{relpath}/{stem}.{ext}"] + common) == 0
    assert _tree(flat) == ["song.flac/vocals.wav", "song.wav/vocals.wav"]
    wav, _ = sf.read(flat / "song.wav" / "vocals.wav")
    flac, _ = sf.read(flat / "song.flac" / "vocals.wav")
    assert np.abs(wav - flac).max() > 1e-3  # each from its own input


@pytest.mark.parametrize("layout,argv,hint", [
    ("formats", [], "{trackext}"),
    ("subfolders", ["--filename", "{track}/{stem}.{ext}"], "{relpath}"),
])
def test_two_inputs_writing_one_file_are_refused_before_any_work(tmp_path, capsys, no_model_loads, layout, argv, hint):
    folder = tmp_path / "in"
    if layout == "formats":
        folder.mkdir()
        first, second = folder / "song.flac", folder / "song.mp3"
        sf.write(first, song(1.0, 44100), 44100)
        sf.write(second, song(1.0, 44100), 44100)
        inputs = [str(first), str(second)]
    else:
        first, second = folder / "a" / "x.wav", folder / "b" / "x.wav"
        for path in (first, second):
            path.parent.mkdir(parents=True)
            sf.write(path, song(1.0, 44100), 44100)
        inputs = [str(folder)]
    out = tmp_path / "out"
    code, line = usage_error(["separate", *inputs, "-o", str(out)] + argv, capsys)
    assert code == 2
    assert line.startswith(f"danna-sep: {first} and {second} would both write {out / first.stem / 'drums.wav'}"), line
    assert hint in line
    assert not out.exists()


# --- formats that are what they say ---------------------------------------------------------

@pytest.mark.parametrize("extra,words", [
    (["--format", "flac", "--filename", "{track}/{stem}.wav"],
     "--format flac: --filename '{track}/{stem}.wav' names .wav files; drop --format, or end --filename in .{ext}"),
    (["--filename", "{track}/{stem}.ogg"], "--filename '{track}/{stem}.ogg': its files must end in .{ext}, .wav, .flac"),
    (["--filename", "{track}/{stem}.{trackext}"], "its files must end in .{ext}, .wav, .flac or .mp3, not .{trackext}"),
    (["--filename", "{stem}.mp3", "--bit-depth", "24"], "--bit-depth is for wav and flac: mp3 has no bit depth"),
    (["--filename", "{stem}.FLAC", "--bit-depth", "32"], "flac takes --bit-depth 16 or 24"),
])
def test_a_format_the_file_name_contradicts_is_a_usage_error(tmp_path, capsys, no_model_loads, extra, words):
    source = tmp_path / "in.wav"
    sf.write(source, song(1.0, 44100), 44100)
    code, line = usage_error(["separate", str(source), "-o", str(tmp_path / "out")] + extra, capsys)
    assert code == 2 and words in line, line
    assert not (tmp_path / "out").exists()


def test_the_file_name_extension_names_the_container(tmp_path, tiny_bundle):
    source = tmp_path / "in.wav"
    sf.write(source, song(1.0, 44100), 44100)
    out = tmp_path / "out"
    common = ["separate", str(source), "--bundle", str(tiny_bundle), "-q", "--two-stems", "vocals"]
    assert main(common + ["-o", str(out), "--filename", "{track}/{stem}.flac"]) == 0
    assert main(common + ["-o", str(out), "--filename", "{track}/{stem}.{ext}", "--format", "mp3"]) == 0
    for name, container in (("vocals.flac", "FLAC"), ("no_vocals.flac", "FLAC"), ("vocals.mp3", "MP3")):
        assert sf.info(out / "in" / name).format == container, name

    # the API: each target in the format its name says; a contradicting format is refused up front
    from danna_sep.separator import OutputOptions, Separator

    separator = Separator(tiny_bundle, device="cpu")
    api = tmp_path / "api"
    separator.write_stems(source, {"vocals": api / "v.wav", "no_vocals": api / "rest.flac"})
    assert (sf.info(api / "v.wav").format, sf.info(api / "rest.flac").format) == ("WAV", "FLAC")
    with pytest.raises(ValueError, match="a .flac file cannot hold wav"):
        separator.write_stems(source, {"no_vocals": tmp_path / "lie" / "rest.flac"}, OutputOptions(format="wav"))
    assert not (tmp_path / "lie").exists()


@pytest.mark.parametrize("written,extra,subtype", [
    ({"subtype": "PCM_16"}, [], "PCM_16"),
    ({"subtype": "PCM_24", "format": "FLAC"}, [], "PCM_24"),
    ({"subtype": "FLOAT"}, [], "FLOAT"),
    ({"subtype": "FLOAT"}, ["--format", "flac"], "PCM_24"),
    ({"subtype": "PCM_24"}, ["--bit-depth", "16"], "PCM_16"),
    ({"subtype": "PCM_24"}, ["--filename", "{track}/{stem}.mp3"], None),
    ({"format": "MP3"}, [], "PCM_16"),  # a lossy input has no bit depth
])
def test_bit_depth_defaults_to_the_inputs(tmp_path, tiny_bundle, written, extra, subtype):
    source = tmp_path / f"in.{written.get('format', 'wav').lower()}"
    sf.write(source, song(1.0, 44100) * 0.5, 44100, **written)
    out = tmp_path / "out"
    assert main(["separate", str(source), "-o", str(out), "--bundle", str(tiny_bundle), "-q", "--stems", "bass"]
                + extra) == 0
    [stem] = list((out / "in").iterdir())
    info = sf.info(stem)
    assert info.subtype == (subtype or "MPEG_LAYER_III"), (stem.name, info.subtype)


# --- reruns and scripts ---------------------------------------------------------------------

def _records(out: str) -> list:
    """The JSON objects of --json's stdout, one per line."""
    import json

    lines = out.strip().splitlines()
    return [json.loads(line) for line in lines]


def test_json_says_what_became_of_each_input_and_matches_the_files(tmp_path, tiny_bundle, capsys):
    inputs = tmp_path / "in"
    (inputs / "sub").mkdir(parents=True)
    sf.write(inputs / "a.wav", song(1.5, 44100), 44100)
    sf.write(inputs / "sub" / "b.flac", song(1.0, 48000, seed=2), 48000)
    (inputs / "broken.wav").write_text("not audio")
    missing = tmp_path / "missing.wav"
    out = tmp_path / "out"
    code = main(["separate", str(inputs), str(missing), "-o", str(out), "--bundle", str(tiny_bundle),
                 "--stems", "vocals,bass", "--json", "--precision", "float32", "-q"])
    captured = capsys.readouterr()
    assert code == 1
    records = {Path(r["input"]).name: r for r in _records(captured.out)}
    assert sorted(records) == ["a.wav", "b.flac", "broken.wav", "missing.wav"]
    assert records["missing.wav"]["status"] == "failed" and records["missing.wav"]["error"] == "no such file"
    assert records["broken.wav"]["status"] == "failed" and "not an audio file" in records["broken.wav"]["error"]
    assert records["broken.wav"]["outputs"] == {}
    written = []
    for name, seconds in (("a.wav", 1.5), ("b.flac", 1.0)):
        record = records[name]
        assert record["status"] == "done" and record["error"] is None, record
        assert sorted(record["outputs"]) == ["bass", "vocals"]
        assert record["audio_seconds"] == pytest.approx(seconds)
        assert record["compute_seconds"] > 0
        # compute_seconds is rounded to the millisecond, the factor to 1e-4
        assert record["real_time_factor"] == pytest.approx(record["compute_seconds"] / seconds,
                                                           abs=0.0005 / seconds + 0.00006)
        assert (record["device"], record["precision"], record["bundle"]) == ("cpu", "float32", str(tiny_bundle))
        assert record["models"] == [m.name for m in tiny_members(seed=10)]
        for path in record["outputs"].values():
            assert sf.info(path).duration == pytest.approx(seconds)
            written.append(Path(path))
    assert sorted(written) == sorted(p for p in out.rglob("*") if p.is_file())
    assert "{" not in captured.err  # JSON on stdout only; the error lines on stderr
    assert sum(line.startswith("danna-sep: ") for line in captured.err.splitlines()) == 2


def test_skip_existing_finishes_a_batch_and_a_finished_rerun_exits_0(tmp_path, tiny_bundle, capsys, monkeypatch):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("a", "b"):
        sf.write(inputs / f"{name}.wav", song(1.0, 44100, seed=len(name)), 44100)
    out = tmp_path / "out"
    argv = ["separate", str(inputs), "-o", str(out), "--bundle", str(tiny_bundle)]
    assert main(argv + ["-q"]) == 0
    capsys.readouterr()
    assert main(argv + ["-q"]) == 1  # without it, a rerun is refused: the stems are there
    assert "already exists (use --force to overwrite)" in capsys.readouterr().err

    # one stem gone: only it is written again, the rest is kept as it is
    kept = {p: p.read_bytes() for p in out.rglob("*.wav")}
    (out / "b" / "other.wav").unlink()
    assert main(argv + ["--skip-existing", "--json"]) == 0
    captured = capsys.readouterr()
    records = {Path(r["input"]).name: r for r in _records(captured.out)}
    assert records["a.wav"]["status"] == "skipped"
    assert records["a.wav"]["outputs"] == {s: str(out / "a" / f"{s}.wav") for s in bundles.SOURCES}
    assert records["b.wav"]["status"] == "done"
    assert records["b.wav"]["outputs"] == {"other": str(out / "b" / "other.wav")}
    assert f"danna-sep: {inputs / 'a.wav'}: skipped, its stems are there already" in captured.err
    assert "2 inputs: 1 done, 1 skipped, 0 failed" in captured.err
    for path, data in kept.items():
        assert path.read_bytes() == data, path
    assert sf.info(out / "b" / "other.wav").frames == 44100

    # everything there: no model is even loaded, and the rerun exits 0
    import danna_sep.separator

    def loud(*args, **kwargs):
        raise AssertionError("a model was loaded for a batch that is finished")

    monkeypatch.setattr(danna_sep.separator, "resolve_bundle", loud)
    assert main(argv + ["--skip-existing", "--json", "-q"]) == 0
    assert [r["status"] for r in _records(capsys.readouterr().out)] == ["skipped", "skipped"]


def test_verbose_says_device_precision_bundle_and_timings_and_quiet_says_nothing(tmp_path, tiny_bundle, capsys):
    source = tmp_path / "in.wav"
    sf.write(source, song(1.0, 44100), 44100)
    argv = ["separate", str(source), "--bundle", str(tiny_bundle), "--precision", "float32", "--stems", "drums"]
    assert main(argv + ["-o", str(tmp_path / "v"), "-v"]) == 0
    err = capsys.readouterr().err
    assert f"danna-sep: bundle {tiny_bundle} (" in err and ", on cpu in float32, loaded in " in err
    assert f"danna-sep: {source}: 1.0 s of audio: decoded and separated in " in err and " s, encoded in " in err
    assert "in.wav -> " in err and "real-time factor" in err
    assert main(argv + ["-o", str(tmp_path / "plain")]) == 0
    err = capsys.readouterr().err
    assert "in.wav -> " in err and "loaded in" not in err and "decoded and separated" not in err
    assert main(argv + ["-o", str(tmp_path / "q"), "-q"]) == 0
    assert capsys.readouterr().err == ""


def test_warnings_go_through_the_bars_on_their_own_line(tmp_path, tiny_bundle, capsys):
    """Logging is set up once in main: a library warning (a 5.1 downmix) is one line of its
    own, prefixed danna-sep:, even while a progress bar is on screen."""
    source = tmp_path / "surround.wav"
    sf.write(source, np.concatenate([song(1.0, 44100)] * 3, axis=1), 44100)
    assert main(["separate", str(source), "-o", str(tmp_path / "out"), "--bundle", str(tiny_bundle)]) == 0
    lines = [line.split("\r")[-1].rstrip() for line in capsys.readouterr().err.split("\n")]
    warning = (f"danna-sep: {source}: 6 channels downmixed to stereo "
               "(ITU-R BS.775 5.1 downmix, LFE dropped)")
    assert lines.count(warning) == 1, lines


# --- progress ---------------------------------------------------------------------------------

def test_write_stems_reports_each_segment_and_each_model_then_the_encoding(tmp_path, tiny_bundle):
    from danna_sep.engine import plan_segments
    from danna_sep.separator import Separator

    rate = 44100
    source = tmp_path / "six.wav"
    sf.write(source, song(6.0, rate), rate)
    separator = Separator(tiny_bundle, device="cpu", segment=2.0)
    members = len(separator.bundle.members)
    calls = []
    separator.write_stems(source, {"vocals": tmp_path / "v.wav", "no_vocals": tmp_path / "r.wav"},
                          progress=lambda *call: calls.append(call))
    stages = [stage for stage, _, _ in calls]
    first_encoding = stages.index("encoding")
    assert set(stages[:first_encoding]) == {"separating"} and set(stages[first_encoding:]) == {"encoding"}
    assert {total for _, _, total in calls} == {6.0}
    separating = [done for _, done, _ in calls[:first_encoding]]
    encoding = [done for _, done, _ in calls[first_encoding:]]
    segments = plan_segments(6 * rate, 2 * rate, separator.options.overlap)
    # one report after each model on each segment, moving through the segment's share of the track
    assert len(separating) == len(segments) * members
    assert separating == sorted(separating) and separating[-1] == 6.0
    assert len(set(separating)) == len(separating)
    boundaries = [start / rate for start, _ in segments[1:]] + [6.0]
    assert [separating[(i + 1) * members - 1] for i in range(len(segments))] == pytest.approx(boundaries, abs=1e-4)
    # the encoding: from 0 to the whole track, both stems together
    assert encoding[0] == 0.0 and encoding == sorted(encoding) and encoding[-1] == pytest.approx(6.0)
    assert 0 < encoding[len(encoding) // 2] < 6.0


def test_the_bar_counts_seconds_of_audio_and_says_the_real_time_factor(tmp_path, tiny_bundle, capsys):
    source = tmp_path / "six.wav"
    sf.write(source, song(6.0, 44100), 44100)
    assert main(["separate", str(source), "-o", str(tmp_path / "out"), "--bundle", str(tiny_bundle),
                 "--segment", "2"]) == 0
    err = capsys.readouterr().err
    draws = [part for part in err.replace("\n", "\r").split("\r") if part.startswith("six.wav")]
    separating = [d for d in draws if d.startswith("six.wav:")]
    encoding = [d for d in draws if d.startswith("six.wav (encoding):")]
    assert len(separating) >= 4 * 3, draws  # 4 segments, 3 models each
    assert encoding and "6.0/6.0 s of audio" in encoding[-1], draws
    assert "6.0/6.0 s of audio" in separating[-1] and "real-time factor" in separating[-1]
    shape = (r"six\.wav( \(encoding\))?: +\d+%\|[^|]*\| \d+\.\d/\d+\.\d s of audio "
             r"\[\d\d:\d\d<(\?|\d\d:\d\d)(, real-time factor \d+\.\d\d)?\] *")
    assert all(re.fullmatch(shape, draw) for draw in draws), draws  # no rate in s/s or it/s
    summary = [line for line in err.splitlines() if "six.wav -> " in line]
    assert len(summary) == 1 and "6.0 s of audio in " in summary[0]
    found = re.search(r"6\.0 s of audio in (\d+\.\d) s: real-time factor (\d+\.\d\d), (\d+\.\d)x "
                      r"(faster|slower) than real time\)$", summary[0])
    compute, factor, times, way = float(found[1]), float(found[2]), float(found[3]), found[4]
    assert factor == pytest.approx(compute / 6.0, abs=0.01 + 0.05 / 6)  # compute time over audio time
    assert way == ("faster" if factor < 1 else "slower")  # the factor is compute time over audio time
    assert times == pytest.approx(1 / factor if factor < 1 else factor, rel=0.1, abs=0.1)


def test_library_code_draws_no_progress_bar():
    """tqdm is the command line's (cli.py and the commands): library code reports progress
    through callbacks."""
    import danna_sep

    package = Path(danna_sep.__file__).parent
    users = sorted(p.relative_to(package).as_posix() for p in package.rglob("*.py") if "tqdm" in p.read_text())
    assert {"cli.py", "commands/bars.py"} <= set(users)
    assert [u for u in users if u != "cli.py" and not u.startswith("commands/")] == []


def test_clip_none_into_pcm_is_warned_about_once(tmp_path, tiny_bundle, capsys):
    """demucs accepts it too, so it runs; the samples past full scale are clipped all the same."""
    source = tmp_path / "in.wav"
    sf.write(source, song(1.0, 44100), 44100)
    argv = ["separate", str(source), "--bundle", str(tiny_bundle), "-q", "--stems", "drums", "--clip", "none"]
    assert main(argv + ["-o", str(tmp_path / "a"), "--bit-depth", "16"]) == 0
    assert capsys.readouterr().err.splitlines() == [
        "danna-sep: --clip none keeps exact floats in 32-bit float wav only: 16-bit wav stems clip at full scale"]
    assert main(argv + ["-o", str(tmp_path / "b"), "--bit-depth", "32"]) == 0
    assert capsys.readouterr().err == ""


def test_batch_segments_reach_the_engine_and_change_nothing_audible(tmp_path, tiny_bundle, capsys):
    """--batch-segments 3 separates three 1 s segments per pass, into the stems of one at a time."""
    source = tmp_path / "eight.wav"
    sf.write(source, song(8.0, 44100), 44100, subtype="FLOAT")
    stems = {}
    for batch in ("1", "3"):
        out = tmp_path / f"out{batch}"
        code = main(["separate", str(source), "-o", str(out), "--bundle", str(tiny_bundle), "--device", "cpu",
                     "--segment", "1", "--batch-segments", batch, "--bit-depth", "32", "-v"])
        err = capsys.readouterr().err
        assert code == 0, err
        assert f"9 segments, up to {batch} in one pass" in err
        stems[batch] = {name: sf.read(out / "eight" / f"{name}.wav")[0] for name in ("drums", "vocals")}
    for name in ("drums", "vocals"):
        np.testing.assert_allclose(stems["3"][name], stems["1"][name], rtol=0, atol=1e-5)


def test_blend_bins_reach_the_engine(tmp_path, tiny_bundle, capsys):
    """--blend-bins all puts every weight on every bin (the original's blend), modelled (the
    default) only on the bins each member models: the tiny U-Net models the lowest ones."""
    import torch

    from danna_sep.separator import Separator

    source = tmp_path / "two.wav"
    audio = song(2.0, 44100).astype(np.float32)
    sf.write(source, audio, 44100, subtype="FLOAT")
    stems = {}
    for bins in ("modelled", "all"):
        out = tmp_path / bins
        assert main(["separate", str(source), "-o", str(out), "--bundle", str(tiny_bundle), "--device", "cpu",
                     "--precision", "float32", "--blend-bins", bins, "--bit-depth", "32", "-q"]) == 0, \
            capsys.readouterr().err
        stems[bins] = sf.read(out / "two" / "vocals.wav", dtype="float32")[0]
        direct = Separator(str(tiny_bundle), device="cpu", precision="float32", blend_bins=bins).separate_tensor(
            torch.from_numpy(audio.T.copy()), 44100)["vocals"].numpy().T
        np.testing.assert_allclose(stems[bins], direct, rtol=0, atol=1e-5)
    assert np.abs(stems["modelled"] - stems["all"]).max() > 1e-4
