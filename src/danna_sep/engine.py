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

import logging
from dataclasses import replace
from typing import Callable, Iterator, List, Optional, Protocol, Sequence, Tuple, Union

import torch

from . import spectral
# The runner and the options are the engine's API too: `from danna_sep.engine import EngineOptions`.
from .runner import (NORBERT_EPS, ORIGINAL_CLAMP, ORIGINAL_LEAD_IN, ORIGINAL_PAD, PIPELINES,  # noqa: F401
                     EngineOptions, ModelRunner, Pipeline, mixture_stft, native_bfloat16, padded_length,
                     resolve_device, resolve_precision)

log = logging.getLogger(__name__)

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


def plan_segments(length: int, segment: int, overlap: float) -> List[Tuple[int, int]]:
    """(start, stop) sample ranges covering `length`; each overlaps the next by `segment * overlap`,
    except that the last one, which ends at the track's end, starts early enough to be at least
    a quarter of a segment long: a few frames of a song's end would otherwise be separated with
    almost no context (and, under n_fft samples, from a zero-padded STFT)."""
    if length <= segment:
        return [(0, length)]
    stride = max(1, segment - int(round(segment * overlap)))
    bounds = []
    start = 0
    while True:
        stop = min(start + segment, length)
        if stop >= length:
            bounds.append((min(start, length - segment // 4), stop))
            return bounds
        bounds.append((start, stop))
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
    tail: Optional[torch.Tensor] = None  # previous segment's output from the next segment's start on
    emitted = 0
    for index, out in _segment_outputs(fn, track, bounds, samplerate, options, progress):
        start = bounds[index][0]
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


def _batchable(fn: SeparateFn) -> Optional[torch.device]:
    """The device of `fn` if it can take a batch of chunks at once (runners, or a blend of them,
    streaming with Wiener statistics per window), else None."""
    runners = fn.runners if isinstance(fn, Blend) else [fn]
    if not runners or not all(isinstance(r, ModelRunner) for r in runners):
        return None
    if any(r.options.pipeline != "streamed" or r.statistics_ready for r in runners):
        return None
    return runners[0].device


def _segment_outputs(fn: SeparateFn, track: TrackSource, bounds: List[Tuple[int, int]], samplerate: int,
                     options: EngineOptions, progress: Optional[ProgressFn]) -> Iterator[Tuple[int, torch.Tensor]]:
    """`(index, (sources, channels, samples))`: each segment's separation, in order.

    Without shifts, up to `options.batch_segments` consecutive segments of the same length go
    through `fn` together (0: as many as fit, on a GPU: 16 at first, halved each time one
    batch does not fit in its memory; one on other devices, where batches are slower)."""
    length = track.length
    generator = torch.Generator().manual_seed(options.seed)
    max_shift = int(round(options.max_shift * samplerate))
    device = _batchable(fn)
    batch = options.batch_segments
    if batch == 0:
        batch = 16 if device is not None and device.type == "cuda" else 1
    if device is None or options.shifts:
        batch = 1
    log.debug("%d segments, up to %d in one pass", len(bounds), batch)

    def stepper(first: int, last: int) -> StepFn:
        # Segments first..last's share of the track: from the first's start to where the next one starts.
        start = bounds[first][0]
        goal = bounds[last][1] if last + 1 == len(bounds) else bounds[last + 1][0]

        def step(fraction: float) -> None:
            if progress is not None:
                progress(start + int((goal - start) * fraction), length)
        return step

    index = 0
    while index < len(bounds):
        start, stop = bounds[index]
        group = [index]
        while (len(group) < batch and group[-1] + 1 < len(bounds)
               and bounds[group[-1] + 1][1] - bounds[group[-1] + 1][0] == stop - start):
            group.append(group[-1] + 1)
        if len(group) == 1:
            yield index, _shifted(fn, track, start, stop, options.shifts, max_shift, generator,
                                  stepper(index, index))
            index += 1
            continue
        chunks = torch.stack([track.read(*bounds[i]) for i in group])
        try:
            outs = _call(fn, chunks, stepper(group[0], group[-1]))
        except torch.cuda.OutOfMemoryError:
            if options.batch_segments != 0:
                raise
            del chunks
            torch.cuda.empty_cache()
            batch = max(1, len(group) // 2)
            log.info("%d segments at once do not fit in the GPU's memory; trying %d", len(group), batch)
            continue
        for i, out in zip(group, outs):
            yield i, out
        index = group[-1] + 1


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


def modelled_bin_weights(runners: Sequence[ModelRunner], weights: Sequence[dict], sources: Sequence[str],
                         bins: int) -> dict:
    """Each spectrogram runner's blend weights per source and frequency bin `(sources, bins)`:
    its weight on the bins its network models, nothing above them, and on each bin the
    modelling runners' weights scaled to the same sum as all of theirs (where none models a
    bin, every runner keeps its weight there)."""
    flat = torch.tensor([[w.get(s, 0.0) for s in sources] for w in weights], dtype=torch.float32)
    modelled = torch.ones(len(runners), bins)
    for m, runner in enumerate(runners):
        if runner.output_bins is not None:
            modelled[m, runner.output_bins:] = 0.0
    limited = flat[:, :, None] * modelled[:, None, :]  # (runners, sources, bins)
    covered = limited.sum(dim=0)
    total = flat.sum(dim=0)[:, None].expand_as(covered)
    scaled = torch.where(covered > 0, limited * (total / covered.clamp_min(1e-12)), flat[:, :, None])
    return {runner: scaled[m] for m, runner in enumerate(runners)}


def _weighted_bins(weights: Optional[torch.Tensor]) -> Optional[int]:
    """One past the highest bin with a weight in `weights` `(sources, bins)` (None: all bins)."""
    if weights is None:
        return None
    weighted = torch.nonzero(weights.abs().amax(dim=0) > 0)
    if len(weighted) == 0 or int(weighted[-1]) + 1 == weights.shape[-1]:
        return None
    return int(weighted[-1]) + 1


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

    @torch.no_grad()
    def __call__(self, chunk: torch.Tensor, step: Optional[StepFn] = None) -> torch.Tensor:
        """The blend on `chunk` `(channels, samples)`, or on a batch of chunks `(batch, channels,
        samples)` (each runner then takes the batch at once); `step(fraction)` after each model
        that has a weight.

        Spectrogram runners share the work around their networks: the mixture's STFT is
        taken once, and their weighted filtered spectrograms are summed and inverted by one
        iSTFT (the iSTFT is linear, so this is the sum of their waveforms, up to rounding).
        With `wiener_blend="joint"` (the runners' options) they are filtered once, together:
        their magnitudes, weighted per source, are normalised by the weights' sum, filtered,
        and scaled by it again.
        """
        length = chunk.shape[-1]
        batched = chunk.dim() == 3
        chunks = chunk if batched else chunk.unsqueeze(0)
        total = torch.zeros(chunks.shape[0], len(self.sources), chunks.shape[1], length)
        active = [(runner, weights) for runner, weights in zip(self.runners, self.weights)
                  if any(weights.get(s, 0.0) for s in self.sources)]
        shared = [runner for runner, _ in active if isinstance(runner, ModelRunner) and runner.shares_spectrograms()]
        # Runners on another device than the first shared one go their own way.
        shared = [runner for runner in shared if runner.device == shared[0].device]
        joint = len(shared) > 1 and shared[0].options.wiener_blend == "joint"
        mix_stft: Optional[torch.Tensor] = None
        spectrum: Optional[torch.Tensor] = None  # (batch, sources, channels, bins, frames), the weighted sum
        magnitude: Optional[torch.Tensor] = None  # joint: the weighted sum of the members' magnitudes
        share = torch.zeros(len(self.sources))  # joint: the shared members' weight per source
        per_bin: dict = {}  # shared runner -> its weights per source and bin (blend_bins "modelled")
        for done, (runner, weights) in enumerate(active, start=1):
            if runner in shared:
                if mix_stft is None:
                    mix_stft = mixture_stft(chunks.to(runner.device, torch.float32))
                    if shared[0].options.blend_bins == "modelled":
                        per_bin = modelled_bin_weights(shared, [w for r, w in active if r in shared],
                                                       self.sources, mix_stft.shape[-2])
                    spectrum = torch.zeros((mix_stft.shape[0], len(self.sources)) + mix_stft.shape[1:],
                                           dtype=mix_stft.dtype, device=mix_stft.device)
                    if joint:
                        magnitude = torch.zeros(spectrum.shape, device=mix_stft.device)
                if joint:
                    out, target = runner.estimates(mix_stft), magnitude
                    for j, name in enumerate(runner.sources):
                        if name in self.sources:
                            share[self.sources.index(name)] += weights.get(name, 0.0)
                else:
                    # Bins this runner weighs nothing on are not filtered (each bin is
                    # filtered on its own, so the others come out the same).
                    out = runner.filtered(mix_stft, max_bin=_weighted_bins(per_bin.get(runner)))
                    target = spectrum[..., :out.shape[-2], :]
            else:
                out = runner(chunks)
                target = total
            for j, name in enumerate(runner.sources):
                if name in self.sources and weights.get(name, 0.0):
                    index = self.sources.index(name)
                    if runner in per_bin:
                        weight = per_bin[runner][index, :out.shape[-2]]
                        target[:, index] += weight.to(out.device)[:, None] * out[:, j]
                    else:
                        target[:, index] += weights[name] * out[:, j]
            if step is not None and done < len(active):
                step(done / len(active))
        if joint and magnitude is not None and spectrum is not None:
            present = share > 0
            magnitude[:, present] /= share[present].to(magnitude.device)[None, :, None, None, None]
            filtered = shared[0].filter(magnitude, mix_stft)
            spectrum = filtered * share.to(filtered.device)[None, :, None, None, None]
        if spectrum is not None:
            total += spectral.istft(spectrum, padded_length(length))[..., :length].float().cpu()
        if step is not None:
            step(1.0)
        return total if batched else total[0]
