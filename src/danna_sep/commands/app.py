"""`danna-sep app`: the local web app (`pip install -e ".[app]"`), in `danna_sep.app`.

Gradio is imported by the handler only, so that the rest of the command line starts as fast
without it (and works where it is not installed).
"""

from __future__ import annotations

import argparse
import logging

from .options import add_verbosity_arguments, device, ranged

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "app", help="start the local web app (needs: pip install \"danna-sep[app]\")",
        description="Start a web page for separating songs, served from this computer: drop a song, pick the "
                    "options, hear each stem in a mixer (mute, solo, volume), see its spectrogram, download the "
                    "stems. Works offline. Ctrl-C stops it and removes its temporary folder.")
    net = p.add_argument_group("network")
    net.add_argument("--host", default="127.0.0.1",
                     help="address to listen on; the default lets only this computer in, 0.0.0.0 lets in anyone "
                          "who can reach it (default: %(default)s)")
    net.add_argument("--port", type=ranged(int, 1, 65535), default=7860, help="port (default: %(default)s)")
    net.add_argument("--share", action="store_true",
                     help="also make a public link through Gradio's tunnel service (off unless given: anyone with "
                          "the link can use the app, and your songs pass through Gradio's servers)")
    net.add_argument("--open", action="store_true", help="open the page in the default browser")
    limits = p.add_argument_group("limits")
    limits.add_argument("--max-upload-mb", type=ranged(float, 0.001, 1e6, " MB"), default=500.0,
                        help="largest file a user can upload (default: %(default)g)")
    limits.add_argument("--max-minutes", type=ranged(float, 0.01, 24 * 60, " minutes"), default=20.0,
                        help="longest track a user can separate (default: %(default)g)")
    limits.add_argument("--max-storage-gb", type=ranged(float, 0.001, 1e5, " GB"), default=5.0,
                        help="size cap of the app's temporary folder (uploads and results); the oldest results "
                             "are removed to make room, and a job that would not fit even then is refused "
                             "(default: %(default)g)")
    models = p.add_argument_group("models")
    models.add_argument("--bundle", default=None,
                        help="the bundle selected when the page opens: a folder or a bundle's name (the page lists "
                             "the shipped ones, those in $DANNA_BUNDLES and the original checkpoints)")
    models.add_argument("--checkpoints", default=None, metavar="DIR",
                        help="the original tool's checkpoints folder to offer (default: $DANNA_CHECKPOINTS)")
    models.add_argument("--device", type=device, default="auto",
                        help="auto, cpu, cuda, cuda:N or mps (default: %(default)s)")
    add_verbosity_arguments(p, quiet="only warnings and errors in the log")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..catalog import find_bundle
    from ..errors import UsageError

    if args.bundle is not None and not Path(args.bundle).is_dir() and find_bundle(args.bundle) is None:
        raise UsageError(f"--bundle {args.bundle}: no such bundle folder or name (danna-sep models lists them)")
    if args.checkpoints is not None and not Path(args.checkpoints).is_dir():
        raise UsageError(f"--checkpoints {args.checkpoints}: no such folder")
    from ..app.jobs import Limits
    from ..app.page import AppConfig, serve

    if args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("--host %s: anyone who can reach this address can use the app", args.host)
    config = AppConfig(
        host=args.host, port=args.port, share=args.share, open_browser=args.open,
        max_upload_bytes=int(args.max_upload_mb * 1e6), max_storage_bytes=int(args.max_storage_gb * 1e9),
        limits=Limits(max_seconds=args.max_minutes * 60), bundle=args.bundle, checkpoints=args.checkpoints,
        device=args.device,
    )
    serve(config)
    return 0
