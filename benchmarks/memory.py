"""Peak memory of `danna-sep separate` against track length, with full-size models.

    python benchmarks/memory.py                        # 1, 5 and 10 minute inputs, paper blend
    python benchmarks/memory.py --minutes 1,10 --json memory.json

Each input length runs in a fresh process (spawned) that builds the paper blend of the
three full-size Danna-Sep architectures (X-UMX, U-Net with attention, Demucs with four
decoders; seeded random weights, saved once as a bundle folder and loaded from it as the
`separate` command does, with its default precision), then separates a generated 16-bit wav of that length
with `Separator.write_stems` (what the `separate` command runs: the input is decoded
block by block onto disk, separated segment by segment into float spools, then each stem
is encoded). The table gives the process's peak resident memory (VmHWM) after loading
the models and at the end, and the ratio of each peak to the shortest input's. The
target of the project: the 10 minute peak at most 1.25 times the 1 minute peak, and
under 3 GB.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import soundfile as sf

try:  # run as a module: python -m benchmarks.memory
    from . import _common as common
except ImportError:  # run as a script: python benchmarks/memory.py
    import _common as common  # type: ignore[no-redef]

SAMPLERATE = common.SAMPLERATE


def write_clip(path: Path, minutes: float, seed: int) -> None:
    """A music-like 16-bit stereo wav of `minutes`, written a minute at a time."""
    with sf.SoundFile(str(path), "w", samplerate=SAMPLERATE, channels=2, subtype="PCM_16") as handle:
        left = minutes * 60.0
        part = 0
        while left > 0:
            seconds = min(60.0, left)
            handle.write(common.make_clip(seconds, SAMPLERATE, seed=seed + part).T.numpy())
            left -= seconds
            part += 1


def save_random_bundle(folder: Path, seed: int) -> Path:
    """The paper blend with seeded random weights, saved as a bundle folder."""
    from danna_sep.bundle import PAPER_BLEND, save_bundle

    bundle = common.random_bundle(PAPER_BLEND, seed=seed)
    return save_bundle(folder, bundle.members, bundle.sources)


def _measure(path: str, out: str, bundle: str, segment: float, threads: Optional[int]) -> Dict[str, Any]:
    """In a fresh process: load the bundle folder, separate `path` into `out`, report memory."""
    import torch

    from danna_sep.separator import OutputOptions, Separator

    if threads:
        torch.set_num_threads(threads)
    started = common.peak_rss_bytes()
    separator = Separator(bundle, device="cpu", segment=segment)
    loaded = common.peak_rss_bytes()
    targets = {name: Path(out) / f"{name}.wav" for name in separator.sources}
    begin = time.perf_counter()
    written = separator.write_stems(path, targets, OutputOptions(force=True))
    took = time.perf_counter() - begin
    return {
        "seconds_of_audio": written.seconds,
        "processing_seconds": took,
        "peak_rss_start": started,
        "peak_rss_after_load": loaded,
        "peak_rss": common.peak_rss_bytes(),
        "threads": torch.get_num_threads(),
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", default="1,5,10", help="comma-separated input lengths (default: 1,5,10)")
    parser.add_argument("--segment", type=float, default=10.0, help="segment seconds (default: the CLI's 10)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="FILE", help="also save the results as JSON")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --json file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        lengths = [float(x) for x in args.minutes.split(",") if x.strip()]
    except ValueError:
        print(f"memory.py: --minutes {args.minutes!r}: expected numbers like 1,5,10", file=sys.stderr)
        return 2
    if not lengths or min(lengths) <= 0:
        print("memory.py: --minutes needs positive lengths", file=sys.stderr)
        return 2
    if args.json and Path(args.json).exists() and not args.force:
        print(f"memory.py: {args.json}: already exists (use --force)", file=sys.stderr)
        return 2

    info = common.machine_info(args.threads)
    print(f"Machine: {common.machine_line(info)}", flush=True)
    results: List[Dict[str, Any]] = []
    context = get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="danna-sep-memory-") as scratch:
        # Loaded from a folder, as `danna-sep separate --bundle` does (the separator then
        # owns the models and may convert them to bfloat16 in place).
        bundle = save_random_bundle(Path(scratch) / "bundle", args.seed)
        for minutes in lengths:
            clip = Path(scratch) / f"clip-{minutes:g}min.wav"
            write_clip(clip, minutes, args.seed)
            with context.Pool(1) as pool:
                result = pool.apply(_measure, (str(clip), str(Path(scratch) / f"out-{minutes:g}"),
                                               str(bundle), args.segment, args.threads))
            result["minutes"] = minutes
            results.append(result)
            clip.unlink()
            print(f"  {minutes:g} min: peak {result['peak_rss'] / 2**20:.0f} MiB "
                  f"in {result['processing_seconds']:.0f} s", file=sys.stderr, flush=True)

    base = results[0]["peak_rss"]
    rows = []
    for r in results:
        rows.append([
            f"{r['minutes']:g} min",
            f"{r['peak_rss_after_load'] / 2**20:,.0f}",
            f"{r['peak_rss'] / 2**20:,.0f}",
            f"{r['peak_rss'] / base:.3f}",
            f"{r['processing_seconds']:.0f}",
            f"{r['processing_seconds'] / r['seconds_of_audio']:.2f}",
        ])
    print()
    print(f"Paper blend, full-size random-weight models, segment {args.segment:g} s, CPU, "
          f"{results[0]['threads']} torch threads")
    print(common.markdown_table(
        ["input", "peak RSS after loading (MiB)", "peak RSS (MiB)", "ratio to first", "seconds", "RTF"],
        rows, align="lrrrrr"))
    longest = results[-1]
    ok = longest["peak_rss"] <= 1.25 * base and longest["peak_rss"] < 3 * 10**9
    print(f"\n{longest['minutes']:g} min peak is {longest['peak_rss'] / base:.3f}x the {results[0]['minutes']:g} min peak "
          f"and {longest['peak_rss'] / 1e9:.2f} GB: target (<= 1.25x, < 3 GB) {'met' if ok else 'NOT met'}")
    if args.json:
        common.write_json(args.json, {"machine": info, "segment": args.segment, "results": results}, force=args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
