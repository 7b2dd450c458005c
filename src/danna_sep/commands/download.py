"""`danna-sep download FAMILY`: the published weights of a model family, fetched, checked
and put where they are looked for (`danna_sep.download`).

Exit codes: 0 every file there and checked; 1 a file that could not be fetched or is not
what was published (one line; what was fetched so far is kept for the next run to resume);
2 a usage error.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import textwrap
from typing import Optional

from .bars import TaskBars
from .options import add_verbosity_arguments, ranged

log = logging.getLogger("danna_sep")


def _families_epilog() -> str:
    from ..download import FAMILIES, default_folder

    lines = ["families:"]
    for family in FAMILIES.values():
        text = (f"{family.summary}; {len(family.files)} files, about {family.approx_bytes / 1e6:.0f} MB, "
                f"into {default_folder(family)}")
        lines += textwrap.wrap(text, 78, initial_indent=f"  {family.name:16}", subsequent_indent=" " * 18,
                               break_on_hyphens=False)
    lines += textwrap.wrap("Danna-Sep's files go into $DANNA_CHECKPOINTS (else ~/danna-sep-checkpoints), as the "
                           "original tool's do; Open-Unmix's into torch hub's checkpoints folder "
                           "($TORCH_HOME/hub/checkpoints), where openunmix and torch.hub look for them.", 78,
                           break_on_hyphens=False)
    return "\n".join(lines)


def register(subparsers) -> None:
    from ..download import FAMILIES

    p = subparsers.add_parser(
        "download", help="fetch the published weights of Danna-Sep or Open-Unmix",
        description=textwrap.fill(
            "Fetch a model family's published files: resumed where a run stopped, checked (the sha256 in "
            "Open-Unmix's names; Danna-Sep's by loading them strictly, their sha256 then recorded beside "
            "them), and renamed into place only when complete. Files already there are checked instead. "
            "The http_proxy / https_proxy variables apply.", 78),
        epilog=_families_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("family", choices=list(FAMILIES), metavar="FAMILY",
                   help="danna-sep, danna-sep-fast, umxhq or umxl")
    p.add_argument("--to", default=None, metavar="DIR", help="put the files into DIR instead")
    p.add_argument("--mirror", default=None, metavar="URL",
                   help="fetch each file from URL/NAME (a mirror holding the files under their names) "
                        "instead of the published links")
    p.add_argument("--xumx-onnx", action="store_true",
                   help="danna-sep: fetch the original tool's later xumx.onnx (run through onnxruntime) "
                        "instead of the TorchScript xumx_mwf.pth")
    p.add_argument("--force", action="store_true", help="fetch files again even when they are there")
    p.add_argument("--retries", type=ranged(int, 0), default=3, metavar="N",
                   help="give up on a file after N more tries in a row that get no further (default: 3)")
    p.add_argument("--timeout", type=ranged(float, 1.0), default=30.0, metavar="SECONDS",
                   help="how long to wait for the server each time (default: 30)")
    add_verbosity_arguments(p, quiet="no progress bars")
    p.set_defaults(handler=_run)


class _ByteBars(TaskBars):
    """A `DownloadProgressFn` that draws one tqdm bar per file on stderr, in bytes: a file's
    total may be unknown, and its transfer may start again from 0."""

    def __call__(self, name: str, done: int, total: Optional[int]) -> None:
        from tqdm import tqdm

        bar = self.bars.get(name)
        if bar is None:
            bar = self.bars[name] = tqdm(total=total, initial=done, desc=name, unit="B", unit_scale=True,
                                         unit_divisor=1024, file=sys.stderr, leave=False, dynamic_ncols=True)
        if total is not None and bar.total != total:
            bar.total = total
        if done < bar.n:  # the server sent the file from the start again
            bar.reset(total=total)
        bar.update(done - bar.n)
        if total is not None and done >= total:
            bar.close()
            del self.bars[name]


def _run(args: argparse.Namespace) -> int:
    from ..download import FAMILIES, default_folder, download

    family = FAMILIES[args.family]
    bars = None if args.quiet else _ByteBars()
    try:
        fetched = download(args.family, args.to, xumx_onnx=args.xumx_onnx, mirror=args.mirror, force=args.force,
                           retries=args.retries, timeout=args.timeout, progress=bars)
    finally:
        if bars is not None:
            bars.close()
    folder = fetched[0].path.parent if fetched else default_folder(family)
    new = sum(f.status == "downloaded" for f in fetched)
    said = f"{args.family}: {len(fetched)} files in {folder} ({new} downloaded, {len(fetched) - new} there already)"
    if family.cache == "checkpoints":
        fast = " --fast" if args.family == "danna-sep-fast" else ""
        said += f"; separate with: danna-sep separate SONG --checkpoints {shlex.quote(str(folder))}{fast}"
    log.info("%s", said)
    return 0
