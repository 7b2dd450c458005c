"""Blend weights fitted on held-out tracks.

A bundle's blend is a weighted sum of its members' estimates, per source. The SDR of
such a sum has a closed form in a few inner products, so every candidate weighting can
be scored without separating again: with member estimates e_m and reference s,

    |s - sum_m w_m e_m|^2 = <s, s> - 2 sum_m w_m <s, e_m> + sum_mn w_m w_n <e_m, e_n>.

`fit_blend` separates each track once per member, keeps those inner products, and picks
for each source the weights on a simplex grid (non-negative, summing to one) with the
best mean MDX SDR over the tracks.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np
import torch

from . import DEFAULT_OVERLAP, SAMPLERATE
from .metrics import sdr_from_energies
from .progress import TaskProgressFn

log = logging.getLogger(__name__)


@dataclass
class BlendStatistics:
    """Inner products of one track, per source: gram `(sources, members, members)`,
    cross `(sources, members)` (reference . estimate) and energy `(sources,)`."""

    gram: np.ndarray
    cross: np.ndarray
    energy: np.ndarray


def blend_statistics(estimates: torch.Tensor, references: torch.Tensor) -> BlendStatistics:
    """Statistics of member estimates `(members, sources, channels, samples)` against
    references `(sources, channels, samples)`, in double precision."""
    e = estimates.double().flatten(2)  # (members, sources, n)
    s = references.double().flatten(1)  # (sources, n)
    gram = torch.einsum("msn,ksn->smk", e, e)
    cross = torch.einsum("msn,sn->sm", e, s)
    energy = s.square().sum(dim=1)
    return BlendStatistics(gram.numpy(), cross.numpy(), energy.numpy())


def simplex_grid(members: int, step: float) -> np.ndarray:
    """Every weight vector of `members` non-negative multiples of `step` summing to one,
    `(points, members)`."""
    parts = int(round(1.0 / step))
    if parts < 1 or abs(parts * step - 1.0) > 1e-9:
        raise ValueError(f"step must divide 1, got {step}")
    rows = [c for c in itertools.product(range(parts + 1), repeat=members) if sum(c) == parts]
    return np.asarray(rows, dtype=np.float64) / parts


def blend_sdr(stats: Sequence[BlendStatistics], weights: np.ndarray, source: int) -> np.ndarray:
    """Mean MDX SDR over tracks of source `source` for each weight vector `(points, members)`."""
    total = np.zeros(len(weights))
    for st in stats:
        gram, cross, energy = st.gram[source], st.cross[source], st.energy[source]
        error = energy - 2 * weights @ cross + np.einsum("pm,mk,pk->p", weights, gram, weights)
        total += sdr_from_energies(energy, np.maximum(error, 0.0))
    return total / len(stats)


@dataclass
class BlendFit:
    """Fitted weights, one `{source: weight}` per member, and the mean SDR per source of
    each member alone and of the blend on the tracks it was fitted on."""

    weights: List[Dict[str, float]]
    member_sdr: List[Dict[str, float]]
    blend_sdr: Dict[str, float]
    tracks: int


def best_weights(stats: Sequence[BlendStatistics], sources: Sequence[str], members: int,
                 step: float = 0.05) -> BlendFit:
    """The simplex-grid weights with the best mean SDR, per source."""
    if not stats:
        raise ValueError("no tracks to fit the blend on")
    grid = simplex_grid(members, step)
    weights: List[Dict[str, float]] = [{} for _ in range(members)]
    alone: List[Dict[str, float]] = [{} for _ in range(members)]
    blended: Dict[str, float] = {}
    eye = np.eye(members)
    for j, name in enumerate(sources):
        scores = blend_sdr(stats, grid, j)
        best = int(np.argmax(scores))
        blended[name] = float(scores[best])
        single = blend_sdr(stats, eye, j)
        for m in range(members):
            weights[m][name] = round(float(grid[best, m]), 6)
            alone[m][name] = float(single[m])
    return BlendFit(weights, alone, blended, len(stats))


def fit_blend(
    models: Sequence[torch.nn.Module],
    tracks: Iterable,
    sources: Sequence[str],
    *,
    step: float = 0.05,
    device: str | torch.device = "auto",
    segment: float = 10.0,
    overlap: float = DEFAULT_OVERLAP,
    wiener_iterations: int = 1,
    progress: Optional[TaskProgressFn] = None,
) -> BlendFit:
    """Separate each track (`danna_sep.data.Track`) with every model, as `danna-sep separate`
    would with its default options, and fit the blend weights on the results."""
    from .engine import EngineOptions, ModelRunner, resolve_device, separate

    device = resolve_device(device)
    options = EngineOptions(segment=segment, overlap=overlap, wiener_iterations=wiener_iterations)
    runners = []
    for model in models:
        model.to(device).eval()
        runners.append(ModelRunner(model, device, options))
    tracks = list(tracks)
    if progress:
        progress("fitting the blend", 0, len(tracks), "")
    stats = []
    for done, track in enumerate(tracks, start=1):
        stems = track.read(stems=["mixture", *sources])
        mixture = stems["mixture"]
        references = torch.stack([stems[name] for name in sources])
        estimates = []
        with torch.no_grad():
            for runner in runners:
                out = separate(runner, mixture, SAMPLERATE, options)
                estimates.append(torch.stack([out[runner.sources.index(name)] if name in runner.sources
                                              else torch.zeros_like(mixture) for name in sources]))
        stats.append(blend_statistics(torch.stack(estimates), references))
        log.debug("%s: statistics ready", track.name)
        if progress:
            progress("fitting the blend", done, len(tracks), track.name)
    return best_weights(stats, sources, len(runners), step)
