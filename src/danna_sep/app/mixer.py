"""The mixer's markup: one row per stem (waveform, mute, solo, volume, level meter,
spectrogram, download) under one transport, for `mixer.js` to bring to life in the page.

Everything the user sent is escaped; files are linked by their URL on this server, which
holds the job's unguessable token (`danna_sep.app.workspace`).
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Callable

from .jobs import Separation, clock

UrlFn = Callable[[Path], str]

#: One colour per stem (everything-but-X stems are grey).
COLOURS = {"drums": "#e4572e", "bass": "#3fa34d", "other": "#f0a202", "vocals": "#4f86f7"}
OTHER_COLOUR = "#8a8f98"

SCRIPT_FILE = Path(__file__).with_name("mixer.js")
STYLE_FILE = Path(__file__).with_name("mixer.css")


def download_name(track: str, stem: str, extension: str) -> str:
    """The name a browser offers to save a file under: the track's name (without its extension
    and without characters a file system may refuse), then the stem."""
    base = re.sub(r"\.[A-Za-z0-9]{1,5}$", "", track)
    base = re.sub(r"[^\w .()+-]+", "_", base).strip(" ._") or "track"
    return f"{base[:80]} - {stem}.{extension}"


def mixer_html(result: Separation, url: UrlFn) -> str:
    """The markup of a finished separation's mixer."""
    attr = html.escape
    rows = []
    for stem, path in result.stems.items():
        colour = COLOURS.get(stem, OTHER_COLOUR)
        label = stem.replace("no_", "no ") if stem.startswith("no_") else stem
        rows.append(f"""
<div class="dm-stem" data-stem="{attr(stem)}" data-url="{attr(url(path))}" style="--dm-colour: {colour}">
  <div class="dm-head">
    <span class="dm-name">{attr(label)}</span>
    <span class="dm-duration" title="duration">…</span>
    <button type="button" class="dm-mute" aria-pressed="false" title="mute {attr(label)}">M</button>
    <button type="button" class="dm-solo" aria-pressed="false" title="solo {attr(label)}">S</button>
    <label class="dm-volume-label">volume <input type="range" class="dm-volume" min="0" max="1.5" step="0.01"
      value="1" aria-label="volume of {attr(label)}"></label>
    <span class="dm-meter" title="level" data-level="0"><span class="dm-meter-fill"></span></span>
    <a class="dm-download" href="{attr(url(path))}"
      download="{attr(download_name(result.track, stem, result.format))}">download {attr(result.format)}</a>
  </div>
  <div class="dm-wave" title="click to play from here"><canvas></canvas><span class="dm-playhead"></span></div>
  <img class="dm-spectrogram" src="{attr(url(result.pictures[stem]))}"
    alt="spectrogram of {attr(label)}" title="spectrogram of {attr(label)}: time to the right, frequency upwards (log)">
</div>""")
    return f"""
<div class="dm-mixer" data-state="loading" data-rate="{result.samplerate}" data-position="0" data-duration="0">
  <div class="dm-transport">
    <button type="button" class="dm-play" disabled>▶ Play</button>
    <button type="button" class="dm-stop" disabled>■ Stop</button>
    <span class="dm-time">0:00.0 / {clock(result.seconds)}</span>
    <input type="range" class="dm-seek" min="0" max="1000" value="0" aria-label="position">
    <a class="dm-zip" href="{attr(url(result.archive))}"
      download="{attr(download_name(result.track, 'stems', 'zip'))}">download all ({attr(result.format)}, zip)</a>
  </div>
  <div class="dm-note">Loading the players…</div>
  {''.join(rows)}
</div>"""
