"""`danna-sep separate INPUT... -o OUT`: split songs into stem files.

Exit codes: 0 every input separated; 1 some failed (one line each, the others are still
written); 2 a usage error, found before any model loads; 130 interrupted (the track under
way leaves nothing behind).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from .. import SOURCES
from ..errors import DannaSepError, UsageError
from .options import add_engine_arguments, add_model_arguments, comma_list, ranged

log = logging.getLogger(__name__)

TEMPLATE_FIELDS = ("track", "stem", "ext")


def register(subparsers) -> None:
    p = subparsers.add_parser("separate", help="split songs into stems")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="audio files or folders (searched recursively)")
    p.add_argument("-o", "--out", default="separated", help="output folder (default: %(default)s)")
    which = p.add_argument_group("models")
    add_model_arguments(which, which)
    what = p.add_argument_group("output")
    what.add_argument("--stems", type=comma_list(list(SOURCES)), default=None,
                      help="comma-separated stems to write, e.g. drums,vocals")
    what.add_argument("--two-stems", choices=list(SOURCES), default=None, metavar="STEM",
                      help="write STEM and no_STEM")
    what.add_argument("--filename", type=template, default="{track}/{stem}.{ext}",
                      help="output path template with {track}, {stem}, {ext} (default: %(default)s)")
    what.add_argument("--format", choices=["wav", "flac", "mp3"], default="wav")
    what.add_argument("--bit-depth", type=int, choices=[16, 24, 32], default=None,
                      help="16 or 24 bit PCM, or 32 bit float (wav only) (default: 16)")
    what.add_argument("--mp3-bitrate", type=ranged(int, 8, 320, " kbps"), default=None,
                      help="with --format mp3, 8 to 320 kbps (default: 320)")
    what.add_argument("--samplerate", type=ranged(int, 8000, 384000, " Hz"), default=None,
                      help="output rate, 8000 to 384000 Hz (default: the input's)")
    what.add_argument("--clip", choices=["rescale", "clamp", "none"], default="rescale",
                      help="rescale: all stems of a track scaled together below full scale; "
                           "clamp: clip each sample; none: exact floats (default: %(default)s)")
    what.add_argument("--force", action="store_true", help="overwrite existing outputs")
    how = p.add_argument_group("processing")
    add_engine_arguments(how, precision="auto")
    how.add_argument("-j", "--jobs", type=ranged(int, 1, 64), default=1,
                     help="tracks separated at once, sharing the CPU cores (default: %(default)s)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or summaries")
    p.set_defaults(handler=run)


def template(text: str) -> str:
    """An argparse type: a --filename template whose fields all exist and that names each stem apart."""
    import string

    # A syntax error ("{track") raises ValueError, which argparse reports as an invalid template.
    fields = [field for _, field, _, _ in string.Formatter().parse(text) if field is not None]
    unknown = sorted({f for f in fields if f not in TEMPLATE_FIELDS})
    if unknown:
        raise argparse.ArgumentTypeError(
            f"{text!r}: unknown field {{{unknown[0]}}} (fields: {', '.join('{' + f + '}' for f in TEMPLATE_FIELDS)})")
    if "stem" not in fields:
        raise argparse.ArgumentTypeError(f"{text!r}: needs {{stem}}, or every stem would go to the same file")
    return text


def _usage_problem(args: argparse.Namespace) -> Optional[str]:
    """A combination of options that means nothing, or None."""
    if args.stems and args.two_stems:
        return "--stems and --two-stems exclude each other"
    from ..catalog import checkpoints_folder

    # Without --bundle, the original checkpoints of $DANNA_CHECKPOINTS stand in for --checkpoints.
    if args.fast and args.checkpoints is None and (args.bundle is not None or checkpoints_folder() is None):
        return "--fast picks members of the original checkpoints: give --checkpoints too"
    if args.format == "mp3" and args.bit_depth is not None:
        return "--bit-depth is for wav and flac: mp3 has no bit depth (see --mp3-bitrate)"
    if args.format == "flac" and args.bit_depth == 32:
        return "flac takes --bit-depth 16 or 24"
    if args.format != "mp3" and args.mp3_bitrate is not None:
        return f"--mp3-bitrate is for --format mp3, not {args.format}"
    return None


def _collect_inputs(paths: List[str]) -> Tuple[List[Path], List[str]]:
    """Audio files named or found (recursively) in the folders given; problems as one line each."""
    from ..audio import is_audio_file

    files: List[Path] = []
    problems: List[str] = []
    for text in paths:
        path = Path(text)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and is_audio_file(p))
            if not found:
                problems.append(f"{path}: folder holds no audio files")
            files.extend(found)
        elif path.exists():
            files.append(path)
        else:
            problems.append(f"{path}: no such file")
    return files, problems


def _track_name(path: Path) -> str:
    name = path.name
    for suffix in (".stem.mp4", ".stem.m4a"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _stem_paths(args: argparse.Namespace, path: Path, stems: List[str]) -> Dict[str, Path]:
    ext = args.format
    out = {}
    for stem in stems:
        relative = args.filename.format(track=_track_name(path), stem=stem, ext=ext)
        out[stem] = Path(args.out) / relative
    return out


class _Cancelled(Exception):
    """Raised inside a worker's progress callback once Ctrl-C was pressed."""


def _separate_one(args, separator, path: Path, wanted: List[str], position: int, cancel) -> str:
    """Separate one input into its stem files; returns the summary line."""
    import time

    from ..separator import OutputOptions

    targets = _stem_paths(args, path, wanted)
    output = OutputOptions(format=args.format, bit_depth=args.bit_depth or 16, mp3_bitrate=args.mp3_bitrate or 320,
                           samplerate=args.samplerate, clip=args.clip, force=args.force)
    started = time.monotonic()
    bar = None
    if not args.quiet:
        from tqdm import tqdm

        # Counts seconds of audio separated (pass 1; encoding the stems follows).
        bar = tqdm(total=None, unit="s", desc=path.name, file=sys.stderr, leave=False, position=position)

    def progress(done: int, total: int) -> None:
        if cancel.is_set():
            raise _Cancelled()
        if bar is not None:
            bar.total = round(total / 44100, 1)
            bar.n = round(done / 44100, 1)
            bar.refresh()

    try:
        written = separator.write_stems(path, targets, output, progress)
    finally:
        if bar is not None:
            bar.close()
    took = time.monotonic() - started
    folder = targets[wanted[0]].parent
    note = f", scaled by {written.scale:.3f} to avoid clipping" if written.scale != 1.0 else ""
    return (f"{path.name} -> {folder}/ ({len(targets)} stems, {written.seconds:.1f} s of audio in {took:.1f} s, "
            f"{written.seconds / max(took, 1e-9):.1f}x real time{note})")


def _error_line(path: Path, exc: BaseException) -> str:
    return f"danna-sep: {exc}" if str(path) in str(exc) else f"danna-sep: {path}: {exc}"


def run(args: argparse.Namespace) -> int:
    import threading

    from ..separator import Separator

    problem = _usage_problem(args)
    if problem is not None:
        raise UsageError(problem)
    files, problems = _collect_inputs(args.inputs)
    for line in problems:
        print(f"danna-sep: {line}", file=sys.stderr)
    if not files:
        return 1
    separator = Separator(
        args.bundle, checkpoints=args.checkpoints, fast=args.fast, device=args.device,
        segment=args.segment, overlap=args.overlap, shifts=args.shifts, precision=args.precision,
    )

    sources = separator.sources
    if args.two_stems:
        if args.two_stems not in sources:
            raise UsageError(f"--two-stems {args.two_stems}: this bundle separates {', '.join(sources)} only")
        wanted = [args.two_stems, f"no_{args.two_stems}"]
    elif args.stems:
        missing = [s for s in args.stems if s not in sources]
        if missing:
            raise UsageError(f"--stems {','.join(missing)}: this bundle separates {', '.join(sources)} only")
        wanted = list(args.stems)
    else:
        wanted = sources

    failures = len(problems)
    cancel = threading.Event()

    def one(path: Path, position: int) -> Optional[str]:
        """The summary line, or None after printing the error line."""
        try:
            return _separate_one(args, separator, path, wanted, position, cancel)
        except DannaSepError as exc:
            print(_error_line(path, exc), file=sys.stderr)
            return None

    if args.jobs == 1:
        for path in files:
            line = one(path, 0)
            if line is None:
                failures += 1
            elif not args.quiet:
                print(line, file=sys.stderr)
        return 1 if failures else 0

    # Several tracks at once, in threads sharing the models (torch releases the GIL);
    # the cores are split between them so that they do not oversubscribe the CPU.
    from concurrent.futures import ThreadPoolExecutor, as_completed

    import torch

    torch.set_num_threads(max(1, torch.get_num_threads() // args.jobs))
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(one, path, i % args.jobs): path for i, path in enumerate(files)}
        try:
            for future in as_completed(futures):
                try:
                    line = future.result()
                except _Cancelled:
                    continue
                if line is None:
                    failures += 1
                elif not args.quiet:
                    print(line, file=sys.stderr)
        except KeyboardInterrupt:
            cancel.set()  # running tracks stop at their next segment and clean up
            for future in futures:
                future.cancel()
            pool.shutdown(wait=True)
            raise
    return 1 if failures else 0
