"""`danna-sep train CONFIG.json`: train a model from a JSON recipe into a run folder.

Exit codes: 0 trained; 1 a failed input (bad data: a track missing a stem, stems of different
lengths or rates, an empty root; an unreadable weights file or checkpoint; a run folder in
the way); 2 a usage error (a config with an unknown key, a wrong type, a model name not in the
registry, a loss that does not fit the model).
Launched by `torchrun --nproc_per_node N -m danna_sep.cli train ...` it trains with DDP.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from ..errors import UsageError
from .bars import TaskBars
from .options import add_verbosity_arguments, device, ranged


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a model from a JSON config (configs/*.json)",
        description="Train a model from a JSON config. Under torchrun, every process trains together (DDP).",
    )
    p.add_argument("config", metavar="CONFIG.json", help="training recipe (see configs/)")
    p.add_argument("--data", default=None, metavar="ROOT", help="dataset root (replaces data.root)")
    p.add_argument("--out", default=None, metavar="RUN_DIR",
                   help="run folder (default: runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR from its last checkpoint")
    p.add_argument("--weights", default=None, metavar="FILE",
                   help="start from these weights: one of our checkpoints, a run folder (its best "
                        "checkpoint), a bundle's .safetensors, or the official X-UMX / open-unmix file")
    p.add_argument("--device", type=device, default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    p.add_argument("--max-steps", type=ranged(int, 1), default=None, metavar="N",
                   help="stop after N optimiser steps in all (replaces train.max_steps)")
    valid = p.add_argument_group(
        "validation", "A folder's validation tracks are those listed in ROOT/valid.txt, else MUSDB18's "
                      "official 14, else a few tracks of the train subset held out by a seeded hash of "
                      "their names (one in ten, 1 to 10; logged) and never trained on.")
    valid.add_argument("--valid-subset", choices=["train", "test", "all"], default=None,
                       help="validate on this subset (replaces data.valid_subset; test or all "
                            "imply --valid-split all)")
    valid.add_argument("--valid-split", choices=["valid", "train", "all"], default=None,
                       help="of the train subset: its validation tracks, the rest, or all "
                            "(replaces data.valid_split)")
    valid.add_argument("--valid-tracks", type=int, default=None, metavar="N",
                       help="validate on N tracks: the first N listed, or N held out "
                            "(replaces data.valid_tracks)")
    p.add_argument("--force", action="store_true", help="replace a run already in RUN_DIR")
    add_verbosity_arguments(p, quiet="no progress bar or per-epoch lines")
    p.set_defaults(handler=_run)


def _apply_validation_flags(args: argparse.Namespace, data) -> str | None:
    """--valid-subset / --valid-split / --valid-tracks into the config's data section; the
    usage problem, if any."""
    if args.valid_tracks is not None:
        if args.valid_tracks < 1:
            return "--valid-tracks must be at least 1"
        data.valid_tracks = args.valid_tracks
    if args.valid_subset is not None:
        data.valid_subset = None if args.valid_subset == "all" else args.valid_subset
        if args.valid_split is None and data.valid_subset != "train":
            data.valid_split = None
    if args.valid_split is not None:
        data.valid_split = None if args.valid_split == "all" else args.valid_split
    if data.valid_split is not None and data.valid_subset != "train":
        return f"--valid-split {data.valid_split} splits the train subset: it goes with --valid-subset train"
    return None


def _run(args: argparse.Namespace) -> int:
    from ..train import TrainError, load_config, train

    if args.resume and args.force:
        raise UsageError("--resume and --force exclude each other")
    config = load_config(args.config, data_root=args.data)  # a ConfigError is a usage error
    if args.max_steps is not None:
        config.train.max_steps = args.max_steps
    problem = _apply_validation_flags(args, config.data)
    if problem is not None:
        raise UsageError(problem)
    run_dir = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    bars = None if args.quiet else TaskBars({"epoch": "step", "validation": "item", "input statistics": "track"})
    try:
        summary = train(config, run_dir, resume=args.resume, weights=args.weights, device=args.device,
                        force=args.force, progress=bars, config_source=str(args.config))
    except FloatingPointError as exc:  # the loss diverged
        raise TrainError(f"{run_dir}: {exc}") from None
    finally:
        if bars is not None:
            bars.close()
    if not args.quiet:
        if math.isnan(summary.last_loss):  # resumed after its last step: nothing ran here
            line = f"{summary.run_dir}: finished already, {summary.steps} steps"
        else:
            line = f"{summary.run_dir}: {summary.steps} steps, last loss {summary.last_loss:.5g}"
        if summary.valid:
            line += f", validation SDR {summary.valid['mean']:.3f} dB"
        if summary.best_checkpoint is not None:
            line += f", best checkpoint {summary.best_checkpoint.name}"
        print(line, file=sys.stderr)
    return 0
