"""Pieces shared by the networks: source order, Demucs initialisation, resampling by 2."""

import math
from typing import List, Tuple

import torch
from torch import nn
import torch.nn.functional as F

from .. import SAMPLERATE, SOURCES  # one home each for the whole package


@torch.no_grad()
def rescale_conv_weights(module: nn.Module, reference: float) -> None:
    """Demucs' initialisation: divide each 1-d (transposed) conv's weight and bias by sqrt(std / reference)."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv1d, nn.ConvTranspose1d)):
            scale = (layer.weight.std() / reference) ** 0.5
            layer.weight.div_(scale)
            if layer.bias is not None:
                layer.bias.div_(scale)


def _sinc(t: torch.Tensor) -> torch.Tensor:
    safe = torch.where(t == 0, torch.ones_like(t), t)
    return torch.where(t == 0, torch.ones_like(t), torch.sin(safe) / safe)


class FractionalResample(nn.Module):
    """Resample by the ratio new_rate / old_rate with a windowed-sinc filter bank.

    The filter is the one of julius' ResampleFrac (24 zero crossings, a low-pass at
    0.945 of the lower Nyquist, squared-cosine window), kept as the buffer `kernel` of
    shape `(new_rate, 1, taps)` so that weights trained with julius load unchanged.
    Input `(..., time)`; output `(..., floor(time * new_rate / old_rate))`.
    """

    old_rate: int
    new_rate: int
    width: int

    def __init__(self, old_rate: int, new_rate: int, zeros: int = 24, rolloff: float = 0.945):
        super().__init__()
        divisor = math.gcd(old_rate, new_rate)
        self.old_rate = old_rate // divisor
        self.new_rate = new_rate // divisor
        cutoff = min(self.old_rate, self.new_rate) * rolloff
        self.width = math.ceil(zeros * self.old_rate / cutoff)
        offsets = torch.arange(-self.width, self.width + self.old_rate, dtype=torch.float64)
        phases = torch.arange(self.new_rate, dtype=torch.float64)[:, None] / self.new_rate
        t = ((offsets[None, :] / self.old_rate - phases) * cutoff).clamp(-zeros, zeros) * math.pi
        kernel = _sinc(t) * torch.cos(t / zeros / 2) ** 2
        kernel = kernel / kernel.sum(dim=-1, keepdim=True)
        self.register_buffer("kernel", kernel.float().unsqueeze(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        length = x.shape[-1]
        shape: List[int] = list(x.shape[:-1])
        shape.append(-1)
        flat = x.reshape(-1, 1, length)
        flat = F.pad(flat, (self.width, self.width + self.old_rate), mode="replicate")
        y = F.conv1d(flat, self.kernel, stride=self.old_rate)  # (n, new_rate, steps)
        y = y.transpose(1, 2).reshape(shape)
        out_length = (self.new_rate * length) // self.old_rate
        return y[..., :out_length]


def center_trim(x: torch.Tensor, length: int) -> torch.Tensor:
    """Keep the central `length` samples of `(..., time)`."""
    delta = x.shape[-1] - length
    start = delta // 2
    return x[..., start : start + length]


def standardize(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalise `(batch, channels, time)` by the mean and std of its mono mix."""
    mono = x.mean(dim=1, keepdim=True)
    mean = mono.mean(dim=-1, keepdim=True)
    if x.shape[-1] > 1:
        std = mono.std(dim=-1, keepdim=True) + 1e-5
    else:  # a single sample has no spread (and an unbiased std of NaN)
        std = torch.full_like(mean, 1e-5)
    return (x - mean) / std, mean, std
