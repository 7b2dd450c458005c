"""Shared test helpers: reference packages and random model weights."""

import importlib
import importlib.util
import sys
import types

import pytest
import torch

# The tests run tiny models, which gain nothing from several threads and lose a lot when
# the cores are shared (CI runners, parallel jobs): one intra-op thread for the suite.
torch.set_num_threads(1)


def import_reference(name: str):
    """Import a reference package (openunmix, asteroid.models.x_umx, ...).

    openunmix and asteroid import torchaudio at package import without using it for the
    classes we compare against, and torchaudio has no CPU build here: register an empty
    stand-in module under that name when the real one is absent.
    """
    if "torchaudio" not in sys.modules and importlib.util.find_spec("torchaudio") is None:
        sys.modules["torchaudio"] = types.ModuleType("torchaudio")
    return importlib.import_module(name)


@torch.no_grad()
def randomize(module: torch.nn.Module, seed: int = 0, scale: float = 0.1) -> torch.nn.Module:
    """Fill every parameter and batch-norm statistic with reproducible random values."""
    gen = torch.Generator().manual_seed(seed)
    for name, tensor in sorted(module.state_dict().items()):
        if not tensor.is_floating_point():
            continue
        if name.endswith("running_var"):
            tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
        else:
            tensor.copy_(torch.randn(tensor.shape, generator=gen) * scale)
    return module


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(1234)


@pytest.fixture(autouse=True)
def _model_folders_only_where_a_test_sets_them(monkeypatch):
    """$DANNA_CHECKPOINTS and $DANNA_BUNDLES change which models run; a test sets them itself."""
    monkeypatch.delenv("DANNA_CHECKPOINTS", raising=False)
    monkeypatch.delenv("DANNA_BUNDLES", raising=False)
