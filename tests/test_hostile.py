"""Hostile input and a hostile environment (issue 16): full disks, signals, killed runs, files cut
short, names too long, files that are not files. Each case ends in one line naming the file
and the problem, the documented exit code, no traceback, and nothing half-written: no hidden
file, no empty folder. The numbers in the test names are the issue's items.

The corpus itself lives in benchmarks/hostile.py; its quick cases (files and options) run here
in-process, the whole of it (full and read-only disks, signals) under -m slow."""

from __future__ import annotations

import importlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from danna_sep import bundle as bundles
from danna_sep.atomic import is_temporary_name, temporary_name
from danna_sep.audio import AudioWriter, wav_container, WAV_LIMIT
from danna_sep.cli import main
from danna_sep.errors import DiskFullError
from danna_sep.spool import Spool
from test_bundle import tiny_members
from test_cli_bad_input import Child, _files

ROOT = Path(__file__).resolve().parents[1]
STEMS = ("drums", "bass", "other", "vocals")


@pytest.fixture(scope="module")
def hostile():
    """benchmarks/hostile.py, imported from the repository root."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(ROOT))
        yield importlib.import_module("benchmarks.hostile")


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile") / "bundle"
    bundles.save_bundle(folder, tiny_members(seed=3))
    return folder


def half_written(out: Path) -> list:
    """Hidden files and empty folders anywhere below `out` (`out` itself may stay)."""
    if not out.is_dir():
        return []
    return [p for p in out.rglob("*") if p.name.startswith(".") or (p.is_dir() and not any(p.iterdir()))]


def shown(err: str) -> list:
    """The lines of stderr as a terminal shows them once the bars are redrawn, blank ones dropped."""
    lines = []
    for line in err.split("\n"):
        line = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", line)
        ours = re.search(r"(?:^|[\r\]])\s*(danna-sep.*)$", line)  # a log line may follow a bar's last state
        line = (ours.group(1) if ours else line.split("\r")[-1]).strip()
        if line:
            lines.append(line)
    return lines


def ours(folder: Path) -> list:
    """Files of ours in a temporary folder (others, torch's caches say, may be there too)."""
    return [p for p in folder.iterdir() if p.name.startswith("danna-sep")]


def one_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = shown(err)
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def tmpfs(tmp_path):
    """mount(folder, size): a small tmpfs at `folder` (root only), unmounted after the test."""
    mounted = []

    def mount(folder: Path, size: str, read_only: bool = False) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        options = f"size={size}" + (",ro" if read_only else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip() or 'not root'})")
        mounted.append(folder)
        return folder

    yield mount
    for folder in reversed(mounted):
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def use_tmpdir(monkeypatch, folder: Path) -> None:
    """$TMPDIR for this process (tempfile caches it) and the children it starts."""
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", None)


def run(argv, capfd):
    code = main(argv)
    return code, capfd.readouterr().err


# --- 1. disk space: checked before work, ENOSPC while working ---------------------------------

def test_1_a_full_tmpdir_is_refused_before_any_work(tmp_path, tiny_bundle, tmpfs, monkeypatch, capfd, hostile):
    tmp = tmpfs(tmp_path / "tmp", "2m")
    use_tmpdir(monkeypatch, tmp)
    source = hostile.write_wav(tmp_path / "song.wav", 20.0)
    out = tmp_path / "out"
    code, err = run(["separate", str(source), "-o", str(out), "--bundle", str(tiny_bundle), "-q"], capfd)
    line = one_line(err)
    assert code == 1
    assert re.fullmatch(rf"danna-sep: {re.escape(str(source))}: disk full: {re.escape(str(tmp))} "
                        r"\(the track needs 19\.\d MB there, 2\.\d MB free\)", line), line
    assert not out.exists() and not ours(tmp)


def test_1_a_full_output_disk_is_refused_before_any_work(tmp_path, tiny_bundle, tmpfs, capfd, hostile):
    disk = tmpfs(tmp_path / "disk", "2m")
    source = hostile.write_wav(tmp_path / "song.wav", 20.0)
    code, err = run(["separate", str(source), "-o", str(disk / "out"), "--bundle", str(tiny_bundle), "-q"], capfd)
    line = one_line(err)
    assert code == 1
    assert re.fullmatch(rf"danna-sep: {re.escape(str(source))}: disk full: {re.escape(str(disk / 'out' / 'song'))} "
                        r"\(the track needs 15\.\d MB there, 2\.\d MB free\)", line), line
    assert not (disk / "out").exists()


@pytest.mark.parametrize("where", ["tmp", "out"])
def test_1_8_a_disk_filling_up_while_separating_is_one_line_and_leaves_nothing(tmp_path, tiny_bundle, tmpfs,
                                                                               monkeypatch, hostile, where):
    """Another program fills the disk once the separation is under way: the spools ($TMPDIR) or
    the stems (the output) meet ENOSPC. One line, exit 1, no hidden file, no empty folder."""
    disk = tmpfs(tmp_path / "disk", "64m" if where == "tmp" else "12m")
    source = hostile.write_wav(tmp_path / "song.wav", hostile.LONG)
    out = disk / "out" if where == "out" else tmp_path / "out"
    if where == "tmp":
        use_tmpdir(monkeypatch, disk)
    args = ["separate", str(source), "-o", str(out), "--bundle", str(tiny_bundle), "--segment", "2"]
    with Child(args) as child:
        child.wait_for(lambda: "real-time factor" in child.err, 300, "the first segment separated")
        filler = hostile.fill_disk(disk)
        code = child.finish(120)
    filler.unlink()
    lines = shown(child.err)
    assert code == 1, child.err
    assert "Traceback" not in child.err
    folder = disk if where == "tmp" else out / "song"
    detail = " (temporary spools)" if where == "tmp" else ""
    assert lines[-1] == f"danna-sep: {source}: disk full: {folder}{detail}", lines[-1]
    assert not [p for p in out.rglob("*") if p.is_file()] if out.exists() else True
    assert not half_written(out) and not (out / "song").exists()
    assert not ours(disk)


def test_1_float16_spools_where_only_they_fit(tmp_path, tiny_bundle, tmpfs, monkeypatch, capfd, hostile):
    """A $TMPDIR too small for float32 spools but large enough for float16 ones: separated, said
    in a line, and the stems within float16's rounding of the float32 ones (about 70 dB below)."""
    source = hostile.write_wav(tmp_path / "song.wav", hostile.LONG)
    common = ["--bundle", str(tiny_bundle), "--segment", "2", "--bit-depth", "32", "--clip", "none"]
    assert main(["separate", str(source), "-o", str(tmp_path / "f32"), "-q", *common]) == 0
    capfd.readouterr()
    use_tmpdir(monkeypatch, tmpfs(tmp_path / "tmp", "16m"))  # float32 needs 19.4 MB, float16 9.7 MB
    code, err = run(["separate", str(source), "-o", str(tmp_path / "f16"), *common], capfd)
    assert code == 0, err
    assert f"danna-sep: {source}: spooled as float16 (half the temporary space" in err
    for stem in STEMS:
        want, _ = sf.read(tmp_path / "f32" / "song" / f"{stem}.wav")
        got, _ = sf.read(tmp_path / "f16" / "song" / f"{stem}.wav")
        snr = 10 * np.log10(np.sum(want**2) / np.sum((got - want) ** 2))
        assert snr > 55, (stem, snr)


def test_1_a_spool_on_a_full_disk_says_disk_full(tmp_path, tmpfs):
    folder = tmpfs(tmp_path / "tmp", "1m")
    spool = Spool(2, str(folder))
    with pytest.raises(DiskFullError) as raised:
        for _ in range(100):
            spool.append(np.zeros((2, 1 << 16), np.float32))  # 512 KiB each
    spool.close()
    assert str(raised.value) == f"disk full: {folder} (temporary spools)"
    assert not list(folder.iterdir()) and os.statvfs(folder).f_bfree * os.statvfs(folder).f_frsize > 900_000


# --- 2. 8. SIGTERM and SIGHUP as Ctrl-C (in test_cli_bad_input.py, with the folders) -----------
def test_2_a_run_started_under_nohup_survives_a_hangup(tmp_path, tiny_bundle, hostile):
    """nohup starts the command with SIGHUP ignored, so that closing the terminal does not stop
    it: SIGHUP stays ignored, and the track is written whole."""
    source = hostile.write_wav(tmp_path / "long.wav", hostile.LONG)
    out = tmp_path / "out"

    def as_nohup() -> None:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    with open(tmp_path / "err.txt", "wb") as err:
        child = subprocess.Popen(
            [sys.executable, "-m", "danna_sep.cli", "separate", str(source), "-o", str(out), "--bundle",
             str(tiny_bundle), "--segment", "2", "--format", "mp3", "-q"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
            env=dict(os.environ, OMP_NUM_THREADS="1"), preexec_fn=as_nohup)
        try:
            deadline = time.monotonic() + 300
            while not any(_files(out).values()) and child.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            child.send_signal(signal.SIGHUP)
            code = child.wait(timeout=300)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
    assert code == 0, (tmp_path / "err.txt").read_text()
    assert sorted(p.name for p in (out / "long").iterdir()) == sorted(f"{s}.mp3" for s in STEMS)


# --- 3. SIGKILL: the next run cleans up, into the same output folder, and says so -------------

def test_3_8_a_run_after_a_sigkill_removes_its_temporaries_and_folder_and_says_so(tmp_path, tiny_bundle, capfd,
                                                                                   hostile):
    first = hostile.write_wav(tmp_path / "killed.wav", hostile.LONG)
    second = hostile.write_wav(tmp_path / "other.wav", 1.0)
    out = tmp_path / "out"
    args = ["separate", str(first), "-o", str(out), "--bundle", str(tiny_bundle), "--segment", "2", "--format", "mp3"]
    with Child(args) as child:
        child.wait_for(lambda: len(_files(out)) >= 2, 300, "a second stem file")
        child.proc.kill()
        assert child.finish(60) == -signal.SIGKILL
        pid = child.proc.pid
    left = [p for p in (out / "killed").iterdir()]
    assert left and all(is_temporary_name(p.name) for p in left), left
    # Another track into the same output folder: the killed run's files go, and its folder.
    code, err = run(["separate", str(second), "-o", str(out), "--bundle", str(tiny_bundle)], capfd)
    assert code == 0, err
    said = [line for line in shown(err) if "killed run" in line]
    assert said == [f"danna-sep: {out / 'killed'}: removed {len(left)} temporary file{'s' * (len(left) > 1)} "
                    f"left by a killed run (process {pid})"], shown(err)
    assert sorted(p.name for p in out.iterdir()) == ["other"]
    assert not half_written(out)


def test_3_only_this_machines_temporaries_of_gone_processes_are_removed(tmp_path):
    """Another machine or container writing into the same folder (a share, a volume) has pids
    this one cannot see: its temporaries are left alone, as are those of a process still running."""
    from danna_sep.atomic import host_tag, remove_stale_temporaries

    gone = subprocess.Popen(["true"])
    gone.wait()
    other = "0000" if host_tag() != "0000" else "ffff"
    names = {
        f".a.wav.tmp-{gone.pid}-{host_tag()}beef.wav": False,  # ours, its writer gone: removed
        f".b.wav.tmp-{gone.pid}-{other}beef.wav": True,  # another machine's: kept
        f".c.wav.tmp-{os.getpid()}-{host_tag()}beef.wav": True,  # this very process: kept
        f".d.wav.tmp-{os.getppid()}-{host_tag()}beef.wav": True,  # a process still running: kept
        ".e.wav": True,  # not one of ours
    }
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    assert remove_stale_temporaries(tmp_path) == [tmp_path / next(iter(names))]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(n for n, kept in names.items() if kept)


# --- 4. truncation judged the same way for every format -------------------------------------

TRUNCATED = ["wav-cut", "wav-size-fffffffe", "wav-header-only", "aiff-cut", "mp3-cut", "opus-cut", "vorbis-cut",
             "flac-cut", "m4a-cut", "webm-cut"]


@pytest.mark.parametrize("name", TRUNCATED)
def test_4_a_file_cut_short_is_refused_in_one_line_unless_allowed(tmp_path, tiny_bundle, capfd, hostile, name):
    case = next(c for c in hostile.CASES if c.name == name)
    setup = case.make(tmp_path)
    source = Path(setup.argv[0])
    out = tmp_path / "out"
    code, err = run(["separate", str(source), "-o", str(out), "--bundle", str(tiny_bundle), "-q"], capfd)
    line = one_line(err)
    assert code == 1
    assert line.startswith(f"danna-sep: {source}: truncated or corrupt audio (") and line.endswith(
        "; --allow-truncated reads what is there"), line
    assert not out.exists()
    code, err = run(["separate", str(source), "-o", str(out), "--bundle", str(tiny_bundle), "-q",
                     "--allow-truncated"], capfd)
    if name == "wav-header-only":  # nothing at all is there to separate
        assert code == 1 and shown(err)[-1] == f"danna-sep: {source}: no samples"
        return
    assert code == 0, err
    assert "Traceback" not in err
    assert any(line.startswith(f"danna-sep: {source}: truncated or corrupt audio (") and line.endswith(
        "going on with what is there (--allow-truncated)") for line in shown(err)), err
    assert sorted(p.name for p in (out / source.stem).iterdir()) == sorted(f"{s}.wav" for s in STEMS)


def test_4_streaming_placeholders_are_not_truncation(tmp_path, tiny_bundle, capfd, hostile):
    """ffmpeg and sox writing to a pipe leave 0xFFFFFFFF and 0x7FFFF000 as the data size: read to the end."""
    for size in (0xFFFFFFFF, 0x7FFFF000):
        source = hostile._wav_header(tmp_path / f"{size:x}.wav", 40, "<I", size)
        code, err = run(["separate", str(source), "-o", str(tmp_path / "out"), "--bundle", str(tiny_bundle), "-q"],
                        capfd)
        assert code == 0 and err == "", err
        assert sf.info(tmp_path / "out" / source.stem / "vocals.wav").frames == int(hostile.SHORT * 44100)


def test_4_decoder_chatter_goes_through_logging_naming_the_file(tmp_path, tiny_bundle, capfd, hostile):
    """libmpg123 prints "Warning: Xing stream size off ..." on the process's stderr: it comes out as
    a line of ours naming the file, and -q hides it."""
    source = hostile.cut(hostile.write_mp3(tmp_path / "cut.mp3"))
    args = ["separate", str(source), "-o", str(tmp_path / "out"), "--bundle", str(tiny_bundle), "--allow-truncated"]
    code, err = run(args + ["--force"], capfd)
    assert code == 0, err
    lines = shown(err)
    assert all(line.startswith("danna-sep") for line in lines), lines
    chatter = [line for line in lines if "Xing stream size off" in line]
    assert chatter == [f"danna-sep: {source}: decoder says: Warning: Xing stream size off by more than 1%, "
                       "fuzzy seeking may be even more fuzzy than by design!"], lines
    code, err = run(args + ["--force", "-q", "-o", str(tmp_path / "quiet")], capfd)
    assert code == 0 and "Xing" not in err, err


# --- 5. 9. collisions and option values --------------------------------------------------------

@pytest.mark.parametrize("force", [[], ["--force"]])
def test_5_one_basename_from_two_folders_is_refused_with_or_without_force(tmp_path, capfd, hostile, force):
    setup = hostile._same_basename(*force)(tmp_path)
    out = tmp_path / "out"
    code, err = run(["separate", *setup.argv, "-o", str(out)], capfd)
    a, b = tmp_path / "in" / "a" / "song.wav", tmp_path / "in" / "b" / "song.wav"
    assert code == 2
    assert one_line(err).startswith(f"danna-sep: {a} and {b} would both write {out / 'song' / 'drums.wav'}: "
                                    "put {relpath} in --filename")
    assert not out.exists()


# --- 6. temporary names fit wherever the target fits -------------------------------------------

def test_6_a_temporary_name_fits_where_the_target_fits():
    for name in ("n" * 255, "é" * 127 + ".wav", "x.wav"):
        temporary = temporary_name(name, "wav", 255)
        assert len(os.fsencode(temporary)) <= 255 and is_temporary_name(temporary), temporary
        temporary.encode("utf-8")  # a prefix cut inside a character would not encode
    assert temporary_name("x.wav", "wav", 255).startswith(".x.wav.tmp-")


@pytest.mark.parametrize("name,code", [("name-244", 0), ("name-256", 1)])
def test_6_long_stem_names_are_written_or_refused_as_name_too_long(tmp_path, tiny_bundle, capfd, hostile, name,
                                                                    code):
    case = next(c for c in hostile.CASES if c.name == name)
    setup = case.make(tmp_path)
    out = tmp_path / "out"
    got, err = run(["separate", *setup.argv, "-o", str(out), "--bundle", str(tiny_bundle), "-q"], capfd)
    assert got == code, err
    track = Path(setup.argv[0]).stem
    if code == 0:
        assert err == "" and [p.name for p in out.iterdir()] == [f"{track}_vocals.wav"]
    else:
        line = one_line(err)
        assert f"{out / (track + '_vocals.wav')}: name too long (256 bytes in nnnn" in line
        assert line.endswith("at most 255 here)") and not out.exists()


# --- 7. messages that say what happened -----------------------------------------------------

@pytest.mark.parametrize("name,words", [
    ("fifo", "not a regular file (FIFO)"),
    ("dev-zero", "not a regular file (character device)"),
    ("symlink-loop", "symlink loop"),
    ("wav-0-channels", "unsupported channel count 0"),
    ("wav-65535-channels", "unsupported channel count 65535"),
    ("flac-crc", "corrupt FLAC (CRC): the frame at "),
    ("input-name-300", "name too long"),
])
def test_7_messages_say_what_happened(tmp_path, tiny_bundle, capfd, hostile, name, words):
    setup = next(c for c in hostile.CASES if c.name == name).make(tmp_path)
    out = tmp_path / "out"
    code, err = run(["separate", *setup.argv, "-o", str(out), "--bundle", str(tiny_bundle), "-q"], capfd)
    assert code == 1
    assert one_line(err).startswith(f"danna-sep: {setup.argv[0]}: {words}"), err
    assert not out.exists()


def test_7_an_mp3_libsndfile_gives_up_on_is_decoded_by_pyav(tmp_path, tiny_bundle, capfd, hostile):
    """2 KB of junk between two frames: libsndfile stops there; PyAV skips the junk and goes on."""
    source = tmp_path / "junk.mp3"
    hostile._mp3_with_junk(source)
    out = tmp_path / "out"
    code, err = run(["separate", str(source), "-o", str(out), "--bundle", str(tiny_bundle), "-q"], capfd)
    assert code == 0, err
    assert shown(err) == [f"danna-sep: {source}: 2 damaged packets skipped (Invalid data found when processing "
                          "input: 'avcodec_send_packet()')"]
    frames = sf.info(out / "junk" / "vocals.wav").frames
    assert abs(frames - hostile.SHORT * 44100) <= 2 * 1152, frames


# --- 10. --filename outside --out -------------------------------------------------------------

@pytest.mark.parametrize("template", ["ABS/{track}/{stem}.{ext}", "../{track}/{stem}.{ext}", "{track}/../../{stem}.{ext}"])
def test_10_a_filename_outside_out_needs_allow_outside_output(tmp_path, tiny_bundle, capfd, hostile, template):
    source = hostile.write_wav(tmp_path / "song.wav", 1.0)
    template = template.replace("ABS", str(tmp_path / "elsewhere"))
    out = tmp_path / "place" / "out"
    args = ["separate", str(source), "-o", str(out), "--bundle", str(tiny_bundle), "-q", "--filename", template]
    code, err = run(args, capfd)
    assert code == 2
    assert one_line(err).startswith(f"danna-sep: --filename {template!r} writes ") and err.strip().endswith(
        f"outside --out {out} (give --allow-outside-output to write there)")
    assert not (tmp_path / "elsewhere").exists() and not (tmp_path / "place").exists()
    code, err = run(args + ["--allow-outside-output"], capfd)
    assert code == 0, err
    written = sorted(p for p in tmp_path.rglob("*.wav") if p != source)
    assert len(written) == 4 and not any(out in p.parents for p in written), written


# --- 11. wav stems past 4 GB are RF64 ---------------------------------------------------------

def test_11_wav_container_turns_rf64_past_4_gb():
    for depth, width in ((16, 2), (24, 3), (32, 4)):
        largest = WAV_LIMIT // (2 * width)
        assert wav_container(largest, 2, depth) == "WAV"
        assert wav_container(largest + 1, 2, depth) == "RF64"
    assert wav_container(None, 2, 32) == "WAV"
    # 6.7 hours of 44.1 kHz stereo float, the example
    assert wav_container(int(6.8 * 3600 * 44100), 2, 32) == "RF64"
    assert wav_container(int(6.7 * 3600 * 44100), 2, 16) == "WAV"


def test_11_a_wav_announced_past_4_gb_is_written_as_rf64_and_reads_back(tmp_path, caplog):
    """The writer picks RF64 from the length it is told to expect (here without writing 4 GB)."""
    import torch

    data = torch.from_numpy(np.random.default_rng(0).uniform(-0.5, 0.5, (2, 4410)).astype(np.float32))
    with caplog.at_level("INFO", logger="danna_sep"):
        with AudioWriter(tmp_path / "big.wav", 44100, 2, bit_depth=32, frames=WAV_LIMIT // 8 + 1) as writer:
            writer.write(data)
    assert "big.wav: over 4 GB, written as RF64" in caplog.text
    with AudioWriter(tmp_path / "forced.wav", 44100, 2, bit_depth=16, container="RF64") as writer:
        writer.write(data)
    for name, tolerance in (("big.wav", 0.0), ("forced.wav", 1 / 32768)):
        info = sf.info(tmp_path / name)
        assert (info.format, info.frames) == ("RF64", 4410), info
        assert (tmp_path / name).read_bytes()[:4] == b"RF64"
        back, _ = sf.read(tmp_path / name, dtype="float32")
        np.testing.assert_allclose(back.T, data.numpy(), atol=tolerance)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# --- the corpus: no traceback reaches a user ------------------------------------------------

def _quick_cases():
    import sys

    sys.path.insert(0, str(ROOT))
    try:
        from benchmarks import hostile
    finally:
        sys.path.remove(str(ROOT))
    # The cases a test above already runs through main are not run twice.
    dedicated = set(TRUNCATED) | {"fifo", "dev-zero", "symlink-loop", "wav-0-channels", "wav-65535-channels", "flac-crc",
                                  "input-name-300", "name-244", "name-256", "mp3-junk", "same-basename",
                                  "same-basename-force"}
    return [case.name for case in hostile.CASES if case.quick and not case.needs and case.name not in dedicated]


@pytest.mark.parametrize("name", _quick_cases())
def test_no_traceback_over_the_quick_corpus(tmp_path, tiny_bundle, capfd, hostile, name):
    """Every file and option case of benchmarks/hostile.py, in-process: the expected exit code,
    the expected words in one line (warnings aside, where it succeeds), nothing half-written."""
    case = next(c for c in hostile.CASES if c.name == name)
    work = tmp_path / "work"
    work.mkdir()
    setup = case.make(work)
    out = setup.out or work / "out"
    code, err = run(["separate", *setup.argv, "-o", str(out), "--bundle", str(tiny_bundle), "-q"], capfd)
    assert "Traceback" not in err, err
    assert code == case.expect, err
    lines = shown(err)
    assert all(line.startswith("danna-sep") for line in lines), lines
    if case.expect:
        assert len(lines) == 1 and case.says in lines[0], lines
    assert hostile.leftovers(out) == []


@pytest.mark.slow
def test_the_whole_hostile_corpus_in_subprocesses(hostile, capsys):
    """python benchmarks/hostile.py: every case, signals and full disks included (about 4 minutes)."""
    assert hostile.main([]) == 0, capsys.readouterr().out
