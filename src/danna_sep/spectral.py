"""The one STFT convention of danna-sep.

n_fft 4096, hop 1024, periodic Hann window, centred frames with reflect padding, one-sided
spectrum (2049 bins). Every spectrogram model, the Wiener filter and the losses go through
these two functions, so a change here is a change everywhere.
"""

from __future__ import annotations

import math

import torch

from . import SAMPLERATE

N_FFT = 4096
HOP = 1024


def _window(n_fft: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return torch.hann_window(n_fft, periodic=True, device=device, dtype=dtype)


def stft(x: torch.Tensor, n_fft: int = N_FFT, hop: int = HOP) -> torch.Tensor:
    """Real signal `(..., samples)` to complex spectrogram `(..., n_fft // 2 + 1, frames)`.

    frames = samples // hop + 1. The signal must be longer than n_fft // 2 samples,
    because the centred frames are padded by reflection.
    """
    if x.is_complex():
        raise TypeError("stft expects a real signal")
    samples = x.shape[-1]
    if samples <= n_fft // 2:
        raise ValueError(
            f"signal of {samples} samples is too short for an STFT of size {n_fft} "
            f"(needs more than {n_fft // 2})"
        )
    lead = x.shape[:-1]
    spec = torch.stft(
        x.reshape(-1, samples),
        n_fft=n_fft,
        hop_length=hop,
        window=_window(n_fft, x.device, x.dtype),
        center=True,
        pad_mode="reflect",
        normalized=False,
        onesided=True,
        return_complex=True,
    )
    return spec.reshape(lead + spec.shape[-2:])


def istft(spec: torch.Tensor, length: int, n_fft: int = N_FFT, hop: int = HOP) -> torch.Tensor:
    """Complex spectrogram `(..., bins, frames)` back to exactly `length` samples `(..., length)`."""
    if not spec.is_complex():
        raise TypeError("istft expects a complex spectrogram")
    lead = spec.shape[:-2]
    bins, frames = spec.shape[-2:]
    real_dtype = spec.real.dtype
    wav = torch.istft(
        spec.reshape(-1, bins, frames),
        n_fft=n_fft,
        hop_length=hop,
        window=_window(n_fft, spec.device, real_dtype),
        center=True,
        normalized=False,
        onesided=True,
        length=length,
    )
    return wav.reshape(lead + (length,))


def bandwidth_to_max_bin(rate: float, n_fft: int, bandwidth: float) -> int:
    """Number of STFT bins whose centre frequency is at most `bandwidth` Hz.

    1487 for 44.1 kHz, n_fft 4096 and 16 kHz (open-unmix's definition).
    """
    bin_width = rate / n_fft
    return min(n_fft // 2 + 1, math.floor(bandwidth / bin_width) + 1)


def frames_for(samples: int, hop: int = HOP) -> int:
    """Number of STFT frames of a signal of `samples` samples."""
    return samples // hop + 1
