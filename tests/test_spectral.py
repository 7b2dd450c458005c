import math

import numpy as np
import pytest
import torch

from danna_sep import spectral
from conftest import import_reference


@pytest.mark.parametrize("length", [2049, 4097, 10001, 44100 + 1, 3 * 4096 + 17])
def test_roundtrip_odd_lengths(length, rng):
    x = torch.rand(2, 3, length, generator=rng) * 2 - 1
    spec = spectral.stft(x)
    assert spec.shape == (2, 3, 2049, length // 1024 + 1)
    assert spec.shape[-1] == spectral.frames_for(length)
    y = spectral.istft(spec, length)
    assert y.shape == x.shape
    assert y.dtype == torch.float32
    assert (y - x).abs().max().item() < 1e-5


def test_stft_of_bin_centred_sine_known_answer():
    # A sinusoid of amplitude A at the centre frequency of bin k: with a periodic Hann
    # window of N samples (sum N/2), the interior frames show |X[k]| = A * N / 4.
    n_fft, k, amplitude = 4096, 100, 0.5
    t = torch.arange(8 * n_fft, dtype=torch.float64)
    x = amplitude * torch.cos(2 * math.pi * k * t / n_fft)
    mag = spectral.stft(x).abs()
    interior = mag[:, 4:-4]
    assert torch.allclose(interior[k], torch.full_like(interior[k], amplitude * n_fft / 4), rtol=1e-9)
    assert interior.argmax(dim=0).eq(k).all()
    others = torch.cat([interior[: k - 1], interior[k + 2 :]])
    assert others.max() < 1e-6 * interior[k].min()


def test_stft_matches_openunmix(rng):
    transforms = import_reference("openunmix.transforms")
    x = torch.randn(2, 2, 30001, generator=rng)
    reference = transforms.TorchSTFT(n_fft=4096, n_hop=1024, center=True)(x)
    ours = torch.view_as_real(spectral.stft(x))
    assert ours.shape == reference.shape
    assert (ours - reference).abs().max().item() < 1e-4


@pytest.mark.parametrize("rate,n_fft,bandwidth", [
    (44100, 4096, 16000), (44100, 4096, 22050), (48000, 2048, 8000), (22050, 1024, 5000), (44100, 64, 3000),
])
def test_bandwidth_to_max_bin_matches_openunmix(rate, n_fft, bandwidth):
    utils = import_reference("openunmix.utils")
    assert spectral.bandwidth_to_max_bin(rate, n_fft, bandwidth) == utils.bandwidth_to_max_bin(rate, n_fft, bandwidth)


def test_bandwidth_default_is_1487():
    assert spectral.bandwidth_to_max_bin(44100, 4096, 16000) == 1487


def test_short_signal_is_a_clear_error():
    with pytest.raises(ValueError, match="too short"):
        spectral.stft(torch.zeros(2, 1000))


def test_inputs_unchanged(rng):
    x = torch.randn(2, 9000, generator=rng)
    before = x.clone()
    spec = spectral.stft(x)
    spec_before = spec.clone()
    spectral.istft(spec, 9000)
    assert torch.equal(x, before) and torch.equal(spec, spec_before)
