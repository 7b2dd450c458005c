import itertools

import numpy as np
import norbert
import pytest
import torch

from danna_sep import wiener as mwf

EPS = 1e-10
# frames, bins, channels, sources; stereo has its own code path, other channel counts the
# general one, and 300 bins span several of the blocks that `wiener` filters apart.
SHAPES = [(5, 7, 2, 4), (12, 3, 1, 2), (8, 4, 2, 3), (6, 5, 3, 2), (4, 300, 2, 4)]


def random_problem(shape, seed, scale=3.0):
    gen = np.random.default_rng(seed)
    frames, bins, channels, sources = shape
    v = np.abs(gen.normal(size=shape)) * scale
    x = (gen.normal(size=(frames, bins, channels)) + 1j * gen.normal(size=(frames, bins, channels))) * scale * 5
    return v, x


def norbert_reference(v, x, iterations, softmask, residual, eps=EPS):
    """norbert.wiener; with `residual`, the same steps composed from norbert's own pieces."""
    x = x.copy()  # norbert.wiener divides the caller's mixture in place
    if not residual:
        return norbert.wiener(v, x, iterations=iterations, use_softmask=softmask, eps=eps)
    y = norbert.softmask(v, x, eps=eps) if softmask else v * np.exp(1j * np.angle(x[..., None]))
    y = np.concatenate([y, (x - y.sum(axis=-1))[..., None]], axis=-1)
    if not iterations:
        return y
    max_abs = max(1, np.abs(x).max() / 10.0)
    y = norbert.expectation_maximization(y / max_abs, x / max_abs, iterations, eps=eps)[0]
    return y * max_abs


def rel_error(ours: torch.Tensor, ref: np.ndarray) -> float:
    ours = ours.detach().numpy()
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize(
    "shape,iterations,softmask,residual",
    list(itertools.product(SHAPES, [1, 2], [False, True], [False, True])),
)
def test_matches_norbert(shape, iterations, softmask, residual):
    v, x = random_problem(shape, seed=hash((shape, iterations, softmask, residual)) % 2**32)
    ref = norbert_reference(v, x, iterations, softmask, residual)
    ours = mwf.wiener(torch.from_numpy(v), torch.from_numpy(x), iterations, softmask, residual, eps=EPS)
    assert ours.shape == ref.shape
    assert ours.dtype == torch.complex128
    assert rel_error(ours, ref) < 1e-6


@pytest.mark.parametrize("softmask", [False, True])
def test_zero_iterations_is_the_initial_estimate(softmask):
    v, x = random_problem((6, 5, 2, 4), seed=7)
    ref = norbert.wiener(v, x.copy(), iterations=0, use_softmask=softmask, eps=EPS)
    ours = mwf.wiener(torch.from_numpy(v), torch.from_numpy(x), 0, softmask, eps=EPS)
    assert rel_error(ours, ref) < 1e-12


def test_bin_blocks_cover_the_spectrum():
    assert mwf.BIN_BLOCK < 300  # so that the last SHAPES entry spans several blocks


def test_batched_equals_each_item_and_norbert():
    problems = [random_problem((6, 5, 2, 4), seed=s, scale=10.0**s) for s in range(3)]
    v = torch.stack([torch.from_numpy(p[0]) for p in problems])
    x = torch.stack([torch.from_numpy(p[1]) for p in problems])
    batched = mwf.wiener(v, x, iterations=2)
    for item, (vi, xi) in enumerate(problems):
        alone = mwf.wiener(torch.from_numpy(vi), torch.from_numpy(xi), iterations=2)
        assert torch.allclose(batched[item], alone, rtol=1e-12, atol=0)
        assert rel_error(batched[item], norbert.wiener(vi, xi.copy(), iterations=2, use_softmask=False, eps=EPS)) < 1e-6


def test_windowed_equals_unwindowed_when_window_covers_track():
    v, x = random_problem((40, 6, 2, 4), seed=3)
    v, x = torch.from_numpy(v), torch.from_numpy(x)
    whole = mwf.wiener(v, x, iterations=1)
    assert torch.equal(mwf.wiener_windowed(v, x, iterations=1, window=40), whole)
    assert torch.equal(mwf.wiener_windowed(v, x, iterations=1, window=300), whole)


def test_windowed_filters_each_window_on_its_own():
    v, x = random_problem((25, 6, 2, 4), seed=4)
    ours = mwf.wiener_windowed(torch.from_numpy(v), torch.from_numpy(x), iterations=1, window=10)
    ref = np.concatenate([
        norbert.wiener(v[s:s + 10], x[s:s + 10].copy(), iterations=1, use_softmask=False, eps=EPS)
        for s in range(0, 25, 10)
    ])
    assert rel_error(ours, ref) < 1e-6
    # and it differs from one filter over the whole track: the covariances are local
    assert rel_error(mwf.wiener(torch.from_numpy(v), torch.from_numpy(x)), ref) > 1e-6


def test_gradcheck_tiny():
    gen = torch.Generator().manual_seed(0)
    v = (torch.rand(3, 2, 2, 2, generator=gen, dtype=torch.float64) + 0.1).requires_grad_()
    x = torch.randn(3, 2, 2, generator=gen, dtype=torch.complex128).requires_grad_()
    for softmask in (False, True):
        assert torch.autograd.gradcheck(
            lambda a, b: mwf.wiener(a, b, iterations=1, softmask=softmask, residual=True), (v, x)
        )


def test_gradients_through_bin_blocks_and_frame_windows(monkeypatch):
    # Under autograd the blocks of bins and the windows of frames are joined rather than
    # written into slices: the values must equal the no-gradient path's, and the gradients
    # the numerical ones, across several blocks and windows (the last of each partial).
    monkeypatch.setattr(mwf, "BIN_BLOCK", 2)
    gen = torch.Generator().manual_seed(3)
    estimates = (torch.rand(1, 2, 2, 3, 3, generator=gen, dtype=torch.float64) + 0.1).requires_grad_()
    mix = torch.randn(1, 2, 3, 3, generator=gen, dtype=torch.complex128)  # as in training: no gradient
    for window in (None, 2):
        with torch.no_grad():
            plain = mwf.apply_wiener(estimates, mix, iterations=1, window=window)
        recorded = mwf.apply_wiener(estimates, mix, iterations=1, window=window)
        assert recorded.requires_grad and recorded.is_contiguous()
        torch.testing.assert_close(recorded.detach(), plain, rtol=1e-12, atol=1e-12)
        assert torch.autograd.gradcheck(
            lambda a, b: mwf.apply_wiener(a, b, iterations=1, window=window), (estimates, mix))


def test_silence_gives_finite_output_and_gradients():
    v = torch.zeros(4, 3, 2, 4, dtype=torch.float32, requires_grad=True)
    x = torch.zeros(4, 3, 2, dtype=torch.complex64)
    for softmask in (False, True):
        for iterations in (0, 1, 2):
            y = mwf.wiener(v, x, iterations, softmask=softmask, residual=True)
            assert torch.isfinite(torch.view_as_real(y)).all()
            (grad,) = torch.autograd.grad(torch.view_as_real(y).sum(), v, allow_unused=True)
            assert grad is None or torch.isfinite(grad).all()
    # silent mixture under non-silent estimates
    y = mwf.wiener(torch.ones(4, 3, 2, 4), x, 1)
    assert torch.isfinite(torch.view_as_real(y)).all()


def test_inputs_unchanged_and_dtype_kept():
    v, x = random_problem((6, 5, 2, 4), seed=9)
    v = torch.from_numpy(v).float()
    x = torch.from_numpy(x).to(torch.complex64)
    v0, x0 = v.clone(), x.clone()
    y = mwf.wiener(v, x, iterations=2, residual=True)
    assert torch.equal(v, v0) and torch.equal(x, x0)
    assert y.dtype == torch.complex64
    assert y.shape == (6, 5, 2, 5)


def test_apply_wiener_model_layout():
    gen = torch.Generator().manual_seed(5)
    est = torch.rand(2, 4, 2, 9, 31, generator=gen)  # (batch, sources, channels, bins, frames)
    mix = torch.randn(2, 2, 9, 31, generator=gen, dtype=torch.complex64)
    out = mwf.apply_wiener(est, mix, iterations=1, window=10)
    assert out.shape == (2, 4, 2, 9, 31)
    ref = mwf.wiener_windowed(est[1].permute(3, 2, 1, 0), mix[1].permute(2, 1, 0), window=10)
    assert torch.allclose(out[1], ref.permute(3, 2, 1, 0))


@pytest.mark.parametrize("shape,max_bin", [((7, 300, 2, 4), 150), ((9, 6, 1, 3), 2), ((5, 130, 2, 2), 129)])
@pytest.mark.parametrize("residual", [False, True])
def test_max_bin_gives_the_first_bins_of_the_whole_filter(shape, max_bin, residual):
    v, x = random_problem(shape, seed=sum(shape) + max_bin)
    x[:, -1] *= 40  # the loudest bins are cut off: the scaling must still see them
    ref = norbert_reference(v, x, 2, False, residual)[:, :max_bin]
    v, x = torch.from_numpy(v), torch.from_numpy(x)
    ours = mwf.wiener(v, x, iterations=2, residual=residual, max_bin=max_bin)
    assert ours.shape == ref.shape
    assert rel_error(ours, ref) < 1e-6
    whole = mwf.wiener(v, x, iterations=2, residual=residual)
    assert torch.allclose(ours, whole[:, :max_bin], rtol=1e-12, atol=0)
    windowed = mwf.wiener_windowed(v, x, iterations=2, residual=residual, window=4, max_bin=max_bin)
    assert torch.allclose(windowed, mwf.wiener_windowed(v, x, iterations=2, residual=residual, window=4)[:, :max_bin],
                          rtol=1e-12, atol=0)
    layout = mwf.apply_wiener(v.permute(3, 2, 1, 0)[None], x.permute(2, 1, 0)[None], iterations=2,
                              residual=residual, window=None, max_bin=max_bin)
    assert torch.allclose(layout[0].permute(3, 2, 1, 0), ours, rtol=1e-12, atol=0)


@pytest.mark.parametrize("max_bin", [0, -1, 8])
def test_max_bin_outside_the_spectrum_is_rejected(max_bin):
    v, x = random_problem((4, 7, 2, 3), seed=2)
    with pytest.raises(ValueError, match="max_bin"):
        mwf.wiener(torch.from_numpy(v), torch.from_numpy(x), max_bin=max_bin)


def test_mismatched_shapes_are_rejected():
    with pytest.raises(ValueError, match="do not match"):
        mwf.wiener(torch.rand(4, 3, 2, 4), torch.zeros(4, 3, 1, dtype=torch.complex64))


@pytest.mark.parametrize("shape", [(30, 7, 2, 4), (20, 5, 1, 3), (16, 4, 3, 2)])
def test_statistics_summed_over_pieces_filter_as_the_whole_track(shape):
    """Two passes (sums over pieces of a track, then the filter a few frames at a time) give
    norbert's one iteration over the whole track; a frame may be split between pieces by weights."""
    v, x = random_problem(shape, seed=11, scale=4.0)
    want = norbert_reference(v, x, 1, False, False)
    frames = shape[0]
    vt, xt = torch.from_numpy(v), torch.from_numpy(x)
    cut = frames // 3
    # pieces [0, cut + 2) and [cut, frames): frames cut and cut + 1 count 0.25 + 0.75 and 0.5 + 0.5
    first = torch.ones(cut + 2, dtype=torch.float64)
    first[cut:] = torch.tensor([0.25, 0.5])
    second = torch.ones(frames - cut, dtype=torch.float64)
    second[:2] = torch.tensor([0.75, 0.5])
    p1, q1 = mwf.frame_statistics(vt[: cut + 2], xt[: cut + 2], first)
    p2, q2 = mwf.frame_statistics(vt[cut:], xt[cut:], second)
    peak = float(np.abs(x).max())
    got = torch.cat([mwf.wiener_from_statistics(vt[s:s + 7], xt[s:s + 7], p1 + p2, q1 + q2, peak, eps=EPS)
                     for s in range(0, frames, 7)])
    assert rel_error(got, want) < 1e-9
