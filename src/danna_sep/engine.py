"""Chunked inference: models over tracks of any length in bounded memory.

A track is cut into segments of `segment` seconds that overlap by the fraction `overlap`.
Each segment goes through a separation function (one model, or the blend of a bundle's
models on that same segment), and consecutive segments are cross-faded over the middle
half of their overlap, so that the edges of a segment, where it lacks context, carry no
weight. Results come out as a stream of finished blocks: memory is bounded by the
segment, not by the track.

For spectrogram models a segment goes STFT -> model -> Wiener filter (over windows of
frames) -> iSTFT; waveform models take the segment as it is. The shift trick runs each
segment at `shifts` random offsets of up to `max_shift` seconds and averages.

`pipeline="original"` replays the original Danna-Sep tool's separation instead, on the
whole track at once (memory grows with the track): 1024 zeros appended to the track before
every model; spectrogram models over the whole track (a model whose class sets
`original_chunk_frames` in non-overlapping chunks of that many frames), then
one Wiener filter over the whole track with norbert's default epsilon (float64's) and its
max|x|/10 scaling taken over the track; waveform models on the track with 0.5 s of zeros
before it (the original's shift trick with one shift, offset 0) and their output clamped
to +-0.99; then the blend.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, replace
from typing import Callable, Iterator, List, Literal, Optional, Protocol, Sequence, Tuple, Union

import torch
from torch import nn

from . import spectral
from .models.base import TargetGroup, contract_of
from .wiener import DEFAULT_EPS, apply_wiener, frame_statistics, wiener_from_statistics

log = logging.getLogger(__name__)

Pipeline = Literal["streamed", "original"]
PIPELINES = ("streamed", "original")
ORIGINAL_PAD = 1024
"""Zeros the original tool appends to a track before every model."""
ORIGINAL_LEAD_IN = 0.5
"""Seconds of zeros before the track in the original tool's waveform model pass."""
ORIGINAL_CLAMP = 0.99
"""The original tool clamps its waveform model's output to this magnitude."""
NORBERT_EPS = float(torch.finfo(torch.float64).eps)
"""norbert's `wiener` epsilon when none is given (the original tool gives none)."""

# (chunk (channels, samples)) -> (sources, channels, samples)
SeparateFn = Callable[[torch.Tensor], torch.Tensor]
# (samples done, samples in all): after each segment, and within one after each model of a blend
ProgressFn = Callable[[int, int], None]
# (fraction of the current call's work done, 0 to 1)
StepFn = Callable[[float], None]


class TrackSource(Protocol):
    """Where the engine reads a track from: a tensor in memory or a `Spool` on disk."""

    length: int

    def read(self, start: int, stop: int) -> torch.Tensor:
        """Samples `[start, stop)` as `(channels, stop - start)`."""


class TensorTrack:
    """A `(channels, samples)` tensor as a `TrackSource` (reads are views, not copies)."""

    def __init__(self, wav: torch.Tensor):
        self.wav = wav
        self.length = wav.shape[-1]

    def read(self, start: int, stop: int) -> torch.Tensor:
        return self.wav[:, start:stop]


def as_track(track: Union[torch.Tensor, TrackSource]) -> TrackSource:
    return TensorTrack(track) if isinstance(track, torch.Tensor) else track


@dataclass(frozen=True)
class EngineOptions:
    """How a track is cut and filtered."""

    segment: float = 10.0
    """Segment length in seconds."""
    overlap: float = 0.25
    """Fraction of a segment shared with the next one, in [0, 0.5]."""
    shifts: int = 0
    """Random shifts per segment (the shift trick); 0 runs each segment once."""
    max_shift: float = 0.5
    """Largest shift in seconds."""
    wiener_iterations: int = 1
    """EM iterations of the Wiener filter for spectrogram models (0: mixture phase)."""
    wiener_window: int = 300
    """Frames per Wiener filter window."""
    softmask: bool = False
    """Start the Wiener filter from ratio masks instead of magnitudes with the mixture phase."""
    seed: int = 0
    """Seed of the shift trick's offsets, for reproducible output."""
    wiener_statistics: Literal["window", "track"] = "window"
    """Where the streamed Wiener filter takes its spatial covariances from: each window of
    `wiener_window` frames on its own, or the whole track, gathered by a first pass of the
    spectrogram models over every segment (twice their compute, memory still bounded by
    the segment; one iteration then filters as over the whole track at once)."""
    pipeline: Pipeline = "streamed"
    """streamed: overlapping segments in bounded memory (the options above). original: the
    original Danna-Sep tool's whole-track separation step by step (see the module's
    docstring); segment, overlap, wiener_window and the shift trick do not apply, and
    memory grows with the track's length."""
    precision: Literal["auto", "float32", "bfloat16"] = "float32"
    """Arithmetic of the networks' forward passes. bfloat16 runs a bfloat16 copy of each
    network (TorchScript files: autocast) and is about twice as fast on CPUs with native
    bfloat16 arithmetic (AVX512-BF16, AMX); masks change by ~1e-3. The STFTs and the Wiener
    filter always run in full precision. "auto": bfloat16 where the CPU has it natively,
    float32 otherwise (`resolve_precision`)."""

    def __post_init__(self) -> None:
        if self.segment <= 0:
            raise ValueError("segment must be a positive number of seconds")
        if not 0 <= self.overlap <= 0.5:
            raise ValueError("overlap must be between 0 and 0.5")
        if self.shifts < 0:
            raise ValueError("shifts must be 0 or more")
        if self.wiener_iterations < 0:
            raise ValueError("wiener_iterations must be 0 or more")
        if self.precision not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"precision must be auto, float32 or bfloat16, got {self.precision!r}")
        if self.wiener_statistics not in ("window", "track"):
            raise ValueError(f"wiener_statistics must be window or track, got {self.wiener_statistics!r}")
        if self.pipeline not in PIPELINES:
            raise ValueError(f"pipeline must be streamed or original, got {self.pipeline!r}")
        if self.pipeline == "original" and self.shifts:
            raise ValueError("the original pipeline runs no shift trick (its waveform pass is fixed)")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' picks CUDA, then Apple's MPS, then the CPU; anything else is taken as given."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but CUDA is not available")
    return resolved


def native_bfloat16(device: torch.device) -> bool:
    """Whether `device` is a CPU with bfloat16 arithmetic in hardware (AVX512-BF16 or AMX)."""
    if device.type != "cpu":
        return False
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu, private but long-lived
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' becomes bfloat16 on a CPU with native bfloat16 arithmetic, float32 anywhere else."""
    if precision == "auto":
        return "bfloat16" if native_bfloat16(device) else "float32"
    return precision


class ModelRunner:
    """One model as a separation function on a chunk `(channels, samples)` -> `(sources, channels, samples)`.

    Handles the model's input domain: waveform models get the chunk; spectrogram models
    get the magnitude STFT and their masks or magnitudes are Wiener-filtered against the
    mixture STFT and inverted to exactly the chunk's length.

    A `TargetGroup` (single-target magnitude models, one per source) is one separation
    function: its models' estimates are joined into one `(sources, ...)` estimate before a
    single Wiener filter, as one multi-source model's would be.

    In bfloat16 an eager model runs as a bfloat16 copy (about a quarter faster than autocast,
    which converts between the precisions around every layer); with `own_model` the model
    itself is converted instead, saving the copy's memory.
    """

    def __init__(self, model: nn.Module, device: torch.device, options: EngineOptions,
                 own_model: bool = False):
        precision = resolve_precision(options.precision, device)
        if precision != options.precision:
            options = replace(options, precision=precision)
        self.device = device
        self.options = options
        parts = list(model) if isinstance(model, TargetGroup) else [model]
        contract = contract_of(parts[0])
        # A group's estimates are stacked in its order (its models are one network, so one
        # contract, layout and precision serve them all).
        self.sources: List[str] = [source for part in parts for source in contract_of(part).sources]
        self.input_domain: str = contract.input_domain
        self.output_kind: str = contract.output_kind
        self.samplerate: int = contract.samplerate
        # Frames per call in the original tool's pipeline (None: the whole track at once).
        self.original_chunk_frames: Optional[int] = contract.original_chunk_frames
        # Track-level Wiener statistics (EngineOptions.wiener_statistics == "track"): sums
        # gathered by `collect`, used by the next pass when `statistics_ready`.
        self.statistics: Optional[List] = None
        self.statistics_ready = False
        # 2D convolutions over (bins, frames) run about a quarter faster on the CPU with
        # channels-last tensors, with identical results; the weights' layout is all that changes.
        self.channels_last = any(isinstance(m, nn.Conv2d) for m in model.modules())
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        has_weights = any(p.is_floating_point() for p in model.parameters())
        self.cast = (precision == "bfloat16" and has_weights
                     and not any(isinstance(part, torch.jit.ScriptModule) for part in parts))
        if self.cast:
            model = (model if own_model else copy.deepcopy(model)).to(torch.bfloat16)
        self.model = model
        self.autocast = precision == "bfloat16" and not self.cast

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.cast:
            x = x.to(torch.bfloat16)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            if self.output_kind == "magnitude":  # one target per network, joined along the sources
                networks = list(self.model) if isinstance(self.model, TargetGroup) else [self.model]
                out = torch.stack([network(x) for network in networks], dim=1)
            else:
                out = self.model(x)
        return out.float().contiguous()

    @torch.no_grad()
    def __call__(self, chunk: torch.Tensor) -> torch.Tensor:
        length = chunk.shape[-1]
        x = chunk.to(self.device, torch.float32).unsqueeze(0)
        if self.options.pipeline == "original":
            return self._original(x, length).float().cpu()
        if self.input_domain == "waveform":
            out = self._forward(x)[0]
        else:
            out = self._spectrogram(x, length)
        return out.float().cpu()

    def _original(self, x: torch.Tensor, length: int) -> torch.Tensor:
        """The original tool's pass of this model over a whole track `(1, channels, length)`."""
        x = torch.nn.functional.pad(x, [0, ORIGINAL_PAD])
        if self.input_domain == "waveform":
            lead = int(round(ORIGINAL_LEAD_IN * self.samplerate))
            out = self._forward(torch.nn.functional.pad(x, [lead, 0]))[0]
            return out[..., lead:lead + length].clamp(-ORIGINAL_CLAMP, ORIGINAL_CLAMP)
        return self._spectrogram(x, length, whole_track=True)

    def _estimates(self, x: torch.Tensor, chunk: Optional[int] = None):
        """(mixture STFT (1, channels, bins, frames), magnitude estimates (1, sources, channels, bins, frames),
        padded length) of a chunk (1, channels, samples)."""
        padded = max(x.shape[-1], spectral.N_FFT)  # the STFT's reflect padding needs more than n_fft / 2
        if padded > x.shape[-1]:
            x = torch.nn.functional.pad(x, [0, padded - x.shape[-1]])
        mix_stft = spectral.stft(x)
        mag = mix_stft.abs()
        out = self._masks(mag, chunk)
        # masks, or magnitude estimates (1, sources, channels, bins, frames) as `_forward` joins them
        estimates = out * mag.unsqueeze(1) if self.output_kind == "mask" else out
        return mix_stft, estimates, padded

    def uses_track_statistics(self) -> bool:
        """Whether this runner can take its Wiener statistics from a whole track (a spectrogram
        model estimating several sources; a single target is filtered against its residual)."""
        return self.input_domain != "waveform" and len(self.sources) > 1

    @torch.no_grad()
    def collect(self, chunk: torch.Tensor, weights: torch.Tensor) -> None:
        """Add a chunk `(channels, samples)` to the track's Wiener statistics, each sample
        counting with its `weights` `(samples,)` (a frame with the weight of its centre)."""
        x = chunk.to(self.device, torch.float32).unsqueeze(0)
        mix_stft, estimates, padded = self._estimates(x)
        centres = (torch.arange(mix_stft.shape[-1]) * spectral.HOP).clamp(max=chunk.shape[-1] - 1)
        frame_weights = weights[centres].to(self.device)
        products, power = frame_statistics(estimates[0].permute(3, 2, 1, 0), mix_stft[0].permute(2, 1, 0),
                                           frame_weights)
        peak = float(mix_stft.abs().max())
        if self.statistics is None:
            self.statistics = [products, power, peak]
        else:
            self.statistics[0] += products
            self.statistics[1] += power
            self.statistics[2] = max(self.statistics[2], peak)

    def _masks(self, mag: torch.Tensor, chunk: Optional[int]) -> torch.Tensor:
        """The model on `mag` `(1, channels, bins, frames)`, in calls of `chunk` frames (None: one call)."""
        frames = mag.shape[-1]
        if chunk is None or frames <= chunk:
            return self._forward(mag)
        return torch.cat([self._forward(mag[..., start:start + chunk]) for start in range(0, frames, chunk)],
                         dim=-1)

    def _spectrogram(self, x: torch.Tensor, length: int, whole_track: bool = False) -> torch.Tensor:
        mix_stft, estimates, padded = self._estimates(x, self.original_chunk_frames if whole_track else None)
        if (not whole_track and self.statistics_ready and self.statistics is not None
                and self.options.wiener_iterations == 1):
            products, power, peak = self.statistics
            filtered = wiener_from_statistics(estimates[0].permute(3, 2, 1, 0), mix_stft[0].permute(2, 1, 0),
                                              products, power, peak)
            return spectral.istft(filtered.permute(3, 2, 1, 0), padded)[..., :length]
        # A source estimated alone would get a Wiener mask of 1, the whole mixture, whatever
        # the model said: filter it against the residual (the mixture minus the estimate),
        # as the single-target networks' own separators do, and keep the target.
        single = estimates.shape[1] == 1
        filtered = apply_wiener(
            estimates,
            mix_stft,
            iterations=self.options.wiener_iterations,
            softmask=self.options.softmask,
            residual=single,
            eps=NORBERT_EPS if whole_track else DEFAULT_EPS,
            window=None if whole_track else self.options.wiener_window,
        )
        if single:
            filtered = filtered[:, :1]
        return spectral.istft(filtered[0], padded)[..., :length]


def plan_segments(length: int, segment: int, overlap: float) -> List[Tuple[int, int]]:
    """(start, stop) sample ranges covering `length`; each overlaps the next by `segment * overlap`."""
    if length <= segment:
        return [(0, length)]
    stride = max(1, segment - int(round(segment * overlap)))
    bounds = []
    start = 0
    while True:
        stop = min(start + segment, length)
        bounds.append((start, stop))
        if stop >= length:
            return bounds
        start += stride


def _crossfade(overlap: int, dtype: torch.dtype) -> torch.Tensor:
    """Weight of the later segment over an overlap: 0 on the first quarter, a linear ramp, 1 on the last quarter."""
    if overlap == 0:
        return torch.ones(0, dtype=dtype)
    position = torch.arange(overlap, dtype=torch.float64) + 0.5
    ramp = ((position - overlap / 4) / (overlap / 2)).clamp(0, 1)
    return ramp.to(dtype)


def _call(fn: SeparateFn, chunk: torch.Tensor, step: StepFn) -> torch.Tensor:
    """fn(chunk), saying its progress through `step`: after each model of a `Blend`, else once."""
    if isinstance(fn, Blend):
        return fn(chunk, step)
    out = fn(chunk)
    step(1.0)
    return out


def _shifted(fn: SeparateFn, track: TrackSource, start: int, stop: int, shifts: int,
             max_shift: int, generator: torch.Generator, step: StepFn) -> torch.Tensor:
    """fn on track[start:stop], averaged over `shifts` random earlier starts (zeros before the track)."""
    if shifts == 0 or max_shift == 0:
        return _call(fn, track.read(start, stop), step)
    total: Optional[torch.Tensor] = None
    for index in range(shifts):
        offset = int(torch.randint(0, max_shift + 1, (1,), generator=generator))
        begin = start - offset
        window = track.read(max(0, begin), stop)
        if begin < 0:
            window = torch.nn.functional.pad(window, [-begin, 0])
        out = _call(fn, window, lambda fraction, index=index: step((index + fraction) / shifts))[..., offset:]
        total = out if total is None else total + out
    assert total is not None
    return total / shifts


def stream(
    fn: SeparateFn,
    track: Union[torch.Tensor, TrackSource],
    samplerate: int,
    options: EngineOptions,
    progress: Optional[ProgressFn] = None,
) -> Iterator[Tuple[int, torch.Tensor]]:
    """Separate `track` `(channels, samples)` (a tensor or a `TrackSource`) segment by segment.

    Yields `(start, block)` with `block` of shape `(sources, channels, n)`: consecutive,
    finished pieces of the output that together cover the track exactly once. Only the
    current segment and the pending overlap are held in memory. `progress(done, total)`
    counts samples: it moves through each segment's share of the track as each model of a
    blend (and each shift) finishes, and is called at least once per segment.
    """
    track = as_track(track)
    length = track.length
    if options.pipeline == "original":  # the whole track in one piece, no shift trick
        segment = max(1, length)
        options = replace(options, shifts=0)
    else:
        segment = max(1, int(round(options.segment * samplerate)))
    bounds = plan_segments(length, segment, options.overlap)
    if options.wiener_statistics == "track" and options.pipeline == "streamed":
        runners = [r for r in (fn.runners if isinstance(fn, Blend) else [fn])
                   if isinstance(r, ModelRunner) and r.uses_track_statistics()]
        _collect_statistics(runners, track, bounds)
    yield from _stream(fn, track, bounds, samplerate, options, progress)


def _segment_weights(bounds: List[Tuple[int, int]], index: int) -> torch.Tensor:
    """Each sample's share in segment `index` of the cross-faded output (shares sum to 1 over segments)."""
    start, stop = bounds[index]
    weights = torch.ones(stop - start, dtype=torch.float64)
    if index > 0:
        shared = bounds[index - 1][1] - start
        weights[:shared] = _crossfade(shared, torch.float64)
    if index + 1 < len(bounds):
        shared = stop - bounds[index + 1][0]
        weights[weights.shape[0] - shared:] *= 1 - _crossfade(shared, torch.float64)
    return weights


def _collect_statistics(runners: Sequence["ModelRunner"], track: TrackSource,
                        bounds: List[Tuple[int, int]]) -> None:
    """Pass 1 of track-level Wiener statistics: every runner over every segment, its sums weighted
    by the cross-fade, so that each part of the track counts once."""
    for runner in runners:
        runner.statistics, runner.statistics_ready = None, False
    for index, (start, stop) in enumerate(bounds):
        chunk = track.read(start, stop)
        weights = _segment_weights(bounds, index)
        for runner in runners:
            runner.collect(chunk, weights)
    for runner in runners:
        runner.statistics_ready = True


def _stream(fn: SeparateFn, track: TrackSource, bounds: List[Tuple[int, int]], samplerate: int,
            options: EngineOptions, progress: Optional[ProgressFn]) -> Iterator[Tuple[int, torch.Tensor]]:
    length = track.length
    generator = torch.Generator().manual_seed(options.seed)
    max_shift = int(round(options.max_shift * samplerate))
    tail: Optional[torch.Tensor] = None  # previous segment's output from the next segment's start on
    emitted = 0
    for index, (start, stop) in enumerate(bounds):
        # This segment's share of the track: from its start to where the next one starts.
        goal = stop if index + 1 == len(bounds) else bounds[index + 1][0]

        def step(fraction: float, start: int = start, goal: int = goal) -> None:
            if progress is not None:
                progress(start + int((goal - start) * fraction), length)

        out = _shifted(fn, track, start, stop, options.shifts, max_shift, generator, step)
        if tail is not None:
            shared = tail.shape[-1]
            fade = _crossfade(shared, out.dtype)
            out = out.clone()
            out[..., :shared] = tail * (1 - fade) + out[..., :shared] * fade
        if index + 1 < len(bounds):
            next_start = bounds[index + 1][0]
            keep = next_start - start
            block, tail = out[..., :keep], out[..., keep:]
        else:
            block, tail = out, None
        if block.shape[-1]:
            yield emitted, block
            emitted += block.shape[-1]
    if emitted != length:  # pragma: no cover - guarded by plan_segments
        raise RuntimeError(f"internal error: emitted {emitted} of {length} samples")


def separate(
    fn: SeparateFn,
    track: Union[torch.Tensor, TrackSource],
    samplerate: int,
    options: EngineOptions,
    progress: Optional[ProgressFn] = None,
) -> torch.Tensor:
    """The whole output `(sources, channels, samples)` of `stream`, gathered in memory."""
    blocks = [block for _, block in stream(fn, track, samplerate, options, progress)]
    return torch.cat(blocks, dim=-1)


class Blend:
    """Weighted per-source sum of several runners on the same chunk.

    weights[m][source] is model m's weight for that source; a model that does not
    produce a source contributes nothing to it.
    """

    def __init__(self, runners: Sequence[SeparateFn], weights: Sequence[dict], sources: Sequence[str]):
        if len(runners) != len(weights):
            raise ValueError("one weight table per model is needed")
        self.runners = list(runners)
        self.weights = [dict(w) for w in weights]
        self.sources = list(sources)

    def __call__(self, chunk: torch.Tensor, step: Optional[StepFn] = None) -> torch.Tensor:
        """The blend on `chunk`; `step(fraction)` after each model that has a weight."""
        total = torch.zeros(len(self.sources), chunk.shape[0], chunk.shape[-1])
        active = [(runner, weights) for runner, weights in zip(self.runners, self.weights)
                  if any(weights.get(s, 0.0) for s in self.sources)]
        for done, (runner, weights) in enumerate(active, start=1):
            out = runner(chunk)
            for j, name in enumerate(runner.sources):
                if name in self.sources and weights.get(name, 0.0):
                    total[self.sources.index(name)] += weights[name] * out[j]
            if step is not None:
                step(done / len(active))
        if not active and step is not None:
            step(1.0)
        return total
