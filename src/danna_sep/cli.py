"""The `danna-sep` command: a thin layer that parses, calls the library and maps errors to exit codes."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from . import __version__


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (`danna-sep separate: ...`) and exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _ranged(kind: Callable[[str], float], low: Optional[float] = None, high: Optional[float] = None,
            unit: str = "") -> Callable[[str], float]:
    """An argparse type: `kind(text)` within [low, high], refused with the range otherwise."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if value != value or (low is not None and value < low) or (high is not None and value > high):
            if high is None:
                bounds = f"at least {low:g}{unit}"
            elif low is None:
                bounds = f"at most {high:g}{unit}"
            else:
                bounds = f"from {low:g} to {high:g}{unit}"
            raise argparse.ArgumentTypeError(f"{text} is out of range ({bounds})")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


TEMPLATE_FIELDS = ("track", "stem", "ext")


def _template_problem(template: str) -> Optional[str]:
    """Why `template` cannot name the output files, or None."""
    import string

    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
    except ValueError as error:
        return f"--filename {template!r}: {error}"
    unknown = sorted({f for f in fields if f not in TEMPLATE_FIELDS})
    if unknown:
        return (f"--filename {template!r}: unknown field {{{unknown[0]}}} "
                f"(fields: {', '.join('{' + f + '}' for f in TEMPLATE_FIELDS)})")
    if "stem" not in fields:
        return f"--filename {template!r}: needs {{stem}}, or every stem would go to the same file"
    return None


def _device_problem(device: str) -> Optional[str]:
    """Why `device` cannot run here, or None (checked before any model loads)."""
    import re

    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", device):
        return f"--device {device}: not a device (auto, cpu, cuda, cuda:N or mps)"
    import torch

    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            return f"--device {device}: CUDA is not available on this machine"
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            return f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)"
    if device == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            return "--device mps: Apple's MPS is not available on this machine"
    return None


def _separate_usage_problem(args: argparse.Namespace) -> Optional[str]:
    """The first usage error of a `separate` call, found before anything loads; None if none."""
    if args.stems and args.two_stems:
        return "--stems and --two-stems exclude each other"
    if args.fast and args.checkpoints is None:
        return "--fast picks members of the original checkpoints: give --checkpoints too"
    if args.format == "mp3" and args.bit_depth is not None:
        return "--bit-depth is for wav and flac: mp3 has no bit depth (see --mp3-bitrate)"
    if args.format == "flac" and args.bit_depth == 32:
        return "flac takes --bit-depth 16 or 24"
    if args.format != "mp3" and args.mp3_bitrate is not None:
        return f"--mp3-bitrate is for --format mp3, not {args.format}"
    return _template_problem(args.filename) or _device_problem(args.device)


def _comma_list(text: str) -> List[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _collect_inputs(paths: List[str]) -> Tuple[List[Path], List[str]]:
    """Audio files named or found (recursively) in the folders given; problems as one line each."""
    from .audio import is_audio_file

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
    """Separate one input into its stem files; returns the summary line. Raises AudioError/ValueError."""
    import time

    from .separator import OutputOptions

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


def _cmd_separate(args: argparse.Namespace) -> int:
    import threading

    from .audio import AudioError
    from .bundle import BundleError
    from .separator import Separator

    problem = _separate_usage_problem(args)
    if problem is not None:
        print(f"danna-sep: {problem}", file=sys.stderr)
        return 2
    files, problems = _collect_inputs(args.inputs)
    for line in problems:
        print(f"danna-sep: {line}", file=sys.stderr)
    if not files:
        return 1
    try:
        separator = Separator(
            args.bundle, checkpoints=args.checkpoints, fast=args.fast, device=args.device,
            segment=args.segment, overlap=args.overlap, shifts=args.shifts, precision=args.precision,
        )
    except BundleError as exc:
        print(f"danna-sep: {exc}", file=sys.stderr)
        return 2 if "no default bundle" in str(exc) else 1
    except ValueError as exc:
        print(f"danna-sep: {exc}", file=sys.stderr)
        return 2

    sources = separator.sources
    if args.two_stems:
        if args.two_stems not in sources:
            print(f"danna-sep: --two-stems {args.two_stems}: not one of {', '.join(sources)}", file=sys.stderr)
            return 2
        wanted = [args.two_stems, f"no_{args.two_stems}"]
    elif args.stems:
        unknown = [s for s in args.stems if s not in sources]
        if unknown:
            print(f"danna-sep: --stems: unknown {', '.join(unknown)} (sources: {', '.join(sources)})", file=sys.stderr)
            return 2
        wanted = list(args.stems)
    else:
        wanted = sources

    failures = len(problems)
    cancel = threading.Event()

    def run(path: Path, position: int) -> Optional[str]:
        """The summary line, or None after printing the error line."""
        try:
            return _separate_one(args, separator, path, wanted, position, cancel)
        except (AudioError, ValueError) as exc:
            print(_error_line(path, exc), file=sys.stderr)
            return None

    if args.jobs == 1:
        for path in files:
            line = run(path, 0)
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
        futures = {pool.submit(run, path, i % args.jobs): path for i, path in enumerate(files)}
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


# Subcommands that live in their own modules under danna_sep.commands; each module has
# `register(subparsers)` and imports its heavy dependencies only inside its handler.
EXTRA_COMMANDS = ("models", "corpus", "train", "export", "evaluate")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="danna-sep",
        description="Split songs into drums, bass, other and vocals.",
    )
    parser.add_argument("--version", action="version", version=f"danna-sep {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p_sep = sub.add_parser("separate", help="split songs into stems")
    p_sep.add_argument("inputs", nargs="+", metavar="INPUT", help="audio files or folders (searched recursively)")
    p_sep.add_argument("-o", "--out", default="separated", help="output folder (default: %(default)s)")
    which = p_sep.add_argument_group("models")
    which.add_argument("--bundle", default=None, help="bundle folder or shipped bundle name (default: the shipped default)")
    which.add_argument("--checkpoints", default=None, metavar="DIR",
                       help="the original tool's TorchScript checkpoints folder")
    which.add_argument("--fast", action="store_true", help="with --checkpoints: U-Net and Demucs only")
    what = p_sep.add_argument_group("output")
    what.add_argument("--stems", type=_comma_list, default=None, help="comma-separated stems to write, e.g. drums,vocals")
    what.add_argument("--two-stems", default=None, metavar="STEM", help="write STEM and no_STEM")
    what.add_argument("--filename", default="{track}/{stem}.{ext}",
                      help="output path template with {track}, {stem}, {ext} (default: %(default)s)")
    what.add_argument("--format", choices=["wav", "flac", "mp3"], default="wav")
    what.add_argument("--bit-depth", type=int, choices=[16, 24, 32], default=None,
                      help="16 or 24 bit PCM, or 32 bit float (wav only) (default: 16)")
    what.add_argument("--mp3-bitrate", type=_ranged(int, 8, 320, " kbps"), default=None,
                      help="with --format mp3, 8 to 320 kbps (default: 320)")
    what.add_argument("--samplerate", type=_ranged(int, 8000, 384000, " Hz"), default=None,
                      help="output rate, 8000 to 384000 Hz (default: the input's)")
    what.add_argument("--clip", choices=["rescale", "clamp", "none"], default="rescale",
                      help="rescale: all stems of a track scaled together below full scale; "
                           "clamp: clip each sample; none: exact floats (default: %(default)s)")
    what.add_argument("--force", action="store_true", help="overwrite existing outputs")
    how = p_sep.add_argument_group("processing")
    how.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: %(default)s)")
    how.add_argument("--segment", type=_ranged(float, 1.0, 600.0, " s"), default=10.0,
                     help="segment length, 1 to 600 seconds (default: %(default)s)")
    how.add_argument("--overlap", type=_ranged(float, 0.0, 0.5), default=0.25,
                     help="overlap between segments, 0 to 0.5 (default: %(default)s)")
    how.add_argument("--shifts", type=_ranged(int, 0, 100), default=0,
                     help="random shifts per segment, 0 to 100 (default: %(default)s)")
    how.add_argument("--precision", choices=["auto", "float32", "bfloat16"], default="auto",
                     help="the networks' arithmetic: bfloat16 is about twice as fast on CPUs with "
                          "native bfloat16 (AVX512-BF16, AMX), float32 reproduces the models exactly; "
                          "auto picks bfloat16 on such CPUs, float32 elsewhere (default: %(default)s)")
    how.add_argument("-j", "--jobs", type=_ranged(int, 1, 64), default=1,
                     help="tracks separated at once, sharing the CPU cores (default: %(default)s)")
    p_sep.add_argument("-q", "--quiet", action="store_true", help="no progress bars or summaries")
    p_sep.set_defaults(handler=_cmd_separate)

    import importlib

    for name in EXTRA_COMMANDS:
        importlib.import_module(f"danna_sep.commands.{name}").register(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("danna-sep: interrupted", file=sys.stderr)
        return 130


def run() -> None:
    """The console entry point: `main()` on the command line, then exit with its code.

    A process torchrun started leaves without tearing the interpreter down: gloo's worker
    threads can still be dropping the last collective's tensors then, which needs the GIL
    a finalising interpreter no longer hands out, and the process would abort after a
    run that succeeded (see `distributed.leave_process_group`).
    """
    code = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    run()
