"""Training losses against slow, direct references (numpy loops, norbert, asteroid) and known answers."""

import itertools

import norbert
import numpy as np
import pytest
import torch

from danna_sep import spectral
from danna_sep.train import losses as L
from conftest import import_reference


def numpy_subsets(n):
    return [c for size in range(1, n) for c in itertools.combinations(range(n), size)]


def reference_complex_mse(est, ref):
    """Danna-Sep's definition, one subset at a time: mean |sum est - sum ref|^2, averaged over subsets."""
    terms = []
    for subset in numpy_subsets(est.shape[1]):
        diff = est[:, list(subset)].sum(axis=1) - ref[:, list(subset)].sum(axis=1)
        terms.append(np.mean(diff.real ** 2 + diff.imag ** 2))
    return float(np.mean(terms))


def reference_weighted_sdr(est, ref, mix, eps=1e-10):
    """One row at a time: -a cos(s, s_hat) - (1 - a) cos(n, n_hat), a = |s|^2 / (|s|^2 + |n|^2 + eps)."""
    s, s_hat = ref, est
    n, n_hat = mix - ref, mix - est
    alpha = np.dot(s, s) / (np.dot(s, s) + np.dot(n, n) + eps)
    cos_s = np.dot(s, s_hat) / (np.sqrt(np.dot(s, s)) * np.sqrt(np.dot(s_hat, s_hat)) + eps)
    cos_n = np.dot(n, n_hat) / (np.sqrt(np.dot(n, n)) * np.sqrt(np.dot(n_hat, n_hat)) + eps)
    return -alpha * cos_s - (1 - alpha) * cos_n


def reference_time_loss(est, ref, mix):
    """1 + mean weighted SDR over every subset, batch item and channel, by explicit loops."""
    values = []
    batch, _, channels, _ = est.shape
    for subset in numpy_subsets(est.shape[1]):
        for b in range(batch):
            for c in range(channels):
                values.append(reference_weighted_sdr(est[b, list(subset), c].sum(axis=0),
                                                     ref[b, list(subset), c].sum(axis=0), mix[b, c]))
    return 1.0 + float(np.mean(values))


def test_fourteen_subsets():
    subsets = L.proper_subsets(4)
    assert len(subsets) == 14 == len(set(subsets))
    assert all(0 < len(s) < 4 for s in subsets)
    matrix = L.subset_matrix(4)
    assert matrix.shape == (14, 4)
    assert sorted(matrix.sum(dim=1).tolist()) == [1] * 4 + [2] * 6 + [3] * 4


@pytest.mark.parametrize("shape", [(1, 4, 2, 7, 5), (3, 4, 1, 4, 3), (2, 3, 2, 5, 2)])
def test_complex_mse_matches_the_subset_loop(shape):
    rng = np.random.default_rng(sum(shape))
    est = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    ref = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    ours = L.complex_mse(torch.from_numpy(est), torch.from_numpy(ref))
    assert float(ours) == pytest.approx(reference_complex_mse(est, ref), rel=1e-10)


@pytest.mark.parametrize("batch,channels,samples", [(1, 2, 50), (3, 1, 17), (2, 2, 200)])
def test_combination_sdr_loss_matches_the_loop(batch, channels, samples):
    rng = np.random.default_rng(batch * 100 + samples)
    ref = rng.standard_normal((batch, 4, channels, samples))
    est = ref + 0.7 * rng.standard_normal(ref.shape)
    mix = ref.sum(axis=1)
    ours = L.combination_sdr_loss(torch.from_numpy(est), torch.from_numpy(ref), torch.from_numpy(mix))
    assert float(ours) == pytest.approx(reference_time_loss(est, ref, mix), rel=1e-10, abs=1e-12)


def test_weighted_sdr_cosines_agree_with_torch():
    gen = torch.Generator().manual_seed(3)
    ref, est, other = (torch.randn(5, 64, generator=gen, dtype=torch.float64) for _ in range(3))
    mix = ref + other
    alpha = ref.square().sum(-1) / (ref.square().sum(-1) + other.square().sum(-1) + 1e-10)
    cos = torch.nn.functional.cosine_similarity
    expected = -alpha * cos(ref, est, dim=-1) - (1 - alpha) * cos(mix - ref, mix - est, dim=-1)
    torch.testing.assert_close(L.weighted_sdr(est, ref, mix), expected, rtol=1e-9, atol=1e-12)


def test_perfect_estimates_give_zero():
    gen = torch.Generator().manual_seed(0)
    ref = torch.randn(2, 4, 2, 300, generator=gen, dtype=torch.float64)
    mix = ref.sum(dim=1)
    assert float(L.combination_sdr_loss(ref.clone(), ref, mix)) == pytest.approx(0.0, abs=1e-12)
    assert float(L.weighted_sdr(ref[:, 0], ref[:, 0], mix).mean()) == pytest.approx(-1.0, abs=1e-12)
    spec = torch.randn(2, 4, 2, 9, 3, dtype=torch.complex128, generator=gen)
    assert float(L.complex_mse(spec.clone(), spec)) == 0.0
    # Opposite estimates are the worst case of the time term: 1 + 1.
    assert float(L.combination_sdr_loss(mix.unsqueeze(1) - ref - ref, ref, mix)) > 0.5


def _one_source_problem(samples=8192, seed=0):
    """A mixture made of source 0 alone: masks [1, 0, 0, 0] are a perfect estimate."""
    gen = torch.Generator().manual_seed(seed)
    sources = torch.zeros(1, 4, 2, samples)
    sources[:, 0] = torch.randn(1, 2, samples, generator=gen) * 0.3
    mixture = sources.sum(dim=1)
    mix_stft = spectral.stft(mixture)
    masks = torch.zeros(1, 4, 2, *mix_stft.shape[-2:])
    masks[:, 0] = 1.0
    return masks, mix_stft, spectral.stft(sources), sources, mixture


@pytest.mark.parametrize("iterations", [0, 1])
def test_closs_of_a_perfect_mask_is_zero(iterations):
    masks, mix_stft, source_stft, sources, mixture = _one_source_problem()
    result = L.closs(masks, mix_stft, source_stft, sources, mixture, wiener_iterations=iterations, mcoeff=10)
    assert result.parts["loss_f"] == pytest.approx(0.0, abs=1e-8)
    assert result.parts["loss_t"] == pytest.approx(0.0, abs=1e-5)
    assert float(result.loss) == pytest.approx(0.0, abs=1e-4)


def test_closs_composes_mwf_complex_mse_and_sdr_like_the_references():
    """Wiener filter by norbert (1 iteration), complex MSE and SDR terms by the loops above."""
    rng = np.random.default_rng(7)
    samples = 6000
    sources = rng.standard_normal((1, 4, 2, samples)) * np.array([0.5, 0.2, 0.3, 0.4])[None, :, None, None]
    mixture = sources.sum(axis=1)
    mix_stft = spectral.stft(torch.from_numpy(mixture))
    source_stft = spectral.stft(torch.from_numpy(sources))
    masks = torch.from_numpy(rng.uniform(0, 1, (1, 4, 2) + tuple(mix_stft.shape[-2:])))
    masks.requires_grad_(True)
    result = L.closs(masks, mix_stft, source_stft, torch.from_numpy(sources), torch.from_numpy(mixture),
                     wiener_iterations=1, mcoeff=10)

    # norbert's layout: v (frames, bins, channels, sources), x (frames, bins, channels)
    v = (masks.detach() * mix_stft.abs().unsqueeze(1))[0].permute(3, 2, 1, 0).numpy()
    x = mix_stft[0].permute(2, 1, 0).numpy().copy()
    y = norbert.wiener(v, x, iterations=1, use_softmask=False, eps=1e-10)  # (frames, bins, channels, sources)
    estimates = torch.from_numpy(y).permute(3, 2, 1, 0).unsqueeze(0)  # (1, sources, channels, bins, frames)
    freq = reference_complex_mse(estimates.numpy(), source_stft.numpy())
    waves = spectral.istft(estimates, samples).numpy()
    time = reference_time_loss(waves, sources, mixture)
    assert result.parts["loss_f"] == pytest.approx(freq, rel=1e-6)
    assert result.parts["loss_t"] == pytest.approx(time, rel=1e-6, abs=1e-9)
    assert float(result.loss.detach()) == pytest.approx(freq + 10 * time, rel=1e-6)

    result.loss.backward()  # differentiable through the Wiener filter and the iSTFT
    assert masks.grad is not None and torch.isfinite(masks.grad).all() and masks.grad.abs().sum() > 0


def test_closs_gradient_is_finite_for_silent_estimates_and_sources():
    masks, mix_stft, source_stft, sources, mixture = _one_source_problem(samples=4096, seed=1)
    masks = torch.zeros_like(masks, requires_grad=True)  # every estimate exactly zero
    for iterations in (0, 1):
        result = L.closs(masks, mix_stft, source_stft, sources, mixture, wiener_iterations=iterations)
        (grad,) = torch.autograd.grad(result.loss, masks)
        assert torch.isfinite(result.loss) and torch.isfinite(grad).all()


def test_waveform_losses_match_asteroid_and_torch():
    losses = import_reference("asteroid.losses")
    gen = torch.Generator().manual_seed(5)
    est = torch.randn(3, 4, 2, 100, generator=gen)
    ref = torch.randn(3, 4, 2, 100, generator=gen)
    mse = losses.singlesrc_mse(est.reshape(-1, 100), ref.reshape(-1, 100)).mean()
    torch.testing.assert_close(L.waveform_l2(est, ref), mse)
    torch.testing.assert_close(L.waveform_l1(est, ref), torch.nn.functional.l1_loss(est, ref))
    mag_est, mag_ref = est.abs(), ref.abs()
    torch.testing.assert_close(L.magnitude_mse(mag_est, mag_ref), torch.nn.functional.mse_loss(mag_est, mag_ref))


def test_mdx_sdr_matches_asteroid_snr_and_known_values():
    """The SDR validation scores with (danna_sep.metrics, shared with evaluate and the blend fit)."""
    from danna_sep.metrics import mdx_sdr

    sdr = import_reference("asteroid.losses.sdr")
    snr = sdr.SingleSrcNegSDR("snr", zero_mean=False, take_log=True, reduction="none")
    gen = torch.Generator().manual_seed(6)
    ref = torch.randn(5, 2, 1000, generator=gen, dtype=torch.float64)
    est = ref + 0.3 * torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    ours = mdx_sdr(ref, est)
    theirs = -snr(est.reshape(5, -1), ref.reshape(5, -1))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    # known answers: an estimate of half the reference is 6.02 dB; silence vs silence is 0 dB
    assert float(mdx_sdr(ref[0], ref[0] * 0.5)) == pytest.approx(10 * np.log10(4), abs=1e-6)
    assert float(mdx_sdr(torch.zeros(2, 10), torch.zeros(2, 10))) == 0.0
