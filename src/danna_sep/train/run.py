"""A training run's folder: what it holds, how a run starts or resumes in it, its logs and
its checkpoints.

```
RUN_DIR/config.json            the resolved config (every default filled in)
RUN_DIR/losses.jsonl           one line per optimiser step: step, epoch, loss (+ parts), lr
RUN_DIR/metrics.jsonl          one line per epoch: training loss, validation SDR per source
RUN_DIR/tensorboard/           TensorBoard event files
RUN_DIR/checkpoints/last.pt    the full state, for --resume
RUN_DIR/checkpoints/best-epochNNNN.pt, best.json   the best `keep_best` epochs by validation SDR
RUN_DIR/ranks.json             under DDP: every process's weight digest at the end
RUN_DIR/summary.json           when a run returns: steps, epochs, "finished" (every epoch ran),
                               last validation, best checkpoint (removed when it resumes)
```

Only the main process writes; every file is written whole or not at all (danna_sep.atomic).
A resumed run drops the log lines a killed run wrote after its last checkpoint, so that the
logs read as if it had never stopped.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional

from .. import atomic, schema
from ..distributed import Distributed, barrier
from ..errors import DannaSepError
from .checkpoint import CheckpointFileError, load_checkpoint, read_best_index, save_checkpoint
from .config import Config, ConfigError, config_from_dict, config_to_dict, differences

log = logging.getLogger(__name__)

# Keys a resumed run may change: where the data is, how long to go on, how often to save.
RESUMABLE_CHANGES = {"data.root", "train.epochs", "train.max_steps", "train.num_workers",
                     "train.checkpoint_every_steps", "train.keep_best"}


class TrainError(DannaSepError):
    """A run that cannot start or continue; the message starts with the path concerned."""


class RunPaths:
    """Where a run keeps each of its files (see the module docstring)."""

    def __init__(self, root: Path):
        self.root = root
        self.config = root / "config.json"
        self.checkpoints = root / "checkpoints"
        self.last = self.checkpoints / "last.pt"
        self.best_index = self.checkpoints / "best.json"
        self.losses = root / "losses.jsonl"
        self.metrics = root / "metrics.jsonl"
        self.tensorboard = root / "tensorboard"
        self.ranks = root / "ranks.json"
        self.summary = root / "summary.json"


class RunFolder:
    """The files of one run, written by the main process of `place` only."""

    def __init__(self, root: str | Path, place: Distributed = Distributed()):
        self.paths = RunPaths(Path(root))
        self.place = place
        self.writer: Any = None  # TensorBoard's SummaryWriter, once `open_logs` ran
        self.best: List[Dict[str, Any]] = []  # best.json: {"file", "epoch", "step", "valid_sdr"}, best first

    # --- starting -----------------------------------------------------------------------

    def prepare(self, config: Config, source: str, resume: bool = False, force: bool = False) -> None:
        """Make the folder ready for `config` (read from `source`): a new run refuses a folder
        that holds one unless `force` (then clears it); a resumed one needs `last.pt` and a
        config that differs from the run's own in `RESUMABLE_CHANGES` only. Writes config.json."""
        p = self.paths
        if resume:
            if not p.last.is_file():
                raise TrainError(f"{p.root}: no checkpoint to resume from ({p.last} missing)")
            if self.place.main:
                atomic.remove_stale_temporaries(p.checkpoints)
                atomic.remove_stale_temporaries(p.root)
            if p.config.is_file():
                saved = config_from_dict(schema.read_json(p.config, TrainError, "run config"), str(p.config))
                changed = [k for k in differences(saved, config) if k not in RESUMABLE_CHANGES]
                if changed:
                    raise ConfigError(f"{source}: differs from the run's {p.config} in {', '.join(changed)}; "
                                      f"resume with the run's own config")
            if self.place.main:  # a resume that goes ahead: written again when this run returns
                p.summary.unlink(missing_ok=True)
        else:
            occupied = p.last.is_file() or p.config.is_file() or p.losses.is_file()
            if occupied and not force:
                raise TrainError(f"{p.root}: holds a run already (use --resume to continue it, "
                                 f"or --force to start over)")
            barrier(self.place)  # every process has looked before the main one changes anything
            if occupied and self.place.main:
                for path in (p.checkpoints, p.tensorboard):
                    shutil.rmtree(path, ignore_errors=True)
                for path in (p.losses, p.metrics, p.config, p.ranks, p.summary):
                    path.unlink(missing_ok=True)
        if self.place.main:
            p.checkpoints.mkdir(parents=True, exist_ok=True)
            atomic.write_text(p.config, json.dumps(config_to_dict(config), indent=2) + "\n")
        barrier(self.place)

    def open_logs(self, step: int, resume: bool) -> None:
        """Start the TensorBoard writer; on resume, first drop what was logged after `step`."""
        if not self.place.main:
            return
        if resume:
            for path in (self.paths.losses, self.paths.metrics):
                _truncate_jsonl(path, step)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:  # tensorboard is in the `train` extra
            raise TrainError(f"{self.paths.tensorboard}: TensorBoard logging needs the tensorboard "
                             f"package (pip install 'danna-sep[train]'): {exc}") from None
        self.writer = SummaryWriter(log_dir=str(self.paths.tensorboard), purge_step=step if resume else None)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    # --- logs ---------------------------------------------------------------------------

    def log(self, record: Dict[str, Any], scalars: Mapping[str, float], step: int, epoch_end: bool) -> None:
        """One line in losses.jsonl (a step) or metrics.jsonl (`epoch_end`), and its scalars
        in TensorBoard."""
        if not self.place.main:
            return
        _append_jsonl(self.paths.metrics if epoch_end else self.paths.losses, record)
        if self.writer is not None:
            for key, value in scalars.items():
                self.writer.add_scalar(key, value, step)
            if epoch_end:
                self.writer.flush()

    def write_json(self, path: Path, value: Any) -> None:
        if self.place.main:
            atomic.write_text(path, json.dumps(value, indent=2) + "\n")

    # --- checkpoints --------------------------------------------------------------------

    def save_last(self, state: Dict[str, Any]) -> None:
        """`state` (a training-state checkpoint, see checkpoint.py) as last.pt, with the best-k table."""
        if self.place.main:
            save_checkpoint({**state, "best": list(self.best)}, self.paths.last)

    def load_last(self) -> Dict[str, Any]:
        """last.pt, read back (its best-k table becomes this folder's)."""
        try:
            state = load_checkpoint(self.paths.last)
        except CheckpointFileError as exc:
            raise TrainError(str(exc)) from None
        self.best = [dict(e) for e in state.get("best", [])]
        return state

    def keep_if_best(self, epoch: int, step: int, score: float, keep: int,
                     weights: Callable[[], Dict[str, Any]]) -> None:
        """Save `weights()` (a weights checkpoint) as best-epochNNNN.pt if `score` ranks among
        the `keep` best validation SDRs, and drop what falls out of the table."""
        if keep == 0 or not self.place.main or not math.isfinite(score):
            return
        if len(self.best) >= keep and score <= min(e["valid_sdr"] for e in self.best):
            return
        name = f"best-epoch{epoch:04d}.pt"
        save_checkpoint(weights(), self.paths.checkpoints / name)
        self.best = [e for e in self.best if e["file"] != name]
        self.best.append({"file": name, "epoch": epoch, "step": step, "valid_sdr": score})
        self.best.sort(key=lambda e: -e["valid_sdr"])
        for dropped in self.best[keep:]:
            (self.paths.checkpoints / dropped["file"]).unlink(missing_ok=True)
        self.best = self.best[:keep]
        self.write_json(self.paths.best_index, self.best)

    def best_checkpoint(self) -> Optional[Path]:
        """The best checkpoint by validation SDR, if any was kept."""
        index = read_best_index(self.paths.best_index)
        return self.paths.checkpoints / index[0]["file"] if index else None


# --- JSON lines ------------------------------------------------------------------------

def _append_jsonl(path: Path, record: Dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def _truncate_jsonl(path: Path, last_step: int) -> None:
    """Keep the records up to `last_step` (and drop a torn last line), atomically."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("step", 0) <= last_step:
            kept.append(line)
    atomic.write_text(path, "".join(k + "\n" for k in kept))
