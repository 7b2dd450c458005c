"""Throughput of `danna-sep separate` over a batch: tracks per minute with -j against torchrun.

    python benchmarks/batch.py                          # 8 clips of 30 s, the shipped default bundle
    python benchmarks/batch.py --tracks 4 --seconds 10 --bundle my-bundle --json batch.json

Each row runs the command line as a user would, whole processes timed from start to exit
(model loading and interpreter start-up included), over the same generated clips, into a
fresh output folder:

- `-j 1`: one process, one track at a time, torch's threads on every core;
- `-j 2`: one process, two tracks at once sharing the models, the cores split between them;
- `torchrun --nproc_per_node 2`: two processes, each with one thread, sharing the inputs
  (each loads its own copy of the models), rank 0 summing up; with a --manifest as a
  catalog run would have.

It prints a table (wall seconds, tracks per minute, audio minutes per minute) and the
machine it ran on.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List

import soundfile as sf

try:  # run as a module: python -m benchmarks.batch
    from . import _common as common
except ImportError:  # run as a script: python benchmarks/batch.py
    import _common as common  # type: ignore[no-redef]


def make_catalog(folder: Path, tracks: int, seconds: float) -> Path:
    """`tracks` distinct clips as wav files, and a listing of them for --inputs-from."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(tracks):
        path = folder / f"clip-{index:03d}.wav"
        sf.write(path, common.make_clip(seconds, seed=index).numpy().T, common.SAMPLERATE, subtype="PCM_16")
        paths.append(path)
    listing = folder / "catalog.txt"
    listing.write_text("".join(f"{p}\n" for p in paths))
    return listing


def rows(threads: int) -> List[tuple]:
    """(label, command prefix, environment changes) of each configuration."""
    cli = [sys.executable, "-m", "danna_sep.cli"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "danna_sep.cli"]
    return [
        ("-j 1", cli, ["-j", "1"], {"OMP_NUM_THREADS": str(threads)}),
        ("-j 2", cli, ["-j", "2"], {"OMP_NUM_THREADS": str(threads)}),
        ("torchrun --nproc_per_node 2", torchrun, [], {"OMP_NUM_THREADS": str(max(1, threads // 2))}),
    ]


def run_one(prefix: List[str], extra: List[str], env_changes: dict, listing: Path, out: Path, bundle: str,
            manifest: Path) -> float:
    """Seconds from the start of the command to its exit; raises if it failed."""
    env = dict(os.environ, **env_changes)
    command = [*prefix, "separate", "--inputs-from", str(listing), "-o", str(out), "--bundle", bundle,
               "--device", "cpu", "--manifest", str(manifest), "-q", *extra]
    started = time.monotonic()
    finished = subprocess.run(command, env=env, capture_output=True, text=True)
    took = time.monotonic() - started
    if finished.returncode != 0:
        raise common.BenchmarkError(f"{' '.join(command)} failed ({finished.returncode}): "
                                    f"{finished.stderr.strip().splitlines()[-1:]}")
    return took


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default="default", help="bundle folder or shipped name (default: %(default)s)")
    parser.add_argument("--tracks", type=int, default=8, help="clips in the batch (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each clip (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per row, the median kept (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="cores to use in all (default: all, %(default)s)")
    parser.add_argument("--json", metavar="FILE", help="also save the rows as JSON")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --json file")
    args = parser.parse_args(argv)
    if args.tracks < 1 or args.seconds <= 0 or args.repeat < 1:
        parser.error("--tracks, --seconds and --repeat must be positive")
    if args.json and Path(args.json).exists() and not args.force:  # said before minutes of work
        parser.error(f"--json {args.json}: already exists (use --force to overwrite)")

    work = Path(tempfile.mkdtemp(prefix="danna-batch-"))
    try:
        listing = make_catalog(work / "clips", args.tracks, args.seconds)
        table = []
        for label, prefix, extra, env_changes in rows(args.threads):
            times = []
            for attempt in range(args.repeat):
                out, manifest = work / f"out-{len(table)}-{attempt}", work / f"m-{len(table)}-{attempt}.jsonl"
                times.append(run_one(prefix, extra, env_changes, listing, out, args.bundle, manifest))
                shutil.rmtree(out, ignore_errors=True)
            took = sorted(times)[len(times) // 2]
            per_minute = 60 * args.tracks / took
            table.append({"setup": label, "seconds": round(took, 1), "tracks_per_minute": round(per_minute, 2),
                          "audio_minutes_per_minute": round(per_minute * args.seconds / 60, 2)})
            print(f"{label}: {took:.1f} s", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    info = common.machine_info(threads=args.threads)
    print(f"{args.tracks} clips of {args.seconds:g} s, bundle {args.bundle}, whole processes, "
          f"median of {args.repeat}; {common.machine_line(info)}\n")
    print(common.markdown_table(["setup", "wall s", "tracks / min", "audio min / min"],
                                [[r["setup"], f"{r['seconds']:.1f}", f"{r['tracks_per_minute']:.2f}",
                                  f"{r['audio_minutes_per_minute']:.2f}"] for r in table]))
    if args.json:
        common.write_json(args.json, {"machine": info, "tracks": args.tracks, "seconds": args.seconds,
                                      "bundle": args.bundle, "rows": table}, force=args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
