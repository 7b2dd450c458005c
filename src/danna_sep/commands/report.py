"""What became of each input of `danna-sep separate`: a line on stderr, a JSON object on
stdout with --json, a line in the --manifest, and the closing summary with the exit code."""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from ..hashing import file_sha256
from ..manifest import Manifest, TrackRecord, track_key
from .batch import Share

log = logging.getLogger(__name__)


@dataclass
class TrackResult:
    """What became of one input: done, skipped (every stem already there, or the manifest
    records it done) or failed."""

    input: Path
    status: str
    outputs: Dict[str, Path] = field(default_factory=dict)
    error: Optional[str] = None
    audio_seconds: Optional[float] = None
    compute_seconds: Optional[float] = None
    scale: float = 1.0
    recorded: bool = False
    """The manifest holds this outcome already: no new line for it."""
    sha256: Dict[str, str] = field(default_factory=dict)
    """stem -> sha256 of the file written, where already known."""

    @property
    def real_time_factor(self) -> Optional[float]:
        """Compute time over audio time: below 1 is faster than real time."""
        if not self.audio_seconds or self.compute_seconds is None:
            return None
        return self.compute_seconds / self.audio_seconds


def speed(audio: float, compute: float) -> str:
    """'20.0 s of audio in 3.1 s: real-time factor 0.16, 6.4x faster than real time'."""
    rtf = compute / audio if audio else float("inf")
    pace = f"{1 / rtf:.1f}x faster than real time" if rtf < 1 else f"{rtf:.1f}x slower than real time"
    return f"{audio:.1f} s of audio in {compute:.1f} s: real-time factor {rtf:.2f}, {pace}"


def manifest_record(result: TrackResult, rank: int) -> TrackRecord:
    """The manifest line of a result (hashing the stem files whose hash is not known yet)."""
    outputs = {stem: str(Path(p).absolute()) for stem, p in result.outputs.items()}
    hashes: Dict[str, str] = {}
    if result.status != "failed":
        hashes = {stem: result.sha256.get(stem) or file_sha256(p) for stem, p in outputs.items()}
    return TrackRecord(input=track_key(result.input), status=result.status, outputs=outputs, sha256=hashes,
                       seconds=None if result.compute_seconds is None else round(result.compute_seconds, 3),
                       rank=rank, error=result.error)


class Report:
    """Says what became of each input, counts the outcomes for the exit code, and writes
    each outcome to the manifest as it comes."""

    def __init__(self, args: argparse.Namespace, share: Share = Share(), manifest: Optional[Manifest] = None):
        self.json = args.json
        self.results: List[TrackResult] = []
        self.separator = None
        self.share = share
        self.manifest = manifest

    def __call__(self, result: TrackResult) -> None:
        self.results.append(result)
        if result.status == "failed":
            message = result.error or ""
            log.error("%s", message if str(result.input) in message else f"{result.input}: {message}")
        elif result.status == "skipped":
            why = "the manifest records it done" if result.recorded else "its stems are there already (--skip-existing)"
            log.info("%s: skipped, %s", result.input, why)
        else:
            folder = next(iter(result.outputs.values())).parent
            note = f", scaled by {result.scale:.3f} to avoid clipping" if result.scale != 1.0 else ""
            log.info("%s -> %s/ (%d stems, %s%s)", result.input.name, folder, len(result.outputs),
                     speed(result.audio_seconds or 0.0, result.compute_seconds or 0.0), note)
        if self.manifest is not None and not result.recorded:
            self.manifest.append(manifest_record(result, self.share.index))
        if self.json:
            print(json.dumps(self._record(result)), flush=True)

    def _record(self, result: TrackResult) -> dict:
        separator = self.separator
        rtf = result.real_time_factor
        record = {
            "input": str(result.input),
            "status": result.status,
            "outputs": {stem: str(path) for stem, path in result.outputs.items()},
            "error": result.error,
            "audio_seconds": result.audio_seconds,
            "compute_seconds": None if result.compute_seconds is None else round(result.compute_seconds, 3),
            "real_time_factor": None if rtf is None else round(rtf, 4),
            "device": None if separator is None else str(separator.device),
            "precision": None if separator is None else separator.options.precision,
            "bundle": None if separator is None else separator.bundle.origin,
            "models": None if separator is None else [m.name for m in separator.bundle.members],
        }
        if self.share.count > 1:
            record["rank"] = self.share.index
        return record

    def outcomes(self) -> List[tuple]:
        """(status, audio seconds, compute seconds) of each input: what the summary needs."""
        return [(r.status, r.audio_seconds, r.compute_seconds) for r in self.results]

    def finish(self, gathered: Optional[List[List[tuple]]] = None) -> int:
        """The closing summary line (several inputs), and the exit code: 1 if any failed.

        `gathered`: every process's `outcomes()`, at the first of several processes, for
        one summary over the whole batch; the others say nothing and return their own code."""
        own = self.outcomes()
        if gathered is None:
            outcomes = own
        else:
            outcomes = [outcome for part in gathered for outcome in part]
        count = {status: sum(o[0] == status for o in outcomes) for status in ("done", "skipped", "failed")}
        if len(outcomes) > 1 and self.share.first:
            done = [o for o in outcomes if o[0] == "done"]
            audio = sum(o[1] or 0.0 for o in done)
            pace = f" ({speed(audio, sum(o[2] or 0.0 for o in done))})" if done else ""
            processes = f" in {self.share.count} processes" if gathered is not None and len(gathered) > 1 else ""
            log.info("%d inputs%s: %d done, %d skipped, %d failed%s", len(outcomes), processes, count["done"],
                     count["skipped"], count["failed"], pace)
        return 1 if count["failed"] else 0
