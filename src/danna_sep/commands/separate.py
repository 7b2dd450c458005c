"""`danna-sep separate INPUT... -o OUT`: split songs into stem files.

Exit codes: 0 every input separated; 1 some failed (one line each, the others are still
written); 2 a usage error, found before any model loads; 130 interrupted by Ctrl-C, 143 by
SIGTERM, 129 by SIGHUP (the track under way leaves nothing behind, its folders included).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from .. import SOURCES
from ..errors import DannaSepError, UsageError
from .options import add_engine_arguments, add_model_arguments, add_verbosity_arguments, comma_list, ranged

log = logging.getLogger(__name__)

TEMPLATE_FIELDS = ("track", "trackext", "relpath", "stem", "ext")
FORMATS = ["wav", "flac", "mp3"]
DEFAULT_TEMPLATE = "{relpath}/{track}/{stem}.{ext}"


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
    what.add_argument("--filename", type=template, default=DEFAULT_TEMPLATE,
                      help="output path below OUT: {track} is the input's name without its extension, "
                           "{trackext} that extension, {relpath} the input's folder below the folder "
                           "argument it was found in (empty for a file named itself; empty parts of "
                           "the path are dropped), {stem} and {ext} the stem's name and file extension "
                           "(default: %(default)s)")
    what.add_argument("--format", choices=FORMATS, default=None,
                      help="the stems' format, where --filename ends in .{ext} (which it then names); "
                           "a --filename ending in .wav, .flac or .mp3 names it instead (default: wav)")
    what.add_argument("--bit-depth", type=int, choices=[16, 24, 32], default=None,
                      help="16 or 24 bit PCM, or 32 bit float (wav only) (default: the input's: 16 or "
                           "24 bit, 32 bit float for a float input, 16 for a lossy one; at most 24 in flac)")
    what.add_argument("--mp3-bitrate", type=ranged(int, 8, 320, " kbps"), default=None,
                      help="with --format mp3, 8 to 320 kbps (default: 320)")
    what.add_argument("--samplerate", type=ranged(int, 8000, 384000, " Hz"), default=None,
                      help="output rate, 8000 to 384000 Hz (default: the input's)")
    what.add_argument("--clip", choices=["rescale", "clamp", "none"], default="rescale",
                      help="rescale: all stems of a track scaled together below full scale; "
                           "clamp: clip each sample; none: exact floats (default: %(default)s)")
    what.add_argument("--allow-outside-output", action="store_true",
                      help="let an absolute --filename, or one whose .. parts climb out of OUT, write there "
                           "(refused otherwise)")
    what.add_argument("--force", action="store_true", help="overwrite existing outputs")
    what.add_argument("--skip-existing", action="store_true",
                      help="skip the inputs whose stems are all there already (and write only the missing "
                           "ones of the others): a rerun finishes what an earlier one left")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object per input on stdout: input, status (done, skipped, failed), "
                        "error, outputs, audio_seconds, compute_seconds, real_time_factor, device, precision, "
                        "bundle, models")
    p.add_argument("--allow-truncated", action="store_true",
                   help="separate an input shorter than its header declares (cut off while copied or "
                        "downloaded), with a warning, instead of refusing it")
    how = p.add_argument_group("processing")
    add_engine_arguments(how, precision="auto")
    how.add_argument("-j", "--jobs", type=ranged(int, 1, 64), default=1,
                     help="tracks separated at once, sharing the CPU cores (default: %(default)s)")
    add_verbosity_arguments(p, quiet="no progress bars or summaries")
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


def _template_format(args: argparse.Namespace) -> str:
    """The format the stems are written in: the one --filename's extension names, else
    --format, else wav; a --format the extension contradicts is a usage error."""
    from ..audio import AUDIO_EXTENSIONS, FORMAT_EXTENSIONS

    name = args.filename.rsplit("/", 1)[-1]
    extension = "." + name.rsplit(".", 1)[1] if "." in name else ""
    if extension == ".{ext}" or "{" not in extension and extension.lower() not in AUDIO_EXTENSIONS:
        return args.format or "wav"
    named = FORMAT_EXTENSIONS.get(extension.lower())
    if named is None:
        raise UsageError(f"--filename {args.filename!r}: its files must end in .{{ext}}, .wav, .flac or .mp3, "
                         f"not {extension}")
    if args.format is not None and args.format != named:
        raise UsageError(f"--format {args.format}: --filename {args.filename!r} names {extension} files; "
                         f"drop --format, or end --filename in .{{ext}}")
    return named


def _usage_problem(args: argparse.Namespace) -> Optional[str]:
    """A combination of options that means nothing, or None."""
    if args.stems and args.two_stems:
        return "--stems and --two-stems exclude each other"
    from ..catalog import checkpoints_folder, find_bundle

    if (args.bundle is not None and args.checkpoints is None and not Path(args.bundle).is_dir()
            and find_bundle(args.bundle) is None):
        return f"--bundle {args.bundle}: no such bundle folder or name (danna-sep models lists them)"
    # Without --bundle, the original checkpoints of $DANNA_CHECKPOINTS stand in for --checkpoints.
    if args.fast and args.checkpoints is None and (args.bundle is not None or checkpoints_folder() is None):
        return "--fast picks members of the original checkpoints: give --checkpoints too"
    if args.force and args.skip_existing:
        return "--force overwrites existing stems, --skip-existing keeps them: give one"
    if args.pipeline == "original" and args.shifts:
        return "--pipeline original runs no shift trick (its Demucs pass is fixed): leave out --shifts"
    if args.format == "mp3" and args.bit_depth is not None:
        return "--bit-depth is for wav and flac: mp3 has no bit depth (see --mp3-bitrate)"
    if args.format == "flac" and args.bit_depth == 32:
        return "flac takes --bit-depth 16 or 24"
    if args.format != "mp3" and args.mp3_bitrate is not None:
        return f"--mp3-bitrate is for --format mp3, not {args.format}"
    return None


@dataclass
class _Input:
    """One audio file to separate: where it is, and its folder below the folder argument that named it."""

    path: Path
    relpath: str
    """"a/b" for FOLDER/a/b/x.wav found in the argument FOLDER; "" for a file named itself."""


def _collect_inputs(paths: List[str], out: Path) -> Tuple[List[_Input], List[Tuple[Path, str]]]:
    """Audio files named or found (recursively) in the folders given, each once, and never one
    under the output folder (the stems of an earlier run); problems as one line each."""
    from ..audio import is_audio_file

    out = out.resolve()
    inputs: List[_Input] = []
    seen = set()
    problems: List[Tuple[Path, str]] = []
    from ..audio import AudioError, check_readable

    for text in paths:
        path = Path(text)
        if not _is_folder(path):
            try:
                check_readable(path)  # no such file, a symlink loop, a FIFO, a name too long: said as what it is
            except AudioError as error:
                text = str(error)
                problems.append((path, text[len(f"{path}: "):] if text.startswith(f"{path}: ") else text))
                continue
        if _is_folder(path):
            found = sorted(p for p in path.rglob("*") if p.is_file() and is_audio_file(p)
                           and out not in p.resolve().parents)
            if not found:
                problems.append((path, "folder holds no audio files"))
            named = [_Input(p, p.parent.relative_to(path).as_posix()) for p in found]
        else:
            named = [_Input(path, "")]
        for item in named:
            key = item.path.resolve()
            if key not in seen:  # a file named twice, or named and found in a folder given too
                seen.add(key)
                inputs.append(item)
    return inputs, problems


def _is_folder(path: Path) -> bool:
    """Path.is_dir, but False where the name cannot even be looked up (too long, say)."""
    try:
        return path.is_dir()
    except OSError:
        return False


def _track_name(path: Path) -> Tuple[str, str]:
    """(name, extension without its dot): ("song", "mp3"), ("a", "stem.mp4")."""
    name = path.name
    for suffix in (".stem.mp4", ".stem.m4a"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)], name[-len(suffix) + 1:]
    return path.stem, path.suffix[1:]


def _stem_paths(args: argparse.Namespace, item: _Input, stems: List[str]) -> Dict[str, Path]:
    """{stem: output path} of one input, from --out and --filename (empty parts of the path dropped)."""
    track, trackext = _track_name(item.path)
    out = {}
    for stem in stems:
        relative = args.filename.format(track=track, trackext=trackext, relpath=item.relpath, stem=stem,
                                        ext=args.format)
        parts = [part for part in relative.split("/") if part not in ("", ".")]
        out[stem] = Path("/" if args.filename.startswith("/") else args.out).joinpath(*parts)
    return out


def _refuse_escapes(args: argparse.Namespace, inputs: List[_Input], stems: List[str]) -> None:
    """A usage error when a --filename (absolute, or climbing out with ..) would write outside
    --out, unless --allow-outside-output."""
    import os

    if args.allow_outside_output:
        return
    root = os.path.abspath(args.out)
    for item in inputs:
        for target in _stem_paths(args, item, stems).values():
            where = os.path.normpath(os.path.abspath(target))
            if os.path.commonpath([root, where]) != root:
                raise UsageError(f"--filename {args.filename!r} writes {target}, outside --out {args.out} "
                                 f"(give --allow-outside-output to write there)")


_WALK_LIMIT = 10_000  # folders of -o searched for a killed run's temporaries (-o ~ would be all of home)


def _clear_killed_runs(args: argparse.Namespace, inputs: List[_Input], stems: List[str]) -> None:
    """Remove what a killed run (SIGKILL, a power cut) left below --out and in the folders this
    run writes into: temporary files whose writer is gone (said in a line), then the folders
    they leave empty."""
    import os

    from ..audio import is_temporary_name, remove_stale_temporaries

    root = Path(os.path.abspath(args.out))
    targets = {Path(os.path.abspath(target.parent)) for item in inputs
               for target in _stem_paths(args, item, stems).values()}
    folders = set(targets)
    if root.is_dir():  # a killed run may have written other tracks: look through -o (its first 10000 folders)
        for count, (place, _, names) in enumerate(os.walk(root)):
            if count >= _WALK_LIMIT:
                log.debug("%s: looked for killed runs' temporaries in %d folders only", root, _WALK_LIMIT)
                break
            if any(map(is_temporary_name, names)):
                folders.add(Path(place))
    for folder in sorted(folders, key=lambda f: len(f.parts), reverse=True):
        if not folder.is_dir():
            continue
        removed = remove_stale_temporaries(folder)
        if folder != root and removed and not any(folder.iterdir()):  # a folder someone made empty stays
            try:
                folder.rmdir()
            except OSError:
                pass


def _refuse_collisions(args: argparse.Namespace, inputs: List[_Input], stems: List[str]) -> None:
    """A usage error naming both inputs when two of them would write the same file."""
    import os

    writer: Dict[str, Path] = {}
    for item in inputs:
        for target in _stem_paths(args, item, stems).values():
            key = os.path.normcase(os.path.abspath(target))
            if key in writer:
                hint = "{trackext}" if _track_name(writer[key])[1] != _track_name(item.path)[1] else "{relpath}"
                raise UsageError(f"{writer[key]} and {item.path} would both write {target}: "
                                 f"put {hint} in --filename (now {args.filename!r})")
            writer[key] = item.path


class _Bar:
    """One progress bar per track on stderr, in seconds of audio: the separation, then the
    encoding, each with its real-time factor (compute time over audio time)."""

    FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} s of audio [{elapsed}<{remaining}{postfix}]"

    def __init__(self, name: str, position: int):
        from tqdm import tqdm

        self.name = name
        self.stage = "separating"
        self.started = self.drawn = time.monotonic()
        self.bar = tqdm(total=0, desc=name, file=sys.stderr, leave=False, position=position,
                        bar_format=self.FORMAT)

    def show(self, stage: str, done: float, total: float) -> None:
        now = time.monotonic()
        if stage != self.stage:  # the same bar, from 0 again, for the encoding
            self.stage, self.started = stage, now
            self.bar.set_description_str(f"{self.name} ({stage})", refresh=False)
            self.bar.set_postfix_str("", refresh=False)
            self.bar.reset(total=total)
        elif stage == "encoding" and now - self.drawn < 0.1 and done < total:
            return  # encoding reports every block: a redraw each tenth of a second is enough
        self.bar.total, self.bar.n = total, done
        if done > 0:
            factor = (now - self.started) / done
            self.bar.set_postfix_str(f"real-time factor {factor:.2f}", refresh=False)
        self.bar.refresh()
        self.drawn = now

    def close(self) -> None:
        self.bar.close()


class _Cancelled(Exception):
    """Raised inside a worker's progress callback once Ctrl-C was pressed."""


@dataclass
class _Result:
    """What became of one input: done, skipped (every stem already there) or failed."""

    input: Path
    status: str
    outputs: Dict[str, Path] = field(default_factory=dict)
    error: Optional[str] = None
    audio_seconds: Optional[float] = None
    compute_seconds: Optional[float] = None
    scale: float = 1.0

    @property
    def real_time_factor(self) -> Optional[float]:
        """Compute time over audio time: below 1 is faster than real time."""
        if not self.audio_seconds or self.compute_seconds is None:
            return None
        return self.compute_seconds / self.audio_seconds


def _speed(audio: float, compute: float) -> str:
    """'20.0 s of audio in 3.1 s: real-time factor 0.16, 6.4x faster than real time'."""
    rtf = compute / audio if audio else float("inf")
    pace = f"{1 / rtf:.1f}x faster than real time" if rtf < 1 else f"{rtf:.1f}x slower than real time"
    return f"{audio:.1f} s of audio in {compute:.1f} s: real-time factor {rtf:.2f}, {pace}"


class _Report:
    """Says what became of each input: a line on stderr, and with --json one object per
    input on stdout; counts the outcomes for the exit code and the closing summary."""

    def __init__(self, args: argparse.Namespace):
        self.json = args.json
        self.results: List[_Result] = []
        self.separator = None

    def __call__(self, result: _Result) -> None:
        self.results.append(result)
        if result.status == "failed":
            message = result.error or ""
            log.error("%s", message if str(result.input) in message else f"{result.input}: {message}")
        elif result.status == "skipped":
            log.info("%s: skipped, its stems are there already (--skip-existing)", result.input)
        else:
            folder = next(iter(result.outputs.values())).parent
            note = f", scaled by {result.scale:.3f} to avoid clipping" if result.scale != 1.0 else ""
            log.info("%s -> %s/ (%d stems, %s%s)", result.input.name, folder, len(result.outputs),
                     _speed(result.audio_seconds or 0.0, result.compute_seconds or 0.0), note)
        if self.json:
            print(json.dumps(self._record(result)), flush=True)

    def _record(self, result: _Result) -> dict:
        separator = self.separator
        rtf = result.real_time_factor
        return {
            "input": str(result.input),
            "status": result.status,
            "outputs": {stem: str(path) for stem, path in result.outputs.items()},
            "error": result.error,
            "audio_seconds": result.audio_seconds,
            "compute_seconds": None if result.compute_seconds is None else round(result.compute_seconds, 3),
            "real_time_factor": None if rtf is None else round(rtf, 4),
            "device": None if separator is None else str(separator.device),
            "precision": None if separator is None else separator.options.precision,
            "bundle": None if separator is None else separator.bundle.origin,
            "models": None if separator is None else [m.name for m in separator.bundle.members],
        }

    def finish(self) -> int:
        """The closing summary line (several inputs), and the exit code: 1 if any failed."""
        count = {status: sum(r.status == status for r in self.results) for status in ("done", "skipped", "failed")}
        if len(self.results) > 1:
            done = [r for r in self.results if r.status == "done"]
            audio = sum(r.audio_seconds or 0.0 for r in done)
            speed = f" ({_speed(audio, sum(r.compute_seconds or 0.0 for r in done))})" if done else ""
            log.info("%d inputs: %d done, %d skipped, %d failed%s", len(self.results), count["done"],
                     count["skipped"], count["failed"], speed)
        return 1 if count["failed"] else 0


def _separate_one(args, separator, item: _Input, wanted: List[str], position: int, cancel) -> _Result:
    """Separate one input into its stem files (those missing, with --skip-existing)."""
    from ..separator import OutputOptions

    path = item.path
    targets = _stem_paths(args, item, wanted)
    if args.skip_existing:
        there = {stem: target for stem, target in targets.items() if target.exists()}
        if len(there) == len(targets):
            return _Result(path, "skipped", outputs=targets)
        targets = {stem: target for stem, target in targets.items() if stem not in there}
    output = OutputOptions(format=args.format, bit_depth=args.bit_depth, mp3_bitrate=args.mp3_bitrate or 320,
                           samplerate=args.samplerate, clip=args.clip, force=args.force)
    started = time.monotonic()
    bar = None if args.quiet else _Bar(path.name, position)

    def progress(stage: str, done: float, total: float) -> None:
        if cancel.is_set():
            raise _Cancelled()
        if bar is not None:
            bar.show(stage, done, total)

    try:
        written = separator.write_stems(path, targets, output, progress, allow_truncated=args.allow_truncated)
    finally:
        if bar is not None:
            bar.close()
    took = time.monotonic() - started
    log.debug("%s: %.1f s of audio: decoded and separated in %.2f s, encoded in %.2f s", path,
              written.seconds, written.separating_seconds, written.encoding_seconds)
    return _Result(path, "done", outputs=dict(written.paths), audio_seconds=round(written.seconds, 3),
                   compute_seconds=took, scale=written.scale)


def _wanted(args: argparse.Namespace, sources: List[str]) -> List[str]:
    """The stems to write, of a bundle that separates `sources`."""
    if args.two_stems:
        if args.two_stems not in sources:
            raise UsageError(f"--two-stems {args.two_stems}: this bundle separates {', '.join(sources)} only")
        return [args.two_stems, f"no_{args.two_stems}"]
    if args.stems:
        missing = [s for s in args.stems if s not in sources]
        if missing:
            raise UsageError(f"--stems {','.join(missing)}: this bundle separates {', '.join(sources)} only")
        return list(args.stems)
    return list(sources)


def run(args: argparse.Namespace) -> int:
    import threading

    from ..separator import Separator

    args.format = _template_format(args)
    problem = _usage_problem(args)
    if problem is not None:
        raise UsageError(problem)
    if args.clip == "none" and (args.format != "wav" or args.bit_depth in (16, 24)):
        kind = f"{args.bit_depth}-bit {args.format}" if args.bit_depth else args.format
        log.warning("--clip none keeps exact floats in 32-bit float wav only: %s stems clip at full scale", kind)
    out = Path(args.out)
    from ..audio import long_name

    too_long = long_name(out.absolute())
    if too_long is not None:
        raise UsageError(f"--out {out}: {too_long}")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: is a file, not a folder")
    files, problems = _collect_inputs(args.inputs, out)
    # Every source a bundle can have, until the bundle says which it has (never more).
    wanted = _wanted(args, list(SOURCES))
    _refuse_collisions(args, files, wanted)
    _refuse_escapes(args, files, wanted)
    _clear_killed_runs(args, files, wanted)
    report = _Report(args)
    for path, message in problems:
        report(_Result(path, "failed", error=message))
    if args.skip_existing:  # tracks with every stem there need no model at all
        for item in list(files):
            targets = _stem_paths(args, item, wanted)
            if all(target.exists() for target in targets.values()):
                report(_Result(item.path, "skipped", outputs=targets))
                files.remove(item)
    if not files:
        return report.finish()

    started = time.monotonic()
    separator = report.separator = Separator(
        args.bundle, checkpoints=args.checkpoints, fast=args.fast, device=args.device,
        segment=args.segment, overlap=args.overlap, shifts=args.shifts, precision=args.precision,
        pipeline=args.pipeline,
    )
    log.debug("bundle %s, on %s in %s, loaded in %.2f s", separator.bundle.describe(), separator.device,
              separator.options.precision, time.monotonic() - started)
    wanted = _wanted(args, separator.sources)
    cancel = threading.Event()

    def one(item: _Input, position: int) -> _Result:
        try:
            return _separate_one(args, separator, item, wanted, position, cancel)
        except DannaSepError as exc:  # this input failed; the others go on
            return _Result(item.path, "failed", error=str(exc))

    if args.jobs == 1:
        for item in files:
            report(one(item, 0))
        return report.finish()

    # Several tracks at once, in threads sharing the models (torch releases the GIL);
    # the cores are split between them so that they do not oversubscribe the CPU.
    from concurrent.futures import ThreadPoolExecutor, as_completed

    import torch

    torch.set_num_threads(max(1, torch.get_num_threads() // args.jobs))
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(one, item, i % args.jobs) for i, item in enumerate(files)]
        try:
            for future in as_completed(futures):
                try:
                    report(future.result())
                except _Cancelled:
                    continue
        except KeyboardInterrupt:
            cancel.set()  # running tracks stop at their next segment and clean up
            for future in futures:
                future.cancel()
            pool.shutdown(wait=True)
            raise
    return report.finish()
