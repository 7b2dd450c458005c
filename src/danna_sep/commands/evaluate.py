"""`danna-sep evaluate`: score a bundle, the original checkpoints or an oracle on a test set.

Under torchrun (WORLD_SIZE > 1) every rank separates and scores tracks rank::world_size,
and rank 0 gathers the scores (torch.distributed with gloo) and writes the report.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional

from ..distributed import Distributed, gather_to_main, join, leave_process_group
from ..errors import DannaSepError, UsageError
from .bars import TaskBars
from .options import add_engine_arguments, add_model_arguments, add_verbosity_arguments, ranged

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="score a bundle (or an oracle) on a multitrack test set: SDR or museval, JSON/Markdown/PNG report",
        description="Separate every track of a MUSDB18(-HQ) subset or stems folder and score the "
                    "estimates against the true stems. Writes report.json, report.md and one box "
                    "plot per source into REPORT_DIR.",
    )
    parser.add_argument("--root", required=True, help="MUSDB18-HQ / MUSDB18 root (train/, test/) or a folder of track folders")
    parser.add_argument("--subset", choices=["train", "test"], default="test", help="(default: %(default)s)")
    parser.add_argument("--split", choices=["train", "valid"], default=None,
                        help="with --subset train: its validation tracks (valid) or the rest (train): "
                             "those of ROOT/valid.txt, else MUSDB18's 14, else the ones training holds out")
    parser.add_argument("--limit", type=ranged(int, 1), default=None, metavar="N", help="only the first N tracks (by name)")
    which = parser.add_argument_group("what to score (one of)").add_mutually_exclusive_group(required=True)
    add_model_arguments(which, parser)
    which.add_argument("--oracle", choices=["irm1", "irm2", "mwf", "mixture"], default=None,
                       help="ideal ratio masks (irm1 magnitude, irm2 power), Wiener filter on the true "
                            "magnitudes (mwf), or the mixture as every estimate (the floor)")
    parser.add_argument("--metric", choices=["sdr", "museval"], default="sdr",
                        help="sdr: MDX-style SDR, mean over tracks; museval: BSSEval v4 SDR/SIR/ISR/SAR, "
                             "median over frames and tracks (default: %(default)s)")
    parser.add_argument("-o", "--out", required=True, metavar="REPORT_DIR", help="folder for the report")
    parser.add_argument("--jobs", type=ranged(int, 1, 64), default=1, metavar="N",
                        help="processes that score (default: %(default)s)")
    add_engine_arguments(parser.add_argument_group("processing"), precision="float32")
    parser.add_argument("--force", action="store_true", help="overwrite an existing report")
    add_verbosity_arguments(parser, quiet="no progress bar or summary")
    parser.set_defaults(handler=_cmd_evaluate)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    if args.split is not None and args.subset != "train":
        raise UsageError(f"--split {args.split} splits the train subset: it goes with --subset train")
    if args.fast and args.checkpoints is None:
        raise UsageError("--fast picks members of the original checkpoints: give --checkpoints too")
    if args.pipeline == "original" and args.shifts:
        raise UsageError("--pipeline original runs no shift trick (its Demucs pass is fixed): leave out --shifts")

    from ..data import find_tracks
    from ..evaluate import EvaluationError, Report, check_outputs, evaluate_tracks

    place = Distributed.from_environment()
    check_outputs(args.out, force=args.force)
    tracks = find_tracks(args.root, subset=args.subset, split=args.split)
    if args.limit is not None:
        tracks = tracks[: args.limit]
    if not tracks:
        raise EvaluationError(f"{args.root}: no tracks to evaluate")
    share = tracks[place.rank::place.world]
    estimator, description = _estimator(args, place)
    join("cpu")  # the scores travel as Python objects: gloo, whatever the device

    bars = None if args.quiet else TaskBars({"evaluate": "track"}, position=place.rank)
    task = f"evaluate ({description})"

    def progress(done: int, total: int) -> None:
        if bars is not None:
            bars(task, done, total, "")

    try:
        report = evaluate_tracks(share, estimator, metric=args.metric, jobs=args.jobs, progress=progress)
        failure: Optional[str] = None
    except DannaSepError as exc:  # every rank takes part in the gather below, failed or not
        report, failure = Report(args.metric), str(exc)
    finally:
        if bars is not None:
            bars.close()

    if place.active:
        # every rank takes part in the gather, failed or not, so that none waits forever
        gathered = gather_to_main((report, failure), place)
        leave_process_group()
        if not place.main:
            return 1 if failure else 0
        failures = [f for _, f in gathered if f]
        failure = failures[0] if failures else None
        for share_report, _ in gathered:
            report = report.merge(share_report)
    if failure:
        raise EvaluationError(failure)

    report.info.update({"estimator": description, "root": str(args.root), "subset": args.subset})
    if args.split:
        report.info["split"] = args.split
    try:
        paths = report.save(args.out, force=args.force)
    except OSError as exc:
        raise EvaluationError(f"{args.out}: cannot write the report ({exc.strerror or exc})") from None
    if not args.quiet:
        summary = report.summary()
        line = ", ".join(f"{s} {_fmt(summary[s]['SDR'])}" for s in report.sources)
        print(f"{description}, {args.metric}: SDR {line}, mean {_fmt(summary['mean']['SDR'])} dB "
              f"({len(report.tracks)} tracks) -> {paths[0].parent}/", file=sys.stderr)
    return 0


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _estimator(args: argparse.Namespace, place: Distributed):
    from ..evaluate import oracle_estimator, separator_estimator

    if args.oracle:
        return oracle_estimator(args.oracle), f"oracle {args.oracle}"
    from ..separator import Separator

    device = args.device
    if device == "auto" and place.active:
        import torch

        if torch.cuda.is_available():  # one GPU per rank, as torchrun numbers them
            device = f"cuda:{place.local_rank}"
    separator = Separator(
        args.bundle, checkpoints=args.checkpoints, fast=args.fast, umx=args.umx, device=device,
        segment=args.segment, overlap=args.overlap, shifts=args.shifts, precision=args.precision,
        pipeline=args.pipeline, batch_segments=args.batch_segments, wiener_blend=args.wiener_blend,
        blend_bins=args.blend_bins,
    )
    description = (f"checkpoints {args.checkpoints}" if args.checkpoints else f"Open-Unmix {args.umx}" if args.umx
                   else f"bundle {args.bundle}")
    return separator_estimator(separator), description
