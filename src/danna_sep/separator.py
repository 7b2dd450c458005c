"""The Python API: a bundle, the chunked engine and the blend behind one object."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Dict, Iterator, Optional, Tuple, Union

import torch

from .bundle import Bundle, BundleError, load_bundle, load_original
from .engine import Blend, EngineOptions, ModelRunner, ProgressFn, resolve_device, stream

log = logging.getLogger(__name__)

SAMPLERATE = 44100
PRETRAINED = Path(__file__).parent / "pretrained"


def resolve_bundle(
    bundle: Union[Bundle, str, os.PathLike, None] = None,
    checkpoints: Union[str, os.PathLike, None] = None,
    fast: bool = False,
) -> Bundle:
    """A bundle object, a bundle folder, the name of a shipped bundle, or the original tool's checkpoints."""
    if isinstance(bundle, Bundle):
        return bundle
    if checkpoints is not None:
        return load_original(checkpoints, fast=fast)
    if bundle is None:
        bundle = "default"
    path = Path(bundle)
    if path.is_dir():
        return load_bundle(path)
    shipped = PRETRAINED / str(bundle)
    if shipped.is_dir():
        return load_bundle(shipped)
    if str(bundle) == "default":
        raise BundleError(
            "no default bundle is shipped yet: pass --bundle PATH (a danna-sep bundle) "
            "or --checkpoints DIR (the original tool's TorchScript files)"
        )
    raise BundleError(f"{bundle}: no such bundle folder or shipped bundle")


class Separator:
    """Separate audio with a bundle.

    `separate_tensor(wav, samplerate)` takes `(channels, samples)` (or `(samples,)`) at
    any rate and returns `{source: (2, samples)}` at that rate; the caller's tensor is
    never modified. `progress(done, total)` is called after each segment.
    """

    def __init__(
        self,
        bundle: Union[Bundle, str, os.PathLike, None] = None,
        *,
        checkpoints: Union[str, os.PathLike, None] = None,
        fast: bool = False,
        device: Union[str, torch.device] = "auto",
        segment: float = 10.0,
        overlap: float = 0.25,
        shifts: int = 0,
        wiener_iterations: int = 1,
        progress: Optional[ProgressFn] = None,
    ):
        self.bundle = resolve_bundle(bundle, checkpoints, fast)
        self.device = resolve_device(device)
        self.options = EngineOptions(
            segment=segment, overlap=overlap, shifts=shifts, wiener_iterations=wiener_iterations
        )
        self.progress = progress
        runners = []
        for member in self.bundle.members:
            member.model.to(self.device).eval()
            runners.append(ModelRunner(member.model, self.device, self.options))
        self._blend = Blend(runners, [m.blend for m in self.bundle.members], self.bundle.sources)

    @property
    def sources(self) -> list:
        return list(self.bundle.sources)

    def stream(self, wav: torch.Tensor) -> Iterator[Tuple[int, torch.Tensor]]:
        """Blocks `(start, (sources, 2, n))` of the separation of a 44.1 kHz stereo `(2, samples)` track."""
        return stream(self._blend, wav, SAMPLERATE, self.options, self.progress)

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
        if samplerate != SAMPLERATE:
            from .audio import resample

            track = resample(track, samplerate, SAMPLERATE)
        out = torch.cat([block for _, block in self.stream(track.contiguous())], dim=-1)
        stems = {}
        for index, name in enumerate(self.sources):
            stem = out[index]
            if samplerate != SAMPLERATE:
                stem = resample(stem, SAMPLERATE, samplerate)
                stem = torch.nn.functional.pad(stem, [0, max(0, length - stem.shape[-1])])[..., :length]
            stems[name] = stem
        return stems

    def separate_file(self, path: Union[str, os.PathLike]) -> Dict[str, torch.Tensor]:
        """Read any audio file and separate it; stems at the file's own sample rate."""
        from .audio import load

        wav, rate = load(path)
        stems = self.separate_tensor(wav, SAMPLERATE)
        if rate != SAMPLERATE:
            from .audio import resample

            length = round(wav.shape[-1] * rate / SAMPLERATE)
            stems = {k: resample(v, SAMPLERATE, rate)[..., :length] for k, v in stems.items()}
        return stems
