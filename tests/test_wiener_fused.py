"""The compiled stereo Wiener filter against norbert and against the torch path it replaces."""

import itertools
import threading

import numpy as np
import pytest
import torch

from danna_sep import wiener as mwf
from danna_sep import wiener_fused

from test_wiener import EPS, norbert_reference, random_problem, rel_error

numba = pytest.importorskip("numba")


@pytest.fixture(autouse=True)
def switched_on(monkeypatch):
    """The compiled filter is opt-in (DANNA_SEP_WIENER=numba); these tests turn it on."""
    monkeypatch.setenv(wiener_fused.ENV_SWITCH, "numba")


def torch_path(monkeypatch, *args, **kwargs) -> torch.Tensor:
    """`apply_wiener` with the compiled filter switched off."""
    with monkeypatch.context() as patch:
        patch.setenv(wiener_fused.ENV_SWITCH, "torch")
        return mwf.apply_wiener(*args, **kwargs)


def model_layout(v: np.ndarray, x: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """norbert's `(frames, bins, channels, sources)` problem as the models' batch of one."""
    return torch.from_numpy(v).permute(3, 2, 1, 0)[None], torch.from_numpy(x).permute(2, 1, 0)[None]


@pytest.mark.parametrize(
    "shape,iterations,softmask,residual",
    list(itertools.product([(5, 7, 2, 4), (40, 3, 2, 1), (9, 130, 2, 3)], [0, 1, 3], [False, True], [False, True])),
)
def test_matches_norbert(shape, iterations, softmask, residual):
    v, x = random_problem(shape, seed=hash((shape, iterations, softmask, residual, "fused")) % 2**32)
    ref = norbert_reference(v, x, iterations, softmask, residual)
    estimates, mix = model_layout(v, x)
    assert wiener_fused.usable(estimates, mix)
    ours = mwf.apply_wiener(estimates, mix, iterations, softmask, residual, eps=EPS, window=None)
    assert ours.dtype == torch.complex128
    assert rel_error(ours[0].permute(3, 2, 1, 0), ref) < 1e-9


def hard_problem(seed: int, frames: int = 700, bins: int = 70, sources: int = 4):
    """float32 magnitudes and a complex64 mixture with what real audio has: silent frames,
    mono bins (a singular spatial covariance), sources panned alike, a loud window."""
    gen = torch.Generator().manual_seed(seed)
    estimates = torch.rand(1, sources, 2, bins, frames, generator=gen) ** 3
    mix = torch.randn(1, 2, bins, frames, generator=gen, dtype=torch.complex64)
    mix[..., :5] = 0
    estimates[..., :3] = 0
    mix[:, 1, 10:20] = mix[:, 0, 10:20]
    estimates[:, :, 1, 10:20] = estimates[:, :, 0, 10:20]
    mix[..., 320:350] *= 400  # max|x| / 10 > 1: the second window is scaled
    return estimates, mix


@pytest.mark.parametrize(
    "iterations,softmask,residual,window,max_bin",
    [(1, False, False, 300, None), (2, True, True, 300, None), (1, False, False, 128, 33),
     (0, False, True, 300, 20), (1, False, False, None, None), (3, True, False, 1000, 69)],
)
def test_equals_the_torch_path(monkeypatch, iterations, softmask, residual, window, max_bin):
    estimates, mix = hard_problem(seed=iterations + 10 * (window or 0))
    want = torch_path(monkeypatch, estimates, mix, iterations, softmask, residual, window=window, max_bin=max_bin)
    got = mwf.apply_wiener(estimates, mix, iterations, softmask, residual, window=window, max_bin=max_bin)
    assert got.shape == want.shape and got.dtype == want.dtype == torch.complex64
    assert got.is_contiguous()
    assert torch.isfinite(torch.view_as_real(got)).all()
    assert float((got - want).abs().max() / want.abs().max()) < 1e-6


def test_each_batch_item_and_window_is_scaled_on_its_own(monkeypatch):
    estimates, mix = hard_problem(seed=3, frames=400)
    quiet = hard_problem(seed=4, frames=400)
    estimates = torch.cat([estimates, quiet[0]])
    mix = torch.cat([mix, quiet[1] / 50])
    got = mwf.apply_wiener(estimates, mix, window=300)
    for item in range(2):
        alone = torch_path(monkeypatch, estimates[item:item + 1], mix[item:item + 1], window=300)
        assert float((got[item] - alone[0]).abs().max() / alone.abs().max()) < 1e-6
    scales = wiener_fused.window_scales(mix[0], 300)
    assert scales.tolist() == [max(1.0, float(mix[0, ..., 300 * w:300 * (w + 1)].abs().max()) / 10) for w in range(2)]
    assert scales[1] > 1


def test_gradients_and_other_channel_counts_take_the_torch_path():
    estimates, mix = hard_problem(seed=5, frames=20)
    assert wiener_fused.usable(estimates, mix)
    assert not wiener_fused.usable(estimates.clone().requires_grad_(), mix)
    with torch.no_grad():
        assert wiener_fused.usable(estimates.clone().requires_grad_(), mix)
    assert not wiener_fused.usable(estimates[:, :, :1], mix[:, :1])
    assert not wiener_fused.usable(estimates, mix.real)
    leaf = estimates.clone().requires_grad_()
    mwf.apply_wiener(leaf, mix).abs().sum().backward()  # the torch path: gradients flow
    assert leaf.grad is not None and torch.isfinite(leaf.grad).all()


def test_off_unless_switched_on(monkeypatch):
    estimates, mix = hard_problem(seed=6, frames=20)
    assert wiener_fused.usable(estimates, mix)
    monkeypatch.setenv(wiener_fused.ENV_SWITCH, "torch")
    assert not wiener_fused.usable(estimates, mix)
    monkeypatch.delenv(wiener_fused.ENV_SWITCH)
    assert not wiener_fused.usable(estimates, mix)


def test_filters_from_several_threads_at_once():
    problems = [hard_problem(seed=20 + i, frames=350) for i in range(4)]
    want = [mwf.apply_wiener(*problem) for problem in problems]
    got = [None] * len(problems)

    def filter_one(i):
        got[i] = mwf.apply_wiener(*problems[i])

    threads = [threading.Thread(target=filter_one, args=(i,)) for i in range(len(problems))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for ours, theirs in zip(got, want):
        assert torch.equal(ours, theirs)


def test_inputs_are_left_as_they_were():
    estimates, mix = hard_problem(seed=7, frames=50)
    before = estimates.clone(), mix.clone()
    mwf.apply_wiener(estimates, mix, residual=True, max_bin=40)
    assert torch.equal(estimates, before[0]) and torch.equal(mix, before[1])


def test_non_contiguous_inputs(monkeypatch):
    estimates, mix = hard_problem(seed=8, frames=60)
    estimates = estimates.transpose(-1, -2).contiguous().transpose(-1, -2)  # bins fastest
    mix = mix[..., ::2]
    estimates = estimates[..., ::2]
    want = torch_path(monkeypatch, estimates, mix)
    got = mwf.apply_wiener(estimates, mix)
    assert float((got - want).abs().max() / want.abs().max()) < 1e-6


def test_runs_on_numbas_own_thread_pool_not_a_second_openmp(tmp_path):
    """numba's OpenMP layer beside torch's OpenMP makes torch's later operations crawl (an
    LSTM 1,000 times slower), so the filter picks the workqueue pool; a fresh process,
    since a pool is chosen once per process."""
    import os
    import subprocess
    import sys

    script = (
        "import torch, numba\n"
        "from danna_sep import wiener\n"
        "wiener.apply_wiener(torch.rand(1, 4, 2, 8, 30), torch.randn(1, 2, 8, 30, dtype=torch.complex64))\n"
        "print(numba.threading_layer())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}
    env[wiener_fused.ENV_SWITCH] = "numba"
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-1] == wiener_fused.THREADING_LAYER == "workqueue"
