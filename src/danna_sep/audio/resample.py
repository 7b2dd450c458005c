"""Sample-rate conversion with soxr at high quality: a whole tensor at once, or a stream of
blocks (the input on its way into a spool, a stem on its way into a file)."""

from __future__ import annotations

from typing import Optional

import numpy as np
import soxr
import torch


def check_rate(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def fit_length(wav: torch.Tensor, length: int) -> torch.Tensor:
    """`(..., n)` cut, or zero-padded at the end, to `(..., length)`."""
    if wav.shape[-1] >= length:
        return wav[..., :length]
    return torch.nn.functional.pad(wav, [0, length - wav.shape[-1]])


def resample(wav: torch.Tensor, from_rate: int, to_rate: int, length: Optional[int] = None) -> torch.Tensor:
    """Resample `(..., samples)` (normally `(channels, samples)`) with soxr, high quality.

    Returns float32 `(..., round(samples * to_rate / from_rate))` on the input's device, or
    `(..., length)` where given (cut, or padded with silence: resampling rounds, and a
    round trip lands back on the original length only so); the input itself when the rates
    are equal and no length is asked. The input is never modified.
    """
    check_rate("from_rate", from_rate)
    check_rate("to_rate", to_rate)
    if from_rate == to_rate:
        return wav if length is None else fit_length(wav, length)
    lead, samples = wav.shape[:-1], wav.shape[-1]
    flat = wav.detach().to("cpu", torch.float32).reshape(-1, samples)
    if samples == 0 or flat.shape[0] == 0:
        size = round(samples * to_rate / from_rate) if length is None else length
        return torch.zeros(lead + (size,), dtype=torch.float32, device=wav.device)
    frames = np.ascontiguousarray(flat.numpy().T)  # soxr wants (samples, channels)
    out = soxr.resample(frames, int(from_rate), int(to_rate), quality="HQ")
    result = torch.from_numpy(np.ascontiguousarray(out.T, dtype=np.float32))
    result = result.reshape(lead + (result.shape[-1],)).to(wav.device)
    return result if length is None else fit_length(result, length)


class StreamResampler:
    """soxr at high quality over a stream of float32 `(samples, channels)` frames: each call
    returns what is ready, `last=True` flushes the filter's tail."""

    def __init__(self, from_rate: int, to_rate: int, channels: int):
        check_rate("from_rate", from_rate)
        check_rate("to_rate", to_rate)
        self.from_rate, self.to_rate, self.channels = int(from_rate), int(to_rate), channels
        self._stream = soxr.ResampleStream(self.from_rate, self.to_rate, channels, dtype="float32", quality="HQ")

    def __call__(self, frames: np.ndarray, last: bool = False) -> np.ndarray:
        return self._stream.resample_chunk(np.ascontiguousarray(frames, dtype=np.float32), last=last)

    def flush(self) -> np.ndarray:
        """The filter's tail, `(samples, channels)`."""
        return self(np.zeros((0, self.channels), np.float32), last=True)
