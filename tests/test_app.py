"""The web app, `danna-sep app` (issue 18).

First its parts, without Gradio or a browser: the spectrogram pictures (against scipy's
STFT), the temporary folder (tokens, size cap, removal), how an upload is taken in and
refused, the options, the mixer's markup. Then the whole app in a real headless Chromium
driven by Playwright, in one browser session against one server: skipped where Chromium,
Playwright or Gradio is missing, unless $DANNA_REQUIRE_BROWSER=1 (set by .ci/run, which
installs them), where that is a failure instead.
"""

import ast
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from danna_sep import SOURCES
from danna_sep import bundle as bundles
from danna_sep.app import jobs, pictures
from danna_sep.app.jobs import JobOptions, Limits
from danna_sep.app.mixer import download_name, mixer_html
from danna_sep.app.workspace import OWNER_FILE, StorageFull, Workspace, remove_abandoned
from danna_sep.audio import AudioError, read_audio, write_audio
from danna_sep.cli import main
from danna_sep.errors import DannaSepError
from test_bundle import tiny_members

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "synth-song.mp3"


# --- spectrogram pictures -------------------------------------------------------------------

def test_column_power_equals_scipys_stft_averaged_per_column():
    """Block by block, with blocks of any size, the mean power per column is that of scipy's
    STFT (same periodic Hann window and hop, no padding) averaged over the frames starting in
    each column."""
    from scipy.signal import stft

    rng = np.random.default_rng(0)
    frames, columns, n_fft = 50_000, 40, 1024
    track = rng.standard_normal((2, frames)).astype(np.float32) * 0.1
    cuts = np.sort(rng.choice(np.arange(1, frames), size=7, replace=False))
    blocks = np.split(track, cuts, axis=1)
    ours = pictures.column_power(blocks, frames, columns, n_fft)

    hop = min(frames // columns, n_fft // 2)  # at least half the window overlaps, so no sample is skipped
    mono = track.mean(axis=0, dtype=np.float32)
    padded = np.concatenate([mono, np.zeros(n_fft, np.float32)])  # the last frame, as column_power takes it
    count = (frames - 1) // hop + 1
    window = np.hanning(n_fft + 1)[:-1]
    _, _, spec = stft(padded[: (count - 1) * hop + n_fft], window=window, nperseg=n_fft, noverlap=n_fft - hop,
                      boundary=None, padded=False, scaling="spectrum", detrend=False, return_onesided=True)
    power = 4 * np.abs(spec) ** 2  # scipy divides the rfft by sum(w); ours is |rfft * 2 / sum(w)|^2
    column = np.minimum(np.arange(count) * hop * columns // frames, columns - 1)
    expected = np.stack([power[:, column == c].mean(axis=1) for c in range(columns)])
    assert ours.shape == (columns, n_fft // 2 + 1)
    np.testing.assert_allclose(ours, expected, rtol=2e-4, atol=1e-12)


def test_a_full_scale_sine_reads_0_db_and_sits_in_its_row():
    rate, frames = 44100, 44100
    bin_hz = rate / 2048
    tone = np.sin(2 * np.pi * 100 * bin_hz * np.arange(frames) / rate).astype(np.float32)  # on a bin
    power = pictures.column_power([np.stack([tone, tone])], frames, 8)
    assert np.allclose(power[:-1, 100], 1.0, rtol=1e-3)  # the last column's frames run into the zeros after the end
    picture = pictures.spectrogram_picture([np.stack([tone, tone])], frames, rate, size=(16, 64))
    assert picture.shape == (64, 16, 3) and picture.dtype == np.uint8
    brightness = picture.astype(int).sum(axis=(1, 2))
    bands = pictures.band_matrix(1025, rate, 64)
    row = int(np.argmax(bands[:, 100]))  # the band holding the tone's bin (row 0 the lowest)
    assert int(np.argmax(brightness)) == 63 - row  # drawn upside down: low frequencies at the bottom


def test_band_matrix_averages_and_leaves_no_row_empty():
    bands = pictures.band_matrix(1025, 44100, 160)
    np.testing.assert_allclose(bands.sum(axis=1), 1.0)
    assert (bands > 0).any(axis=1).all()


def test_spectrogram_file_is_a_png_of_the_asked_size(tmp_path):
    from PIL import Image

    wav = torch.from_numpy(np.random.default_rng(1).standard_normal((2, 30_000)).astype(np.float32) * 0.1)
    write_audio(tmp_path / "stem.flac", wav, 44100)
    pictures.write_spectrogram(tmp_path / "stem.flac", tmp_path / "stem.png", size=(120, 40))
    with Image.open(tmp_path / "stem.png") as image:
        assert image.format == "PNG" and image.size == (120, 40) and image.mode == "RGB"


# --- the temporary folder -------------------------------------------------------------------

def test_workspace_tokens_are_unguessable_and_only_ours(tmp_path):
    space = Workspace(10_000_000, parent=tmp_path)
    try:
        token, folder = space.new_folder()
        other, _ = space.new_folder()
        assert re.fullmatch(r"[A-Za-z0-9_-]{43}", token) and token != other  # 256 random bits each
        assert folder == space.root / "jobs" / token and space.folder(token) == folder
        planted = "B" * 43  # a folder of the right shape that the workspace did not hand out
        (space.root / "jobs" / planted).mkdir()
        for guess in ["..", "../..", token[:-1] + ("A" if token[-1] != "A" else "B"), "", None, "jobs", planted]:
            assert space.folder(guess) is None
        (folder / "x.wav").write_bytes(b"1234")
        space.remove(token, "not-a-token", None)
        assert not folder.exists() and space.folder(other) is not None
    finally:
        space.close()
    assert not space.root.exists()


def test_make_room_removes_the_oldest_results_first_and_refuses_what_cannot_fit(tmp_path):
    space = Workspace(3_000, parent=tmp_path)
    try:
        made = []
        for _ in range(3):
            token, folder = space.new_folder()
            (folder / "stem.wav").write_bytes(b"x" * 800)
            made.append(token)
        space.make_room(1_000, keep={made[0]})  # 2400 + 1000 > 3000: the oldest not kept goes
        assert [space.folder(t) is not None for t in made] == [True, False, True]
        with pytest.raises(StorageFull, match=r"--max-storage-gb"):
            space.make_room(2_900, keep=set(made))
        assert space.folder(made[0]) is not None and space.folder(made[2]) is not None
    finally:
        space.close()


def test_folders_of_killed_apps_are_removed_and_live_ones_kept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    folders = {}
    for name, owner in [("dead", f"{socket.gethostname()} {dead.pid}"), ("live", f"{socket.gethostname()} {os.getpid()}"),
                        ("elsewhere", f"another-host-{os.getpid()} {dead.pid}")]:
        folders[name] = tmp_path / f"danna-sep-app-{name}"
        folders[name].mkdir()
        (folders[name] / OWNER_FILE).write_text(owner)
    assert remove_abandoned(tmp_path) == 1
    assert not folders["dead"].exists() and folders["live"].exists() and folders["elsewhere"].exists()


# --- taking an upload in --------------------------------------------------------------------

@pytest.fixture
def space(tmp_path):
    (tmp_path / "tmp").mkdir()
    space = Workspace(200_000_000, parent=tmp_path / "tmp")
    yield space
    space.close()


def upload(space: Workspace, name: str, data: bytes) -> Path:
    """A file where Gradio's upload route puts one: `<root>/<sha>/<name>`."""
    folder = space.root / ("0" * 64)
    folder.mkdir(exist_ok=True)
    (folder / name).write_bytes(data)
    return folder / name


def leftovers(space: Workspace) -> list:
    """Files in the workspace but its owner file."""
    return [p for p in space.root.rglob("*") if p.is_file() and p.name != OWNER_FILE]


def wav_bytes(tmp_path: Path, seconds: float) -> bytes:
    frames = int(44100 * seconds)
    wav = torch.sin(torch.arange(frames) / 20.0).repeat(2, 1) * 0.5
    write_audio(tmp_path / "tone.wav", wav, 44100, force=True)
    return (tmp_path / "tone.wav").read_bytes()


@pytest.mark.parametrize("data, problem", [
    (b"", "empty file (0 bytes)"),
    (b"these are my notes, not a song\n" * 40, "not an audio file"),
])
def test_a_bad_upload_is_refused_by_its_name_and_leaves_nothing(space, data, problem):
    sent = upload(space, "notes.mp3", data)
    with pytest.raises(AudioError) as caught:
        jobs.adopt(space, sent, "notes.mp3", Limits(max_seconds=60))
    assert str(caught.value).startswith(f"notes.mp3: {problem}")
    assert str(space.root) not in str(caught.value)  # the page never shows server paths
    assert leftovers(space) == [] and not sent.parent.exists()


def test_a_track_over_the_length_limit_is_refused(space, tmp_path):
    sent = upload(space, "long.wav", wav_bytes(tmp_path, 2.0))
    with pytest.raises(jobs.TooLong, match=r"^long\.wav: 0:02\.0 long, and this app takes at most 0:01\.5 "):
        jobs.adopt(space, sent, "long.wav", Limits(max_seconds=1.5))
    assert leftovers(space) == []


def test_an_uploaded_name_never_becomes_a_path(space, tmp_path):
    hostile = "../../../../etc/cron.d/x<script>.WAV"
    sent = upload(space, "x.wav", wav_bytes(tmp_path, 0.5))
    track = jobs.adopt(space, sent, hostile, Limits(max_seconds=60))
    assert track.path == space.root / "jobs" / track.token / "input.wav"
    assert track.name == "x<script>.WAV" and track.samplerate == 44100 and abs(track.seconds - 0.5) < 1e-6
    assert [p.relative_to(space.root) for p in leftovers(space)] == [Path("jobs", track.token, "input.wav")]
    odd = jobs.adopt(space, upload(space, "y", wav_bytes(tmp_path, 0.5)), "song.wav;rm -rf", Limits(max_seconds=60))
    assert odd.path.name == "input"  # an extension that is not a plain one is dropped


def test_the_bundles_offered_start_with_the_one_separate_would_use(tmp_path, monkeypatch, tiny_bundle):
    assert [c.key for c in jobs.bundle_choices()][:1] == ["bundle:default"]
    shelf = tmp_path / "shelf"
    shutil.copytree(tiny_bundle, shelf / "mine")
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    (checkpoints / "unet_attention.pth").write_bytes(b"")
    monkeypatch.setenv("DANNA_BUNDLES", str(shelf))
    monkeypatch.setenv("DANNA_CHECKPOINTS", str(checkpoints))
    choices = jobs.bundle_choices()
    assert choices[0] == jobs.BundleChoice("checkpoints", f"original Danna-Sep checkpoints ({checkpoints}: 1 files)",
                                           checkpoints=str(checkpoints))
    assert {"bundle:default", "bundle:mine"} <= {c.key for c in choices}
    assert jobs.bundle_choices(bundle="mine")[0].bundle == str(shelf / "mine")
    first = jobs.bundle_choices(bundle=str(tiny_bundle))[0]
    assert first.key == "command-line" and first.bundle == str(tiny_bundle.resolve())
    assert [c.key for c in jobs.bundle_choices(bundle="mine")].count("checkpoints") == 1


def test_options_name_the_stems_to_write():
    assert JobOptions().targets(list(SOURCES)) == list(SOURCES)
    assert JobOptions(stems=("vocals", "drums")).targets(list(SOURCES)) == ["drums", "vocals"]
    assert JobOptions(two_stems="vocals").targets(list(SOURCES)) == ["vocals", "no_vocals"]
    with pytest.raises(DannaSepError, match="this bundle separates vocals only"):
        JobOptions(stems=("drums",)).targets(["vocals"])
    for bad in [JobOptions(stems=()), JobOptions(format="ogg"), JobOptions(precision="half"), JobOptions(shifts=99)]:
        with pytest.raises(DannaSepError):
            bad.check()


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    folder = tmp_path_factory.mktemp("app") / "bundle"
    bundles.save_bundle(folder, tiny_members(seed=5))
    return folder


@pytest.fixture(scope="module")
def separators():
    """One Separator cache for the module's tests: the tiny bundle loads once per options."""
    return jobs.Separators("cpu")


def test_a_separation_writes_stems_pictures_and_a_zip_with_progress(space, tiny_bundle, separators, tmp_path):
    track = jobs.adopt(space, upload(space, "tone.wav", wav_bytes(tmp_path, 1.0)), "tone.wav", Limits(max_seconds=60))
    separator = separators.get(jobs.BundleChoice("tiny", "tiny", bundle=str(tiny_bundle)), JobOptions())
    seen = []
    result = jobs.separate(separator, track, JobOptions(two_stems="vocals", format="flac"), space,
                           Limits(max_seconds=60), lambda fraction, text: seen.append((fraction, text)),
                           threading.Event())
    assert list(result.stems) == ["vocals", "no_vocals"] and result.folder == space.root / "jobs" / result.token
    with zipfile.ZipFile(result.archive) as packed:
        assert sorted(packed.namelist()) == ["no_vocals.flac", "vocals.flac"]
        for stem, path in result.stems.items():
            assert packed.read(f"{stem}.flac") == path.read_bytes()
    assert all(p.is_file() and p.suffix == ".png" for p in result.pictures.values())
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] < 1.0
    assert any(re.fullmatch(r"Separating: [\d.]+ of 1\.0 s of audio, about \d+ s left", t) for _, t in seen), seen
    cancel, seen = threading.Event(), []
    cancel.set()  # the app is stopping: the job stops at its first report from the separation
    with pytest.raises(jobs.Cancelled):
        jobs.separate(separator, track, JobOptions(), space, Limits(max_seconds=60),
                      lambda fraction, text: seen.append(text), cancel)
    assert seen == ["Separating: starting"]
    assert sorted((space.root / "jobs").iterdir()) == sorted([track.path.parent, result.folder])


# --- the page's handlers (the Gradio page calls these; no Gradio needed to test them) --------

@pytest.fixture
def app(space, tiny_bundle, separators):
    from danna_sep.app.page import App, AppConfig

    app = App(AppConfig(bundle=str(tiny_bundle), device="cpu", limits=Limits(max_seconds=60)), space)
    app.separators = separators
    return app


def test_the_page_says_what_is_wrong_with_an_upload_and_keeps_nothing(app, space):
    from danna_sep.app.page import KEEP

    sent = upload(space, "notes.txt", b"no music here\n" * 100)
    state, shown, box = app.receive({"path": str(sent), "orig_name": "notes.txt"}, None)
    assert re.fullmatch(r'<div class="dm-message dm-error" role="alert">notes\.txt: not an audio file \(.+\)</div>',
                        shown)
    assert box is None and state["input"] is None and leftovers(space) == []
    state, shown, box = app.separate(state, app.choices[0].key, "", list(SOURCES), "none", 0, "auto", "wav")[:3]
    assert "Drop a song (or pick the example) first." in shown and box is KEEP


def test_the_example_song_is_copied_in_and_a_cleared_box_forgets_it(app, space):
    state, shown, _ = app.example(None)
    assert "synth-song.mp3: 0:15.0, 44100 Hz. Choose the options and press Separate." in shown
    assert [p.relative_to(space.jobs).parts[1] for p in leftovers(space)] == ["input.mp3"] and EXAMPLE.is_file()
    state, shown = app.clear(state)
    assert state["input"] is None and leftovers(space) == []


def test_only_files_in_the_upload_folder_are_taken(app, space, tmp_path):
    """The page names an upload by its path; one that Gradio's upload route did not write (a
    file of the server's, another job's folder) is refused and left where it is."""
    elsewhere = tmp_path / "mine.wav"
    elsewhere.write_bytes(wav_bytes(tmp_path, 0.5))
    token, folder = space.new_folder()
    (folder / "input.wav").write_bytes(elsewhere.read_bytes())
    for path in [elsewhere, folder / "input.wav", space.root / OWNER_FILE, space.root / ("0" * 64) / ".." / OWNER_FILE]:
        state, shown, box = app.receive({"path": str(path), "orig_name": "x.wav"}, None)
        assert "that file was not uploaded here" in shown and state["input"] is None
    assert elsewhere.is_file() and (folder / "input.wav").is_file() and (space.root / OWNER_FILE).is_file()


def test_a_failed_separation_is_one_message_and_leaves_nothing(app, space):
    data = EXAMPLE.read_bytes()
    state, shown, _ = app.receive({"path": str(upload(space, "half.mp3", data[: len(data) // 2]))}, None)
    assert "half.mp3: 0:15.0, 44100 Hz. Choose the options and press Separate." in shown
    state, shown, mixer, box = app.separate(state, app.choices[0].key, "", list(SOURCES), "none", 0, "auto", "wav")
    assert re.fullmatch(r'<div class="dm-message dm-error" role="alert">half\.mp3: truncated or corrupt audio '
                        r'\(header declares 661500 samples, 15\.00 s; \d+ decoded, [\d.]+ s\)</div>', shown), shown
    assert box is None and state["input"] is None and leftovers(space) == []
    assert list((space.root / "jobs").iterdir()) == []  # no result folder either


def test_each_session_keeps_its_last_result_only(app, space, tmp_path):
    state, _, _ = app.receive({"path": str(upload(space, "x", wav_bytes(tmp_path, 1.0))), "orig_name": "tone.wav"}, None)
    reports = []
    state, shown, first, _ = app.separate(state, app.choices[0].key, "", ["bass", "vocals"], "none", 0, "float32",
                                          "mp3", lambda fraction, desc: reports.append(desc))
    assert "tone.wav: 2 stems, 0:01.0 of audio separated in" in shown and first.count('class="dm-stem"') == 2
    assert reports[:2] == ["Loading the bundle", "Separating: starting"]
    earlier = state["result"]
    state, _, second, _ = app.separate(state, app.choices[0].key, "", [], "drums", 0, "float32", "wav")
    assert 'data-stem="no_drums"' in second and space.folder(earlier) is None
    app.forget(state)  # the tab was closed
    assert leftovers(space) == []


def test_a_typed_bundle_folder_is_refused_unless_the_app_is_local(app, tiny_bundle):
    from danna_sep.app.page import App, AppConfig

    assert app.choice("", str(tiny_bundle)).bundle == str(tiny_bundle.resolve())
    with pytest.raises(DannaSepError, match="no such bundle folder"):
        app.choice("", str(tiny_bundle / "nothing"))
    public = App(AppConfig(host="0.0.0.0"), app.workspace)
    with pytest.raises(DannaSepError, match="only when the app listens on this machine alone"):
        public.choice("", str(tiny_bundle))


def test_mixer_markup_escapes_what_the_user_named(tmp_path):
    name = 'a"b<img src=x onerror=alert(1)>.wav'
    stems = {s: tmp_path / f"{s}.wav" for s in SOURCES}
    result = jobs.Separation("t" * 43, tmp_path, name, stems, {s: tmp_path / f"{s}.png" for s in SOURCES},
                             tmp_path / "stems.zip", 5.0, 44100, "wav", 1.0)
    markup = mixer_html(result, lambda path: f'gradio_api/file={path}"><img src=x onerror=alert(1)>')
    assert "<img src=x" not in markup and "onerror=alert(1)>" not in markup
    assert "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in markup
    assert markup.count('class="dm-stem"') == 4
    assert download_name(name, "vocals", "wav") == "a_b_img src_x onerror_alert(1) - vocals.wav"
    assert download_name("../../x.mp3", "stems", "zip") == "x - stems.zip"


# --- the command line -----------------------------------------------------------------------

def test_the_command_line_starts_without_gradio_or_torch():
    code = ("import sys; from danna_sep.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('gradio', 'torch') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


def test_app_usage_errors_are_one_line(capfd):
    assert main(["app", "--bundle", "no-such-bundle-anywhere"]) == 2
    assert capfd.readouterr().err.strip().splitlines() == [
        "danna-sep: --bundle no-such-bundle-anywhere: no such bundle folder or name (danna-sep models lists them)"]
    assert main(["app", "--port", "70000"]) == 2
    assert capfd.readouterr().err.strip().splitlines() == [
        "danna-sep app: argument --port: 70000 is out of range (from 1 to 65535) (see danna-sep app --help)"]


# --- the whole app, in a real browser -------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CLIP_START, CLIP_SECONDS = 4.0, 5.0


def _browser_missing() -> str:
    import importlib.util

    missing = [name for name, there in [("chromium", CHROMIUM), ("playwright", importlib.util.find_spec("playwright")),
                                        ("gradio", importlib.util.find_spec("gradio"))] if not there]
    return ", ".join(missing)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# The app's process records every address it connects or sends to, and every name it looks
# up (Python's audit hooks), so that the test sees any call outside this machine.
NETWORK_LOG = """
import json, sys
log = open(sys.argv[1], "a", buffering=1)
def hook(event, args):
    if event in ("socket.connect", "socket.sendto", "socket.sendmsg"):
        log.write(json.dumps([event, repr(args[1])]) + "\\n")
    elif event == "socket.getaddrinfo":
        log.write(json.dumps([event, repr(args[0])]) + "\\n")
sys.addaudithook(hook)
from danna_sep.cli import main
sys.exit(main(sys.argv[2:]))
"""
LOCAL = ("127.0.0.1", "::1", "localhost")


class RunningApp:
    """`danna-sep ARGS` in its own process (under NETWORK_LOG's audit hook) from entering until
    it says where it is; on leaving, SIGTERM, then `code` holds its exit status."""

    def __init__(self, args: list, env: dict, network: Path):
        self.args, self.env, self.network = args, env, network
        self.lines: list = []
        self.code = None

    def __enter__(self) -> "RunningApp":
        started = time.monotonic()
        self.process = subprocess.Popen([sys.executable, "-c", NETWORK_LOG, str(self.network), *self.args],
                                        env=self.env, stderr=subprocess.PIPE, text=True, start_new_session=True)
        threading.Thread(target=lambda: self.lines.extend(iter(self.process.stderr.readline, "")),
                         daemon=True).start()
        try:
            while not any("the app is at" in line for line in self.lines):
                assert self.process.poll() is None, "".join(self.lines)
                assert time.monotonic() - started < 120, "".join(self.lines)
                time.sleep(0.02)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        self.root = Path(re.search(r"temporary folder (\S+)", "".join(self.lines)).group(1))
        return self

    def __exit__(self, *exc) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.code = self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            raise
        time.sleep(0.1)  # the last lines of stderr


@pytest.mark.browser
@pytest.mark.skipif(bool(_browser_missing()) and os.environ.get("DANNA_REQUIRE_BROWSER") != "1",
                    reason=f"needs {_browser_missing()} (see README: Web app)")
def test_the_app_end_to_end_in_a_headless_browser(tmp_path):
    """Upload a non-audio file (one message, nothing kept), then a clip of the example; the
    progress bar moves, a second job queues; four players of the clip's length; play, mute
    vocals, the others play on; solo drums, only they do; the zip holds what `danna-sep separate` writes, sample for
    sample; a guessed URL reaches nothing and an upload over the cap is refused; every request
    the page and the server make stays on this machine; SIGTERM stops the app, and its
    temporary folder goes."""
    assert not _browser_missing(), f"$DANNA_REQUIRE_BROWSER=1 but {_browser_missing()} is missing"
    from playwright.sync_api import sync_playwright

    wav, rate = read_audio(EXAMPLE)
    clip = tmp_path / "synth-song-clip.wav"
    write_audio(clip, wav[:, int(CLIP_START * rate):int((CLIP_START + CLIP_SECONDS) * rate)].contiguous(), rate)
    notes = tmp_path / "notes.txt"
    notes.write_text("not a song\n" * 50)
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    network = tmp_path / "network.log"
    port = _free_port()
    # One torch thread, as this test process has (conftest), so that the app's stems and those
    # of `danna-sep separate` below come from the same arithmetic, bit for bit.
    env = {**os.environ, "TMPDIR": str(temporary), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    with sync_playwright() as playwright:
        # The browser first, so that the time to the first page below is the app's alone.
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        started = time.monotonic()
        with RunningApp(["app", "--port", str(port), "--max-upload-mb", "3"], env, network) as app:
            served = time.monotonic() - started
            assert app.root.parent == temporary
            root, url = app.root, f"http://127.0.0.1:{port}/"
            context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
            requests = []
            context.on("request", lambda request: requests.append(request.url))
            page = context.new_page()
            page.goto(url, wait_until="load")
            loaded = time.monotonic() - started
            print(f"app served after {served:.2f} s, first page loaded after {loaded:.2f} s")
            upload_box = page.locator("#upload input[type=file]")

            # A file that is not audio: one clear message, the server goes on, nothing is kept.
            upload_box.set_input_files(str(notes))
            page.wait_for_selector("#message .dm-error")
            assert re.fullmatch(r"notes\.txt: not an audio file \([^)]+\)", page.locator("#message").inner_text().strip())
            assert [p for p in root.rglob("*") if p.is_file() and p.name != OWNER_FILE] == []

            upload_box.set_input_files(str(clip))
            page.wait_for_selector("#message >> text=Press Separate")
            other = context.new_page()  # a second user, to see the queue
            other.goto(url, wait_until="load")

            page.locator("#separate").click()
            page.wait_for_selector("#mixer .progress-level-inner")  # the first job is running
            other.locator("#separate").click()
            progress, queued = set(), False
            deadline = time.monotonic() + 300
            while not page.locator("#mixer .dm-mixer[data-state=ready]").count():
                assert time.monotonic() < deadline, "".join(app.lines)
                assert not page.locator("#message .dm-error").count(), page.locator("#message").inner_text()
                progress.update(t.strip() for t in page.locator(".progress-level-inner").all_inner_texts())
                queued = queued or "queue" in " ".join(other.locator(".meta-text").all_inner_texts())
                time.sleep(0.1)
            assert any(re.match(r"Separating: [\d.]+ of 5\.0 s of audio, about \d+ s left", t) for t in progress), \
                progress
            assert queued, "the second job did not wait in the queue"
            other.wait_for_selector("#message >> text=Drop a song")  # its turn came after the first job
            other.close()

            stems = page.locator(".dm-stem")
            assert [s.get_attribute("data-stem") for s in stems.all()] == list(SOURCES)
            for stem in stems.all():
                assert abs(float(stem.get_attribute("data-duration")) - CLIP_SECONDS) < 1e-4
                assert stem.locator(".dm-spectrogram").evaluate("img => img.complete && img.naturalWidth > 0")
            hrefs = [a.get_attribute("href") for a in page.locator(".dm-mixer a").all()]
            assert len(hrefs) == 5 and all(re.search(r"/jobs/[A-Za-z0-9_-]{43}/", h) for h in hrefs), hrefs

            # Play, mute vocals: the transport goes on and the other stems still sound.
            page.locator(".dm-play").click()
            page.wait_for_function("document.querySelector('.dm-mixer').dataset.position > 0.2")
            page.locator(".dm-stem[data-stem=vocals] .dm-mute").click()
            time.sleep(0.15)  # the gain glides to 0 in about 50 ms
            state = """() => ({playing: document.querySelector('.dm-mixer').dataset.playing,
                               position: Number(document.querySelector('.dm-mixer').dataset.position),
                               levels: Object.fromEntries([...document.querySelectorAll('.dm-stem')].map(
                                   s => [s.dataset.stem, Number(s.querySelector('.dm-meter').dataset.level)]))})"""
            polls = []
            for _ in range(8):
                polls.append(page.evaluate(state))
                time.sleep(0.05)
            assert all(p["playing"] == "true" for p in polls), polls
            assert polls[-1]["position"] > polls[0]["position"] + 0.2, polls
            loudest = {stem: max(p["levels"][stem] for p in polls) for stem in SOURCES}
            assert loudest["vocals"] < 1e-4, loudest
            assert all(loudest[s] > 1e-3 for s in SOURCES if s != "vocals"), loudest
            assert page.locator(".dm-stem[data-stem=vocals] .dm-mute").get_attribute("aria-pressed") == "true"
            # Solo drums: only they sound now.
            page.locator(".dm-stem[data-stem=drums] .dm-solo").click()
            time.sleep(0.15)
            polls = []
            for _ in range(6):
                polls.append(page.evaluate(state))
                time.sleep(0.05)
            loudest = {stem: max(p["levels"][stem] for p in polls) for stem in SOURCES}
            assert loudest["drums"] > 1e-3 and all(loudest[s] < 1e-4 for s in SOURCES if s != "drums"), loudest

            shot = tmp_path / "app.png"
            page.screenshot(path=str(shot), full_page=True)
            if os.environ.get("DANNA_APP_SCREENSHOT"):  # README's docs/app.png, in 256 colours
                from PIL import Image

                with Image.open(shot) as picture:
                    picture.convert("RGB").quantize(256).save(os.environ["DANNA_APP_SCREENSHOT"], optimize=True)

            with page.expect_download() as download:
                page.locator(".dm-zip").click()
            archive = tmp_path / "stems.zip"
            download.value.save_as(archive)
            assert download.value.suggested_filename == "stems.zip"  # the server's name, never the upload's

            # A guessed token reaches nothing; nor does a folder.
            stem_url = page.locator(".dm-stem[data-stem=drums] .dm-download").get_attribute("href")
            guessed = re.sub(r"/jobs/[A-Za-z0-9_-]{43}/", "/jobs/" + "A" * 43 + "/", stem_url)
            assert page.request.get(url + stem_url).status == 200
            assert page.request.get(url + guessed).status in (403, 404)
            assert page.request.get(url + stem_url.rsplit("/jobs/", 1)[0] + "/jobs/").status in (403, 404)
            too_big = page.request.post(url + "gradio_api/upload", multipart={
                "files": {"name": "big.wav", "mimeType": "audio/wav", "buffer": b"\0" * 3_500_000}})
            assert too_big.status in (400, 413), too_big.status
            browser.close()

            outside = [u for u in requests if not u.startswith(url)]
            assert outside == [], outside[:10]
            out = tmp_path / "cli"
            assert main(["separate", str(clip), "-o", str(out), "-q"]) == 0
            with zipfile.ZipFile(archive) as packed:
                assert sorted(packed.namelist()) == sorted(f"{s}.wav" for s in SOURCES)
                packed.extractall(tmp_path / "zip")
            for stem in SOURCES:
                app_samples, app_rate = sf.read(tmp_path / "zip" / f"{stem}.wav", dtype="int16")
                cli_samples, cli_rate = sf.read(out / "synth-song-clip" / f"{stem}.wav", dtype="int16")
                assert app_rate == cli_rate == 44100
                assert np.array_equal(app_samples, cli_samples), stem
    log = "".join(app.lines)
    assert app.code == 143, log  # SIGTERM, as for every command
    # Nothing of the app's is left (torch keeps its compiler's cache folder in $TMPDIR).
    assert [p.name for p in temporary.iterdir() if not p.name.startswith("torchinductor")] == [], log
    assert "Traceback" not in log, log
    calls = [json.loads(line) for line in network.read_text().splitlines()]
    assert calls, "the audit hook saw no socket at all"
    for event, address in calls:
        value = ast.literal_eval(address)
        host = value[0] if isinstance(value, tuple) else value
        assert host in LOCAL or (isinstance(host, str) and host.startswith("/")), (event, address)
