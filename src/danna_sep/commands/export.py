"""`danna-sep export RUN_DIR|CHECKPOINT... -o BUNDLE_DIR`: trained models -> a bundle.

Writes our bundle format (`danna-sep separate --bundle BUNDLE_DIR`), or with --torchscript
the original Danna-Sep tool's TorchScript files (`danna-sep separate --checkpoints DIR`).
A run folder contributes its best checkpoint by validation SDR (else its last).
Exit codes: 0 written; 1 an input that cannot be read or exported; 2 a usage error.
"""

from __future__ import annotations

import argparse
import sys


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
    p.add_argument("--force", action="store_true", help="replace existing outputs")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from ..export import ExportError, export_bundle, export_torchscript

    if args.torchscript and args.blend is not None:
        print("danna-sep: --blend has no effect with --torchscript (the original tool uses its own table)",
              file=sys.stderr)
        return 2
    try:
        if args.torchscript:
            folder = export_torchscript(args.inputs, args.out, force=args.force)
        else:
            folder = export_bundle(args.inputs, args.out, blend=args.blend, force=args.force)
    except ExportError as exc:
        message = str(exc)
        print(f"danna-sep: {message}", file=sys.stderr)
        return 2 if message.startswith("--blend") else 1
    print(f"danna-sep: wrote {folder}", file=sys.stderr)
    return 0
