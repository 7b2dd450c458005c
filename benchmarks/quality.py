"""Separation quality of a bundle on a generated test split: each member, the blend, and
the oracle bounds beside them.

    python benchmarks/quality.py                        # the shipped default bundle
    python benchmarks/quality.py --bundle my-bundle --tracks 24 --json quality.json

The test split is made by danna-sep's own corpus generator with a seed the default
bundle's training never saw (`--seed`, default 1; the training corpus uses seed 0): every
track of it lands in `DATA/test/`. It is generated on the first run (about 3 s of CPU per
30 s track) and reused after.

Rows, all through the code a user runs (`Separator` with its defaults: segment 10 s,
overlap 0.1, one Wiener iteration):

- each member alone: a one-model bundle with weight 1 on every source;
- the blend: the bundle as it ships, with its blend table (summed from the members'
  estimates where that is the same signal as `Separator` on the bundle, see
  `BlendFromMembers`; otherwise, with weights per frequency or one joint Wiener filter,
  separated once more by the bundle's own `Separator`);
- IRM2 (oracle ratio-of-powers mask from the true stems): a ceiling for mask models;
- the mixture as every source's estimate: the floor.

The score is the Music Demixing Challenge SDR of each whole track, averaged over tracks,
per source; "mean" averages the four sources.

A second table scores the same systems on real recordings: the MIR-1K clips of
`shared/realval/` (amateur singing over karaoke accompaniment, mono 16 kHz; `--realval`,
skipped with `--realval none`). Each clip is separated as a user's 16 kHz file would be
(`Separator.separate_tensor` resamples to 44.1 kHz, separates, and resamples the stems
back), the stereo estimates are averaged to mono, and "accompaniment" is the sum of
drums, bass and other; the SDR of each clip is taken at 16 kHz, then averaged over clips.
These clips score; they are never trained on.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

try:  # run as a module: python -m benchmarks.quality
    from . import _common as common
except ImportError:  # run as a script: python benchmarks/quality.py
    import _common as common  # type: ignore[no-redef]

from danna_sep.bundle import Bundle, BundleError, Member
from danna_sep.models import SOURCES

log = logging.getLogger("benchmarks.quality")

DEFAULT_DATA = Path(__file__).resolve().parent / "data" / "quality-seed1"
DEFAULT_REALVAL = Path(__file__).resolve().parents[2] / "shared" / "realval"
REAL_STEMS = ("vocals", "accompaniment")


def ensure_split(root: Path, tracks: int, seconds: float, seed: int, workers: int) -> List:
    """The generated test split under `root` (made or completed first), as tracks."""
    from danna_sep.data import find_tracks
    from danna_sep.data.corpus import generate_corpus

    from danna_sep.commands.bars import TaskBars

    bars = TaskBars({"corpus": "track"})
    try:
        report = generate_corpus(root, tracks, seconds, seed, workers=workers, test_fraction=1.0,
                                 progress=lambda done, total: bars("corpus", done, total, ""))
    finally:
        bars.close()
    if report.failed:
        name, reason = report.failed[0]
        raise common.BenchmarkError(f"{root}: {len(report.failed)} tracks could not be generated (first, {name}: "
                                    f"{reason}); --as-is scores the tracks there as they are")
    return find_tracks(root, subset="test")[:tracks]


def existing_split(root: Path, tracks: int) -> List:
    """The first `tracks` tracks of `root`/test, as they are; BenchmarkError when there are none."""
    from danna_sep.data import find_tracks

    found = find_tracks(root, subset="test")[:tracks]
    if not found:
        raise common.BenchmarkError(f"{root}: no tracks in test/")
    return found


def bundle_and_split(args: argparse.Namespace, workers: int) -> Tuple[Bundle, List]:
    """The bundle and the test split a benchmark's command line names: `args.data` as found
    (`--as-is`) or generated there. Raises BundleError, DataError or BenchmarkError."""
    from danna_sep.separator import resolve_bundle

    bundle = resolve_bundle(args.bundle)
    if args.as_is:
        return bundle, existing_split(args.data, args.tracks)
    return bundle, ensure_split(args.data, args.tracks, args.seconds, args.seed, workers)


def members_alone(bundle: Bundle) -> List[Bundle]:
    """One one-model bundle per member, weight 1 on every source."""
    return [Bundle([Member(m.model, {s: 1.0 for s in bundle.sources})], list(bundle.sources),
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


def summed_blend(bundle: Bundle, wiener_blend: str, blend_bins: str) -> bool:
    """Whether the blend is the weighted sum of its members' stems (so scored from them at no
    cost): each member filtered on its own, and every weight on every frequency (or no
    spectrogram member models fewer frequencies than the others)."""
    if wiener_blend != "members":
        return False
    limits = {getattr(m.model, "output_bins", 0) or None for m in bundle.members if m.model.input_domain != "waveform"}
    return blend_bins == "all" or len(limits) <= 1


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


def quality_rows(bundle: Bundle, tracks: Sequence, precision: str = "float32", overlap: float = 0.1,
                 wiener_blend: str = "members", blend_bins: str = "modelled") -> Dict[str, Dict[str, float]]:
    """The table: each member, the blend, the IRM2 ceiling and the mixture floor."""
    from danna_sep.evaluate import oracle_estimator, separator_estimator
    from danna_sep.separator import Separator

    rows: Dict[str, Dict[str, float]] = {}
    blend = BlendFromMembers(bundle)
    for index, alone in enumerate(members_alone(bundle)):
        separator = Separator(alone, device="cpu", precision=precision, overlap=overlap)
        estimator = blend.wrap(index, separator_estimator(separator))
        rows[alone.members[0].name] = score(alone.members[0].name, estimator, tracks)
    if summed_blend(bundle, wiener_blend, blend_bins):
        rows["blend"] = score("blend", blend.estimator(), tracks)
    else:  # one Wiener filter, or weights per frequency: not a sum of the members' stems
        whole = Separator(bundle, device="cpu", precision=precision, overlap=overlap, wiener_blend=wiener_blend,
                          blend_bins=blend_bins)
        rows["blend"] = score("blend", separator_estimator(whole), tracks)
    rows["oracle IRM2 (ceiling)"] = score("oracle IRM2", oracle_estimator("irm2"), tracks)
    rows["mixture (floor)"] = score("mixture", oracle_estimator("mixture"), tracks)
    return rows


@dataclass
class RealClip:
    """One real recording: mono float32 `(1, samples)` mixture and true stems, at `samplerate`."""

    name: str
    samplerate: int
    mixture: "object"
    stems: Dict[str, object]  # "vocals", "accompaniment"


def load_realval(root: Path) -> List[RealClip]:
    """The clips under `root`: every folder holding mixture.wav, vocals.wav and accompaniment.wav."""
    import soundfile
    import torch

    if not root.is_dir():
        raise common.BenchmarkError(f"{root}: no such folder of real clips (pass --realval none to skip them)")
    clips = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = {name: folder / f"{name}.wav" for name in ("mixture", *REAL_STEMS)}
        if not all(f.is_file() for f in files.values()):
            continue
        audio = {}
        rates = set()
        for name, path in files.items():
            data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
            audio[name] = torch.from_numpy(data.T.mean(axis=0, keepdims=True).copy())
            rates.add(rate)
        if len(rates) != 1 or len({a.shape[-1] for a in audio.values()}) != 1:
            raise common.BenchmarkError(f"{folder}: stems of different rates or lengths")
        clips.append(RealClip(folder.name, rates.pop(), audio.pop("mixture"), audio))
    if not clips:
        raise common.BenchmarkError(f"{root}: no clip folders with mixture.wav, vocals.wav and accompaniment.wav")
    return clips


def real_estimates(stems: Dict[str, object], weights: Optional[Dict[str, float]] = None) -> "object":
    """`(2, 1, samples)` vocals and accompaniment from a separator's stems `{name: (channels, samples)}`,
    each stem weighted by `weights` (default 1), channels averaged to mono."""
    import torch

    def mono(name: str):
        weight = 1.0 if weights is None else weights.get(name, 0.0)
        return stems[name].mean(dim=0, keepdim=True) * weight

    accompaniment = sum(mono(name) for name in SOURCES if name != "vocals")
    return torch.stack([mono("vocals"), accompaniment])


def real_rows(bundle: Bundle, clips: Sequence[RealClip], precision: str = "float32", overlap: float = 0.1,
              wiener_blend: str = "members", blend_bins: str = "modelled") -> Dict[str, Dict[str, float]]:
    """The real-music table: each member, the blend (summed from the members' weighted
    stems, as in `BlendFromMembers`), IRM2 at the clips' rate and the mixture floor."""
    import torch

    from danna_sep.evaluate import oracle_estimates, sdr_mdx
    from danna_sep.separator import Separator

    def truth(clip: RealClip):
        return torch.stack([clip.stems[name] for name in REAL_STEMS])

    def table(estimates: Sequence) -> Dict[str, float]:
        scores = np.array([sdr_mdx(truth(clip), est) for clip, est in zip(clips, estimates)])
        row = {name: float(scores[:, i].mean()) for i, name in enumerate(REAL_STEMS)}
        row["mean"] = float(scores.mean())
        return row

    rows: Dict[str, Dict[str, float]] = {}
    blend: List = [0.0] * len(clips)
    for alone, member in zip(members_alone(bundle), bundle.members):
        separator = Separator(alone, device="cpu", precision=precision, overlap=overlap)
        estimates = []
        for index, clip in enumerate(clips):
            print(f"\r  {member.name} (real): {index + 1}/{len(clips)} clips", end="", file=sys.stderr, flush=True)
            stems = separator.separate_tensor(clip.mixture, clip.samplerate)
            estimates.append(real_estimates(stems))
            blend[index] = blend[index] + real_estimates(stems, member.blend)
        print(file=sys.stderr)
        rows[member.name] = table(estimates)
    if not summed_blend(bundle, wiener_blend, blend_bins):
        whole = Separator(bundle, device="cpu", precision=precision, overlap=overlap, wiener_blend=wiener_blend,
                          blend_bins=blend_bins)
        blend = [real_estimates(whole.separate_tensor(clip.mixture, clip.samplerate)) for clip in clips]
    rows["blend"] = table(blend)
    rows["oracle IRM2 (ceiling)"] = table([oracle_estimates("irm2", truth(clip)) for clip in clips])
    rows["mixture (floor)"] = table([oracle_estimates("mixture", truth(clip)) for clip in clips])
    return rows


def markdown(rows: Dict[str, Dict[str, float]], columns: Sequence[str] = (*SOURCES, "mean")) -> str:
    header = ["system", *columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, scores in rows.items():
        lines.append("| " + " | ".join([name] + [f"{scores[k]:.2f}" for k in columns]) + " |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default="default", help="bundle folder or shipped bundle name (default: default)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help=f"where the test split is (generated if missing; default: {DEFAULT_DATA})")
    parser.add_argument("--as-is", action="store_true",
                        help="score the test/ tracks already in --data and generate nothing (a split made by "
                             "an older generator, or any folder in the MUSDB18 layout)")
    parser.add_argument("--tracks", type=int, default=24, help="tracks in the test split (default: 24)")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each track (default: 30)")
    parser.add_argument("--seed", type=int, default=1, help="corpus seed of the test split (default: 1)")
    parser.add_argument("--workers", type=int, default=2, help="processes generating the split (default: 2)")
    parser.add_argument("--realval", default=str(DEFAULT_REALVAL),
                        help=f"folder of real clips for the second table, or 'none' (default: {DEFAULT_REALVAL})")
    parser.add_argument("--precision", choices=["auto", "float32", "bfloat16"], default="float32",
                        help="the networks' arithmetic (default: float32, the same on every machine)")
    parser.add_argument("--overlap", type=float, default=0.1,
                        help="fraction of a segment shared with the next (separate's --overlap; default 0.1)")
    parser.add_argument("--wiener-blend", choices=["members", "joint"], default="members",
                        help="separate's --wiener-blend: joint scores the blend through the bundle's own "
                             "Separator (one more pass) instead of summing its members' stems")
    parser.add_argument("--blend-bins", choices=["modelled", "all"], default="modelled",
                        help="separate's --blend-bins (modelled: weights per frequency, the blend scored "
                             "through the bundle's own Separator where a member models fewer frequencies)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--json", type=Path, default=None, help="also write the table as JSON here")
    parser.add_argument("--force", action="store_true", help="replace the --json file if it exists")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")

    import torch

    from danna_sep.data import DataError

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.json is not None and args.json.exists() and not args.force:
        print(f"quality: {args.json}: already exists (use --force to overwrite)", file=sys.stderr)
        return 1
    try:
        clips = [] if args.realval == "none" else load_realval(Path(args.realval))
        bundle, tracks = bundle_and_split(args, args.workers)
    except (BundleError, DataError, common.BenchmarkError) as exc:
        print(f"quality: {exc}", file=sys.stderr)
        return 1
    info = common.machine_info(threads=torch.get_num_threads())
    started = time.monotonic()
    rows = quality_rows(bundle, tracks, args.precision, args.overlap, args.wiener_blend, args.blend_bins)
    print(f"# Separation quality: {bundle.describe()}")
    made = "tracks as found" if args.as_is else f"generated tracks of {args.seconds:g} s, corpus seed {args.seed}"
    print(f"Test split: {len(tracks)} {made} "
          f"({args.data}); networks in {args.precision}; overlap {args.overlap:g}; Wiener filter per "
          f"{'member' if args.wiener_blend == 'members' else 'blend (joint)'}; blend weights on "
          f"{'the bins each member models' if args.blend_bins == 'modelled' else 'every bin'}; MDX SDR in dB, mean over tracks; "
          f"{time.monotonic() - started:.0f} s on "
          f"{common.machine_line(info)}")
    print()
    print(markdown(rows))
    real = None
    if clips:
        started = time.monotonic()
        real = real_rows(bundle, clips, args.precision, args.overlap, args.wiener_blend, args.blend_bins)
        print()
        print(f"Real recordings: {len(clips)} MIR-1K clips ({args.realval}), mono {clips[0].samplerate} Hz, "
              f"separated at 44.1 kHz; accompaniment = drums + bass + other; MDX SDR in dB at the clips' "
              f"rate, mean over clips; {time.monotonic() - started:.0f} s")
        print()
        print(markdown(real, (*REAL_STEMS, "mean")))
    if args.json is not None:
        common.write_json(args.json, {"machine": info, "bundle": bundle.describe(), "tracks": [t.name for t in tracks],
                                      "seed": args.seed, "seconds": args.seconds, "precision": args.precision,
                                      "overlap": args.overlap, "wiener_blend": args.wiener_blend,
                                      "blend_bins": args.blend_bins,
                                      "sdr": rows,
                                      "real": None if real is None else {"root": args.realval,
                                                                         "clips": [c.name for c in clips],
                                                                         "sdr": real}},
                          force=args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
