"""Separation quality of each member of a bundle, and of its blend, under the engine's pipelines.

    python benchmarks/pipelines.py --data /path/to/split --as-is --tracks 8

Pipelines compared (issue 17):

- streamed: the default, overlapping 10 s segments, the Wiener filter's statistics taken
  per window of 300 frames;
- streamed, track statistics: the same segments, the Wiener filter's spatial covariances
  gathered over the whole track by a first pass of the spectrogram models (memory still
  bounded by the segment, twice their compute); Demucs is unchanged by it;
- original: the original Danna-Sep tool's whole-track separation (`--pipeline original`).

The test split and the score are those of benchmarks/quality.py (MDX SDR of each whole
track, averaged over tracks; "mean" averages the four sources). The blend rows are the
weighted sums of the members' rows: every weight on every bin (`--blend-bins all`, the
original's blend), so that the three pipelines are compared alike.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Dict, Optional, Sequence

try:  # run as a module: python -m benchmarks.pipelines
    from . import _common as common
    from .quality import DEFAULT_DATA, BlendFromMembers, bundle_and_split, markdown, members_alone, score
except ImportError:  # run as a script: python benchmarks/pipelines.py
    import _common as common  # type: ignore[no-redef]
    from quality import (DEFAULT_DATA, BlendFromMembers, bundle_and_split,  # type: ignore[no-redef]
                         markdown, members_alone, score)

from danna_sep.bundle import Bundle, BundleError

PIPELINES = {
    "streamed": dict(pipeline="streamed", wiener_statistics="window"),
    "streamed, track statistics": dict(pipeline="streamed", wiener_statistics="track"),
    "original": dict(pipeline="original"),
}


def pipeline_rows(bundle: Bundle, tracks: Sequence, precision: str = "float32") -> Dict[str, Dict[str, float]]:
    """One row per (member or blend, pipeline)."""
    from danna_sep.evaluate import separator_estimator
    from danna_sep.separator import Separator

    rows: Dict[str, Dict[str, float]] = {}
    for label, options in PIPELINES.items():
        blend = BlendFromMembers(bundle)
        for index, alone in enumerate(members_alone(bundle)):
            name = f"{alone.members[0].name}, {label}"
            separator = Separator(alone, device="cpu", precision=precision, **options)
            rows[name] = score(name, blend.wrap(index, separator_estimator(separator)), tracks)
        rows[f"blend, {label}"] = score(f"blend, {label}", blend.estimator(), tracks)
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default="default", help="bundle folder or shipped bundle name (default: default)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help=f"where the test split is (generated if missing; default: {DEFAULT_DATA})")
    parser.add_argument("--as-is", action="store_true", help="score the test/ tracks already in --data")
    parser.add_argument("--tracks", type=int, default=8, help="tracks scored (default: 8)")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of generated tracks (default: 30)")
    parser.add_argument("--seed", type=int, default=1, help="corpus seed of a generated split (default: 1)")
    parser.add_argument("--precision", choices=["auto", "float32", "bfloat16"], default="float32")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")

    import torch

    from danna_sep.data import DataError
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        bundle, tracks = bundle_and_split(args, 2)
    except (BundleError, DataError, common.BenchmarkError) as exc:
        print(f"pipelines: {exc}", file=sys.stderr)
        return 1
    info = common.machine_info(threads=torch.get_num_threads())
    started = time.monotonic()
    rows = pipeline_rows(bundle, tracks, args.precision)
    print(f"# Separation quality by pipeline: {bundle.describe()}")
    print(f"{len(tracks)} tracks ({args.data}); networks in {args.precision}; MDX SDR in dB, mean over tracks; "
          f"{time.monotonic() - started:.0f} s on {common.machine_line(info)}")
    print()
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
