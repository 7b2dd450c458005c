"""Training losses of the Danna-Sep recipes (validation scores with danna_sep.metrics' MDX SDR).

- `closs`: the "combination" loss of CrossNet (Sawata et al. 2021) as Danna-Sep trains
  it. Source estimates are the mixture STFT filtered by the model's masks, optionally
  refined by the differentiable multichannel Wiener filter (the recipes: 1 EM iteration, or
  none). The loss is

      complex MSE over the 14 non-empty proper subsets of the 4 sources
      + mcoeff * (1 + mean weighted SDR over the same 14 subsets, in the time domain)

  where each subset's signal is the sum of its sources' signals.
- `waveform_l1` / `waveform_l2`: losses on waveforms (Défossez et al. 2019).
- `magnitude_mse`: MSE on magnitude spectrograms (Stöter et al. 2019).
- `masked_magnitude_mse` (`mse_mask`): the same MSE for a mask model, on mask * |mixture|
  of every source; no inverse STFT and no subsets, so a step costs a fraction of `closs`
  (the default bundle's recipes, trained on two CPU cores).

Shapes: waveforms `(batch, sources, channels, samples)`, mixtures `(batch, channels,
samples)`, spectrograms `(batch, sources, channels, bins, frames)`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Dict, List, Literal, Tuple

import torch

from .. import spectral
from ..wiener import apply_wiener

LossKind = Literal["closs", "l1", "l2", "mse_mag", "mse_mask"]
LOSS_KINDS: Tuple[str, ...] = ("closs", "l1", "l2", "mse_mag", "mse_mask")

WSDR_EPS = 1e-10
# Floor of a squared norm before its square root: keeps the gradient of an exactly
# silent estimate finite (sqrt'(0) is infinite) while changing no value above 1e-15.
_NORM_FLOOR = 1e-30


def proper_subsets(n_sources: int) -> List[Tuple[int, ...]]:
    """Every non-empty proper subset of range(n_sources), by size then lexicographically (14 for 4)."""
    subsets: List[Tuple[int, ...]] = []
    for size in range(1, n_sources):
        subsets.extend(itertools.combinations(range(n_sources), size))
    return subsets


def subset_matrix(n_sources: int, dtype: torch.dtype = torch.float32,
                  device: torch.device | None = None) -> torch.Tensor:
    """0/1 matrix `(subsets, sources)`: row k selects the sources of subset k."""
    subsets = proper_subsets(n_sources)
    matrix = torch.zeros(len(subsets), n_sources, dtype=dtype, device=device)
    for row, members in enumerate(subsets):
        matrix[row, list(members)] = 1
    return matrix


def subset_sums(x: torch.Tensor) -> torch.Tensor:
    """Sums of the sources of each proper subset: `(batch, sources, ...)` -> `(batch, subsets, ...)`."""
    matrix = subset_matrix(x.shape[1], x.dtype, x.device)
    flat = x.reshape(x.shape[0], x.shape[1], -1)
    out = torch.einsum("ks,bsn->bkn", matrix, flat)
    return out.reshape((x.shape[0], matrix.shape[0]) + tuple(x.shape[2:]))


def complex_mse(estimates: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """Mean of |sum_subset(estimate - reference)|^2, averaged over the 14 subsets.

    estimates, references: complex `(batch, sources, channels, bins, frames)`.
    Each subset's term is the mean over its elements, as in Danna-Sep's recipe.

    Computed in closed form instead of forming the 14 sums (which costs 14 spectrograms of
    memory and time): with d_j the difference of source j and n sources, each source lies in
    2^(n-1) - 1 proper subsets and each pair in 2^(n-2) - 1, so
    sum_K |sum_{j in K} d_j|^2 = 2^(n-2) sum_j |d_j|^2 + (2^(n-2) - 1) |sum_j d_j|^2.
    """
    if estimates.shape != references.shape:
        raise ValueError(f"shapes differ: {tuple(estimates.shape)} and {tuple(references.shape)}")
    n = estimates.shape[1]
    if n < 2:
        raise ValueError("the combination loss needs at least two sources")
    diff = estimates - references
    total = diff.sum(dim=1)
    per_source = (diff.real.square() + diff.imag.square()).mean(dim=(0, 2, 3, 4)).sum()
    of_sum = (total.real.square() + total.imag.square()).mean()
    half = 2 ** (n - 2)
    return (half * per_source + (half - 1) * of_sum) / (2 ** n - 2)


def _norm(squared: torch.Tensor) -> torch.Tensor:
    return squared.clamp_min(_NORM_FLOOR).sqrt()


def weighted_sdr(estimate: torch.Tensor, reference: torch.Tensor, mixture: torch.Tensor,
                 eps: float = WSDR_EPS) -> torch.Tensor:
    """Weighted SDR of each row `(..., samples)` -> `(...)`, between -1 (perfect) and 1.

    -a cos(s, s_hat) - (1 - a) cos(n, n_hat), with the noise n = mixture - s, its estimate
    n_hat = mixture - s_hat and a = |s|^2 / (|s|^2 + |n|^2 + eps) (Choi et al., used by CrossNet).
    """
    noise = mixture - reference
    noise_hat = mixture - estimate
    s2 = reference.square().sum(-1)
    s_hat2 = estimate.square().sum(-1)
    n2 = noise.square().sum(-1)
    n_hat2 = noise_hat.square().sum(-1)
    alpha = s2 / (s2 + n2 + eps)
    cos_s = (reference * estimate).sum(-1) / (_norm(s2) * _norm(s_hat2) + eps)
    cos_n = (noise * noise_hat).sum(-1) / (_norm(n2) * _norm(n_hat2) + eps)
    return -alpha * cos_s - (1 - alpha) * cos_n


def combination_sdr_loss(estimates: torch.Tensor, references: torch.Tensor,
                         mixture: torch.Tensor) -> torch.Tensor:
    """1 + mean weighted SDR over the 14 subsets, every batch item and channel: 0 when perfect.

    estimates, references: `(batch, sources, channels, samples)`; mixture `(batch, channels, samples)`.
    """
    est = subset_sums(estimates)
    ref = subset_sums(references)
    mix = mixture.unsqueeze(1).expand_as(ref)
    return 1.0 + weighted_sdr(est, ref, mix).mean()


@dataclass
class LossResult:
    """A loss to backpropagate and its parts as floats for the logs."""

    loss: torch.Tensor
    parts: Dict[str, float]


def closs(
    masks: torch.Tensor,
    mix_stft: torch.Tensor,
    source_stft: torch.Tensor,
    sources: torch.Tensor,
    mixture: torch.Tensor,
    wiener_iterations: int = 1,
    mcoeff: float = 10.0,
) -> LossResult:
    """Danna-Sep's combination loss for a mask model.

    masks: `(batch, sources, channels, bins, frames)` non-negative;
    mix_stft: complex `(batch, channels, bins, frames)`;
    source_stft: complex `(batch, sources, channels, bins, frames)`;
    sources: `(batch, sources, channels, samples)`; mixture: `(batch, channels, samples)`.
    With `wiener_iterations == 0` the estimate is mask * mixture STFT; otherwise the masked
    magnitudes go through that many EM iterations of the Wiener filter (differentiable).
    """
    if wiener_iterations == 0:
        estimates = masks * mix_stft.unsqueeze(1)
    else:
        # window=None: the spatial covariances of a training segment are estimated over
        # the whole segment, as in the recipe (at inference, windows of 300 frames).
        estimates = apply_wiener(masks * mix_stft.abs().unsqueeze(1), mix_stft,
                                 iterations=wiener_iterations, window=None)
    freq = complex_mse(estimates, source_stft)
    waveforms = spectral.istft(estimates, sources.shape[-1])
    time = combination_sdr_loss(waveforms, sources, mixture)
    loss = freq + mcoeff * time
    return LossResult(loss, {"loss_f": float(freq.detach()), "loss_t": float(time.detach())})


def waveform_l1(estimates: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """Mean absolute error of waveforms `(batch, sources, channels, samples)`."""
    return (estimates - references).abs().mean()


def waveform_l2(estimates: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """Mean squared error of waveforms `(batch, sources, channels, samples)`."""
    return (estimates - references).square().mean()


def magnitude_mse(estimates: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """Mean squared error of magnitude spectrograms `(batch, channels, bins, frames)`."""
    return (estimates - references).square().mean()


def masked_magnitude_mse(masks: torch.Tensor, mix_magnitude: torch.Tensor,
                         source_magnitudes: torch.Tensor) -> torch.Tensor:
    """MSE of masked mixture magnitudes against the sources' magnitudes.

    masks and source_magnitudes: `(batch, sources, channels, bins, frames)`;
    mix_magnitude: `(batch, channels, bins, frames)`.
    """
    return (masks * mix_magnitude.unsqueeze(1) - source_magnitudes).square().mean()
