"""What a run minimises: the configured loss kind, applied through the model's contract.

A loss kind fits one kind of model output (`LOSS_OUTPUTS`): the combination loss and the
masked magnitude MSE take masks, L1 and L2 waveforms, the magnitude MSE one target's
magnitude. `Objective` turns a batch of sources into the network's input (the mixture, or
its magnitude spectrogram), runs the network, and scores its output against the sources
the model estimates; the network is never asked for by name.
"""

from __future__ import annotations

import contextlib
from typing import Callable, ContextManager, Dict, Sequence, Type

import torch

from .. import spectral
from ..errors import DannaSepError
from ..models import SeparationModel
from . import losses as L
from .config import LossConfig

LOSS_OUTPUTS: Dict[str, str] = {"closs": "mask", "mse_mask": "mask", "l1": "waveform", "l2": "waveform",
                                "mse_mag": "magnitude"}
"""The model output each loss kind scores."""

Forward = Callable[[torch.Tensor], torch.Tensor]


def check_loss_fits(kind: str, network: Type[SeparationModel], fail: Callable[[str], DannaSepError]) -> None:
    """Raise `fail(message)` unless loss `kind` scores the output of `network`'s class."""
    output = network.output_kind
    if LOSS_OUTPUTS[kind] != output:
        wanted = "; ".join(f"{o}s: {', '.join(k for k in LOSS_OUTPUTS if LOSS_OUTPUTS[k] == o)}"
                           for o in dict.fromkeys(LOSS_OUTPUTS.values()))
        raise fail(f"loss.kind {kind!r} does not fit {network.name} (its output is a {output}; {wanted})")


class Objective:
    """The loss of one batch of sources `(batch, 4, channels, samples)`, whose sum is the mixture.

    `source_index` picks the sources the model estimates, in its order; `autocast` gives
    the context the network runs in (mixed precision or none).
    """

    def __init__(self, loss: LossConfig, model: SeparationModel, source_index: Sequence[int],
                 autocast: Callable[[], ContextManager] = contextlib.nullcontext):
        self.loss = loss
        self.model = model
        self.source_index = list(source_index)
        self.autocast = autocast

    def _run(self, forward: Forward, x: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            out = forward(x)
        return out.float()

    def __call__(self, forward: Forward, sources: torch.Tensor) -> L.LossResult:
        """The loss of `forward` (the model, or its DDP wrapper) on `sources`."""
        kind = self.loss.kind
        targets = sources[:, self.source_index]
        if kind == "mse_mask":
            return L.LossResult(self._masked_mse(forward, sources, targets), {})
        mixture = sources.sum(dim=1)
        if self.model.input_domain == "waveform":
            estimates = self._run(forward, mixture)
            loss = L.waveform_l1(estimates, targets) if kind == "l1" else L.waveform_l2(estimates, targets)
            return L.LossResult(loss, {})
        mix_stft = spectral.stft(mixture)
        out = self._run(forward, mix_stft.abs())
        if kind == "closs":
            return L.closs(out, mix_stft, spectral.stft(targets), targets, mixture,
                           wiener_iterations=self.loss.wiener_iterations, mcoeff=self.loss.mcoeff)
        reference = spectral.stft(targets[:, 0]).abs()  # a magnitude model estimates one target
        return L.LossResult(L.magnitude_mse(out, reference), {})

    def _masked_mse(self, forward: Forward, sources: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """`mse_mask` on the bins the model learns (`output_bins`): masks above them (a
        constant, where a network reads fewer bins than it returns) carry no gradient."""
        bins = self.model.output_bins
        target_stft = spectral.stft(targets)[..., :bins, :]
        if len(self.source_index) == sources.shape[1]:
            # The STFT is linear: the mixture's is the sum of the sources', one transform fewer.
            mix_stft = target_stft.sum(dim=1)
        else:
            mix_stft = spectral.stft(sources.sum(dim=1))[..., :bins, :]
        magnitude = mix_stft.abs()  # a network reading fewer bins ignores the rest anyway
        masks = self._run(forward, magnitude)
        return L.masked_magnitude_mse(masks[..., :bins, :], magnitude, target_stft.abs())
