"""Batch norms folded into convolutions for inference (models/fusion.py, ModelRunner)."""

import copy

import pytest
import torch
from torch import nn

from danna_sep import models
from danna_sep.engine import EngineOptions, ModelRunner
from danna_sep.models.fusion import fold_batch_norms
from danna_sep.models.unet import D2Block

CPU = torch.device("cpu")


def _random_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Batch norms with statistics and affine parameters far from the identity."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            shape = module.running_mean.shape
            module.running_mean.copy_(torch.randn(shape, generator=generator))
            module.running_var.copy_(torch.rand(shape, generator=generator) * 2 + 0.2)
            module.weight.data.copy_(torch.randn(shape, generator=generator))
            module.bias.data.copy_(torch.randn(shape, generator=generator))
    return model


def _norms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_a_d2_block_folds_every_layer_norm_into_the_convolutions_feeding_it():
    torch.manual_seed(0)
    block = _random_norms(D2Block(6, 4, 5)).eval()
    folded = copy.deepcopy(block)
    assert fold_batch_norms(folded) == 5 and _norms(folded) == 0
    x = torch.randn(2, 6, 33, 29)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), block(x), rtol=1e-5, atol=1e-5)
    assert fold_batch_norms(folded) == 0  # nothing left to fold


def test_the_unet_folds_all_but_its_transposed_convolutions_norms():
    torch.manual_seed(1)
    model = _random_norms(models.build("unet_attn", max_bins=128, k=3, attn_channels=8, attn_d_model=8,
                                       attn_heads=2), seed=1).eval()
    folded = copy.deepcopy(model)
    count = fold_batch_norms(folded)
    # left: after the 6 transposed convolutions (a bias there is slow) and the 2 attentions
    assert _norms(folded) == 8 and count == _norms(model) - 8
    mag = torch.rand(1, 2, 300, 70) * 3
    with torch.no_grad():
        torch.testing.assert_close(folded(mag), model(mag), rtol=1e-5, atol=1e-5)


def test_the_xumx_folds_its_three_1d_norms_and_its_runner_computes_the_same():
    torch.manual_seed(3)
    model = _random_norms(models.build("xumx", hidden_channels=16, max_bins=100), seed=3).eval()
    folded = copy.deepcopy(model)
    assert fold_batch_norms(folded) == 3
    assert not any(isinstance(m, nn.BatchNorm1d) for m in folded.modules())
    mag = torch.rand(1, 2, 2049, 40) * 3
    with torch.no_grad():
        want = model(mag)
        torch.testing.assert_close(folded(mag), want, rtol=1e-4, atol=1e-4)
        runner = ModelRunner(model, CPU, EngineOptions(precision="float32"))
        assert not any(isinstance(m, nn.BatchNorm1d) for m in runner.model.modules())
        assert sum(isinstance(m, nn.BatchNorm1d) for m in model.modules()) == 3  # the caller's: as it was
        torch.testing.assert_close(runner._forward(mag), want, rtol=1e-4, atol=1e-4)


def test_training_mode_folds_nothing():
    model = _random_norms(D2Block(2, 3, 2)).train()
    assert fold_batch_norms(model) == 0 and _norms(model) == 2


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_the_runner_folds_a_copy_and_leaves_the_callers_model_alone(precision):
    torch.manual_seed(2)
    model = _random_norms(models.build("unet_attn", max_bins=128, k=3, attn_channels=8, attn_d_model=8,
                                       attn_heads=2), seed=2).eval()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    runner = ModelRunner(model, CPU, EngineOptions(precision=precision))
    assert _norms(runner.model) == 8 and runner.model is not model
    assert _norms(model) == _norms(models.build("unet_attn", max_bins=128, k=3, attn_channels=8,
                                                attn_d_model=8, attn_heads=2))
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(value, before[key]) for key, value in model.state_dict().items())
    owned = ModelRunner(copy.deepcopy(model), CPU, EngineOptions(precision=precision), own_model=True)
    assert _norms(owned.model) == 8
    chunk = torch.randn(2, 20_000) * 0.1
    with torch.no_grad():
        plain = ModelRunner(model, CPU, EngineOptions(precision="float32"))
        plain.model = model  # unfolded, float32: the reference
        reference = plain(chunk)
    tolerance = 1e-4 if precision == "float32" else 3e-2
    torch.testing.assert_close(runner(chunk), reference, rtol=0, atol=tolerance * reference.abs().max().item())
