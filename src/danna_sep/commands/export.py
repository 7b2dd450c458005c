"""`danna-sep export RUN_DIR|CHECKPOINT... -o BUNDLE_DIR`: trained models -> a bundle.

Writes our bundle format (`danna-sep separate --bundle BUNDLE_DIR`), or with --torchscript
the original Danna-Sep tool's TorchScript files (`danna-sep separate --checkpoints DIR`).
A run folder contributes its best checkpoint by validation SDR (else its last).
Exit codes: 0 written; 1 an input that cannot be read or exported; 2 a usage error.
"""

from __future__ import annotations

import argparse
import sys
from typing import List

from ..errors import UsageError
from .bars import TaskBars
from .options import add_verbosity_arguments, ranged


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="turn training runs or checkpoints into a bundle (or the original TorchScript files)")
    p.add_argument("inputs", nargs="+", metavar="RUN_DIR|CHECKPOINT", help="run folders or checkpoint files")
    p.add_argument("-o", "--out", required=True, metavar="BUNDLE_DIR", help="output folder")
    p.add_argument("--torchscript", action="store_true",
                   help="write the original tool's TorchScript files (xumx_mwf.pth, unet_attention.pth, "
                        "demucs_4_decoders.pth) instead of a bundle")
    p.add_argument("--blend", default=None, metavar="paper|equal|JSON",
                   help="blend weights: paper (Danna-Sep's table), equal, a JSON object "
                        "{model: {source: weight}} or list, inline or a .json file "
                        "(default: paper for Danna-Sep's models, else equal)")
    p.add_argument("--fit", default=None, metavar="ROOT",
                   help="fit the blend weights instead: separate the tracks of ROOT (its test/ subset for "
                        "a MUSDB-style root, else the folder's tracks) with every model and keep, per source, "
                        "the weights with the best mean SDR")
    p.add_argument("--fit-tracks", type=ranged(int, 1), default=None, metavar="N",
                   help="fit on the first N tracks only")
    p.add_argument("--interpolate", default=None, metavar="BUNDLE",
                   help="move each model's weights towards the same model in BUNDLE (a folder or a bundle "
                        "name), e.g. the bundle it was fine-tuned from: (1 - alpha) * BUNDLE + alpha * trained")
    p.add_argument("--alpha", type=_alphas, default=None, metavar="A[,A...]",
                   help="the trained weights' share with --interpolate (default: 0.5); one for every "
                        "model, or one per model in the order given")
    p.add_argument("--force", action="store_true", help="replace existing outputs")
    add_verbosity_arguments(p, quiet="no progress bar")
    p.set_defaults(handler=_run)


def _alphas(text: str) -> List[float]:
    """An argparse type: one share from 0 to 1, or several separated by commas."""
    share = ranged(float, 0.0, 1.0)
    return [share(part) for part in text.split(",")]


def _run(args: argparse.Namespace) -> int:
    if args.torchscript and args.blend is not None:
        raise UsageError("--blend has no effect with --torchscript (the original tool uses its own table)")
    if args.fit is not None and (args.torchscript or args.blend is not None):
        raise UsageError("--fit chooses the blend weights: it goes with neither --blend nor --torchscript")
    if args.fit_tracks is not None and args.fit is None:
        raise UsageError("--fit-tracks N counts the tracks of --fit ROOT: give --fit too")

    if args.alpha is not None and args.interpolate is None:
        raise UsageError("--alpha is the trained weights' share with --interpolate BUNDLE: give --interpolate too")
    if args.interpolate is not None and args.torchscript:
        raise UsageError("--interpolate makes a bundle: it does not go with --torchscript")

    from ..export import export_bundle, export_torchscript

    if args.torchscript:
        folder = export_torchscript(args.inputs, args.out, force=args.force)
    else:
        fit_tracks = None
        if args.fit is not None:
            from ..data import find_tracks

            fit_tracks = find_tracks(args.fit, subset="test")[: args.fit_tracks]
        interpolate = None
        if args.interpolate is not None:
            from ..separator import resolve_bundle

            alphas = [0.5] if args.alpha is None else args.alpha
            if len(alphas) not in (1, len(args.inputs)):
                raise UsageError(f"--alpha gives {len(alphas)} shares for {len(args.inputs)} models: give one, "
                                 "or one per model")
            interpolate = (resolve_bundle(args.interpolate), alphas[0] if len(alphas) == 1 else alphas)
        bars = None if args.quiet else TaskBars({"fitting": "track"})
        try:
            folder = export_bundle(args.inputs, args.out, blend=args.blend, force=args.force,
                                   fit_tracks=fit_tracks, progress=bars, interpolate=interpolate)
        finally:
            if bars is not None:
                bars.close()
    if args.fit is not None:
        _print_fit(folder)
    print(f"danna-sep: wrote {folder}", file=sys.stderr)
    return 0


def _print_fit(folder) -> None:
    """The fitted weights and the SDRs they were chosen on, as a table on stderr."""
    import json

    from ..bundle import BUNDLE_FILE

    manifest = json.loads((folder / BUNDLE_FILE).read_text())
    fit = manifest["blend_fit"]
    sources = manifest.get("sources")
    names = [entry["name"] for entry in manifest["models"]]
    print(f"blend fitted on {len(fit['tracks'])} tracks (mean SDR in dB, weight in brackets):", file=sys.stderr)
    print("  " + "model".ljust(14) + "".join(s.rjust(16) for s in sources), file=sys.stderr)
    for name, entry, alone in zip(names, manifest["models"], fit["member_sdr"]):
        cells = "".join(f"{alone[s]:8.2f} [{entry['blend'].get(s, 0.0):.2f}]".rjust(16) for s in sources)
        print("  " + name.ljust(14) + cells, file=sys.stderr)
    print("  " + "blend".ljust(14) + "".join(f"{fit['blend_sdr'][s]:8.2f}".rjust(16) for s in sources),
          file=sys.stderr)
