"""The Music Demixing Challenge SDR, in one place for the metric, the loss and the blend fit.

    SDR = 10 log10((sum s^2 + eps) / (sum (s - s_hat)^2 + eps)),   eps = `MDX_EPS`

summed over channels and samples. The same function serves numpy arrays (evaluation, the
blend fit's closed form) and torch tensors, where it stays differentiable (the training
loss): only the logarithm differs, and it is taken from the array's own library. Callers
choose the precision (the metric and the loss work in float64).
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np

from . import MDX_EPS

Array = TypeVar("Array")  # a numpy array or a torch tensor; the result is of the same kind


def sdr_from_energies(signal: Array, error: Array, eps: float = MDX_EPS) -> Array:
    """10 log10((signal + eps) / (error + eps)), elementwise: the SDR from the energy of the
    reference and of the error (numpy or torch)."""
    ratio = (signal + eps) / (error + eps)
    log10 = getattr(ratio, "log10", None)  # torch tensors have it (and keep their graph); numpy arrays do not
    return 10.0 * (log10() if log10 is not None else np.log10(ratio))


def mdx_sdr(references: Array, estimates: Array, eps: float = MDX_EPS) -> Array:
    """The MDX SDR over the last two axes, `(..., channels, samples)` twice -> `(...)` dB
    (numpy or torch, both of the same shape)."""
    signal = (references * references).sum(axis=(-2, -1))
    error = ((references - estimates) ** 2).sum(axis=(-2, -1))
    return sdr_from_energies(signal, error, eps)
