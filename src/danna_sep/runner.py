"""One model as a separation function on one chunk, and the options of the engine.

`ModelRunner` takes a chunk `(channels, samples)` to `(sources, channels, samples)` through a
model of either input domain: waveform models get the chunk; spectrogram models get the
mixture's magnitude STFT, and their masks or magnitudes are Wiener-filtered against the
mixture's STFT and inverted. `engine` cuts tracks into chunks and blends runners; its docstring
also describes the original tool's whole-track pipeline, which `pipeline="original"` replays.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, replace
from typing import List, Literal, Optional, Sequence

import torch
from torch import nn

from . import DEFAULT_OVERLAP, spectral, wiener_fused
from .models.base import TargetGroup, contract_of
from .models.fusion import fold_batch_norms
from .models.layout import conv1d_to_channels_last
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


@dataclass(frozen=True)
class EngineOptions:
    """How a track is cut and filtered."""

    segment: float = 10.0
    """Segment length in seconds."""
    overlap: float = DEFAULT_OVERLAP
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
    wiener_blend: Literal["members", "joint"] = "members"
    """How a blend's spectrogram members meet the Wiener filter: "members" filters each
    member's estimate on its own and blends the results (the original's way); "joint" blends
    their magnitude estimates (each source's weights normalised over them) and filters once,
    scaled back by those weights. Joint is faster (one filter instead of one per member) and
    measured +0.10 dB on produced songs but -0.05 dB on MIR-1K (README, The default model)."""
    batch_segments: int = 1
    """Segments of a track separated in one pass of the networks (without shifts): more
    work per kernel launch on a GPU; 0 picks it (on a GPU 16 at first, halved while they do
    not fit in its memory; 1 elsewhere: on 2 CPU cores 3 at once was a tenth slower). Memory
    grows with it."""
    blend_bins: Literal["modelled", "all"] = "modelled"
    """Where a blend member's weight applies: "modelled": only on the frequency bins its
    network models (`output_bins`; above them a U-Net of 768 bins outputs a constant mask),
    its weight there shared among the spectrogram members that do model them, in proportion
    to their weights; "all": on every bin (the original's way)."""
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
        if self.wiener_blend not in ("members", "joint"):
            raise ValueError(f"wiener_blend must be members or joint, got {self.wiener_blend!r}")
        if self.wiener_blend == "joint" and self.wiener_statistics == "track":
            raise ValueError("wiener_blend joint filters the blend's estimate: track statistics are per member")
        if self.blend_bins not in ("modelled", "all"):
            raise ValueError(f"blend_bins must be modelled or all, got {self.blend_bins!r}")
        if self.batch_segments < 0:
            raise ValueError("batch_segments must be 0 (automatic) or more")
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
    which converts between the precisions around every layer). An eager model in eval mode
    with batch norms runs with them folded into its convolutions (models/fusion.py), on a
    copy too, and so is one with 1D convolutions on the CPU: they run as channels-last 2D
    ones (models/layout.py). With `own_model` the model itself is converted and folded
    instead, saving the copy's memory.
    """

    def __init__(self, model: nn.Module, device: torch.device, options: EngineOptions,
                 own_model: bool = False, sources: Optional[Sequence[str]] = None):
        precision = resolve_precision(options.precision, device)
        if precision != options.precision:
            options = replace(options, precision=precision)
        self.device = device
        self.options = options
        # Only `sources` are wanted (a blend's zero weights): a model that can skip the
        # others' work (Demucs' separate decoders) does so, on a copy unless it is ours.
        prunes = (sources is not None and callable(getattr(model, "keep_decoders", None))
                  and not model.training and not isinstance(model, torch.jit.ScriptModule)
                  and any(name not in sources for name in contract_of(model).sources)
                  and any(name in sources for name in contract_of(model).sources))
        if prunes:
            model = model if own_model else copy.deepcopy(model)
            model.keep_decoders(list(sources))
            own_model = True
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
        has_weights = any(p.is_floating_point() for p in model.parameters())
        eager = not any(isinstance(part, torch.jit.ScriptModule) for part in parts)
        self.cast = precision == "bfloat16" and has_weights and eager
        # Batch norms folded into the convolutions before them (models/fusion.py): a pass
        # over the activations less per norm, on a copy unless the runner owns the model.
        folds = eager and not model.training and any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in model.modules())
        # 1D convolutions as channels-last 2D ones (models/layout.py): Demucs twice as fast in
        # bfloat16 on the CPU. Not measured on GPUs, so left as they are there.
        relayout = (eager and not model.training and device.type == "cpu"
                    and any(isinstance(m, (nn.Conv1d, nn.ConvTranspose1d)) for m in model.modules()))
        if self.cast or folds or relayout:
            model = model if own_model else copy.deepcopy(model)
        if folds:
            fold_batch_norms(model)
        if relayout:
            conv1d_to_channels_last(model)
        if self.cast:
            model = model.to(torch.bfloat16)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model
        self.autocast = precision == "bfloat16" and not self.cast
        if self.input_domain == "magnitude" and device.type == "cpu":
            wiener_fused.warm_up_in_background()

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
        """A chunk `(channels, samples)` -> `(sources, channels, samples)`; or a batch of chunks of
        one length `(batch, channels, samples)` -> `(batch, sources, channels, samples)` in one
        pass of the network (streamed pipeline, Wiener statistics per window)."""
        length = chunk.shape[-1]
        batched = chunk.dim() == 3
        x = chunk.to(self.device, torch.float32)
        x = x if batched else x.unsqueeze(0)
        if self.options.pipeline == "original":
            out = self._original(x, length)
        elif self.input_domain == "waveform":
            out = self._forward(x)
        else:
            out = spectral.istft(self.filtered(mixture_stft(x)), padded_length(length))[..., :length]
        return (out if batched else out[0]).float().cpu()

    @property
    def output_bins(self) -> Optional[int]:
        """How many low frequency bins the network models (None: all of them, or not said: a
        model's `output_bins` of 0, as in ONNX files, claims no limit)."""
        networks = list(self.model) if isinstance(self.model, TargetGroup) else [self.model]
        bins = [getattr(network, "output_bins", 0) or None for network in networks]
        return None if any(b is None for b in bins) else min(int(b) for b in bins)

    def shares_spectrograms(self) -> bool:
        """Whether a blend may hand this runner the mixture's STFT and invert its filtered
        spectrograms together with other runners' (streamed spectrogram models)."""
        return self.input_domain != "waveform" and self.options.pipeline == "streamed"

    @torch.no_grad()
    def filtered(self, mix_stft: torch.Tensor, max_bin: Optional[int] = None) -> torch.Tensor:
        """Wiener-filtered source STFTs `(batch, sources, channels, bins, frames)` of chunks, given
        their mixture STFTs `(batch, channels, bins, frames)` (`mixture_stft`, on this runner's device).
        With `max_bin`, only the bins below it (a blend that weighs nothing above them)."""
        return self._filter(self._estimates(mix_stft), mix_stft, max_bin=max_bin)

    @torch.no_grad()
    def estimates(self, mix_stft: torch.Tensor) -> torch.Tensor:
        """Magnitude estimates `(batch, sources, channels, bins, frames)` of chunks given their
        mixture STFTs, before any Wiener filter (for a blend's joint filter, `wiener_blend`)."""
        return self._estimates(mix_stft)

    @torch.no_grad()
    def filter(self, estimates: torch.Tensor, mix_stft: torch.Tensor) -> torch.Tensor:
        """This runner's Wiener filter (its options) on magnitude estimates `(batch, sources,
        channels, bins, frames)`: complex STFTs of the same shape."""
        return self._filter(estimates, mix_stft)

    def _original(self, x: torch.Tensor, length: int) -> torch.Tensor:
        """The original tool's pass of this model over a whole track `(1, channels, length)`:
        `(1, sources, channels, length)`."""
        x = torch.nn.functional.pad(x, [0, ORIGINAL_PAD])
        if self.input_domain == "waveform":
            lead = int(round(ORIGINAL_LEAD_IN * self.samplerate))
            out = self._forward(torch.nn.functional.pad(x, [lead, 0]))
            return out[..., lead:lead + length].clamp(-ORIGINAL_CLAMP, ORIGINAL_CLAMP)
        return self._spectrogram_whole(x, length)

    def _estimates(self, mix_stft: torch.Tensor, chunk: Optional[int] = None) -> torch.Tensor:
        """Magnitude estimates `(batch, sources, channels, bins, frames)` from the mixture STFTs
        `(batch, channels, bins, frames)`: masks times the mixture magnitude, or the model's own."""
        mag = mix_stft.abs()
        out = self._masks(mag, chunk)
        return out * mag.unsqueeze(1) if self.output_kind == "mask" else out

    def uses_track_statistics(self) -> bool:
        """Whether this runner can take its Wiener statistics from a whole track (a spectrogram
        model estimating several sources; a single target is filtered against its residual)."""
        return self.input_domain != "waveform" and len(self.sources) > 1

    @torch.no_grad()
    def collect(self, chunk: torch.Tensor, weights: torch.Tensor) -> None:
        """Add a chunk `(channels, samples)` to the track's Wiener statistics, each sample
        counting with its `weights` `(samples,)` (a frame with the weight of its centre)."""
        x = chunk.to(self.device, torch.float32).unsqueeze(0)
        mix_stft = mixture_stft(x)
        estimates = self._estimates(mix_stft)
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

    def _spectrogram_whole(self, x: torch.Tensor, length: int) -> torch.Tensor:
        """The original pipeline's pass over a whole track `(1, channels, samples)`: chunked
        frames, one Wiener filter over the track with norbert's epsilon."""
        mix_stft = mixture_stft(x)
        estimates = self._estimates(mix_stft, self.original_chunk_frames)
        filtered = self._filter(estimates, mix_stft, whole_track=True)
        return spectral.istft(filtered, padded_length(x.shape[-1]))[..., :length]  # (1, sources, channels, length)

    def _filter(self, estimates: torch.Tensor, mix_stft: torch.Tensor, whole_track: bool = False,
                max_bin: Optional[int] = None) -> torch.Tensor:
        """Complex source STFTs `(batch, sources, channels, bins, frames)` from magnitude estimates
        `(batch, sources, channels, bins, frames)` and the mixture STFTs `(batch, channels, bins,
        frames)`; each item filtered on its own (the bins below `max_bin` only, when given)."""
        if (not whole_track and self.statistics_ready and self.statistics is not None
                and self.options.wiener_iterations == 1):
            if estimates.shape[0] != 1:
                raise ValueError("track-level Wiener statistics filter one chunk at a time")
            products, power, peak = self.statistics
            filtered = wiener_from_statistics(estimates[0].permute(3, 2, 1, 0), mix_stft[0].permute(2, 1, 0),
                                              products, power, peak)
            return filtered.permute(3, 2, 1, 0).unsqueeze(0)[..., :max_bin, :]
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
            max_bin=max_bin,
        )
        return filtered[:, :1] if single else filtered


def padded_length(samples: int) -> int:
    """A chunk's length as its STFT sees it: the STFT's reflect padding needs more than n_fft / 2
    samples, so shorter chunks are padded with zeros to n_fft."""
    return max(samples, spectral.N_FFT)


def mixture_stft(x: torch.Tensor) -> torch.Tensor:
    """The STFTs `(batch, channels, bins, frames)` of chunks `(batch, channels, samples)`, zero-padded to `padded_length`."""
    padded = padded_length(x.shape[-1])
    if padded > x.shape[-1]:
        x = torch.nn.functional.pad(x, [0, padded - x.shape[-1]])
    return spectral.stft(x)
