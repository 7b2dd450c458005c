"""Multichannel Wiener filter (MWF): the EM algorithm of norbert, in batched, differentiable torch.

Shapes follow norbert, with any number of leading batch dimensions:

- targets: non-negative source magnitudes `(..., frames, bins, channels, sources)`
- mix: complex mixture STFT `(..., frames, bins, channels)`
- result: complex source STFTs `(..., frames, bins, channels, sources)`
  (one more source with `residual=True`).

The work is done in double precision (complex128) and the result is returned in the
mixture's complex dtype. Spatial covariances are estimated over the frames given, so
`wiener_windowed` bounds memory on long tracks by filtering windows of frames on their own.
"""

from __future__ import annotations

import math

import torch

from . import wiener_fused

DEFAULT_EPS = 1e-10
BIN_BLOCK = 128
"""Frequency bins filtered together (see `wiener`)."""


def _phase(mix: torch.Tensor) -> torch.Tensor:
    """exp(i * angle(mix)), with angle(0) = 0 as numpy has it, and no NaN gradient at 0."""
    magnitude = mix.abs()
    nonzero = magnitude > 0
    safe = torch.where(nonzero, magnitude, torch.ones_like(magnitude))
    return torch.where(nonzero, mix / safe, torch.ones_like(mix))


def _invert(matrices: torch.Tensor, eps: float) -> torch.Tensor:
    """Inverse of `(..., c, c)` complex matrices; closed forms for 1x1 and 2x2 (as norbert)."""
    channels = matrices.shape[-1]
    if channels == 1:
        return 1.0 / (matrices + eps)
    if channels == 2:
        a = matrices[..., 0, 0]
        b = matrices[..., 0, 1]
        c = matrices[..., 1, 0]
        d = matrices[..., 1, 1]
        inv_det = 1.0 / (a * d - b * c)
        first = torch.stack([d, -b], dim=-1)
        second = torch.stack([-c, a], dim=-1)
        return torch.stack([first, second], dim=-2) * inv_det[..., None, None]
    return torch.linalg.inv(matrices)


def expectation_maximization(
    estimates: torch.Tensor, mix: torch.Tensor, iterations: int = 1, eps: float = DEFAULT_EPS
) -> torch.Tensor:
    """Refine complex source estimates `(..., frames, bins, channels, sources)` given the mix.

    Each iteration fits a local Gaussian model per source (power spectral density averaged
    over channels, spatial covariance over frames), then applies the Wiener gain
    psd_j R_j C^-1 to the mixture `(..., frames, bins, channels)`.
    """
    channels = mix.shape[-1]
    if channels == 2:
        return _expectation_maximization_stereo(estimates, mix, iterations, eps)
    eye = torch.eye(channels, dtype=mix.dtype, device=mix.device)
    regularization = math.sqrt(eps) * eye
    y = estimates
    for _ in range(iterations):
        psd = (y.real.square() + y.imag.square()).mean(dim=-2)  # (..., frames, bins, sources)
        weight = eps + psd.sum(dim=-3)  # (..., bins, sources)
        # R_j = sum_t y_j y_j^H / (eps + sum_t psd_j): (..., bins, sources, channels, channels)
        covariance = torch.einsum("...tfcj,...tfdj->...fjcd", y, y.conj())
        covariance = covariance / weight[..., None, None].to(covariance.dtype)
        mix_covariance = torch.einsum("...tfj,...fjcd->...tfcd", psd.to(covariance.dtype), covariance)
        inverse = _invert(mix_covariance + regularization, eps)
        whitened = (inverse @ mix.unsqueeze(-1)).squeeze(-1)  # C^-1 x: (..., frames, bins, channels)
        y = psd.unsqueeze(-2) * torch.einsum("...fjcd,...tfd->...tfcj", covariance, whitened)
    return y


def _expectation_maximization_stereo(
    estimates: torch.Tensor, mix: torch.Tensor, iterations: int, eps: float,
    scale: torch.Tensor | float = 1.0, out: torch.Tensor | None = None,
) -> torch.Tensor:
    """`expectation_maximization` for two channels, written out element by element.

    The same arithmetic as the general path, but the 2x2 Hermitian matrices are kept as
    their three distinct entries (two real diagonals, one complex corner), so no tiny
    batched matrix products are formed: about four times faster on the CPU.

    `scale` (a number, or `(..., 1, 1, 1)` per batch item) filters as if estimates and mix
    were divided by it and the result multiplied back, without those passes over the data:
    the EM is homogeneous in them but for eps, so eps in the weights becomes eps * scale^2
    and the regularization sqrt(eps) * scale^2. With `out` (`(..., frames, bins, 2,
    sources)`, any dtype and strides) the result is written there.
    """
    square = scale * scale if isinstance(scale, float) else scale.square()
    regularization = math.sqrt(eps) * square  # (..., 1, 1, 1): frames, bins, sources
    weight_eps = eps * (square if isinstance(square, float) else square[..., 0])  # (..., 1, 1)
    y0, y1 = estimates[..., 0, :], estimates[..., 1, :]  # (..., frames, bins, sources)
    x0, x1 = mix[..., 0:1], mix[..., 1:2]  # (..., frames, bins, 1)
    for _ in range(iterations):
        power0 = y0.real.square() + y0.imag.square()
        power1 = y1.real.square() + y1.imag.square()
        psd = (power0 + power1) / 2  # (..., frames, bins, sources)
        weight = weight_eps + psd.sum(dim=-3)  # (..., bins, sources)
        # Spatial covariance R_j per bin: entries 00, 11 (real) and 01 (R_10 is its conjugate).
        r00 = power0.sum(dim=-3) / weight
        r11 = power1.sum(dim=-3) / weight
        r01 = (y0 * y1.conj()).sum(dim=-3) / weight
        # Mixture covariance C = sum_j psd_j R_j + sqrt(eps) I, per frame and bin.
        c00 = (psd * r00.unsqueeze(-3)).sum(dim=-1, keepdim=True) + regularization
        c11 = (psd * r11.unsqueeze(-3)).sum(dim=-1, keepdim=True) + regularization
        c01 = (psd * r01.unsqueeze(-3)).sum(dim=-1, keepdim=True)
        inv_det = 1.0 / (c00 * c11 - (c01.real.square() + c01.imag.square()))
        # C^-1 x
        w0 = (c11 * x0 - c01 * x1) * inv_det
        w1 = (c00 * x1 - c01.conj() * x0) * inv_det
        # y_j = psd_j R_j C^-1 x
        r00, r11, r01 = r00.unsqueeze(-3), r11.unsqueeze(-3), r01.unsqueeze(-3)
        y0 = psd * (r00 * w0 + r01 * w1)
        y1 = psd * (r01.conj() * w0 + r11 * w1)
    if out is None:
        return torch.stack([y0, y1], dim=-2)
    out[..., 0, :] = y0
    out[..., 1, :] = y1
    return out


def wiener(
    targets: torch.Tensor,
    mix: torch.Tensor,
    iterations: int = 1,
    softmask: bool = False,
    residual: bool = False,
    eps: float = DEFAULT_EPS,
    out: torch.Tensor | None = None,
    max_bin: int | None = None,
) -> torch.Tensor:
    """Separate `mix` given source magnitude estimates (norbert.wiener, plus `residual`).

    targets: `(..., frames, bins, channels, sources)`, real, non-negative.
    mix: `(..., frames, bins, channels)`, complex.
    Returns complex `(..., frames, bins, channels, sources [+ 1 if residual])`.

    The initial estimate is the magnitude with the mixture's phase (`softmask=False`, as
    Danna-Sep uses), or the ratio mask targets / sum(targets) applied to the mixture.
    `residual=True` adds the mixture minus the sum of the initial estimates as a source.
    Leading dimensions are a batch: each item is filtered on its own. With `out` (a complex
    tensor of the result's shape, any strides: a view of the caller's layout) the result is
    written there and returned, with no copy of it made here.

    `max_bin` filters only the bins below it (the others are independent of them) and
    returns those: `(..., frames, max_bin, channels, sources)`, equal to the first bins
    of the whole result, since the scaling still comes from the whole mixture.
    """
    if not mix.is_complex():
        raise TypeError("mix must be a complex STFT")
    if targets.shape[:-1] != mix.shape:
        raise ValueError(
            f"targets {tuple(targets.shape)} do not match mix {tuple(mix.shape)} + (sources,)"
        )
    # Scale down for numerical stability, per batch item (norbert: max(1, max|x| / 10)).
    peak = mix.abs().to(torch.float64).flatten(start_dim=-3).amax(dim=-1)
    scale = torch.clamp(peak / 10.0, min=1.0)[..., None, None, None]
    # Bins are independent of each other: filtering blocks of them keeps the temporaries
    # in the CPU's cache, which makes this memory-bound work about twice as fast.
    bins = _bins_below(mix.shape[-2], max_bin)
    sources = targets.shape[-1] + (1 if residual else 0)
    shape = mix.shape[:-2] + (bins, mix.shape[-1], sources)
    if _records_gradients(targets, mix):
        # Under autograd every write into a slice of `out` costs a full-size copy of the
        # gradient in backward (CopySlices): the blocks are joined instead.
        if out is not None:
            raise ValueError("out cannot be used while gradients are recorded")
        blocks = [_wiener_bins(targets[..., start:start + BIN_BLOCK, :, :],
                               mix[..., start:start + BIN_BLOCK, :], scale, iterations, softmask,
                               residual, eps, None) for start in range(0, bins, BIN_BLOCK)]
        return torch.cat(blocks, dim=-3).to(mix.dtype)
    if out is None:
        out = torch.empty(shape, dtype=mix.dtype, device=mix.device)
    elif out.shape != shape or not out.is_complex():
        raise ValueError(f"out {tuple(out.shape)} {out.dtype} cannot hold the result {tuple(shape)}")
    for start in range(0, bins, BIN_BLOCK):
        stop = min(start + BIN_BLOCK, bins)
        _wiener_bins(targets[..., start:stop, :, :], mix[..., start:stop, :],
                     scale, iterations, softmask, residual, eps, out[..., start:stop, :, :])
    return out


def _bins_below(bins: int, max_bin: int | None) -> int:
    """How many of `bins` a filter with `max_bin` computes."""
    if max_bin is None:
        return bins
    if not 0 < max_bin <= bins:
        raise ValueError(f"max_bin must be in 1..{bins}, got {max_bin}")
    return max_bin


def _records_gradients(*tensors: torch.Tensor) -> bool:
    """Whether autograd records operations on any of `tensors` here."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _wiener_bins(targets: torch.Tensor, mix: torch.Tensor, scale: torch.Tensor, iterations: int,
                 softmask: bool, residual: bool, eps: float,
                 out: torch.Tensor | None) -> torch.Tensor:
    """`wiener` on some of the bins, with the scale of the whole mixture, written into `out`
    (or, without it, returned in complex128)."""
    x = mix.to(torch.complex128)
    v = targets.to(torch.float64)
    if softmask:
        y = x.unsqueeze(-1) * (v / (eps + v.sum(dim=-1, keepdim=True)))
    else:
        y = v * _phase(x).unsqueeze(-1)
    if residual:
        y = torch.cat([y, x.unsqueeze(-1) - y.sum(dim=-1, keepdim=True)], dim=-1)
    if iterations == 0:
        return y if out is None else out.copy_(y)
    if x.shape[-1] == 2:
        return _expectation_maximization_stereo(y, x, iterations, eps, scale, out=out)
    y = expectation_maximization(y / scale.unsqueeze(-1), x / scale, iterations, eps)
    if out is None:
        return y * scale.unsqueeze(-1)
    return torch.mul(y, scale.unsqueeze(-1), out=out)


def wiener_windowed(
    targets: torch.Tensor,
    mix: torch.Tensor,
    iterations: int = 1,
    softmask: bool = False,
    residual: bool = False,
    eps: float = DEFAULT_EPS,
    window: int = 300,
    out: torch.Tensor | None = None,
    max_bin: int | None = None,
) -> torch.Tensor:
    """`wiener` over consecutive windows of `window` frames, each filtered on its own.

    Memory is bounded by the window, not by the track. Same shapes (and `out`, `max_bin`)
    as `wiener`; the frame axis is the fourth from the end of `targets`.
    """
    if window <= 0:
        raise ValueError("window must be a positive number of frames")
    frames = mix.shape[-3]
    sources = targets.shape[-1] + (1 if residual else 0)
    if _records_gradients(targets, mix):  # joined, not written into slices (see `wiener`)
        if out is not None:
            raise ValueError("out cannot be used while gradients are recorded")
        return torch.cat([wiener(targets[..., start:start + window, :, :, :], mix[..., start:start + window, :, :],
                                 iterations=iterations, softmask=softmask, residual=residual, eps=eps,
                                 max_bin=max_bin) for start in range(0, frames, window)], dim=-4)
    if out is None:
        bins = _bins_below(mix.shape[-2], max_bin)
        out = torch.empty(mix.shape[:-2] + (bins, mix.shape[-1], sources), dtype=mix.dtype, device=mix.device)
    for start in range(0, frames, window):
        stop = min(start + window, frames)
        wiener(targets[..., start:stop, :, :, :], mix[..., start:stop, :, :], iterations=iterations,
               softmask=softmask, residual=residual, eps=eps, out=out[..., start:stop, :, :, :],
               max_bin=max_bin)
    return out


def apply_wiener(
    estimates: torch.Tensor,
    mix_stft: torch.Tensor,
    iterations: int = 1,
    softmask: bool = False,
    residual: bool = False,
    eps: float = DEFAULT_EPS,
    window: int | None = 300,
    max_bin: int | None = None,
) -> torch.Tensor:
    """The Wiener filter in the models' layout.

    estimates: magnitudes `(batch, sources, channels, bins, frames)`;
    mix_stft: complex `(batch, channels, bins, frames)`.
    Returns complex `(batch, sources, channels, bins, frames)`, contiguous in that layout
    (with `max_bin`, only the bins below it: see `wiener`).

    Stereo on the CPU without gradients runs the same arithmetic compiled into one loop
    (`wiener_fused`, several times faster); the torch operations do the rest.
    """
    targets = estimates.permute(0, 4, 3, 2, 1)
    mix = mix_stft.permute(0, 3, 2, 1)
    sources = estimates.shape[1] + (1 if residual else 0)
    channels, bins, frames = mix_stft.shape[1:]
    if window is not None and window <= 0:
        raise ValueError("window must be a positive number of frames")
    if _records_gradients(estimates, mix_stft):  # training: no writes into views (see `wiener`)
        if window is None:
            filtered = wiener(targets, mix, iterations, softmask, residual, eps, max_bin=max_bin)
        else:
            filtered = wiener_windowed(targets, mix, iterations, softmask, residual, eps, window, max_bin=max_bin)
        return filtered.permute(0, 4, 3, 2, 1).contiguous()
    result = torch.empty((estimates.shape[0], sources, channels, _bins_below(bins, max_bin), frames),
                         dtype=mix_stft.dtype, device=mix_stft.device)
    if wiener_fused.usable(estimates, mix_stft):
        return wiener_fused.filter_stereo(estimates, mix_stft, result, iterations, softmask, residual, eps,
                                          frames if window is None else window)
    out = result.permute(0, 4, 3, 2, 1)  # the filter's layout, written in place
    if window is None:
        wiener(targets, mix, iterations, softmask, residual, eps, out=out, max_bin=max_bin)
    else:
        wiener_windowed(targets, mix, iterations, softmask, residual, eps, window, out=out, max_bin=max_bin)
    return result


def frame_statistics(
    targets: torch.Tensor, mix: torch.Tensor, weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted sums over frames of what one EM iteration estimates from its initial estimate.

    The first pass of a Wiener filter whose statistics come from a whole track seen in
    pieces (`wiener_from_statistics` is the second). targets: magnitudes `(frames, bins,
    channels, sources)`; mix: complex `(frames, bins, channels)`; weights: `(frames,)`, the
    share of each frame in the track's sums. Unscaled (the track's max|x|/10 is applied in
    `wiener_from_statistics`). Returns the spatial products sum_t w_t y_j y_j^H `(bins,
    sources, channels, channels)` (complex128) and the power sums sum_t w_t psd_j
    `(bins, sources)` (float64) of y_j = targets_j with the mixture's phase.
    """
    y = targets.to(torch.float64) * _phase(mix.to(torch.complex128)).unsqueeze(-1)
    w = weights.to(torch.float64)
    psd = (y.real.square() + y.imag.square()).mean(dim=-2)  # (frames, bins, sources)
    power = torch.einsum("t,tfj->fj", w, psd)
    products = torch.einsum("tfcj,tfdj->fjcd", y * w[:, None, None, None], y.conj())
    return products, power


def wiener_from_statistics(
    targets: torch.Tensor, mix: torch.Tensor, products: torch.Tensor, power: torch.Tensor,
    peak: float, eps: float = DEFAULT_EPS,
) -> torch.Tensor:
    """One Wiener iteration on some frames with spatial covariances from `frame_statistics`
    sums over a whole track, and norbert's scaling by the track's max|x| (`peak`) / 10.

    With the sums of every frame of a track and that track's peak, this is `wiener(targets,
    mix, iterations=1)` on the whole track, frames taken a few at a time. Shapes as
    `wiener` without batch dimensions; returns `(frames, bins, channels, sources)` in the
    mixture's complex dtype.
    """
    scale = max(1.0, peak / 10.0)
    channels = mix.shape[-1]
    x = mix.to(torch.complex128) / scale
    y = targets.to(torch.float64) / scale * _phase(x).unsqueeze(-1)
    psd = (y.real.square() + y.imag.square()).mean(dim=-2)  # (frames, bins, sources)
    weight = eps + power / scale**2  # (bins, sources)
    covariance = products / scale**2 / weight[..., None, None]
    eye = torch.eye(channels, dtype=torch.complex128, device=mix.device)
    mix_covariance = torch.einsum("tfj,fjcd->tfcd", psd.to(torch.complex128), covariance) + math.sqrt(eps) * eye
    whitened = (_invert(mix_covariance, eps) @ x.unsqueeze(-1)).squeeze(-1)
    out = psd.unsqueeze(-2) * torch.einsum("fjcd,tfd->tfcj", covariance, whitened)
    return (out * scale).to(mix.dtype)
