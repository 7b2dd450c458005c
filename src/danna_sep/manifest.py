"""A batch's record of what it finished: one JSON line per track, appended as each completes.

`danna-sep separate --manifest FILE.jsonl` appends a line per track that was separated,
skipped or failed: the input, the stem files with the sha256 of each, the seconds it took,
the rank that did it and the error if any. A rerun with the same manifest skips each track
whose latest line says it is done and whose stem files still hash to what the line says,
and does the rest.

Lines are appended under an exclusive `flock` with one `write` each and an fsync, so any
number of processes (torchrun ranks, `--shard` jobs, on one machine or on a shared file
system that honours locks) can share a manifest. A line cut short by a killed process is
skipped when read. A track's line is written once its stems are complete and before they
take their names, so a kill at any moment leaves either no line for the track (and only
temporary files, which the next run removes) or a line whose stems are all there or are
redone.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Union

from .errors import UsageError
from .hashing import file_sha256

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
STATUSES = ("done", "skipped", "failed")


def track_key(path: PathLike) -> str:
    """How a manifest names an input: its absolute path, symlinks resolved, so that a rerun
    from another working folder finds it."""
    return str(Path(path).resolve())


@dataclass
class TrackRecord:
    """One line of a manifest."""

    input: str
    status: str
    outputs: Dict[str, str] = field(default_factory=dict)
    """stem -> absolute path of its file"""
    sha256: Dict[str, str] = field(default_factory=dict)
    """stem -> sha256 of its file"""
    seconds: Optional[float] = None
    rank: int = 0
    error: Optional[str] = None
    host: str = field(default_factory=socket.gethostname)
    finished: float = field(default_factory=time.time)
    """Unix time at which the line was written."""

    def to_json(self) -> str:
        return json.dumps({"input": self.input, "status": self.status, "outputs": self.outputs,
                           "sha256": self.sha256, "seconds": self.seconds, "rank": self.rank,
                           "error": self.error, "host": self.host, "finished": self.finished},
                          ensure_ascii=False, sort_keys=False)

    @classmethod
    def from_line(cls, line: str) -> Optional["TrackRecord"]:
        """The record a line holds, or None where it is no record (cut short, say)."""
        try:
            data = json.loads(line)
        except ValueError:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("input"), str) or data.get("status") not in STATUSES:
            return None
        outputs, hashes = data.get("outputs") or {}, data.get("sha256") or {}
        if not isinstance(outputs, dict) or not isinstance(hashes, dict):
            return None
        return cls(input=data["input"], status=data["status"], outputs={str(k): str(v) for k, v in outputs.items()},
                   sha256={str(k): str(v) for k, v in hashes.items()}, seconds=data.get("seconds"),
                   rank=int(data.get("rank") or 0), error=data.get("error"), host=str(data.get("host") or ""),
                   finished=float(data.get("finished") or 0.0))


class Manifest:
    """A JSONL manifest file, read once when opened and appended to as tracks finish."""

    def __init__(self, path: PathLike):
        self.path = Path(path)
        self.latest: Dict[str, TrackRecord] = {}
        """input key -> its latest record"""
        for record in self._read():
            self.latest[record.input] = record

    def _read(self) -> Iterator[TrackRecord]:
        if not self.path.exists():
            return
        if self.path.is_dir():
            raise UsageError(f"--manifest {self.path}: is a folder, not a file")
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"--manifest {self.path}: cannot be read ({exc.__class__.__name__}: {exc})") from None
        lines = [line for line in text.splitlines() if line.strip()]
        records = [TrackRecord.from_line(line) for line in lines]
        if lines and not any(records):
            # Not a file of ours: refuse before appending to, say, a song or a script.
            raise UsageError(f"--manifest {self.path}: is not a danna-sep manifest (no line is a track record)")
        skipped = sum(record is None for record in records)
        if skipped:
            log.warning("%s: %d line(s) that are not track records were ignored (a process killed "
                        "while writing leaves one)", self.path, skipped)
        yield from (record for record in records if record is not None)

    def is_done(self, path: PathLike, outputs: Mapping[str, PathLike]) -> bool:
        """True when the latest record of `path` says done or skipped, for exactly these
        output files, and every one of them still has the sha256 recorded."""
        record = self.latest.get(track_key(path))
        if record is None or record.status == "failed":
            return False
        wanted = {stem: str(Path(p).absolute()) for stem, p in outputs.items()}
        if record.outputs != wanted or set(record.sha256) != set(wanted):
            return False
        for stem, target in wanted.items():
            try:
                if file_sha256(target) != record.sha256[stem]:
                    log.info("%s: %s changed since the manifest recorded it; separating again", path, target)
                    return False
            except OSError:
                return False
        return True

    def recorded_outputs(self, path: PathLike) -> List[Path]:
        """The files the latest record of `path` lists: files this batch wrote, which a
        redo of the track may replace."""
        record = self.latest.get(track_key(path))
        return [] if record is None else [Path(p) for p in record.outputs.values()]

    def append(self, record: TrackRecord) -> None:
        """Add one line, atomically with respect to every other process appending."""
        line = record.to_json() + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            try:
                size = os.fstat(descriptor).st_size
                if size:
                    # A line cut short by a killed process gets its end, so that ours stays whole.
                    with open(self.path, "rb") as reader:
                        reader.seek(size - 1)
                        if reader.read(1) != b"\n":
                            line = "\n" + line
                data = memoryview(line.encode("utf-8"))
                while data:  # one write in practice; a short one (a signal) goes on where it stopped
                    data = data[os.write(descriptor, data):]
                os.fsync(descriptor)
            finally:
                fcntl.flock(descriptor, fcntl.LOCK_UN)
        finally:
            os.close(descriptor)
        self.latest[record.input] = record
