"""Bad and unusual inputs through `danna-sep separate`: one clear line each, the documented
exit code, no traceback, nothing half-written, and the other inputs still separated."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from danna_sep import bundle as bundles
from danna_sep.cli import main
from danna_sep.separator import OutputOptions, Separator
from test_bundle import tiny_members
from test_cli_separate import song

STEMS = ("drums", "bass", "other", "vocals")


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad") / "bundle"
    bundles.save_bundle(folder, tiny_members(seed=3))
    return folder


def leftovers(folder: Path) -> list:
    """Hidden temporary files anywhere under `folder`."""
    return [p for p in folder.rglob("*") if p.name.startswith(".")]


def _empty(path):
    path.write_bytes(b"")


def _zero_samples(path):
    sf.write(path, np.zeros((0, 2), np.float32), 44100)


def _text(path):
    path.write_text("not audio at all\n")


def _truncated(path):
    sf.write(path, song(2.0, 44100), 44100, subtype="PCM_16")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _nan(path):
    wav = song(1.0, 44100)
    wav[100, 0] = np.nan
    sf.write(path, wav, 44100, subtype="FLOAT")


def _inf(path):
    wav = song(1.0, 44100)
    wav[200, 1] = np.inf
    sf.write(path, wav, 44100, subtype="FLOAT")


FAILING = {
    "empty file": (_empty, "empty file"),
    "zero samples": (_zero_samples, "no samples"),
    "text named .wav": (_text, ""),
    "truncated wav": (_truncated, "truncated"),
    "NaN samples": (_nan, "NaN"),
    "inf samples": (_inf, "infinite"),
}


@pytest.mark.parametrize("case", list(FAILING))
def test_a_bad_file_fails_alone(tmp_path, tiny_bundle, capsys, case):
    make, words = FAILING[case]
    inputs = tmp_path / "in"
    inputs.mkdir()
    good = inputs / "a good one.wav"
    sf.write(good, song(1.5, 44100), 44100)
    bad = inputs / "zz bad.wav"
    make(bad)
    out = tmp_path / "out"
    code = main(["separate", str(good), str(bad), "-o", str(out), "--bundle", str(tiny_bundle), "-q"])
    err = capsys.readouterr().err
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert str(bad) in lines[0] and words in lines[0]
    assert "Traceback" not in err
    assert sorted(p.name for p in (out / "a good one").iterdir()) == sorted(f"{s}.wav" for s in STEMS)
    assert not (out / "zz bad").exists()
    assert not leftovers(out)


def _stereo_at(rate, channels=2, silent=False):
    def make(path):
        wav = song(1.5, rate)
        if channels == 1:
            wav = wav[:, :1]
        elif channels > 2:
            wav = np.concatenate([wav] * 3, axis=1)[:, :channels] * np.linspace(0.2, 1, channels)
        if silent:
            wav = np.zeros_like(wav)
        sf.write(path, wav, rate, subtype="PCM_16")
    return make


UNUSUAL = {
    "silence": (_stereo_at(44100, silent=True), 44100),
    "8 kHz mono": (_stereo_at(8000, channels=1), 8000),
    "96 kHz": (_stereo_at(96000), 96000),
    "6 channels": (_stereo_at(44100, channels=6), 44100),
}


@pytest.mark.parametrize("case", list(UNUSUAL))
def test_unusual_files_are_separated_at_their_own_rate(tmp_path, tiny_bundle, capsys, case):
    make, rate = UNUSUAL[case]
    source = tmp_path / "in ünïcode" / f"{case}.wav"
    source.parent.mkdir()
    make(source)
    frames = sf.info(source).frames
    out = tmp_path / "out"
    assert main(["separate", str(source), "-o", str(out), "--bundle", str(tiny_bundle), "-q"]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for stem in STEMS:
        data, got_rate = sf.read(out / case / f"{stem}.wav", dtype="float32")
        assert got_rate == rate
        assert data.shape == (frames, 2)
        assert np.isfinite(data).all()
        if case == "silence":
            assert np.abs(data).max() == 0
    assert not leftovers(out)


def test_unwritable_output_folder(tmp_path, tiny_bundle, capsys):
    source = tmp_path / "x.wav"
    sf.write(source, song(1.0, 44100), 44100)
    blocker = tmp_path / "a file"
    blocker.write_text("in the way")
    code = main(["separate", str(source), "-o", str(blocker / "out"), "--bundle", str(tiny_bundle), "-q"])
    err = capsys.readouterr().err
    assert code == 1
    assert len(err.strip().splitlines()) == 1 and "cannot create the output folder" in err
    assert "Traceback" not in err
    if os.geteuid() != 0:  # root writes through permission bits
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        try:
            assert main(["separate", str(source), "-o", str(locked), "--bundle", str(tiny_bundle), "-q"]) == 1
            assert "not writable" in capsys.readouterr().err
            assert list(locked.iterdir()) == []
        finally:
            locked.chmod(0o755)


def test_streamed_stems_equal_the_in_memory_separation(tmp_path, tiny_bundle):
    """write_stems (spooled input, two passes, resampling in blocks) matches separate_file."""
    source = tmp_path / "s.wav"
    sf.write(source, song(7.3, 48000, seed=5), 48000, subtype="FLOAT")
    separator = Separator(tiny_bundle, device="cpu", segment=2.0)
    expected = separator.separate_file(source)
    targets = {s: tmp_path / "out" / f"{s}.wav" for s in STEMS}
    written = separator.write_stems(source, targets, OutputOptions(bit_depth=32, clip="none"))
    assert written.samplerate == 48000 and written.scale == 1.0
    for stem in STEMS:
        data, _ = sf.read(targets[stem], dtype="float32")
        want = expected[stem].T.numpy()
        assert data.shape == want.shape
        # Block-wise and whole-track soxr differ only near the ends of blocks.
        assert np.abs(data - want).max() < 1e-4


def test_rescale_keeps_all_stems_below_full_scale_with_one_factor(tmp_path, tiny_bundle):
    loud = tmp_path / "loud.wav"
    sf.write(loud, song(2.0, 44100) * 20, 44100, subtype="FLOAT")  # a float wav may pass full scale
    separator = Separator(tiny_bundle, device="cpu")
    free = {s: tmp_path / "none" / f"{s}.wav" for s in STEMS}
    separator.write_stems(loud, free, OutputOptions(bit_depth=32, clip="none"))
    fitted = {s: tmp_path / "fit" / f"{s}.wav" for s in STEMS}
    written = separator.write_stems(loud, fitted, OutputOptions(bit_depth=32, clip="rescale"))
    peak = max(np.abs(sf.read(p)[0]).max() for p in free.values())
    assert peak > 1.0, "the test needs a stem past full scale"
    assert written.scale == pytest.approx(1.0 / peak, rel=1e-6)
    for stem in STEMS:
        np.testing.assert_allclose(sf.read(fitted[stem])[0], sf.read(free[stem])[0] / peak, atol=1e-6)


def test_jobs_separate_several_tracks_at_once(tmp_path, tiny_bundle, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(3):
        sf.write(inputs / f"t{i}.wav", song(1.5, 44100, seed=i), 44100, subtype="FLOAT")
    (inputs / "broken.wav").write_bytes(b"RIFF")
    one, two = tmp_path / "one", tmp_path / "two"
    common = ["--bundle", str(tiny_bundle), "--bit-depth", "32", "--clip", "none"]
    assert main(["separate", str(inputs), "-o", str(one), "-q", *common]) == 1
    assert main(["separate", str(inputs), "-o", str(two), "-j", "2", *common]) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("danna-sep:")]
    assert len(errors) == 2 and all("broken.wav" in line for line in errors)
    assert "Traceback" not in err
    for i in range(3):
        for stem in STEMS:
            a, _ = sf.read(one / f"t{i}" / f"{stem}.wav")
            b, _ = sf.read(two / f"t{i}" / f"{stem}.wav")
            np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_sigint_mid_track_leaves_nothing_half_written(tmp_path, tiny_bundle, jobs):
    inputs = tmp_path / "in"
    inputs.mkdir()
    sf.write(inputs / "a first.wav", song(1.0, 44100), 44100)
    sf.write(inputs / "b long.wav", song(240.0, 22050, seed=2), 22050)
    out = tmp_path / "out"
    args = [sys.executable, "-m", "danna_sep.cli", "separate", str(inputs / "a first.wav"),
            str(inputs / "b long.wav"), "-o", str(out), "--bundle", str(tiny_bundle), "--segment", "2"]
    if jobs == "2":  # the first track finishes while the long one is under way
        args += ["-j", "2"]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, errors="replace")
    seen = ""
    deadline = time.monotonic() + 240
    # Wait for the first track's summary and for the long track's progress to move.
    while time.monotonic() < deadline:
        char = proc.stderr.read(1)
        if not char:
            break
        seen += char
        if "a first.wav -> " in seen and seen.count("b long.wav:") >= 2:
            break
    assert "a first.wav -> " in seen, seen
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    code = proc.wait(timeout=120)
    err = seen + rest
    assert code == 130, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].endswith("danna-sep: interrupted")
    assert sorted(p.name for p in (out / "a first").iterdir()) == sorted(f"{s}.wav" for s in STEMS)
    assert not (out / "b long").exists() or not list((out / "b long").iterdir())
    assert not leftovers(out)
