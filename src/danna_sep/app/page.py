"""The web page: Gradio Blocks over `danna_sep.app.jobs`, served from this machine only.

Offline by construction: analytics and Gradio's version check are off
(`GRADIO_ANALYTICS_ENABLED=False`), the theme's fonts are the ones Gradio ships (no Google
Fonts), server-side rendering (Node) is off, and the mixer's script and style come with the
package. Gradio's upload folder is the app's `Workspace`, so uploads, results and nothing
else live there, and the folder goes when the app stops.

One separation runs at a time (the event's concurrency limit is 1): a second user's job
waits in Gradio's queue, which shows its place.
"""

from __future__ import annotations

import contextlib
import html
import io
import logging
import os
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from .. import SOURCES
from ..errors import DannaSepError
from . import jobs
from .jobs import BundleChoice, JobOptions, Limits, Separation, Track
from .mixer import SCRIPT_FILE, STYLE_FILE, mixer_html
from .workspace import Workspace

log = logging.getLogger(__name__)

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "synth-song.mp3"
"""The example song of a source checkout (or an editable install); the page offers it when it is there."""

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class AppConfig:
    host: str = "127.0.0.1"
    port: int = 7860
    share: bool = False
    max_upload_bytes: int = 500_000_000
    max_storage_bytes: int = 5_000_000_000
    limits: Limits = Limits(max_seconds=20 * 60)
    bundle: Optional[str] = None
    checkpoints: Optional[str] = None
    device: str = "auto"
    open_browser: bool = False
    example: Optional[Path] = EXAMPLE

    @property
    def local_only(self) -> bool:
        return self.host in LOOPBACK


def message(text: str, error: bool = False) -> str:
    """A line for the page's message box (escaped)."""
    kind = "dm-message dm-error" if error else "dm-message"
    role = ' role="alert"' if error else ""
    return f'<div class="{kind}"{role}>{html.escape(text)}</div>'


class _Keep:
    def __repr__(self) -> str:
        return "KEEP"


KEEP = _Keep()
"""A handler's output that leaves its component as it is (gr.update() once it reaches Gradio)."""


def _state() -> Dict[str, Any]:
    """A session's files: its input and its last result, by workspace token."""
    return {"input": None, "track": None, "result": None}


class App:
    """The page's handlers, over one workspace and one Separator cache."""

    def __init__(self, config: AppConfig, workspace: Workspace):
        self.config = config
        self.workspace = workspace
        self.separators = jobs.Separators(config.device)
        self.choices = jobs.bundle_choices(config.bundle, config.checkpoints)
        self.cancel = threading.Event()
        self.running = threading.Lock()  # held while a separation runs (the queue lets one in at a time)
        self._lock = threading.Lock()
        self._warming = False

    # -- files and URLs -----------------------------------------------------------------

    def url(self, path: Path) -> str:
        """The URL (relative to the page) at which Gradio serves a file of the workspace."""
        return "gradio_api/file=" + urllib.parse.quote(str(path), safe="/")

    def forget(self, state: Optional[Dict[str, Any]]) -> None:
        """Gradio's delete_callback for a session's state: its files go (the tab was closed)."""
        if state:
            self.workspace.remove(state.get("input"), state.get("result"))

    def _take(self, state: Dict[str, Any], track: Track) -> str:
        self.workspace.remove(state.get("input"))
        state["input"], state["track"] = track.token, (str(track.path), track.name, track.samplerate, track.seconds)
        length = "" if track.seconds is None else f"{jobs.clock(track.seconds)}, "
        return message(f"{track.name}: {length}{track.samplerate} Hz. Choose the options and press Separate.")

    def _drop_input(self, state: Dict[str, Any]) -> None:
        self.workspace.remove(state.get("input"))
        state["input"] = state["track"] = None

    # -- handlers -----------------------------------------------------------------------

    def warm_up(self) -> None:
        """Once, when a page has loaded: import torch and load the first bundle in the background
        while the user picks a song (not earlier, so that neither slows the first page down)."""
        with self._lock:
            if self._warming:
                return
            self._warming = True

        def load() -> None:
            try:
                if self.choices:
                    self.separators.get(self.choices[0], JobOptions())
            except Exception as error:  # said again, in the page, by the job that needs it
                log.debug("warm-up: %s", error)

        threading.Thread(target=load, name="warm-up", daemon=True).start()

    def receive(self, upload: Optional[Dict[str, Any]], state: Optional[Dict[str, Any]]
                ) -> Tuple[Dict[str, Any], str, Any]:
        """A file dropped or picked: (state, message, the file box's new value).

        `upload` is what the page sent, as Gradio checked it (a file in its upload folder) but
        did not preprocess: `{"path": ..., "orig_name": ...}`. (gr.File's preprocessing would
        leave an empty temporary file in the upload folder each time, in Gradio 6.)"""
        state = state or _state()
        if not upload or not upload.get("path"):
            return state, "", None
        path = Path(upload["path"]).resolve()
        if not self.workspace.is_upload(path):  # Gradio checks this too; a file of the app's own never goes
            return state, message("that file was not uploaded here", error=True), None
        try:
            track = jobs.adopt(self.workspace, path, upload.get("orig_name") or path.name, self.config.limits)
        except DannaSepError as error:
            self._drop_input(state)
            return state, message(str(error), error=True), None
        return state, self._take(state, track), KEEP

    def example(self, state: Optional[Dict[str, Any]]) -> Tuple[Dict[str, Any], str, Any]:
        state = state or _state()
        example = self.config.example
        if example is None or not example.is_file():
            return state, message("the example song is not installed here", error=True), None
        try:
            track = jobs.copy_in(self.workspace, example, self.config.limits)
        except DannaSepError as error:
            return state, message(str(error), error=True), None
        return state, self._take(state, track), None

    def clear(self, state: Optional[Dict[str, Any]]) -> Tuple[Dict[str, Any], str]:
        state = state or _state()
        self._drop_input(state)
        return state, ""

    def choice(self, key: str, folder: str) -> BundleChoice:
        """The bundle the options name: a typed folder (where the page allows one), else the list's."""
        folder = (folder or "").strip()
        if folder:
            if not self.config.local_only:
                raise DannaSepError("bundle folders can be typed only when the app listens on this machine alone")
            if not Path(folder).expanduser().is_dir():
                raise DannaSepError(f"{folder}: no such bundle folder")
            path = str(Path(folder).expanduser().resolve())
            return BundleChoice(f"folder:{path}", path, bundle=path)
        for choice in self.choices:
            if choice.key == key:
                return choice
        raise DannaSepError("choose a bundle")

    def separate(self, state: Optional[Dict[str, Any]], bundle_key: str, folder: str, stems: List[str],
                 two_stems: str, shifts: float, precision: str, format: str, progress: Any = None
                 ) -> Tuple[Dict[str, Any], str, str, Any]:
        """Separate the session's input: (state, message, mixer markup, the file box's value)."""
        state = state or _state()
        if state.get("input") is None or self.workspace.folder(state["input"]) is None:
            return state, message("Drop a song (or pick the example) first.", error=True), KEEP, None
        path, name, rate, seconds = state["track"]
        track = Track(state["input"], Path(path), name, rate, seconds)
        report = progress if progress is not None else (lambda *a, **k: None)
        with self.running:
            started = time.monotonic()
            try:
                options = JobOptions(stems=tuple(s for s in SOURCES if s in (stems or [])),
                                     two_stems=None if two_stems in (None, "", "none") else two_stems,
                                     shifts=int(shifts), precision=precision, format=format)
                options.check()
                choice = self.choice(bundle_key, folder)
                report(0.0, desc="Loading the bundle")
                separator = self.separators.get(choice, options)
                result = jobs.separate(separator, track, options, self.workspace, self.config.limits,
                                       lambda fraction, text: report(fraction, desc=text), self.cancel)
            except jobs.Cancelled:
                return state, message("the app is stopping", error=True), KEEP, KEEP
            except DannaSepError as error:
                log.warning("%s", error)
                if _about_the_input(error):  # the song is at fault: it goes, and the file box empties
                    self._drop_input(state)
                    return state, message(str(error), error=True), KEEP, None
                return state, message(str(error), error=True), KEEP, KEEP
            except Exception as error:  # a failed separation: said in the page, the server carries on
                log.exception("separating %s failed", name)
                self._drop_input(state)
                return state, message(f"{name}: separation failed ({type(error).__name__}: {error})".replace(
                    "\n", " "), error=True), KEEP, None
            log.info("%s: %d stems, %.1f s of audio in %.1f s", name, len(result.stems), result.seconds,
                     time.monotonic() - started)
        self.workspace.remove(state.get("result"))  # a session shows one result; the one before goes
        state["result"] = result.token
        return state, message(_done(result)), mixer_html(result, self.url), KEEP

    # -- the page -----------------------------------------------------------------------

    def build(self):
        """The Gradio Blocks of the page."""
        import gradio as gr

        default = self.choices[0].key if self.choices else None
        with gr.Blocks(title="danna-sep", analytics_enabled=False) as page:
            state = gr.State(_state(), delete_callback=self.forget)
            gr.HTML("<h1 class='dm-title'>danna-sep</h1><p>Split a song into drums, bass, other and vocals, "
                    "on this computer. Nothing leaves it.</p>", js_on_load=None)
            with gr.Row():
                with gr.Column(scale=1):
                    upload = gr.File(label="Song: drop a file here or click to pick one", file_count="single",
                                     elem_id="upload")
                    with gr.Row():
                        example = gr.Button("Use the example song", elem_id="example", size="sm",
                                            visible=self.config.example is not None and self.config.example.is_file())
                        go = gr.Button("Separate", variant="primary", elem_id="separate")
                    status = gr.HTML("", elem_id="message", js_on_load=None)
                with gr.Column(scale=1):
                    with gr.Accordion("Options", open=True):
                        bundle = gr.Dropdown([(c.label, c.key) for c in self.choices], value=default,
                                             label="Bundle", elem_id="bundle")
                        folder = gr.Textbox(label="or a bundle folder on this computer", placeholder="/path/to/bundle",
                                            visible=self.config.local_only, elem_id="folder")
                        with gr.Row():
                            stems = gr.CheckboxGroup(list(SOURCES), value=list(SOURCES), label="Stems",
                                                     elem_id="stems")
                            two = gr.Dropdown([("no: the stems ticked", "none")] + [(f"{s} + everything else", s)
                                                                                    for s in SOURCES],
                                              value="none", label="Two stems", elem_id="two-stems")
                        with gr.Row():
                            shifts = gr.Slider(0, jobs.MAX_SHIFTS, value=0, step=1, label="Shifts (slower, a bit better)",
                                               elem_id="shifts")
                            precision = gr.Radio(list(jobs.PRECISIONS), value="auto", label="Precision",
                                                 elem_id="precision")
                            format = gr.Radio(list(jobs.FORMATS), value="wav", label="Format", elem_id="format")
            mixer = gr.HTML("", elem_id="mixer", js_on_load=SCRIPT_FILE.read_text(encoding="utf-8"))

            def values(outputs: tuple) -> tuple:
                return tuple(gr.update() if value is KEEP else value for value in outputs)

            def receive(upload, state):
                return values(self.receive(upload, state))

            def example_song(state):
                return values(self.example(state))

            def separate(state, bundle_key, folder, stems, two_stems, shifts, precision, format,
                         progress=gr.Progress()):
                return values(self.separate(state, bundle_key, folder, stems, two_stems, shifts, precision, format,
                                            progress))

            light = {"concurrency_limit": 4, "show_progress": "hidden"}
            upload.upload(receive, [upload, state], [state, status, upload], preprocess=False, **light)
            upload.clear(self.clear, [state], [state, status], **light)
            example.click(example_song, [state], [state, status, upload], **light)

            page.load(self.warm_up, None, None, show_progress="hidden", concurrency_limit=None)
            go.click(separate, [state, bundle, folder, stems, two, shifts, precision, format],
                     [state, status, mixer, upload], concurrency_limit=1, concurrency_id="separate",
                     show_progress="full", api_name="separate")
        return page


def _about_the_input(error: DannaSepError) -> bool:
    from ..audio import AudioError

    return isinstance(error, (AudioError, jobs.TooLong))


def _done(result: Separation) -> str:
    return (f"{result.track}: {len(result.stems)} stems, {jobs.clock(result.seconds)} of audio separated in "
            f"{result.took:.1f} s.")


def _not_a_bind_error(record: logging.LogRecord) -> bool:
    return "error while attempting to bind" not in record.getMessage()


def serve(config: AppConfig) -> None:
    """Start the app and serve until interrupted (Ctrl-C, SIGTERM); the workspace goes on the way out."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # read when gradio is imported, and per call
    workspace = Workspace(config.max_storage_bytes)
    os.environ["GRADIO_TEMP_DIR"] = str(workspace.root)
    os.environ["GRADIO_EXAMPLES_CACHE"] = str(workspace.root / "examples-cache")
    page = None
    app = None
    try:
        try:
            import gradio  # noqa: F401
        except ImportError:
            raise DannaSepError('the app needs Gradio: pip install "danna-sep[app]" (in a checkout: '
                                'pip install -e ".[app]")') from None
        app = App(config, workspace)
        page = app.build()
        page.queue(default_concurrency_limit=1)
        bind_errors = logging.getLogger("uvicorn.error")
        bind_errors.addFilter(_not_a_bind_error)  # a port in use is said once, below, not by uvicorn too
        try:
            page.launch(server_name=config.host, server_port=config.port, share=config.share,
                        prevent_thread_lock=True, quiet=True, ssr_mode=False, inbrowser=config.open_browser,
                        max_file_size=config.max_upload_bytes, show_error=False, footer_links=["settings"],
                        run_history=False, mcp_server=False, pwa=False, enable_monitoring=False,
                        css=STYLE_FILE.read_text(encoding="utf-8"))
        except OSError:  # Gradio's words name its own launch() arguments: ours name the options
            raise DannaSepError(f"cannot listen on {config.host} port {config.port}: the port is in use, or the "
                                f"address is not one of this machine's (pick another --port or --host)") from None
        finally:
            bind_errors.removeFilter(_not_a_bind_error)
        log.info("the app is at http://%s:%d (Ctrl-C stops it); temporary folder %s",
                 f"[{config.host}]" if ":" in config.host else config.host, config.port, workspace.root)
        if page.share_url:
            log.warning("--share: anyone with %s can use this app", page.share_url)
        while True:
            time.sleep(3600)
    finally:
        if app is not None:
            app.cancel.set()  # a job under way stops at its next progress report
            app.running.acquire(timeout=120)
        if page is not None:
            with contextlib.redirect_stdout(io.StringIO()):  # Gradio prints "Closing server running on port"
                page.close()
        workspace.close()
        log.info("stopped; temporary folder removed")


