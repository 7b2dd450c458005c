"""Progress bars on stderr for the library's `TaskProgressFn` callbacks (tqdm lives here
and in `separate`, never in library code)."""

from __future__ import annotations

import sys
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
