"""The stereo Wiener filter of `danna_sep.wiener` as one compiled loop, for inference on the CPU.

`wiener.apply_wiener` on two channels, without gradients, is the same arithmetic done by
many small torch operations on complex128 tensors, each one a pass over memory. Here numba
compiles it into one loop per frequency bin (bins are independent), threads over bins, and
keeps a window's estimates for one bin in the cache: the multiply-adds are the same, in the
same double precision, so the results agree with the torch path to rounding.

Layout is the models' one, frames fastest: targets `(sources, 2, bins, frames)` (real),
mix `(2, bins, frames)` (complex), out `(sources [+ 1], 2, max_bin, frames)`.
"""

from __future__ import annotations

import logging
import math
import os
import threading

import numpy as np
import torch

log = logging.getLogger(__name__)

ENV_SWITCH = "DANNA_SEP_WIENER"
"""`numba` in the environment turns the compiled filter on. Off by default until whole
processes show a gain: in process the filter is 4 to 5 times faster (the full blend's
filters 1.55 -> 0.21 s per 30 s clip), but numba's import and cache load cost about 0.8 s
per process, and `benchmarks/speed.py`'s spawned full-blend runs did not separate the two
paths from this machine's drift (18.2 / 18.7 s without, 21.2 / 18.4 s with, alternated)."""

THREADING_LAYER = "workqueue"
"""numba's own thread pool, unless NUMBA_THREADING_LAYER names another."""

# numba's workqueue thread pool must not be entered by two threads at once, and a
# server may separate from several; one filter at a time, each one threaded over bins.
_lock = threading.Lock()


FASTMATH = {"reassoc", "contract", "arcp", "nsz"}
"""LLVM may reorder the sums over frames (so it vectorizes them), fuse multiply-adds and
multiply by reciprocals: a third faster, differences at double precision's rounding. Not
"nnan" or "ninf": nothing here may assume that the inputs are finite."""

_numba = None
"""numba, imported on first use (a third of a second that commands which filter nothing skip)."""
_kernel = None


def available() -> bool:
    """Whether the compiled filter runs here (switched on, numba importable)."""
    global _numba
    if os.environ.get(ENV_SWITCH, "").lower() != "numba":
        return False
    if _numba is None:
        try:
            import numba
        except ImportError:  # an optional speed-up: without numba, the torch path runs
            _numba = False
        else:
            _numba = numba
            if "NUMBA_THREADING_LAYER" not in os.environ:
                # numba would pick OpenMP, whose second runtime beside torch's own makes
                # every later torch operation wait on it: an LSTM 1,000 times slower.
                numba.config.THREADING_LAYER = THREADING_LAYER
    return _numba is not False


def usable(estimates: torch.Tensor, mix_stft: torch.Tensor) -> bool:
    """Whether `filter_stereo` can take these tensors: two channels on the CPU, no gradient."""
    if not available():
        return False
    if estimates.device.type != "cpu" or mix_stft.device.type != "cpu" or mix_stft.shape[1] != 2:
        return False
    if torch.is_grad_enabled() and (estimates.requires_grad or mix_stft.requires_grad):
        return False
    return mix_stft.dtype in (torch.complex64, torch.complex128)


def window_scales(mix: torch.Tensor, window: int) -> np.ndarray:
    """norbert's scale max(1, max|x| / 10) of each window of frames of `mix` `(2, bins, frames)`,
    over all its bins, as `wiener` computes it (float64 of the mixture dtype's magnitude)."""
    per_frame = mix.abs().amax(dim=(0, 1)).to(torch.float64)  # (frames,)
    frames = per_frame.shape[0]
    padded = -(-frames // window) * window
    if padded != frames:
        per_frame = torch.nn.functional.pad(per_frame, (0, padded - frames))
    peaks = per_frame.reshape(-1, window).amax(dim=1)
    return torch.clamp(peaks / 10.0, min=1.0).numpy()


def filter_stereo(estimates: torch.Tensor, mix_stft: torch.Tensor, out: torch.Tensor, iterations: int,
                  softmask: bool, residual: bool, eps: float, window: int) -> torch.Tensor:
    """`apply_wiener` for stereo, written into `out` `(batch, sources [+1], 2, max_bin, frames)`.

    estimates: `(batch, sources, 2, bins, frames)` magnitudes; mix_stft: `(batch, 2, bins,
    frames)`; `window` frames are filtered at a time (the whole track: `window >= frames`).
    """
    real = torch.float64 if mix_stft.dtype == torch.complex128 else torch.float32
    max_bin = out.shape[-2]
    frames = mix_stft.shape[-1]
    window = max(1, min(window, frames))
    with _lock:
        kernel = _compiled()
        _numba.set_num_threads(max(1, min(torch.get_num_threads(), _numba.config.NUMBA_NUM_THREADS)))
        for item in range(estimates.shape[0]):
            targets = estimates[item].to(real).contiguous().numpy()  # the bins below max_bin are read
            mix = mix_stft[item].contiguous()
            scales = window_scales(mix, window)
            result = out[item]
            dense = result if result.is_contiguous() else torch.empty_like(result)
            kernel(targets, mix.numpy(), scales, iterations, softmask, residual, eps, window,
                   dense.numpy())
            if dense is not result:
                result.copy_(dense)
    return out


def _compiled():
    """The kernel, compiled on first use (numba caches the machine code on disk)."""
    global _kernel
    if _kernel is None:
        if not available():
            raise RuntimeError(f"the compiled Wiener filter needs numba and {ENV_SWITCH}=numba")
        try:
            _kernel = _numba.njit(parallel=True, cache=True, nogil=True, fastmath=FASTMATH)(_filter_bins)
        except RuntimeError as error:  # nowhere writable to keep the machine code
            log.info("the Wiener filter is compiled in every process (%s)", error)
            _kernel = _numba.njit(parallel=True, nogil=True, fastmath=FASTMATH)(_filter_bins)
    return _kernel


_warm_up_started = False


def warm_up_in_background() -> None:
    """Import numba and load the kernel for float32 / complex64 on a daemon thread.

    That takes most of a second (compiling it, once per installation, about ten), which a
    separation would otherwise wait for at its first filter; begun when a spectrogram model
    is set up, it overlaps the first segment's network, whose operations release the GIL.
    """
    global _warm_up_started
    if _warm_up_started or not available():
        return
    _warm_up_started = True
    threading.Thread(target=_warm_up, name="danna-sep-wiener-warm-up", daemon=True).start()


def _warm_up() -> None:
    try:
        with _lock:
            kernel = _compiled()
            _numba.set_num_threads(1)
            kernel(np.ones((1, 2, 1, 1), np.float32), np.ones((2, 1, 1), np.complex64), np.ones(1), 1, False, False,
                   1e-10, 1, np.empty((1, 2, 1, 1), np.complex64))
    except Exception as error:  # the filter's own first call will raise it where it matters
        log.debug("Wiener filter warm-up failed: %s", error)


def _filter_bins(targets, mix, scales, iterations, softmask, residual, eps, window, out):
    """The filter of the bins of `out`, each on its own thread (compiled by `_compiled`).

    Complex numbers are kept as real and imaginary arrays and every inner loop runs over
    frames, so that the compiler can vectorize it.
    """
    sources = out.shape[0]
    given = targets.shape[0]
    bins = out.shape[2]
    frames = out.shape[3]
    root_eps = math.sqrt(eps)
    for f in _numba.prange(bins):  # bins are independent: threads share them out
        yr = np.empty((2, sources, window))
        yi = np.empty((2, sources, window))
        xr = np.empty((2, window))
        xi = np.empty((2, window))
        psd = np.empty((sources, window))
        spatial = np.empty((4, sources))  # R_j: entries 00, 11, and 01's real and imaginary parts
        c00 = np.empty(window)
        c11 = np.empty(window)
        c01r = np.empty(window)
        c01i = np.empty(window)
        w0r = np.empty(window)
        w0i = np.empty(window)
        w1r = np.empty(window)
        w1i = np.empty(window)
        for w, start in enumerate(range(0, frames, window)):
            count = min(window, frames - start)
            square = scales[w] * scales[w]
            for c in range(2):
                for t in range(count):
                    xr[c, t] = mix[c, f, start + t].real
                    xi[c, t] = mix[c, f, start + t].imag
            # Initial estimates: the magnitudes with the mixture's phase, or a ratio mask.
            for c in range(2):
                if softmask:
                    for t in range(count):
                        w0r[t] = eps  # the sum of the magnitudes, per frame
                    for j in range(given):
                        for t in range(count):
                            w0r[t] += targets[j, c, f, start + t]
                    for j in range(given):
                        for t in range(count):
                            gain = targets[j, c, f, start + t] / w0r[t]
                            yr[c, j, t] = xr[c, t] * gain
                            yi[c, j, t] = xi[c, t] * gain
                else:
                    for t in range(count):  # the phase exp(i angle(x)), with angle(0) = 0
                        magnitude = math.sqrt(xr[c, t] * xr[c, t] + xi[c, t] * xi[c, t])
                        w0r[t] = xr[c, t] / magnitude if magnitude > 0 else 1.0
                        w0i[t] = xi[c, t] / magnitude if magnitude > 0 else 0.0
                    for j in range(given):
                        for t in range(count):
                            yr[c, j, t] = targets[j, c, f, start + t] * w0r[t]
                            yi[c, j, t] = targets[j, c, f, start + t] * w0i[t]
                if residual:
                    for t in range(count):
                        yr[c, given, t] = xr[c, t]
                        yi[c, given, t] = xi[c, t]
                    for j in range(given):
                        for t in range(count):
                            yr[c, given, t] -= yr[c, j, t]
                            yi[c, given, t] -= yi[c, j, t]
            for _ in range(iterations):
                for t in range(count):
                    c00[t] = root_eps * square
                    c11[t] = root_eps * square
                    c01r[t] = 0.0
                    c01i[t] = 0.0
                for j in range(sources):
                    # R_j over the window: entries 00 and 11 (real), 01 (R_10 is its conjugate).
                    weight = 0.0
                    r00 = 0.0
                    r11 = 0.0
                    r01r = 0.0
                    r01i = 0.0
                    for t in range(count):
                        p0 = yr[0, j, t] * yr[0, j, t] + yi[0, j, t] * yi[0, j, t]
                        p1 = yr[1, j, t] * yr[1, j, t] + yi[1, j, t] * yi[1, j, t]
                        psd[j, t] = (p0 + p1) / 2
                        weight += psd[j, t]
                        r00 += p0
                        r11 += p1
                        r01r += yr[0, j, t] * yr[1, j, t] + yi[0, j, t] * yi[1, j, t]
                        r01i += yi[0, j, t] * yr[1, j, t] - yr[0, j, t] * yi[1, j, t]
                    total = eps * square + weight
                    r00 /= total
                    r11 /= total
                    r01r /= total
                    r01i /= total
                    # C = sum_j psd_j R_j + sqrt(eps) I, in the scaled units of norbert.
                    for t in range(count):
                        c00[t] += psd[j, t] * r00
                        c11[t] += psd[j, t] * r11
                        c01r[t] += psd[j, t] * r01r
                        c01i[t] += psd[j, t] * r01i
                    spatial[0, j] = r00
                    spatial[1, j] = r11
                    spatial[2, j] = r01r
                    spatial[3, j] = r01i
                for t in range(count):  # C^-1 x
                    inv_det = 1.0 / (c00[t] * c11[t] - (c01r[t] * c01r[t] + c01i[t] * c01i[t]))
                    w0r[t] = (c11[t] * xr[0, t] - (c01r[t] * xr[1, t] - c01i[t] * xi[1, t])) * inv_det
                    w0i[t] = (c11[t] * xi[0, t] - (c01r[t] * xi[1, t] + c01i[t] * xr[1, t])) * inv_det
                    w1r[t] = (c00[t] * xr[1, t] - (c01r[t] * xr[0, t] + c01i[t] * xi[0, t])) * inv_det
                    w1i[t] = (c00[t] * xi[1, t] - (c01r[t] * xi[0, t] - c01i[t] * xr[0, t])) * inv_det
                for j in range(sources):  # y_j = psd_j R_j C^-1 x
                    r00 = spatial[0, j]
                    r11 = spatial[1, j]
                    r01r = spatial[2, j]
                    r01i = spatial[3, j]
                    for t in range(count):
                        yr[0, j, t] = psd[j, t] * (r00 * w0r[t] + r01r * w1r[t] - r01i * w1i[t])
                        yi[0, j, t] = psd[j, t] * (r00 * w0i[t] + r01r * w1i[t] + r01i * w1r[t])
                        yr[1, j, t] = psd[j, t] * (r01r * w0r[t] + r01i * w0i[t] + r11 * w1r[t])
                        yi[1, j, t] = psd[j, t] * (r01r * w0i[t] - r01i * w0r[t] + r11 * w1i[t])
            for j in range(sources):
                for c in range(2):
                    for t in range(count):
                        out[j, c, f, start + t] = complex(yr[c, j, t], yi[c, j, t])
