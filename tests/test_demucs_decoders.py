"""Demucs' decoders of sources a blend does not weigh are dropped (DemucsSplit.keep_decoders)."""

import copy

import pytest
import torch

from danna_sep import models
from danna_sep.engine import EngineOptions, ModelRunner
from danna_sep.separator import Separator

CPU = torch.device("cpu")


def small_demucs(seed: int = 0):
    torch.manual_seed(seed)
    model = models.build("demucs_split", channels=8, depth=3, lstm_layers=1).eval()
    for parameter in model.parameters():  # biases far from zero: a wrong slice shows
        parameter.data += 0.05 * torch.randn_like(parameter)
    return model


@pytest.mark.parametrize("keep", [["bass", "other"], ["drums", "vocals"], ["vocals"], ["drums", "bass", "other"]])
def test_kept_decoders_give_the_same_sources(keep):
    model = small_demucs()
    wav = torch.randn(2, 2, 9000) * 0.2
    with torch.no_grad():
        full = model(wav)
        pruned = copy.deepcopy(model)
        assert pruned.keep_decoders(keep) == len(keep)
        assert pruned.sources == [name for name in model.sources if name in keep]
        got = pruned(wav)
        assert got.shape == (2, len(keep), 2, 9000)
        indices = [model.sources.index(name) for name in pruned.sources]
        torch.testing.assert_close(got, full[:, indices], rtol=1e-5, atol=1e-6)
        pruned.keep_decoders([keep[-1]])  # again, from what is left
        torch.testing.assert_close(pruned(wav), full[:, indices[-1:]], rtol=1e-5, atol=1e-6)
        scripted = torch.jit.script(pruned)
        torch.testing.assert_close(scripted(wav), full[:, indices[-1:]], rtol=1e-5, atol=1e-6)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    with pytest.raises(ValueError):
        pruned.keep_decoders(["piano"])


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_the_runner_drops_unweighted_decoders_on_a_copy(precision):
    model = small_demucs(seed=1)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    chunk = torch.randn(2, 12_000) * 0.2
    whole = ModelRunner(model, CPU, EngineOptions(precision=precision))
    pruned = ModelRunner(model, CPU, EngineOptions(precision=precision), sources=["bass", "other"])
    assert whole.sources == list(model.sources) and pruned.sources == ["bass", "other"]
    assert pruned.model is not model and model.decoders == 4
    assert all(torch.equal(value, before[key]) for key, value in model.state_dict().items())
    torch.testing.assert_close(pruned(chunk), whole(chunk)[1:3], rtol=0, atol=1e-5 if precision == "float32" else 2e-2)
    training = ModelRunner(copy.deepcopy(model).train(), CPU, EngineOptions(), sources=["bass"])
    assert training.sources == list(model.sources)  # only models in eval mode are cut


def test_the_default_bundle_runs_only_its_demucs_weighted_decoders():
    separator = Separator(None, precision="float32")
    (demucs,) = [r for r in separator._blend.runners if type(r.model).__name__ == "DemucsSplit"]
    (member,) = [m for m in separator.bundle.members if m.model is demucs.model]
    assert demucs.sources == [name for name in separator.bundle.sources if member.blend.get(name, 0.0)]
    assert len(demucs.sources) < 4
