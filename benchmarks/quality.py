"""Separation quality of a bundle on a generated test split: each member, the blend, and
the oracle bounds beside them.

    python benchmarks/quality.py                        # the shipped default bundle
    python benchmarks/quality.py --bundle my-bundle --tracks 24 --json quality.json

The test split is made by danna-sep's own corpus generator with a seed the default
bundle's training never saw (`--seed`, default 1; the training corpus uses seed 0): every
track of it lands in `DATA/test/`. It is generated on the first run (about 3 s of CPU per
30 s track) and reused after.

Rows, all through the code a user runs (`Separator` with its defaults: segment 10 s,
overlap 0.25, one Wiener iteration):

- each member alone: a one-model bundle with weight 1 on every source;
- the blend: the bundle as it ships, with its blend table (summed from the members'
  estimates: the same signal as `Separator` on the bundle, see `BlendFromMembers`);
- IRM2 (oracle ratio-of-powers mask from the true stems): a ceiling for mask models;
- the mixture as every source's estimate: the floor.

The score is the Music Demixing Challenge SDR of each whole track, averaged over tracks,
per source; "mean" averages the four sources.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

try:  # run as a module: python -m benchmarks.quality
    from . import _common as common
except ImportError:  # run as a script: python benchmarks/quality.py
    import _common as common  # type: ignore[no-redef]

from danna_sep.bundle import Bundle, BundleError, Member
from danna_sep.models import SOURCES

log = logging.getLogger("benchmarks.quality")

DEFAULT_DATA = Path(__file__).resolve().parent / "data" / "quality-seed1"


def ensure_split(root: Path, tracks: int, seconds: float, seed: int, workers: int) -> List:
    """The generated test split under `root` (made or completed first), as tracks."""
    from danna_sep.data import find_tracks
    from danna_sep.data.corpus import generate_corpus

    report = generate_corpus(root, tracks, seconds, seed, workers=workers, test_fraction=1.0,
                             show_progress=True)
    if report.failed:
        raise common.BenchmarkError(f"{root}: {len(report.failed)} tracks could not be generated")
    return find_tracks(root, subset="test")[:tracks]


def members_alone(bundle: Bundle) -> List[Bundle]:
    """One one-model bundle per member, weight 1 on every source."""
    return [Bundle([Member(m.name, m.model, {s: 1.0 for s in bundle.sources}, m.kwargs)], list(bundle.sources),
                   origin=m.name) for m in bundle.members]


class BlendFromMembers:
    """The blend's estimate of each track, summed from its members' as they are scored.

    `Separator`'s blend is a weighted sum of the members' chunks, overlap-added; both steps
    are linear, so the weighted sum of the members' whole-track estimates is the same
    signal (tests/test_benchmarks.py checks it against `Separator` on the bundle) at the
    cost of no extra separation.
    """

    def __init__(self, bundle: Bundle):
        self.bundle = bundle
        self.sums: Dict[str, object] = {}

    def wrap(self, index: int, estimator):
        weights = [self.bundle.members[index].blend.get(s, 0.0) for s in self.bundle.sources]

        def estimate(stems, samplerate: int):
            import torch

            out = estimator(stems, samplerate)
            key = _track_key(stems)
            share = out * torch.tensor(weights, dtype=out.dtype)[:, None, None]
            self.sums[key] = share if key not in self.sums else self.sums[key] + share
            return out

        return estimate

    def estimator(self):
        def estimate(stems, samplerate: int):
            return self.sums.pop(_track_key(stems))

        return estimate


def _track_key(stems) -> int:
    """Tracks are told apart by their mixture's samples (estimators only see the stems)."""
    import hashlib

    return int.from_bytes(hashlib.sha1(stems["mixture"].numpy().tobytes()).digest()[:8], "little")


def score(name: str, estimator, tracks: Sequence) -> Dict[str, float]:
    from danna_sep.evaluate import evaluate_tracks

    report = evaluate_tracks(tracks, estimator, metric="sdr",
                             progress=lambda done, total: print(f"\r  {name}: {done}/{total} tracks", end="",
                                                                file=sys.stderr, flush=True))
    print(file=sys.stderr)
    summary = report.summary()
    return {group: summary[group]["SDR"] for group in (*SOURCES, "mean")}


def quality_rows(bundle: Bundle, tracks: Sequence, precision: str = "float32") -> Dict[str, Dict[str, float]]:
    """The table: each member, the blend, the IRM2 ceiling and the mixture floor."""
    from danna_sep.evaluate import oracle_estimator, separator_estimator
    from danna_sep.separator import Separator

    rows: Dict[str, Dict[str, float]] = {}
    blend = BlendFromMembers(bundle)
    for index, alone in enumerate(members_alone(bundle)):
        estimator = blend.wrap(index, separator_estimator(Separator(alone, device="cpu", precision=precision)))
        rows[alone.members[0].name] = score(alone.members[0].name, estimator, tracks)
    rows["blend"] = score("blend", blend.estimator(), tracks)
    rows["oracle IRM2 (ceiling)"] = score("oracle IRM2", oracle_estimator("irm2"), tracks)
    rows["mixture (floor)"] = score("mixture", oracle_estimator("mixture"), tracks)
    return rows


def markdown(rows: Dict[str, Dict[str, float]]) -> str:
    header = ["system", *SOURCES, "mean"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, scores in rows.items():
        lines.append("| " + " | ".join([name] + [f"{scores[k]:.2f}" for k in (*SOURCES, "mean")]) + " |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default="default", help="bundle folder or shipped bundle name (default: default)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help=f"where the test split is (generated if missing; default: {DEFAULT_DATA})")
    parser.add_argument("--tracks", type=int, default=24, help="tracks in the test split (default: 24)")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each track (default: 30)")
    parser.add_argument("--seed", type=int, default=1, help="corpus seed of the test split (default: 1)")
    parser.add_argument("--workers", type=int, default=2, help="processes generating the split (default: 2)")
    parser.add_argument("--precision", choices=["auto", "float32", "bfloat16"], default="float32",
                        help="the networks' arithmetic (default: float32, the same on every machine)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--json", type=Path, default=None, help="also write the table as JSON here")
    parser.add_argument("--force", action="store_true", help="replace the --json file if it exists")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")

    import torch

    from danna_sep.data import DataError
    from danna_sep.separator import resolve_bundle

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.json is not None and args.json.exists() and not args.force:
        print(f"quality: {args.json}: already exists (use --force to overwrite)", file=sys.stderr)
        return 1
    try:
        bundle = resolve_bundle(args.bundle)
        tracks = ensure_split(args.data, args.tracks, args.seconds, args.seed, args.workers)
    except (BundleError, DataError, common.BenchmarkError) as exc:
        print(f"quality: {exc}", file=sys.stderr)
        return 1
    info = common.machine_info(threads=torch.get_num_threads())
    started = time.monotonic()
    rows = quality_rows(bundle, tracks, args.precision)
    print(f"# Separation quality: {bundle.describe()}")
    print(f"Test split: {len(tracks)} generated tracks of {args.seconds:g} s, corpus seed {args.seed} "
          f"({args.data}); networks in {args.precision}; MDX SDR in dB, mean over tracks; "
          f"{time.monotonic() - started:.0f} s on "
          f"{common.machine_line(info)}")
    print()
    print(markdown(rows))
    if args.json is not None:
        common.write_json(args.json, {"machine": info, "bundle": bundle.describe(), "tracks": [t.name for t in tracks],
                                      "seed": args.seed, "seconds": args.seconds, "precision": args.precision,
                                      "sdr": rows}, force=args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
