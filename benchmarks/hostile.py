"""The hostile-case corpus: inputs, options and environments that try to make `danna-sep
separate` crash, hang, write half a file or say nothing. Each case is generated, run through
the command in a subprocess, and reported in a table: case, exit code, the message (the last
line the command printed), and what it left behind in the output folder (hidden files, empty
folders) or the temporary folder.

    python benchmarks/hostile.py                   # every case (about 4 minutes on 2 cores)
    python benchmarks/hostile.py --only fifo,wav-0-channels
    python benchmarks/hostile.py --list
    python benchmarks/hostile.py --json hostile.json

Cases marked "root" mount small tmpfs file systems (a full or read-only disk) and are skipped
without root. The models are a tiny random-weight bundle (the command's behaviour, not the
separation, is under test); `--bundle` runs another. A row fails when the exit code is not
the expected one, the message lacks the expected words, a traceback reached the user, or
anything was left behind; the script exits 1 if any row fails.

`tests/test_hostile.py` runs the quick cases (files and options) in-process in the normal
suite, and the whole corpus through this script under `-m slow`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import soundfile as sf

SAMPLERATE = 44100
SHORT = 2.0   # seconds of most generated inputs
LONG = 10.0   # inputs that must still be running when a signal or a full disk comes

TINY = {
    "xumx": dict(hidden_channels=8, max_bins=64, nb_layers=1),
    "unet_attn": dict(max_bins=128, k=2),
    "demucs_split": dict(channels=4, depth=4),
}


# --- audio to build the cases from ----------------------------------------------------------

def music(seconds: float, rate: int = SAMPLERATE, seed: int = 0) -> np.ndarray:
    """A stereo test song, (samples, 2) float32: a bass line, a chord, noise bursts."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    bass = 0.3 * np.sin(2 * np.pi * 55 * t * (1 + 0.5 * (np.floor(t * 2) % 2)))
    chord = sum(0.1 * np.sin(2 * np.pi * f * t) for f in (261.6, 329.6, 392.0))
    hats = 0.2 * rng.standard_normal(t.size) * ((t * 8) % 1 < 0.05)
    return np.stack([bass + chord + hats, bass + 0.8 * chord + hats], axis=1).astype(np.float32)


def write_wav(path: Path, seconds: float = SHORT, rate: int = SAMPLERATE, subtype: str = "PCM_16") -> Path:
    sf.write(str(path), music(seconds, rate), rate, subtype=subtype)
    return path


def write_mp3(path: Path, seconds: float = SHORT) -> Path:
    """An MP3 with a Xing/Info header and a LAME tag (PyAV's libmp3lame, as ffmpeg writes them)."""
    import torch

    from danna_sep.audio import write_audio

    write_audio(path, torch.from_numpy(music(seconds).T.copy()), SAMPLERATE, format="mp3", mp3_bitrate=128)
    return path


def write_mux(path: Path, container: str, codec: str, rate: int, seconds: float = SHORT, **options) -> Path:
    """A file muxed by PyAV (m4a with its index first, webm, ...)."""
    import av

    out = av.open(str(path), "w", format=container, options=options)
    stream = out.add_stream(codec, rate=rate, layout="stereo")
    data = np.ascontiguousarray(music(seconds, rate).T)
    for start in range(0, data.shape[1], 1024):
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data[:, start:start + 1024]), format="fltp",
                                           layout="stereo")
        frame.sample_rate, frame.pts = rate, start
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode(None):
        out.mux(packet)
    out.close()
    return path


def write_as(path: Path, format: str, subtype: Optional[str] = None, rate: int = SAMPLERATE) -> Path:
    sf.write(str(path), music(SHORT, rate), rate, format=format, subtype=subtype)
    return path


def cut(path: Path, keep: float = 0.5) -> Path:
    """Keep the first `keep` of the file's bytes: a download or copy that stopped."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def patch(path: Path, offset: int, fmt: str, value: int) -> Path:
    data = bytearray(path.read_bytes())
    data[offset:offset + struct.calcsize(fmt)] = struct.pack(fmt, value)
    path.write_bytes(bytes(data))
    return path


# --- the cases ------------------------------------------------------------------------------

@dataclass
class Setup:
    """What a case runs: the arguments after `separate` (inputs and options; the runner adds
    -o and --bundle), the environment, and what the runner does while it runs."""

    argv: List[str]
    out: Optional[Path] = None            # the output folder (default: WORK/out)
    env: Dict[str, str] = field(default_factory=dict)
    send: Optional[int] = None            # a signal sent once a stem file is being written
    fill: Optional[Path] = None           # a folder filled up once the separation is under way
    kill_then_rerun: bool = False         # SIGKILL while writing, then the same command again
    quiet: bool = True                    # -q (off where the case's message is an info line)
    undo: List[Callable[[], None]] = field(default_factory=list)


@dataclass
class Case:
    name: str
    what: str
    make: Callable[[Path], Setup]
    expect: int
    says: str = ""                        # words the message must hold
    needs: str = ""                       # "root": mounts file systems; "signal": a subprocess only
    quick: bool = True                    # in the normal test suite (in-process)


def _file(build: Callable[[Path], object], name: str = "in.wav", *options: str) -> Callable[[Path], Setup]:
    def make(work: Path) -> Setup:
        path = work / name
        build(path)
        return Setup([str(path), *options])
    return make


def _wav_header(path: Path, offset: int, fmt: str, value: int, keep: Optional[int] = None) -> Path:
    write_wav(path)
    patch(path, offset, fmt, value)
    if keep is not None:
        path.write_bytes(path.read_bytes()[:keep])
    return path


def _bad_flac(path: Path) -> None:
    sf.write(str(path), music(SHORT), SAMPLERATE, format="FLAC")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside a frame: its CRC no longer matches
    path.write_bytes(bytes(data))


def _mp3_with_junk(path: Path) -> None:
    write_mp3(path)
    data = path.read_bytes()
    middle = len(data) // 2
    path.write_bytes(data[:middle] + bytes(range(256)) * 8 + data[middle:])


def _mp3_without_xing(path: Path) -> None:
    """An MP3 cut short whose first frame carries no Xing/Info header: its length is only an
    estimate from the bitrate, so there is nothing to judge it against."""
    write_mp3(path)
    data = bytearray(path.read_bytes())
    at = data.find(b"Info")
    data[at:at + 4] = b"\0\0\0\0"
    path.write_bytes(bytes(data[: len(data) // 2]))


def _fifo(work: Path) -> Setup:
    path = work / "fifo.wav"
    os.mkfifo(path)
    return Setup([str(path)])


def _link(target: str, name: str = "link.wav") -> Callable[[Path], Setup]:
    def make(work: Path) -> Setup:
        path = work / name
        os.symlink(target if target != "SELF" else name, path)
        return Setup([str(path)])
    return make


def _folder_named_wav(work: Path) -> Setup:
    (work / "album.wav").mkdir()
    return Setup([str(work / "album.wav")])


def _options(*options: str, seconds: float = SHORT) -> Callable[[Path], Setup]:
    def make(work: Path) -> Setup:
        return Setup([str(write_wav(work / "in.wav", seconds)), *options])
    return make


def _outside(work: Path) -> Setup:
    elsewhere = work / "elsewhere"
    return Setup([str(write_wav(work / "in.wav")), "--filename", f"{elsewhere}/{{track}}/{{stem}}.{{ext}}",
                  "--allow-outside-output"])


def _same_basename(*options: str, folder: bool = False) -> Callable[[Path], Setup]:
    def make(work: Path) -> Setup:
        for sub in ("a", "b"):
            (work / "in" / sub).mkdir(parents=True)
            write_wav(work / "in" / sub / "song.wav")
        inputs = [str(work / "in")] if folder else [str(work / "in" / "a" / "song.wav"),
                                                     str(work / "in" / "b" / "song.wav")]
        return Setup([*inputs, *options])
    return make


def _twice(work: Path) -> Setup:
    path = write_wav(work / "in.wav")
    return Setup([str(path), str(path), str(work / "." / "in.wav")])


def _existing(*options: str) -> Callable[[Path], Setup]:
    def make(work: Path) -> Setup:
        path = write_wav(work / "in.wav")
        (work / "out" / "in").mkdir(parents=True)
        (work / "out" / "in" / "vocals.wav").write_bytes(b"an earlier run's stem")
        return Setup([str(path), *options])
    return make


def _long_name(length: int) -> Callable[[Path], Setup]:
    """An input named with `length` bytes, written as {track}_{stem}.{ext}: 'vocals' adds 11 bytes."""
    def make(work: Path) -> Setup:
        path = write_wav(work / ("n" * length + ".wav"))
        return Setup([str(path), "--filename", "{track}_{stem}.{ext}", "--stems", "vocals"])
    return make


def _input_name_too_long(work: Path) -> Setup:
    return Setup([str(work / ("x" * 300 + ".wav"))])


def _newline(work: Path) -> Setup:
    path = work / "two\nlines.wav"
    path.write_text("not audio\n")
    return Setup([str(path)])


def _mount(folder: Path, size: str, read_only: bool = False) -> Callable[[], None]:
    folder.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], check=True, capture_output=True)
    return lambda: subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def _full_tmp(size: str, seconds: float, fill: bool = False) -> Callable[[Path], Setup]:
    def make(work: Path) -> Setup:
        tmp = work / "tmp"
        undo = _mount(tmp, size)
        setup = Setup([str(write_wav(work / "in.wav", seconds)), "--segment", "2"], env={"TMPDIR": str(tmp)},
                      undo=[undo], quiet=not fill and size != "16m")
        if fill:
            setup.fill = tmp
        return setup
    return make


def _full_out(size: str, seconds: float, fill: bool = False, read_only: bool = False) -> Callable[[Path], Setup]:
    def make(work: Path) -> Setup:
        disk = work / "disk"
        undo = _mount(disk, size, read_only)
        setup = Setup([str(write_wav(work / "in.wav", seconds)), "--segment", "2"], out=disk / "out", undo=[undo],
                      quiet=not fill)
        if fill:
            setup.fill = disk
        return setup
    return make


def _signal(signum: int, kill_then_rerun: bool = False) -> Callable[[Path], Setup]:
    def make(work: Path) -> Setup:
        path = write_wav(work / "long.wav", LONG)
        return Setup([str(path), "--segment", "2", "--format", "mp3"], send=signum, quiet=False,
                      kill_then_rerun=kill_then_rerun)
    return make


CASES: List[Case] = [
    # malformed and unusual wav files
    Case("wav-empty", "a 0-byte file named .wav", _file(lambda p: p.write_bytes(b"")), 1, "empty file (0 bytes)"),
    Case("wav-riff-only", "the 4 bytes RIFF", _file(lambda p: p.write_bytes(b"RIFF")), 1, "not an audio file"),
    Case("wav-text", "a text file named .wav", _file(lambda p: p.write_text("notes\n" * 50)), 1, "not an audio file"),
    Case("wav-header-only", "a wav header and no data", _file(lambda p: write_wav(p).write_bytes(p.read_bytes()[:44])),
         1, "truncated or corrupt audio (header promises 352800 bytes of audio data, only 0 present)"),
    Case("wav-zero-samples", "a wav of 0 samples", _file(lambda p: sf.write(str(p), np.zeros((0, 2)), SAMPLERATE)),
         1, "no samples"),
    Case("wav-cut", "a 16-bit wav cut in half", _file(lambda p: cut(write_wav(p))), 1, "truncated or corrupt audio"),
    Case("wav-size-fffffffe", "data size 0xFFFFFFFE, 1 s present",
         _file(lambda p: _wav_header(p, 40, "<I", 0xFFFFFFFE, keep=44 + SAMPLERATE * 4)), 1,
         "truncated or corrupt audio (header promises 4294967294 bytes"),
    Case("wav-size-ffffffff", "data size 0xFFFFFFFF (ffmpeg writing to a pipe)",
         _file(lambda p: _wav_header(p, 40, "<I", 0xFFFFFFFF)), 0),
    Case("wav-size-7ffff000", "data size 0x7FFFF000 (sox writing to a pipe)",
         _file(lambda p: _wav_header(p, 40, "<I", 0x7FFFF000)), 0),
    Case("wav-cut-allowed", "a wav cut in half, --allow-truncated",
         _file(lambda p: cut(write_wav(p)), "in.wav", "--allow-truncated"), 0),
    Case("wav-0-channels", "fmt says 0 channels", _file(lambda p: _wav_header(p, 22, "<H", 0)), 1,
         "unsupported channel count 0"),
    Case("wav-65535-channels", "fmt says 65535 channels", _file(lambda p: _wav_header(p, 22, "<H", 65535)), 1,
         "unsupported channel count 65535"),
    Case("wav-rate-0", "fmt says 0 Hz", _file(lambda p: _wav_header(p, 24, "<I", 0)), 1),
    Case("wav-0-bits", "fmt says 0 bits per sample", _file(lambda p: _wav_header(p, 34, "<H", 0)), 1),
    Case("wav-nan", "a float wav holding NaN",
         _file(lambda p: sf.write(str(p), np.where(np.arange(SAMPLERATE)[:, None] == 99, np.nan, music(1.0)),
                                  SAMPLERATE, subtype="FLOAT")), 1, "contains NaN or infinite samples"),
    Case("wav-loud-float", "a float wav 20 times past full scale",
         _file(lambda p: sf.write(str(p), music(SHORT) * 20, SAMPLERATE, subtype="FLOAT")), 0),
    Case("wav-8khz-mono", "8 kHz mono", _file(lambda p: sf.write(str(p), music(SHORT, 8000)[:, 0], 8000)), 0),
    Case("wav-6-channels", "5.1", _file(lambda p: sf.write(str(p), np.tile(music(SHORT), 3), SAMPLERATE)), 0),
    Case("rf64-input", "an RF64 file", _file(lambda p: write_as(p, "RF64")),
         0),
    Case("aiff-cut", "an AIFF cut in half",
         _file(lambda p: cut(write_as(p, "AIFF")), "in.aiff"),
         1, "truncated or corrupt audio"),
    # compressed files: cut short, damaged
    Case("mp3-cut", "an MP3 (Xing header) cut mid-frame", _file(lambda p: cut(write_mp3(p)), "in.mp3"), 1,
         "truncated or corrupt audio (header declares"),
    Case("mp3-cut-allowed", "the same, --allow-truncated", _file(lambda p: cut(write_mp3(p)), "in.mp3",
                                                                  "--allow-truncated"), 0),
    Case("mp3-junk", "an MP3 with 2 KB of junk between frames", _file(_mp3_with_junk, "in.mp3"), 0),
    Case("mp3-cut-no-xing", "an MP3 without a Xing header, cut (nothing declares its length)",
         _file(_mp3_without_xing, "in.mp3"), 0),
    Case("mp3-id3-only", "an ID3 tag and no frames", _file(lambda p: p.write_bytes(b"ID3\4\0\0\0\0\0\x10" + b"\0" * 16),
                                                            "in.mp3"), 1),
    Case("opus-cut", "half an Ogg Opus file",
         _file(lambda p: cut(write_as(p, "OGG", "OPUS", 48000)), "in.opus"), 1, "truncated or corrupt audio (the last page is cut off)"),
    Case("vorbis-cut", "half an Ogg Vorbis file",
         _file(lambda p: cut(write_as(p, "OGG")), "in.ogg"), 1,
         "truncated or corrupt audio"),
    Case("flac-cut", "half a FLAC file",
         _file(lambda p: cut(write_as(p, "FLAC")), "in.flac"), 1,
         "truncated or corrupt audio"),
    Case("flac-crc", "a FLAC with one flipped byte", _file(_bad_flac, "in.flac"), 1, "corrupt FLAC (CRC)"),
    Case("m4a", "AAC in MP4 (decoded by PyAV)", _file(lambda p: write_mux(p, "mp4", "aac", SAMPLERATE), "in.m4a"), 0),
    Case("m4a-cut", "half an MP4 whose index comes first",
         _file(lambda p: cut(write_mux(p, "mp4", "aac", SAMPLERATE, movflags="faststart")), "in.m4a"), 1,
         "truncated or corrupt audio (header declares"),
    Case("webm-cut", "half an Opus WebM", _file(lambda p: cut(write_mux(p, "webm", "libopus", 48000)), "in.webm"),
         1, "truncated or corrupt audio (header declares"),
    # not files, or not there
    Case("fifo", "a FIFO named .wav", _fifo, 1, "not a regular file (FIFO)"),
    Case("dev-zero", "a symlink to /dev/zero", _link("/dev/zero"), 1, "not a regular file (character device)"),
    Case("symlink-loop", "a symlink to itself", _link("SELF"), 1, "symlink loop"),
    Case("symlink-dangling", "a symlink to nothing", _link("/nonexistent/x.wav"), 1, "broken symlink"),
    Case("missing", "a file that is not there", lambda work: Setup([str(work / "nothere.wav")]), 1, "no such file"),
    Case("folder-named-wav", "an empty folder named album.wav", _folder_named_wav, 1, "folder holds no audio files"),
    Case("newline-name", "a bad file with a newline in its name", _newline, 1, "not an audio file"),
    Case("input-name-300", "an input named with 300 bytes", _input_name_too_long, 1, "name too long"),
    Case("out-name-300", "-o named with 300 bytes",
         lambda work: Setup([str(write_wav(work / "in.wav"))], out=work / ("o" * 300)), 2, "name too long"),
    # output names
    Case("name-244", "a stem file name of 244 bytes (its temporary would be 270)", _long_name(233), 0),
    Case("name-256", "a stem file name of 256 bytes", _long_name(245), 1, "name too long"),
    # option values
    Case("samplerate-4e9", "--samplerate 4000000000", _options("--samplerate", "4000000000"), 2, "out of range"),
    Case("samplerate-0", "--samplerate 0", _options("--samplerate", "0"), 2, "out of range"),
    Case("stems-empty", "--stems ''", _options("--stems", ""), 2, "names nothing"),
    Case("filename-unknown", "--filename {album}/{stem}.{ext}", _options("--filename", "{album}/{stem}.{ext}"), 2,
         "unknown field {album}"),
    Case("filename-syntax", "--filename {track", _options("--filename", "{track"), 2, "invalid template"),
    Case("filename-absolute", "--filename /tmp/...", _options("--filename", "/tmp/danna-hostile/{stem}.{ext}"), 2,
         "outside --out"),
    Case("filename-dotdot", "--filename ../{track}/{stem}.{ext}", _options("--filename", "../{track}/{stem}.{ext}"),
         2, "outside --out"),
    Case("filename-outside-allowed", "an absolute --filename with --allow-outside-output", _outside, 0),
    Case("segment-nan", "--segment nan", _options("--segment", "nan"), 2, "out of range"),
    Case("overlap-inf", "--overlap inf", _options("--overlap", "inf"), 2, "out of range"),
    Case("shifts-huge", "--shifts 10**30", _options("--shifts", "1" + "0" * 30), 2, "out of range"),
    Case("jobs-huge", "-j 10**20", _options("-j", "1" + "0" * 20), 2, "out of range"),
    Case("bitrate-1e400", "--mp3-bitrate 1e400", _options("--format", "mp3", "--mp3-bitrate", "1e400"), 2,
         "invalid"),
    Case("bit-depth-8", "--bit-depth 8", _options("--bit-depth", "8"), 2, "invalid choice"),
    Case("device-cuda-huge", "--device cuda:99999999999999999999", _options("--device", "cuda:" + "9" * 20), 2),
    # collisions and existing outputs
    Case("same-basename", "a/song.wav and b/song.wav named", _same_basename(), 2, "would both write"),
    Case("same-basename-force", "the same, --force", _same_basename("--force"), 2, "would both write"),
    Case("same-basename-folder", "a/song.wav and b/song.wav found in a folder", _same_basename(folder=True), 0),
    Case("same-file-thrice", "one file named three ways", _twice, 0),
    Case("existing-stem", "a stem already there", _existing(), 1, "already exists (use --force to overwrite)"),
    Case("existing-stem-force", "the same, --force", _existing("--force"), 0),
    # disks
    Case("tmp-full-before", "TMPDIR a 2 MB tmpfs, a 20 s input", _full_tmp("2m", 20.0), 1, "disk full: ", "root",
         False),
    Case("tmp-float16", "TMPDIR too small for float32 spools, enough for float16", _full_tmp("16m", LONG), 0,
         "spooled as float16", "root", False),
    Case("tmp-full-during", "TMPDIR filled up by another program while separating", _full_tmp("64m", LONG, True), 1,
         "disk full: ", "root", False),
    Case("out-full-before", "the output a 2 MB tmpfs, a 20 s input", _full_out("2m", 20.0), 1, "disk full: ", "root",
         False),
    Case("out-full-during", "the output filled up by another program while separating", _full_out("12m", LONG, True),
         1, "disk full: ", "root", False),
    Case("out-read-only", "the output on a read-only file system", _full_out("1m", SHORT, read_only=True), 1,
         "Read-only file system", "root", False),
    # signals while the stems are being written
    Case("sigint", "Ctrl-C while writing", _signal(signal.SIGINT), 130, "interrupted", "signal", False),
    Case("sigterm", "SIGTERM while writing", _signal(signal.SIGTERM), 143, "terminated (SIGTERM)", "signal", False),
    Case("sighup", "SIGHUP while writing", _signal(signal.SIGHUP), 129, "hung up (SIGHUP)", "signal", False),
    Case("sigkill-rerun", "SIGKILL while writing, then the same command", _signal(signal.SIGKILL, True), 0,
         "left by a killed run", "signal", False),
]


# --- running them ---------------------------------------------------------------------------

@dataclass
class Result:
    case: str
    code: Optional[int]
    message: str
    leftovers: List[str]
    traceback: bool
    ok: bool
    skipped: str = ""


def last_line(err: str) -> str:
    """The last line the command printed, as a terminal shows it once bars are redrawn."""
    lines = [_shown(line) for line in err.split("\n")]
    lines = [line for line in lines if line.startswith("danna-sep")]
    return lines[-1] if lines else ""


def _shown(line: str) -> str:
    """A line of stderr as it reads once bars are redrawn: from its last line of ours, if any."""
    line = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", line)
    ours = re.search(r"(?:^|[\r\]])\s*(danna-sep.*)$", line)  # a log line may follow a bar's last state
    return (ours.group(1) if ours else line.split("\r")[-1]).strip()


def leftovers(out: Path, tmp: Optional[Path] = None) -> List[str]:
    """Hidden files and empty folders under `out` (not `out` itself), and our files in `tmp`."""
    found = []
    try:
        out.stat()
    except OSError:  # not there, or a name that cannot be
        return found
    if out.is_dir():
        for path in sorted(out.rglob("*")):
            if path.name.startswith(".") or (path.is_dir() and not any(path.iterdir())):
                found.append(str(path.relative_to(out)) + ("/" if path.is_dir() else ""))
    if tmp is not None and tmp.is_dir():
        found += [f"TMPDIR/{p.name}" for p in tmp.iterdir() if p.name.startswith("danna-sep")]
    return found


def _growing(out: Path) -> bool:
    try:
        return any(p.is_file() and p.stat().st_size > 0 for p in out.rglob("*"))
    except OSError:
        return False


def fill_disk(folder: Path) -> Path:
    """Write a file into `folder` until its file system is full."""
    filler = folder / "filler"
    with open(filler, "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * (1 << 20))
                handle.flush()
        except OSError:
            pass
    return filler


def _command(setup: Setup, out: Path, bundle: Path) -> List[str]:
    return [sys.executable, "-m", "danna_sep.cli", "separate", *setup.argv, "-o", str(out), "--bundle", str(bundle),
            *(["-q"] if setup.quiet else [])]


def run_case(case: Case, work: Path, bundle: Path, timeout: float = 300.0) -> Result:
    """Build `case` in `work` (an empty folder), run it in a subprocess, and judge it."""
    if case.needs == "root" and os.geteuid() != 0:
        return Result(case.name, None, "", [], False, True, skipped="needs root (mounts a tmpfs)")
    setup = case.make(work)
    out = setup.out or work / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1", **setup.env)
    try:
        err, code = _run(setup, _command(setup, out, bundle), env, out, timeout)
        if setup.kill_then_rerun:
            rerun = subprocess.run(_command(setup, out, bundle), env=env, capture_output=True, text=True,
                                   timeout=timeout)
            err, code = err + rerun.stderr, rerun.returncode
        tmp = Path(setup.env["TMPDIR"]) if "TMPDIR" in setup.env else None
        left = leftovers(out, tmp)
    finally:
        for undo in setup.undo:
            undo()
    message = last_line(err) if case.expect != 0 or not case.says else next(
        (_shown(line) for line in err.split("\n") if case.says in line), last_line(err))
    message = message.replace(str(work), "WORK")
    traceback = "Traceback" in err
    ok = code == case.expect and case.says in message and not traceback and not left
    return Result(case.name, code, message, left, traceback, ok)


def _run(setup: Setup, command: List[str], env: Dict[str, str], out: Path, timeout: float):
    if setup.send is None and setup.fill is None:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        return done.stderr, done.returncode
    child = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    chunks: List[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: child.stderr.read1(1 << 16), b"")),
                              daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    filler = None
    try:
        if setup.fill is not None:  # fill the disk once the separation shows progress
            while b"real-time factor" not in b"".join(chunks) and child.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            filler = fill_disk(setup.fill)
        else:  # a signal once a stem file holds data
            while not _growing(out) and child.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            if child.poll() is None:
                child.send_signal(setup.send)
        code = child.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        reader.join(timeout=10)
        if filler is not None:
            filler.unlink()
    return b"".join(chunks).decode("utf-8", "replace"), code


def tiny_bundle(folder: Path) -> Path:
    """A bundle of the paper blend's three models at toy size, seeded random weights."""
    try:
        from . import _common as common
    except ImportError:
        import _common as common  # type: ignore[no-redef]
    from danna_sep import bundle as bundles

    made = common.random_bundle(bundles.PAPER_BLEND, seed=3, kwargs=TINY)
    bundles.save_bundle(folder, made.members)
    return folder


def run_all(cases: Sequence[Case], bundle: Optional[Path] = None, timeout: float = 300.0) -> List[Result]:
    results = []
    with tempfile.TemporaryDirectory(prefix="danna-hostile-") as scratch:
        root = Path(scratch)
        bundle = bundle or tiny_bundle(root / "bundle")
        for index, case in enumerate(cases):
            work = root / f"{index:02d}-{case.name}"
            work.mkdir()
            started = time.monotonic()
            results.append(run_case(case, work, bundle, timeout))
            print(f"{case.name}: {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)
            shutil.rmtree(work, ignore_errors=True)
    return results


def table(cases: Sequence[Case], results: Sequence[Result]) -> str:
    rows = ["| case | what | exit | expected | message | left behind | |", "|---|---|---:|---:|---|---|---|"]
    for case, result in zip(cases, results):
        message = re.sub(r"(.)\1{19,}", lambda run: f"{run.group(1) * 3}...({len(run.group(0))} times)",
                         result.message).replace("|", "\\|")
        if len(message) > 150:
            message = message[:147] + "..."
        verdict = "skipped: " + result.skipped if result.skipped else ("ok" if result.ok else "**FAILED**")
        if result.traceback:
            verdict += " (traceback)"
        rows.append(f"| {case.name} | {case.what} | {'' if result.code is None else result.code} | {case.expect} "
                    f"| {message} | {', '.join(result.leftovers) or 'nothing'} | {verdict} |")
    return "\n".join(rows)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=None, help="comma-separated case names")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--bundle", type=Path, default=None, help="a bundle folder (default: tiny random models)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per command (default: %(default)s)")
    args = parser.parse_args(argv)
    cases = CASES
    if args.only:
        names = args.only.split(",")
        unknown = sorted(set(names) - {c.name for c in CASES})
        if unknown:
            parser.error(f"unknown case(s): {', '.join(unknown)}")
        cases = [c for c in CASES if c.name in names]
    if args.list:
        for case in cases:
            print(f"{case.name:26} {case.expect:3}  {case.what}")
        return 0
    results = run_all(cases, args.bundle, args.timeout)
    print(table(cases, results))
    failed = [r.case for r in results if not r.ok]
    print(f"\n{len(results)} cases: {sum(r.ok and not r.skipped for r in results)} as expected, "
          f"{sum(bool(r.skipped) for r in results)} skipped, {len(failed)} failed{': ' + ', '.join(failed) if failed else ''}")
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in results], indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
