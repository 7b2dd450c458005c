"""`danna-sep separate INPUT... -o OUT`: split songs into stem files.

Exit codes: 0 every input separated; 1 some failed (one line each, the others are still
written); 2 a usage error, found before any model loads; 130 interrupted by Ctrl-C, 143 by
SIGTERM, 129 by SIGHUP (the track under way leaves nothing behind, its folders included).
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from .. import SOURCES
from ..errors import DannaSepError, UsageError
from ..manifest import Manifest, file_sha256
from .bars import TrackBar
from .batch import current_share, device_for, gather_at_first, read_inputs_from, shard_option
from .options import add_engine_arguments, add_model_arguments, add_verbosity_arguments, comma_list, ranged
from .report import Report, TrackResult, manifest_record

log = logging.getLogger(__name__)

TEMPLATE_FIELDS = ("track", "trackext", "relpath", "stem", "ext")
FORMATS = ["wav", "flac", "mp3"]
DEFAULT_TEMPLATE = "{relpath}/{track}/{stem}.{ext}"


def register(subparsers) -> None:
    p = subparsers.add_parser("separate", help="split songs into stems")
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="audio files or folders (searched recursively)")
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
    batch = p.add_argument_group("large batches (see also: torchrun, in the README)")
    batch.add_argument("--inputs-from", metavar="FILE",
                       help="read more inputs from FILE, one path per line (- for standard input)")
    batch.add_argument("--manifest", metavar="FILE.jsonl",
                       help="append a JSON line per track separated, skipped or failed (input, outputs "
                            "with their sha256, seconds, rank, error); a rerun with the same manifest "
                            "skips the tracks it records done whose stems still match their hashes")
    batch.add_argument("--shard", type=shard_option, default=None, metavar="K/N",
                       help="separate only the K-th of N shares of the sorted inputs (K from 1): N "
                            "independent jobs, say a job array, split a catalog between them")
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

    if args.umx is not None and (args.bundle is not None or args.checkpoints is not None or args.fast):
        given = "--bundle" if args.bundle is not None else "--checkpoints" if args.checkpoints is not None else "--fast"
        return f"--umx and {given} exclude each other: --umx separates with Open-Unmix's files alone"
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


class _Cancelled(Exception):
    """Raised inside a worker's progress callback once Ctrl-C was pressed."""


def _separate_one(args, separator, item: _Input, wanted: List[str], position: int, cancel,
                  manifest: Optional[Manifest], rank: int, quiet: bool) -> TrackResult:
    """Separate one input into its stem files (those missing, with --skip-existing)."""
    from ..separator import OutputOptions

    path = item.path
    targets = every_target = _stem_paths(args, item, wanted)
    if args.skip_existing:
        there = {stem: target for stem, target in targets.items() if target.exists()}
        if len(there) == len(targets):
            return TrackResult(path, "skipped", outputs=targets)
        targets = {stem: target for stem, target in targets.items() if stem not in there}
    # A track the manifest lists (its stems since changed or lost) is redone over the files
    # this batch wrote; any other file in the way still needs --force.
    force = args.force or (manifest is not None and _only_recorded_in_the_way(manifest, item, targets))
    output = OutputOptions(format=args.format, bit_depth=args.bit_depth, mp3_bitrate=args.mp3_bitrate or 320,
                           samplerate=args.samplerate, clip=args.clip, force=force)
    started = time.monotonic()
    bar = None if quiet else TrackBar(path.name, position)

    def progress(stage: str, done: float, total: float) -> None:
        if cancel.is_set():
            raise _Cancelled()
        if bar is not None:
            bar.show(stage, done, total)

    def record(temporaries: Dict[str, Path]) -> None:
        """The manifest's line, written before the stems take their names: a kill after it
        leaves files the line lists (kept if whole, else redone), one before it none."""
        hashes = {stem: file_sha256(temporary) for stem, temporary in temporaries.items()}
        manifest.append(manifest_record(TrackResult(path, "done", outputs=every_target, sha256=hashes,
                                                    compute_seconds=time.monotonic() - started), rank))

    try:
        written = separator.write_stems(path, targets, output, progress, allow_truncated=args.allow_truncated,
                                        before_commit=None if manifest is None else record)
    finally:
        if bar is not None:
            bar.close()
    took = time.monotonic() - started
    log.debug("%s: %.1f s of audio: decoded and separated in %.2f s, encoded in %.2f s", path,
              written.seconds, written.separating_seconds, written.encoding_seconds)
    return TrackResult(path, "done", outputs=dict(written.paths), audio_seconds=round(written.seconds, 3),
                       compute_seconds=took, scale=written.scale, recorded=manifest is not None)


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


def _only_recorded_in_the_way(manifest: Manifest, item: _Input, targets: Dict[str, Path]) -> bool:
    """True when every stem file already there is one the manifest says this batch wrote."""
    recorded = {p.absolute() for p in manifest.recorded_outputs(item.path)}
    return all(target.absolute() in recorded for target in targets.values() if target.exists())


def _all_inputs(args: argparse.Namespace) -> List[str]:
    """The inputs named on the command line, then those listed in --inputs-from."""
    named = list(args.inputs)
    if args.inputs_from is not None:
        named += read_inputs_from(args.inputs_from)
    if not named:
        raise UsageError("no inputs: name audio files or folders, or list them with --inputs-from FILE")
    return named


def run(args: argparse.Namespace) -> int:
    args.format = _template_format(args)
    problem = _usage_problem(args)
    if problem is not None:
        raise UsageError(problem)
    share = current_share(args.shard)
    if args.clip == "none" and (args.format != "wav" or args.bit_depth in (16, 24)) and share.first:
        kind = f"{args.bit_depth}-bit {args.format}" if args.bit_depth else args.format
        log.warning("--clip none keeps exact floats in 32-bit float wav only: %s stems clip at full scale", kind)
    out = Path(args.out)
    from ..audio import long_name

    too_long = long_name(out.absolute())
    if too_long is not None:
        raise UsageError(f"--out {out}: {too_long}")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: is a file, not a folder")
    files, problems = _collect_inputs(_all_inputs(args), out)
    # Every source a bundle can have, until the bundle says which it has (never more).
    wanted = _wanted(args, list(SOURCES))
    _refuse_collisions(args, files, wanted)  # over the whole batch, the same in every process
    _refuse_escapes(args, files, wanted)
    manifest = Manifest(args.manifest) if args.manifest is not None else None
    files = share.take(files, key=lambda item: str(item.path.resolve()))
    _clear_killed_runs(args, files, wanted)
    report = Report(args, share, manifest)
    if share.first:  # inputs that are no audio are said once, by the first process
        for path, message in problems:
            report(TrackResult(path, "failed", error=message))
    for item in list(files):  # tracks that need no model at all
        targets = _stem_paths(args, item, wanted)
        if manifest is not None and not args.force and manifest.is_done(item.path, targets):
            report(TrackResult(item.path, "skipped", outputs=targets, recorded=True))
            files.remove(item)
        elif args.skip_existing and all(target.exists() for target in targets.values()):
            report(TrackResult(item.path, "skipped", outputs=targets))
            files.remove(item)
    device = device_for(share, args.device)
    if files:
        _separate_all(args, files, report, device, manifest)
    # Every process meets here, whatever became of its share, for one summary of the batch.
    gathered = gather_at_first(share, report.outcomes(), device)
    return report.finish(gathered if share.torchrun and share.first else None)


def _separate_all(args: argparse.Namespace, files: List[_Input], report: Report, device: str,
                  manifest: Optional[Manifest]) -> None:
    """Separate `files`, -j at a time, each outcome to `report` as it comes."""
    import threading

    from ..separator import Separator

    started = time.monotonic()
    separator = report.separator = Separator(
        args.bundle, checkpoints=args.checkpoints, fast=args.fast, umx=args.umx, device=device,
        segment=args.segment, overlap=args.overlap, shifts=args.shifts, precision=args.precision,
        pipeline=args.pipeline, batch_segments=args.batch_segments, wiener_blend=args.wiener_blend,
        blend_bins=args.blend_bins,
    )
    log.debug("bundle %s, on %s in %s, loaded in %.2f s", separator.bundle.describe(), separator.device,
              separator.options.precision, time.monotonic() - started)
    wanted = _wanted(args, separator.sources)
    cancel = threading.Event()
    # Bars of one process only: several processes drawing on one terminal garble it.
    quiet = args.quiet or not report.share.first

    def one(item: _Input, position: int) -> TrackResult:
        try:
            return _separate_one(args, separator, item, wanted, position, cancel, manifest, report.share.index,
                                 quiet)
        except DannaSepError as exc:  # this input failed; the others go on
            return TrackResult(item.path, "failed", error=str(exc))

    if args.jobs == 1:
        for item in files:
            report(one(item, 0))
        return

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
