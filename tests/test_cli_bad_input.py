"""Bad and unusual inputs through `danna-sep separate`: one clear line each, the documented
exit code, no traceback, nothing half-written, and the other inputs still separated."""

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
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


# What the error line says right after "danna-sep: PATH: ".
FAILING = {
    "empty file": (_empty, "empty file (0 bytes)"),
    "zero samples": (_zero_samples, "no samples"),
    "text named .wav": (_text, "not an audio file ("),
    "truncated wav": (_truncated, "truncated or corrupt audio (header promises 352800 bytes"),
    "NaN samples": (_nan, "contains NaN or infinite samples"),
    "inf samples": (_inf, "contains NaN or infinite samples"),
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
    assert words and lines[0].startswith(f"danna-sep: {bad}: {words}"), lines[0]
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


def _without_root_powers() -> list:
    """A command prefix under which permission bits apply: none when the suite is not root;
    as root, setpriv to user nobody, or else (when nobody cannot reach this interpreter, e.g.
    one under /root) setpriv dropping every capability, so that root is the owner of its
    folders but can no longer write through their permission bits. pytest.skip when neither works."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root and util-linux setpriv is not installed")
    tried = []
    for prefix in ([setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"],
                   [setpriv, "--inh-caps=-all", "--bounding-set=-all"]):
        probe = subprocess.run(prefix + [sys.executable, "-c", "import torch, soundfile, danna_sep.cli"],
                               capture_output=True, text=True, timeout=300, cwd="/")
        if probe.returncode == 0:
            return prefix
        tried.append(f"{' '.join(prefix[1:])}: {(probe.stderr.strip().splitlines() or ['?'])[-1]}")
    pytest.skip("running as root and setpriv cannot drop its powers here (" + "; ".join(tried) + ")")


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


def test_output_folder_without_write_permission(tiny_bundle):
    """A folder the user may not write: its track folder cannot be made, or, already there,
    takes no file. As root (how CI runs) through setpriv, so that the permission bits apply."""
    prefix = _without_root_powers()
    # Everything the command reads lies outside pytest's owner-only temporary folder, for nobody.
    shared = Path(tempfile.mkdtemp(prefix="danna-sep-locked-"))
    try:
        shared.chmod(0o755)
        bundle = shutil.copytree(tiny_bundle, shared / "bundle")
        for name in ("x", "y"):
            sf.write(shared / f"{name}.wav", song(1.0, 44100, seed=len(name)), 44100)
        out = shared / "out"
        out.mkdir()
        (out / "y").mkdir()  # y's track folder is there; x's must be made
        for folder in (out / "y", out):
            folder.chmod(0o555)
        for path in [bundle, *bundle.iterdir(), shared / "x.wav", shared / "y.wav"]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        run = subprocess.run(
            prefix + [sys.executable, "-m", "danna_sep.cli", "separate", str(shared / "x.wav"), str(shared / "y.wav"),
                      "-o", str(out), "--bundle", str(bundle), "-q"],
            capture_output=True, text=True, timeout=300, cwd=shared,
            env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1"),
        )
        lines = run.stderr.strip().splitlines()
        assert run.returncode == 1, run.stderr
        assert len(lines) == 2 and "Traceback" not in run.stderr, run.stderr
        assert f"{out / 'x'}: cannot create the output folder (Permission denied" in lines[0], lines[0]
        assert f"{out / 'y'}: folder is not writable (Permission denied" in lines[1], lines[1]
        assert [p.name for p in out.iterdir()] == ["y"] and list((out / "y").iterdir()) == []
    finally:
        for folder in (shared / "out", shared / "out" / "y"):
            if folder.is_dir():
                folder.chmod(0o755)
        shutil.rmtree(shared)


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
    # what is left of each line once the bars have been redrawn (carriage returns, cursor moves)
    lines = [re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", line.split("\r")[-1]) for line in err.split("\n")]
    errors = [line for line in lines if line.startswith("danna-sep:") and "broken.wav" in line]
    assert len(errors) == 2 and all(line.startswith(f"danna-sep: {inputs / 'broken.wav'}: not an audio file")
                                    for line in errors), errors
    assert "Traceback" not in err
    for i in range(3):
        for stem in STEMS:
            a, _ = sf.read(one / f"t{i}" / f"{stem}.wav")
            b, _ = sf.read(two / f"t{i}" / f"{stem}.wav")
            np.testing.assert_allclose(a, b, atol=1e-5)


# --- interrupts and kills, in child processes watched with deadlines ------------------------

def _signals_as_in_a_terminal() -> None:
    """A process started in the background by a non-interactive shell (nohup, `cmd &`, some CI
    runners) inherits SIGINT and SIGHUP ignored, and the command rightly leaves an ignored
    Ctrl-C ignored; the child gets the dispositions of a command typed in a terminal."""
    for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)


class Child:
    """`python -m danna_sep.cli ARGS` in a subprocess. A thread drains its stderr, so that
    no wait for its output can block past a deadline; leaving the `with` block kills it if
    it is still running."""

    def __init__(self, args):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "danna_sep.cli", *args], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, env=dict(os.environ, OMP_NUM_THREADS="1"), preexec_fn=_signals_as_in_a_terminal,
        )
        self._chunks = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self):
        fd = self.proc.stderr.fileno()
        while True:
            chunk = os.read(fd, 1 << 16)  # returns whatever is there; b"" once the child has exited
            if not chunk:
                return
            with self._lock:
                self._chunks.append(chunk)

    @property
    def err(self) -> str:
        with self._lock:
            return b"".join(self._chunks).decode("utf-8", "replace")

    def wait_for(self, condition, seconds: float, what: str) -> None:
        """Poll `condition()` every 10 ms; fail if the child exits or `seconds` pass first."""
        deadline = time.monotonic() + seconds
        while not condition():
            assert self.proc.poll() is None, f"exited ({self.proc.returncode}) before {what}:\n{self.err}"
            assert time.monotonic() < deadline, f"no {what} within {seconds} s:\n{self.err}"
            time.sleep(0.01)

    def finish(self, seconds: float) -> int:
        """The exit code, within `seconds`."""
        try:
            code = self.proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running {seconds} s later:\n{self.err}") from None
        self._reader.join(timeout=10)
        return code

    def __enter__(self) -> "Child":
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=60)
        self._reader.join(timeout=10)
        self.proc.stderr.close()


def finals(folder: Path) -> list:
    """Files under their final (not hidden) names anywhere under `folder`."""
    return [p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")] if folder.exists() else []


def _files(folder: Path) -> dict:
    """{path: size} of every file under `folder`, hidden or not, tolerating changes while it is listed."""
    for _ in range(100):
        try:
            return {p: p.stat().st_size for p in folder.rglob("*") if p.is_file()} if folder.exists() else {}
        except FileNotFoundError:
            continue
    raise AssertionError(f"{folder} kept changing under the listing")


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_sigint_mid_track_leaves_nothing_half_written(tmp_path, tiny_bundle, jobs):
    inputs = tmp_path / "in"
    inputs.mkdir()
    sf.write(inputs / "a first.wav", song(1.0, 44100), 44100)
    sf.write(inputs / "b long.wav", song(240.0, 22050, seed=2), 22050)
    out = tmp_path / "out"
    args = ["separate", str(inputs / "a first.wav"), str(inputs / "b long.wav"), "-o", str(out),
            "--bundle", str(tiny_bundle), "--segment", "2"]
    if jobs == "2":  # the first track finishes while the long one is under way
        args += ["-j", "2"]
    with Child(args) as child:
        # Wait for the first track's summary and for the long track's progress to move.
        child.wait_for(lambda: "a first.wav -> " in child.err and child.err.count("b long.wav:") >= 2,
                       240, "summary of the first track and progress on the second")
        child.proc.send_signal(signal.SIGINT)
        code = child.finish(120)
    err = child.err
    assert code == 130, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].endswith("danna-sep: interrupted")
    assert sorted(p.name for p in (out / "a first").iterdir()) == sorted(f"{s}.wav" for s in STEMS)
    assert not (out / "b long").exists()  # not even an empty folder
    assert not leftovers(out)


# Long enough that pass 2 (four mp3 encodes after the separation) takes seconds to catch, and
# that the encoders write data well before they finish (10 s was once too short on a fast CPU).
LONG_SECONDS = 20


@pytest.fixture(scope="module")
def long_song(tmp_path_factory):
    path = tmp_path_factory.mktemp("long") / "long.wav"
    sf.write(path, song(LONG_SECONDS, 44100, seed=2), 44100)
    return path


def _mp3_args(source: Path, out: Path, bundle: Path) -> list:
    return ["separate", str(source), "-o", str(out), "--bundle", str(bundle), "--segment", "2", "--format", "mp3"]


def assert_whole_mp3_track(folder: Path) -> None:
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == sorted(f"{s}.mp3" for s in STEMS)
    for stem in STEMS:
        data, rate = sf.read(folder / f"{stem}.mp3")
        assert rate == 44100 and data.shape[1] == 2, stem
        assert abs(data.shape[0] - LONG_SECONDS * 44100) <= 1152, (stem, data.shape)
        assert np.abs(data).max() > 1e-3, f"{stem} is silent"


@pytest.mark.parametrize("signum,jobs,files,code,words", [
    (signal.SIGINT, "1", 1, 130, "interrupted"),
    (signal.SIGINT, "2", 1, 130, "interrupted"),
    (signal.SIGTERM, "1", 2, 143, "terminated (SIGTERM)"),  # kill, timeout, docker stop, systemd
    (signal.SIGHUP, "1", 1, 129, "hung up (SIGHUP)"),  # the terminal closed
])
def test_sigint_while_encoding_leaves_nothing_and_a_rerun_completes(tmp_path, tiny_bundle, long_song, signum, jobs,
                                                                    files, code, words):
    """Ctrl-C, SIGTERM and SIGHUP alike: one line, 130 / 143 / 129, and not a file nor a folder of
    the track left, so that a plain rerun writes it whole. `files`: stem files holding data when
    the signal comes (with two, the writer that made the track's folder is not the last one)."""
    out = tmp_path / "out"
    args = _mp3_args(long_song, out, tiny_bundle) + ["-q", "-j", jobs]
    with Child(args) as child:
        # Files appear only in pass 2 (under hidden temporary names); one that has grown means
        # its encoder is under way (past opening it, which imports PyAV and cleans up on its own).
        child.wait_for(lambda: sum(map(bool, _files(out).values())) >= files, 300, f"encoded data in {files} stem file(s)")
        child.proc.send_signal(signum)
        got = child.finish(120)
    assert got == code, child.err
    assert child.err.strip().splitlines() == [f"danna-sep: {words}"], child.err
    written = finals(out)
    assert not written, written
    assert not leftovers(out)
    assert not out.exists() or not list(out.iterdir()), list(out.rglob("*"))  # the track's folder went too
    # Nothing of the track is left, so a plain rerun (no --force) writes it whole.
    assert main(args) == 0
    assert_whole_mp3_track(out / "long")
    assert not leftovers(out)


@pytest.mark.parametrize("when", ["at start", "separating", "encoding"])
def test_sigkill_then_a_rerun_writes_the_track_whole(tmp_path, tiny_bundle, long_song, when):
    out = tmp_path / "out"
    args = _mp3_args(long_song, out, tiny_bundle)  # not -q: the progress bar shows pass 1 moving
    with Child(args) as child:
        if when == "at start":
            time.sleep(0.3)  # starting the interpreter, importing torch
        elif when == "separating":
            child.wait_for(lambda: child.err.count("long.wav:") >= 3, 300, "progress in the separation pass")
        else:  # drums encoded, bass under way
            child.wait_for(lambda: len(_files(out)) >= 2, 300, "second stem file")
        child.proc.kill()
        assert child.finish(60) == -signal.SIGKILL, child.err
    killed_with = leftovers(out)
    # Stems are renamed onto their final names only once all four are complete.
    assert not finals(out), finals(out)
    if when == "encoding":
        pattern = r"\.(drums|bass|other|vocals)\.mp3\.tmp-\d+-[0-9a-f]{8}\.mp3"
        assert len(killed_with) >= 2 and all(re.fullmatch(pattern, p.name) for p in killed_with), killed_with
    else:  # pass 1 writes nothing in the output folder (its spools are unlinked files elsewhere)
        assert not killed_with, killed_with
    # No final file is in the way, so the rerun needs no --force.
    assert main(args + ["-q"]) == 0
    assert_whole_mp3_track(out / "long")
    # The rerun removed the killed run's temporaries (their writer's pid is gone) and its own.
    assert not leftovers(out), leftovers(out)