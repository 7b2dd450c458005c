"""General MIDI parts to float stereo audio with FluidSynth (pyfluidsynth, in-process).

Each stem is rendered by a fresh synthesizer so that nothing (reverb tails, voice
allocation, effect state) carries from one stem to the next: `system_reset` on a reused
synth was measured to leave the next render different. A second synth per soundfont
stays loaded for the life of the process so that FluidSynth's sample cache keeps the
samples in memory and a fresh synth loads the soundfont in a few tens of milliseconds.

Events are scheduled on FluidSynth's own 64-sample block grid (it starts new voices only
at the start of an internal block, so an event applied mid-block would sound up to 63
samples late): each event time is rounded to the nearest block (within 0.73 ms), the
synth renders exactly up to it, the event is applied, and so on, straight into a float32
buffer through `fluid_synth_write_float` (pyfluidsynth only wraps the 16-bit writer,
which dithers).
The chorus is off (it puts some patches in anti-phase between the channels); reverb is
set per part with CC91 and per track with the room size and damping.
"""

from __future__ import annotations

import ctypes
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ... import SAMPLERATE
from ...errors import USAGE, DannaSepError
from ...hashing import file_sha256
from .compose import Part

log = logging.getLogger(__name__)

DEFAULT_SOUNDFONT = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
_BLOCK = 4096  # the longest stretch rendered in one call when no event comes sooner
FLUID_BLOCK = 64  # FluidSynth's internal block (FLUID_BUFSIZE): voices start on this grid
_SYNTH_GAIN = 0.4


class CorpusError(DannaSepError):
    """A problem making the corpus; the message is one line naming what failed. One that
    reaches the command line (a missing soundfont or program) stopped the run before it
    rendered anything: exit code 2."""

    exit_code = USAGE


class DependencyError(CorpusError):
    """A program or library the generator needs is missing."""


class SoundfontError(CorpusError):
    """A soundfont that is missing or that FluidSynth cannot load; the message starts with its path."""


_fluidsynth = None
_write_float = None
_log_callback = None


def _fluidsynth_module():
    """Import pyfluidsynth once, bind the float writer and route FluidSynth's log to `logging`."""
    global _fluidsynth, _write_float, _log_callback
    if _fluidsynth is not None:
        return _fluidsynth
    try:
        import fluidsynth  # pyfluidsynth
    except ImportError as exc:  # the module, or libfluidsynth it loads with ctypes
        raise DependencyError(
            f"FluidSynth is not available ({exc}): install libfluidsynth3 (apt) and pyfluidsynth (pip)"
        ) from None
    library = getattr(fluidsynth, "_fl", None)
    if library is None or not hasattr(library, "fluid_synth_write_float"):
        raise DependencyError("pyfluidsynth does not expose libfluidsynth's fluid_synth_write_float")
    write = library.fluid_synth_write_float
    write.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                      ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    write.restype = ctypes.c_int
    if hasattr(library, "fluid_set_log_function"):
        # FluidSynth prints its errors on stderr by itself; send them to logging instead.
        callback_type = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)

        def forward(level: int, message: bytes, _data) -> None:
            text = message.decode("utf-8", "replace") if message else ""
            # DEBUG: the errors that matter come back as our own one-line exceptions.
            log.debug("fluidsynth (level %d): %s", level, text)

        _log_callback = callback_type(forward)
        library.fluid_set_log_function.argtypes = [ctypes.c_int, callback_type, ctypes.c_void_p]
        for level in range(5):  # PANIC, ERR, WARN, INFO, DBG
            library.fluid_set_log_function(level, _log_callback, None)
    _fluidsynth, _write_float = fluidsynth, write
    return fluidsynth


_SHA_CACHE: Dict[Tuple[str, int, int], str] = {}


def soundfont_sha256(path: Path) -> str:
    """sha256 of a soundfont file, cached per process by path, size and mtime."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = file_sha256(path)
    return _SHA_CACHE[key]


def check_soundfont(path: "os.PathLike[str] | str") -> Path:
    """The soundfont path, or SoundfontError when it is missing or not a RIFF sfbk file."""
    path = Path(path)
    if not path.exists():
        hint = " (install the fluid-soundfont-gm package or pass --soundfont)" if path == DEFAULT_SOUNDFONT else ""
        raise SoundfontError(f"{path}: soundfont not found{hint}")
    if not path.is_file():
        raise SoundfontError(f"{path}: not a file")
    try:
        with open(path, "rb") as handle:
            head = handle.read(12)
    except OSError as exc:
        raise SoundfontError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"sfbk":
        raise SoundfontError(f"{path}: not a SoundFont 2 file (no RIFF sfbk header)")
    return path


@dataclass(frozen=True)
class ReverbSettings:
    room: float
    damping: float
    width: float = 0.8
    level: float = 0.9


class FluidRenderer:
    """Renders `Part`s through one soundfont; keeps the soundfont's samples cached."""

    def __init__(self, soundfont: "os.PathLike[str] | str") -> None:
        self.path = check_soundfont(soundfont)
        fluidsynth = _fluidsynth_module()
        self._fluidsynth = fluidsynth
        # Holding one synth with the soundfont loaded pins FluidSynth's sample cache.
        self._holder, sfid = self._new_synth()
        if sfid < 0:
            self._holder.delete()
            raise SoundfontError(f"{self.path}: FluidSynth cannot load this soundfont")
        self._names: Dict[Tuple[int, int], Optional[str]] = {}
        self._holder_sfid = sfid
        melodic = sum(self.preset_name(0, program) is not None for program in range(128))
        drums = any(self.preset_name(128, program) is not None for program in range(128))
        # A recorded drum kit as a soundfont (AVLdrums): one preset, GM drum keys.
        self.kit_only = melodic <= 1 and not drums

    def _new_synth(self, reverb: Optional[ReverbSettings] = None):
        settings = {
            "synth.chorus.active": 0,
            "synth.reverb.active": 1 if reverb is not None else 0,
            "synth.cpu-cores": 1,  # no worker threads: one deterministic render path
            "synth.polyphony": 256,
        }
        synth = self._fluidsynth.Synth(gain=_SYNTH_GAIN, samplerate=float(SAMPLERATE), channels=16, **settings)
        sfid = synth.sfload(str(self.path))
        if reverb is not None:
            synth.set_reverb(roomsize=reverb.room, damping=reverb.damping, width=reverb.width, level=reverb.level)
        return synth, sfid

    def preset_name(self, bank: int, program: int) -> Optional[str]:
        """The soundfont's name for a preset, or None when it has none."""
        key = (bank, program)
        if key not in self._names:
            name = self._holder.sfpreset_name(self._holder_sfid, bank, program)
            self._names[key] = name if name else None
        return self._names[key]

    def resolve_preset(self, bank: int, program: int) -> Tuple[int, int]:
        """The (bank, program) actually used: a preset missing from the soundfont falls back
        to program 0 of its bank (or the first drum kit), as a General MIDI player would."""
        if self.preset_name(bank, program) is not None:
            return bank, program
        if self.preset_name(bank, 0) is not None:
            return bank, 0
        return 0, 0

    def render(self, parts: Sequence[Part], samples: int, reverb: Optional[ReverbSettings]) -> np.ndarray:
        """Render the parts together into float32 `(channels=2, samples)`, exactly `samples` long."""
        synth, sfid = self._new_synth(reverb)
        try:
            if sfid < 0:
                raise SoundfontError(f"{self.path}: FluidSynth cannot load this soundfont")
            events = self._events(synth, sfid, parts, samples)
            out = np.zeros((samples, 2), dtype=np.float32)  # interleaved frames for the C writer
            base = out.ctypes.data
            frame_bytes = out.strides[0]
            position = 0
            index = 0
            while position < samples:
                while index < len(events) and events[index][0] <= position:
                    _, is_on, ch, key, velocity = events[index]
                    if is_on:
                        synth.noteon(ch, key, velocity)
                    else:
                        synth.noteoff(ch, key)
                    index += 1
                stop = samples if index >= len(events) else min(samples, events[index][0])
                stop = min(stop, position + _BLOCK)
                count = stop - position
                pointer = base + position * frame_bytes
                # Left samples at float 0, 2, 4...; right at 1, 3, 5... of the same buffer.
                status = _write_float(synth.synth, count, pointer, 0, 2, pointer, 1, 2)
                if status != 0:
                    raise CorpusError(f"{self.path}: FluidSynth failed to render")
                position = stop
            return np.ascontiguousarray(out.T)
        finally:
            synth.delete()

    def _events(self, synth, sfid: int, parts: Sequence[Part], samples: int) -> List[Tuple[int, int, int, int, int]]:
        """Set up the channels; return (sample, is_note_on, channel, key, velocity) sorted in time."""
        timeline: List[Tuple[int, int, int, int, int]] = []
        channel = 0
        for part in parts:
            if part.bank == 128:
                ch = 9  # General MIDI drum channel
            else:
                ch = channel if channel != 9 else 10
                channel = ch + 1
            bank, program = self.resolve_preset(part.bank, part.program)
            if synth.program_select(ch, sfid, bank, program) != 0:
                raise SoundfontError(f"{self.path}: cannot select bank {bank} program {program}")
            synth.cc(ch, 7, int(part.volume))
            synth.cc(ch, 10, int(part.pan))
            synth.cc(ch, 91, int(part.reverb))
            synth.cc(ch, 93, 0)
            # The same key twice on one channel: the first note ends where the second starts.
            by_key: Dict[int, List[Tuple[int, int, int]]] = {}
            for note in part.notes:
                on = _on_grid(note.start)
                off = _on_grid(note.end)
                if on < samples and off > on:
                    by_key.setdefault(int(note.pitch), []).append((on, off, int(note.velocity)))
            for key, hits in by_key.items():
                hits.sort()
                for i, (on, off, velocity) in enumerate(hits):
                    if i + 1 < len(hits):
                        off = min(off, hits[i + 1][0])
                    if off <= on:
                        continue
                    timeline.append((on, 1, ch, key, velocity))
                    timeline.append((off, 0, ch, key, 0))
        # Note-offs (order 0) before note-ons (order 1) at the same sample.
        timeline.sort()
        return timeline


def _on_grid(seconds: float) -> int:
    """The sample of FluidSynth's block grid nearest to `seconds`."""
    return int(round(seconds * SAMPLERATE / FLUID_BLOCK)) * FLUID_BLOCK


_RENDERERS: Dict[str, FluidRenderer] = {}


def renderer_for(soundfont: "os.PathLike[str] | str") -> FluidRenderer:
    """The process-wide renderer of a soundfont (one per worker process)."""
    key = str(Path(soundfont).resolve())
    if key not in _RENDERERS:
        _RENDERERS[key] = FluidRenderer(soundfont)
    return _RENDERERS[key]
