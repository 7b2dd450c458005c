"""Blend weights fitted on held-out tracks: the closed-form SDR, the grid, and `export --fit`."""

from math import comb

import numpy as np
import pytest
import torch

from danna_sep.blendfit import best_weights, blend_sdr, blend_statistics, simplex_grid
from danna_sep.evaluate import sdr_mdx


def test_closed_form_sdr_equals_the_sdr_of_the_weighted_sum():
    gen = torch.Generator().manual_seed(0)
    members, sources = 3, 4
    stats, pairs = [], []
    for _ in range(3):
        references = torch.randn(sources, 2, 5000, generator=gen)
        estimates = references + torch.randn(members, sources, 2, 5000, generator=gen) * torch.rand(members, 1, 1, 1, generator=gen)
        stats.append(blend_statistics(estimates, references))
        pairs.append((references, estimates))
    weights = np.random.default_rng(1).dirichlet(np.ones(members), size=7)
    for source in range(sources):
        closed = blend_sdr(stats, weights, source)
        for p, w in enumerate(weights):
            direct = np.mean([
                sdr_mdx(r[source:source + 1].numpy(), torch.einsum("m,mcn->cn", torch.tensor(w, dtype=torch.float32),
                                                                   e[:, source]).numpy()[None])[0]
                for r, e in pairs])
            assert closed[p] == pytest.approx(direct, abs=1e-4)


def test_simplex_grid():
    grid = simplex_grid(3, 0.05)
    assert grid.shape == (comb(20 + 2, 2), 3)
    assert np.allclose(grid.sum(axis=1), 1.0) and grid.min() == 0.0 and grid.max() == 1.0
    assert len({tuple(row) for row in grid}) == len(grid)
    with pytest.raises(ValueError):
        simplex_grid(2, 0.3)


def test_known_answers():
    """Two members with independent errors of equal power: half each, 3 dB better. A
    perfect member gets all the weight, a member of pure noise none."""
    gen = torch.Generator().manual_seed(3)
    reference = torch.randn(2, 2, 200_000, generator=gen)
    noisy_a = reference + 0.5 * torch.randn(2, 2, 200_000, generator=gen)
    noisy_b = reference + 0.5 * torch.randn(2, 2, 200_000, generator=gen)
    fit = best_weights([blend_statistics(torch.stack([noisy_a, noisy_b]), reference)], ["x", "y"], 2, step=0.05)
    for source in ("x", "y"):
        assert [fit.weights[m][source] for m in range(2)] == [0.5, 0.5]
        assert fit.blend_sdr[source] - fit.member_sdr[0][source] == pytest.approx(10 * np.log10(2), abs=0.05)
        assert fit.member_sdr[0][source] == pytest.approx(10 * np.log10(4), abs=0.05)
    noise = torch.randn(2, 2, 200_000, generator=gen)
    fit = best_weights([blend_statistics(torch.stack([noisy_a, reference, noise]), reference)], ["x", "y"], 3)
    assert all([fit.weights[m][s] for m in range(3)] == [0.0, 1.0, 0.0] for s in ("x", "y"))
    assert fit.blend_sdr["y"] > 60 and fit.tracks == 1
