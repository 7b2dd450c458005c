"""Progress callbacks. Library code says how far it has got; only the command line draws
bars (danna_sep.commands.bars), so that a program using the library chooses what to show.
"""

from __future__ import annotations

from typing import Callable

TaskProgressFn = Callable[[str, float, float, str], None]
"""`progress(task, done, total, note)`: `task` names the work under way ("epoch 3/10",
"validation", "input statistics", "fitting the blend", "corpus"), `done` of `total` units of
it are finished (`done == total` ends it), `note` is a short status such as the loss ("" for
none). Called at least once as a task starts and once as it ends."""
