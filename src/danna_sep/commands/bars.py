"""Progress bars on stderr for the library's `TaskProgressFn` callbacks, and the bar of
one track that `separate` draws (tqdm lives in the commands, never in library code)."""

from __future__ import annotations

import sys
import time
from typing import Any, Dict, Optional


class TaskBars:
    """A `danna_sep.progress.TaskProgressFn` that draws one tqdm bar per task, opened on
    its first report and closed when `done` reaches `total`; `units` maps the start of a
    task's name to the unit its bar counts in."""

    def __init__(self, units: Optional[Dict[str, str]] = None, position: int = 0):
        self.units = units or {}
        self.position = position
        self.bars: Dict[str, Any] = {}

    def __call__(self, task: str, done: float, total: float, note: str = "") -> None:
        from tqdm import tqdm

        bar = self.bars.get(task)
        if bar is None:
            unit = next((u for start, u in self.units.items() if task.startswith(start)), "it")
            bar = self.bars[task] = tqdm(total=total, initial=done, desc=task, unit=unit, file=sys.stderr,
                                         leave=False, dynamic_ncols=True, position=self.position)
        bar.total = total
        bar.update(done - bar.n)
        if note:
            bar.set_postfix_str(note, refresh=False)
        if done >= total:
            bar.close()
            del self.bars[task]

    def close(self) -> None:
        """Close the bars of tasks that did not finish (an error, or an early stop)."""
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()


class TrackBar:
    """One progress bar per track on stderr, in seconds of audio: the separation, then the
    encoding, each with its real-time factor (compute time over audio time)."""

    FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} s of audio [{elapsed}<{remaining}{postfix}]"

    def __init__(self, name: str, position: int):
        from tqdm import tqdm

        self.name = name
        self.stage = "separating"
        self.started = self.drawn = time.monotonic()
        self.bar = tqdm(total=0, desc=name, file=sys.stderr, leave=False, position=position,
                        bar_format=self.FORMAT)

    def show(self, stage: str, done: float, total: float) -> None:
        now = time.monotonic()
        if stage != self.stage:  # the same bar, from 0 again, for the encoding
            self.stage, self.started = stage, now
            self.bar.set_description_str(f"{self.name} ({stage})", refresh=False)
            self.bar.set_postfix_str("", refresh=False)
            self.bar.reset(total=total)
        elif stage == "encoding" and now - self.drawn < 0.1 and done < total:
            return  # encoding reports every block: a redraw each tenth of a second is enough
        self.bar.total, self.bar.n = total, done
        if done > 0:
            factor = (now - self.started) / done
            self.bar.set_postfix_str(f"real-time factor {factor:.2f}", refresh=False)
        self.bar.refresh()
        self.drawn = now

    def close(self) -> None:
        self.bar.close()
