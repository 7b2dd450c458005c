"""Helpers shared by the benchmark scripts.

- `machine_info` / `machine_line`: what the numbers were measured on (CPU model, cores,
  RAM, torch version and threads, load average), to be cited next to them;
- `rss_bytes`, `reset_peak_rss`, `peak_rss_bytes`: resident memory of this process;
- `make_clip`: a deterministic stereo test clip (tones, a bass line, drum-like bursts, noise);
- `random_bundle`: the Danna-Sep models at full size (or given sizes) with seeded random
  weights, blended with a given table (`PAPER_BLEND`, `FAST_BLEND`, ...);
- `import_without_torchaudio`: import a reference package that imports torchaudio at
  import time without needing it;
- `markdown_table`, `write_json`: output.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import platform
import resource
import sys
import tempfile
import types
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np
import torch

from danna_sep import models
from danna_sep.bundle import Bundle, Member
from danna_sep.models import SOURCES

SAMPLERATE = 44100


class BenchmarkError(Exception):
    """A benchmark input (bundle folder, output file, option) that cannot be used; one line."""


# --- the machine -----------------------------------------------------------------------------

def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _ram_bytes() -> Optional[int]:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def machine_info(threads: Optional[int] = None, device: str = "cpu") -> Dict[str, Any]:
    """A description of this machine and of the torch that runs the benchmark."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 1
    info: Dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "ram_bytes": _ram_bytes(),
        "system": f"{platform.system()} {platform.machine()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": int(threads if threads is not None else torch.get_num_threads()),
        "device": device,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def machine_line(info: Mapping[str, Any]) -> str:
    """One line naming the machine, e.g. for a README table caption."""
    ram = info.get("ram_bytes")
    ram_text = f"{ram / 2**30:.1f} GiB RAM" if ram else "RAM unknown"
    cores = f"{info['cores']} cores" if info.get("usable_cores") in (None, info["cores"]) else (
        f"{info['cores']} cores ({info['usable_cores']} usable)")
    parts = [info["cpu"], cores, ram_text, info["system"], f"Python {info['python']}",
             f"torch {info['torch']}",
             f"{info['threads']} torch thread{'' if info['threads'] == 1 else 's'}"]
    if info.get("gpu"):
        parts.append(f"GPU {info['gpu']}")
    load = info.get("load_average")
    if load:
        parts.append("load average {:.2f} {:.2f} {:.2f} at start".format(*load))
    return ", ".join(parts)


# --- memory ------------------------------------------------------------------------------------

def _status_kib(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_bytes() -> Optional[int]:
    """Current resident set size of this process (Linux), else None."""
    kib = _status_kib("VmRSS")
    return None if kib is None else kib * 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process to the current RSS (Linux >= 4.0).

    Returns False where that is not possible; `peak_rss_bytes` then reports the peak
    since the process started.
    """
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Peak resident set size of this process since start or the last `reset_peak_rss`."""
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # macOS reports bytes, Linux KiB


# --- the test clip ---------------------------------------------------------------------------

def _midi_hz(note: np.ndarray) -> np.ndarray:
    return 440.0 * 2.0 ** ((note - 69) / 12)


def _note_track(notes: np.ndarray, note_seconds: float, length: int, samplerate: int) -> np.ndarray:
    """Per-sample frequency (Hz) of a melody that holds each note for `note_seconds`."""
    per_note = max(1, int(round(note_seconds * samplerate)))
    freq = np.repeat(_midi_hz(notes.astype(np.float64)), per_note)
    if freq.size < length:
        freq = np.pad(freq, (0, length - freq.size), mode="wrap")
    return freq[:length]


def _oscillator(freq: np.ndarray, samplerate: int, harmonics: int = 1) -> np.ndarray:
    """Sum of `harmonics` partials with 1/k amplitudes, phase-continuous over frequency changes."""
    phase = 2 * np.pi * np.cumsum(freq) / samplerate
    out = np.zeros_like(phase)
    for k in range(1, harmonics + 1):
        out += np.sin(k * phase) / k
    return out


def make_clip(seconds: float = 30.0, samplerate: int = SAMPLERATE, seed: int = 0) -> torch.Tensor:
    """A deterministic music-like stereo clip `(2, samples)`, float32, peak 0.5.

    A bass line (1 note per 0.5 s), chords (3 voices of 5 partials, 2 s each), a vibrato
    "voice", kick drums on the beat and noise bursts off the beat, and a noise floor, each
    panned differently. Content matters little for speed but keeps every model's
    activations (and the Wiener filter) in a realistic range.
    """
    if seconds <= 0:
        raise BenchmarkError(f"clip length must be positive, got {seconds} s")
    rng = np.random.default_rng(seed)
    length = int(round(seconds * samplerate))
    t = np.arange(length) / samplerate
    beats = int(np.ceil(seconds * 2)) + 1

    bass = _oscillator(_note_track(rng.integers(36, 48, beats), 0.5, length, samplerate), samplerate, 2)
    chord_notes = rng.integers(52, 67, (int(np.ceil(seconds / 2)) + 1, 3))
    chords = sum(
        _oscillator(_note_track(chord_notes[:, v], 2.0, length, samplerate), samplerate, 5)
        for v in range(3)
    ) / 3
    melody = _note_track(rng.integers(60, 76, beats), 0.5, length, samplerate)
    voice = _oscillator(melody * (1 + 0.01 * np.sin(2 * np.pi * 5.5 * t)), samplerate, 3)

    beat_time = t % 0.5
    kick = np.sin(2 * np.pi * (50 + 100 * np.exp(-beat_time * 30)) * beat_time) * np.exp(-beat_time * 12)
    off_time = (t + 0.25) % 0.5
    hats = rng.standard_normal(length) * np.exp(-off_time * 40)
    floor = rng.standard_normal((2, length)) * 0.01

    def pan(signal: np.ndarray, position: float) -> np.ndarray:  # position in [-1, 1]
        angle = (position + 1) * np.pi / 4
        return np.stack([np.cos(angle) * signal, np.sin(angle) * signal])

    mix = (pan(bass, 0.0) * 0.6 + pan(chords, -0.4) * 0.3 + pan(voice, 0.1) * 0.35
           + pan(kick, 0.0) * 0.8 + pan(hats, 0.5) * 0.15 + floor)
    mix *= 0.5 / max(float(np.abs(mix).max()), 1e-9)
    return torch.from_numpy(mix.astype(np.float32))


# --- models ----------------------------------------------------------------------------------

def random_bundle(
    table: Mapping[str, Mapping[str, float]],
    seed: int = 0,
    kwargs: Optional[Mapping[str, Mapping[str, Any]]] = None,
) -> Bundle:
    """Models of the registry with seeded random weights, blended by `table` (model -> source -> weight).

    `kwargs[name]` overrides a model's constructor arguments (default: full size). Each
    model's weights come from its own constructor's initialisation after
    `torch.manual_seed(seed + index)`, so a bundle is the same on every run.
    """
    members = []
    for index, (name, blend) in enumerate(table.items()):
        model_kwargs = dict((kwargs or {}).get(name, {}))
        torch.manual_seed(seed + index)
        model = models.build(name, **model_kwargs).eval()
        members.append(Member(model, dict(blend)))
    return Bundle(members=members, sources=list(SOURCES), origin=f"random weights, seed {seed}")


def import_without_torchaudio(name: str) -> types.ModuleType:
    """Import `name` (e.g. "openunmix.model"), standing in an empty `torchaudio` if it is absent.

    openunmix imports torchaudio at package import (for file loading, unused here), and
    torchaudio has no CPU build on PyPI. The stand-in is removed again after the import,
    so nothing else in the process mistakes it for the real package.
    """
    if "torchaudio" in sys.modules or importlib.util.find_spec("torchaudio") is not None:
        return importlib.import_module(name)
    sys.modules["torchaudio"] = types.ModuleType("torchaudio")
    try:
        return importlib.import_module(name)
    finally:
        del sys.modules["torchaudio"]


# --- output ----------------------------------------------------------------------------------

def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]], align: str = "") -> str:
    """A Markdown table; `align` has one letter per column, "l" or "r" (default all left)."""
    align = align or "l" * len(headers)
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: str | os.PathLike, data: Any, force: bool = False) -> Path:
    """Write `data` as JSON atomically (temporary name in the target folder, then rename)."""
    target = Path(path)
    if target.exists() and not force:
        raise BenchmarkError(f"{target}: already exists (use --force to overwrite)")
    if target.is_dir():
        raise BenchmarkError(f"{target}: is a folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2)
            handle.write("\n")
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return target
