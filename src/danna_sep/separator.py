"""The Python API: a bundle, the chunked engine and the blend behind one object."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Literal, Mapping, Optional, Tuple, Union

import torch

from . import DEFAULT_OVERLAP, SAMPLERATE, catalog
from .bundle import Bundle, BundleError, load_bundle, load_original
from .errors import USAGE
from .engine import (Blend, EngineOptions, ModelRunner, Pipeline, ProgressFn, TrackSource, resolve_device,
                     resolve_precision, stream)

log = logging.getLogger(__name__)

Stage = Literal["separating", "encoding"]
StageProgressFn = Callable[[Stage, float, float], None]
"""`progress(stage, done, total)` of `Separator.write_stems`, in seconds of the input's audio:
"separating" (pass 1, after each segment and within one after each model of a blend), then
"encoding" (pass 2, after each block written, all stems together)."""

PRETRAINED = catalog.PRETRAINED  # the shipped bundles


_HEAP_TUNED = False


def _return_freed_memory_to_the_system() -> None:
    """Ask glibc to serve blocks of 128 MiB and more with mmap, once per process.

    glibc raises its mmap threshold each time a large block is freed, after which
    segment-sized tensors come from the heap, whose free space fragments and is not given
    back (a 10 s segment through the paper blend peaked about 640 MB higher,
    benchmarks/memory.py). A fixed threshold keeps the largest tensors' memory returnable.
    It is not lower because each mmap'd block is fresh memory that the kernel must fault
    in and zero: at 1 MiB the full blend ran 1.5 times slower (benchmarks/speed.py).
    A no-op off glibc.
    """
    global _HEAP_TUNED
    if _HEAP_TUNED:
        return
    _HEAP_TUNED = True
    import ctypes
    import ctypes.util
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        M_MMAP_THRESHOLD = -3
        libc.mallopt(M_MMAP_THRESHOLD, 128 << 20)
    except (OSError, AttributeError):  # pragma: no cover - unusual libc
        log.debug("mallopt not available; heap left as it is")


def resolve_bundle(
    bundle: Union[Bundle, str, os.PathLike, None] = None,
    checkpoints: Union[str, os.PathLike, None] = None,
    fast: bool = False,
    umx: Union[str, os.PathLike, None] = None,
) -> Bundle:
    """A bundle object, a bundle folder, a bundle's name (shipped, or in a `$DANNA_BUNDLES`
    folder: `catalog.find_bundle`), the original tool's checkpoints folder, or Open-Unmix's
    published files (`umx`: "umxhq" or "umxl" from torch hub's checkpoints folder, or a
    folder of `TARGET-HASH.pth` files; `convert.load_umx`).

    Given neither a bundle nor checkpoints, the original tool's checkpoints in the folder
    `$DANNA_CHECKPOINTS` names are used when it is set, else the shipped default bundle.
    """
    if isinstance(bundle, Bundle):
        return bundle
    if umx is not None:
        from .convert import load_umx

        return load_umx(umx)
    if checkpoints is None and bundle is None:
        checkpoints = catalog.checkpoints_folder()
        if checkpoints is not None:
            log.info("the original checkpoints in %s ($%s)", checkpoints, catalog.CHECKPOINTS_ENV)
    if checkpoints is not None:
        return load_original(checkpoints, fast=fast)
    if bundle is None:
        bundle = "default"
    path = Path(bundle)
    if path.is_dir():
        return load_bundle(path)
    named = catalog.find_bundle(str(bundle))
    if named is not None:
        return load_bundle(named)
    if str(bundle) == "default":
        raise BundleError(
            f"no default bundle installed ({catalog.PRETRAINED / 'default'} is missing; reinstall danna-sep): pass "
            "--bundle PATH (a danna-sep bundle) or --checkpoints DIR (the original tool's TorchScript files)",
            exit_code=USAGE,
        )
    raise BundleError(f"{bundle}: no such bundle folder, shipped bundle or bundle in ${catalog.BUNDLES_ENV} "
                      f"(danna-sep models lists them)")


class Separator:
    """Separate audio with a bundle.

    `separate_tensor(wav, samplerate)` takes `(channels, samples)` (or `(samples,)`) at
    any rate and returns `{source: (2, samples)}` at that rate; the caller's tensor is
    never modified. `progress(done, total)` is called after each segment.
    `batch_segments` segments go through the networks at once (0: automatic, as many as fit
    on a GPU, one on the CPU; see `EngineOptions`).

    `pipeline="original"` replays the original Danna-Sep tool's whole-track separation
    (`danna_sep.engine`): the whole track, its spectrograms and every model's activations are
    held in memory at once, so memory grows with the track's length.
    """

    def __init__(
        self,
        bundle: Union[Bundle, str, os.PathLike, None] = None,
        *,
        checkpoints: Union[str, os.PathLike, None] = None,
        fast: bool = False,
        umx: Union[str, os.PathLike, None] = None,
        device: Union[str, torch.device] = "auto",
        segment: float = 10.0,
        overlap: float = DEFAULT_OVERLAP,
        shifts: int = 0,
        wiener_iterations: int = 1,
        precision: str = "auto",
        pipeline: Pipeline = "streamed",
        wiener_statistics: str = "window",
        batch_segments: int = 0,
        wiener_blend: str = "members",
        blend_bins: str = "modelled",
        progress: Optional[ProgressFn] = None,
    ):
        _return_freed_memory_to_the_system()
        self.bundle = resolve_bundle(bundle, checkpoints, fast, umx)
        # A bundle we loaded is ours to cast to bfloat16; a caller's keeps its dtype (the
        # runner casts a copy) but is moved to the device and put in eval mode, in place.
        own_models = not isinstance(bundle, Bundle)
        self.device = resolve_device(device)
        self.options = EngineOptions(
            segment=segment, overlap=overlap, shifts=shifts, wiener_iterations=wiener_iterations,
            precision=resolve_precision(precision, self.device), pipeline=pipeline,
            wiener_statistics=wiener_statistics, batch_segments=batch_segments, wiener_blend=wiener_blend,
            blend_bins=blend_bins,
        )
        self.progress = progress
        runners = []
        for member in self.bundle.members:
            member.model.to(self.device).eval()
            weighted = [name for name in self.bundle.sources if member.blend.get(name, 0.0)]
            runners.append(ModelRunner(member.model, self.device, self.options, own_model=own_models,
                                       sources=weighted))
        self._blend = Blend(runners, [m.blend for m in self.bundle.members], self.bundle.sources)

    @property
    def sources(self) -> list:
        return list(self.bundle.sources)

    def stream(
        self, wav: Union[torch.Tensor, TrackSource], progress: Optional[ProgressFn] = None
    ) -> Iterator[Tuple[int, torch.Tensor]]:
        """Blocks `(start, (sources, 2, n))` of the separation of a 44.1 kHz stereo `(2, samples)`
        track, a tensor or a `TrackSource` such as a `Spool` on disk."""
        return stream(self._blend, wav, SAMPLERATE, self.options, progress or self.progress)

    def separate_tensor(self, wav: torch.Tensor, samplerate: int = SAMPLERATE) -> Dict[str, torch.Tensor]:
        track = wav.detach().to("cpu", torch.float32)
        if track.dim() == 1:
            track = track.unsqueeze(0)
        if track.dim() != 2:
            raise ValueError(f"expected (channels, samples), got shape {tuple(wav.shape)}")
        if track.shape[0] == 1:
            track = track.expand(2, -1)
        elif track.shape[0] > 2:
            raise ValueError("expected mono or stereo audio; downmix first (danna_sep.audio.load does)")
        length = track.shape[-1]
        if length == 0:
            raise ValueError("no samples to separate")
        from .audio import resample

        out = torch.cat([block for _, block in self.stream(resample(track, samplerate, SAMPLERATE).contiguous())],
                        dim=-1)
        return {name: resample(out[index], SAMPLERATE, samplerate, length) for index, name in enumerate(self.sources)}

    def write_stems(
        self,
        path: Union[str, os.PathLike],
        targets: Mapping[str, Union[str, os.PathLike]],
        output: Optional["OutputOptions"] = None,
        progress: Optional[StageProgressFn] = None,
        allow_truncated: bool = False,
        before_commit: Optional[Callable[[Dict[str, Path]], None]] = None,
    ) -> "StemsWritten":
        """Separate an audio file straight into stem files, in memory bounded by the segment.

        `targets` maps stem names (sources, or `no_X` for everything but X) to output paths,
        each written in the format its extension names (.wav, .flac, .mp3; see `OutputOptions`).
        The input is decoded block by block onto disk, separated into float spools (pass 1),
        then each stem is scaled as `output.clip` says, resampled to the output rate, cut to
        the input's exact length and encoded (pass 2). Every file goes to a temporary name and
        is renamed only when all of them are complete; on any error, or an interrupt, nothing
        of this track is left behind. `progress(stage, done, total)` follows both passes in
        seconds of audio (see `StageProgressFn`), so a callback that raises (Ctrl-C) stops the
        track in either pass. Without it, the Separator's own `progress(done, total)` follows
        pass 1 in samples, and is called again with pass 1's last values during pass 2.

        Before any work, the temporary folder and the output folders are checked for the
        space the track needs (`danna_sep.space`): a shortfall, or a full disk while it runs,
        raises DiskFullError ("disk full: FOLDER ..."), leaving nothing behind, the folders
        this track made included. A name longer than its file system takes is an AudioError
        ("name too long"), and so is an input shorter than its header declares unless
        `allow_truncated` (then a warning). A wav stem past 4 GB is written as RF64.

        `before_commit({stem: complete temporary file})` runs once every stem is written and
        before any takes its name, so that a caller can record the files (a batch manifest
        hashes them there); if it raises, nothing of the track is left.
        """
        return _write_stems(self, path, targets, output or OutputOptions(), progress, allow_truncated,
                            before_commit)

    def separate_file(self, path: Union[str, os.PathLike]) -> Dict[str, torch.Tensor]:
        """Read any audio file and separate it; stems at the file's own sample rate."""
        from .audio import load

        wav, rate = load(path, samplerate=None)
        return self.separate_tensor(wav, rate)


ClipMode = Literal["rescale", "clamp", "none"]


@dataclass(frozen=True)
class OutputOptions:
    """How `Separator.write_stems` writes stems."""

    format: Optional[Literal["wav", "flac", "mp3"]] = None
    """None: each target's extension says (.wav, .flac, .mp3), wav for any other name. A
    format that a target's extension contradicts is refused before anything is separated."""
    bit_depth: Optional[Literal[16, 24, 32]] = None
    """16 or 24 bit PCM, or 32 bit float (wav only); None: the input's (16 or 24 bit PCM,
    32 bit float for a float input; at most 24 in flac; 16 for a lossy input)."""
    mp3_bitrate: int = 320
    samplerate: Optional[int] = None
    """Output rate; None keeps the input's."""
    clip: ClipMode = "rescale"
    """rescale: all stems of a track scaled by one factor so none exceeds full scale;
    clamp: each sample clipped to [-1, 1]; none: exact floats (keep them with 32-bit wav)."""
    force: bool = False
    spool: Literal["auto", "float32", "float16"] = "auto"
    """How the input and stems are kept on disk between the passes: float32, or float16 at
    half the space (about 70 dB below the stems); auto: float32 where the temporary folder
    holds it, else float16 (see `danna_sep.space`)."""

    def __post_init__(self) -> None:
        if self.clip not in ("rescale", "clamp", "none"):
            raise ValueError(f"clip must be rescale, clamp or none, got {self.clip!r}")
        if self.spool not in ("auto", "float32", "float16"):
            raise ValueError(f"spool must be auto, float32 or float16, got {self.spool!r}")


@dataclass(frozen=True)
class StemsWritten:
    """What `write_stems` did for one track."""

    paths: Dict[str, Path]
    seconds: float
    samplerate: int
    scale: float
    """The factor `clip="rescale"` applied (1.0 when no stem went past full scale)."""
    separating_seconds: float = 0.0
    """Wall-clock time of pass 1: decoding the input and separating it into spools."""
    encoding_seconds: float = 0.0
    """Wall-clock time of pass 2: scaling, resampling and encoding the stems."""


def _samples_progress(progress: Optional[ProgressFn], samples: int) -> Optional[StageProgressFn]:
    """A `(done, total)` callback in samples (the Separator's own) as a `StageProgressFn`:
    it follows pass 1, and is called with pass 1's last values during pass 2."""
    if progress is None:
        return None

    def report(stage: Stage, done: float, total: float) -> None:
        progress(round(samples * done / total) if stage == "separating" else samples, samples)

    return report


def _stem_block(block: torch.Tensor, sources: list, name: str) -> torch.Tensor:
    """Source `name` of a `(sources, channels, n)` block; `no_X` is every source but X."""
    if name in sources:
        return block[sources.index(name)]
    kept = [i for i, s in enumerate(sources) if f"no_{s}" != name]
    return block[kept].sum(dim=0)


def _clipped(stem: torch.Tensor, clip: ClipMode) -> torch.Tensor:
    """`(channels, n)` clamped to full scale where `clip` is "clamp"."""
    return stem.clamp(-1.0, 1.0) if clip == "clamp" else stem


def _write_stems(
    separator: "Separator",
    path: Union[str, os.PathLike],
    targets: Mapping[str, Union[str, os.PathLike]],
    output: OutputOptions,
    progress: Optional[StageProgressFn],
    allow_truncated: bool = False,
    before_commit: Optional[Callable[[Dict[str, Path]], None]] = None,
) -> StemsWritten:
    import time

    from . import space
    from .audio import AudioWriters, declared_length, load_spooled, plan_targets
    from .spool import Spool

    sources = separator.sources
    for name in targets:
        if name not in sources and not (name.startswith("no_") and name[3:] in sources):
            raise ValueError(f"unknown stem {name!r} (sources: {', '.join(sources)})")
    files = plan_targets(path, targets, output.format, output.bit_depth, output.force)
    declared = declared_length(path)
    seconds_declared = None if declared is None else declared[0] / declared[1]
    sizes = []
    if declared is not None:
        rate_out = output.samplerate or declared[1]
        frames_out = round(declared[0] * rate_out / declared[1])
        sizes = [(f.path.parent, f.size(frames_out, 2, rate_out, output.mp3_bitrate)) for f in files.values()]
    dtype = space.spool_dtype(seconds_declared, sizes, output.spool, name=str(path))

    started = time.monotonic()
    track, rate, length = load_spooled(path, allow_truncated=allow_truncated, dtype=dtype)
    out_rate = output.samplerate or rate
    out_length = length if out_rate == rate else round(length * out_rate / rate)
    spools: Dict[str, Spool] = {}
    try:
        for name in files:
            spools[name] = Spool(2, dtype=dtype)
        # Pass 1: separate into float spools at 44.1 kHz, noting the peak for `rescale`.
        peak = 0.0
        seconds = length / rate
        report = progress or _samples_progress(separator.progress, track.length)

        def follow(done: int, total: int) -> None:
            if report is not None:
                report("separating", seconds * done / total, seconds)

        for _, block in separator.stream(track, follow):
            for name, spool in spools.items():
                stem = _stem_block(block, sources, name)
                peak = max(peak, float(stem.abs().max()))
                spool.append(stem)
        track.close()
        scale = 1.0 / peak if output.clip == "rescale" and peak > 1.0 else 1.0
        separated = time.monotonic()
        # Pass 2: scale, then the writers resample to the output rate, land on the input's
        # length and encode; the stems appear together, or none.
        if report is not None:
            report("encoding", 0.0, seconds)
        with AudioWriters() as writers:
            for index, (name, target) in enumerate(files.items()):
                writer = writers.open(target.path, out_rate, 2, format=target.format, bit_depth=target.bit_depth or 16,
                                      mp3_bitrate=output.mp3_bitrate, force=output.force, source_rate=SAMPLERATE,
                                      length=out_length)
                for stem in spools[name].blocks():
                    writer.write(_clipped(stem * scale if scale != 1.0 else stem, output.clip))
                    if report is not None:  # lets a callback that raises (Ctrl-C) stop the encoding too
                        report("encoding", seconds * (index + writer.frames_written / out_length) / len(files), seconds)
                spools[name].close()
            hook = None if before_commit is None else lambda temporaries: before_commit(dict(zip(files, temporaries)))
            writers.commit(hook)
    finally:
        track.close()
        for spool in spools.values():
            spool.close()
    return StemsWritten(paths={name: target.path for name, target in files.items()}, seconds=length / rate,
                        samplerate=out_rate, scale=scale, separating_seconds=separated - started,
                        encoding_seconds=time.monotonic() - separated)
