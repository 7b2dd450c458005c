"""1D convolutions run as channels-last 2D ones for inference (models/layout.py, ModelRunner)."""

import copy

import pytest
import torch
from torch import nn

from danna_sep import models
from danna_sep.engine import EngineOptions, ModelRunner
from danna_sep.models.layout import ChannelsLastConv1d, conv1d_to_channels_last

CPU = torch.device("cpu")


def _converted(model: nn.Module) -> int:
    return sum(isinstance(m, ChannelsLastConv1d) for m in model.modules())


def _plain(model: nn.Module) -> int:
    return sum(isinstance(m, (nn.Conv1d, nn.ConvTranspose1d)) for m in model.modules())


@pytest.mark.parametrize("conv", [
    nn.Conv1d(6, 10, 5, stride=3, padding=2, dilation=2),
    nn.Conv1d(8, 12, 3, padding=1, groups=4, bias=False),
    nn.ConvTranspose1d(8, 6, 7, stride=4, groups=2, output_padding=1),
    nn.ConvTranspose1d(5, 3, 4, stride=2, padding=1, dilation=2, bias=False),
], ids=["strided-dilated", "grouped", "transposed-grouped", "transposed-dilated"])
@pytest.mark.parametrize("layout", ["contiguous", "time-major"])
def test_a_converted_convolution_computes_the_same(conv, layout):
    torch.manual_seed(0)
    x = torch.randn(3, conv.in_channels, 61)
    if layout == "time-major":
        x = x.transpose(1, 2).contiguous().transpose(1, 2)
    converted = ChannelsLastConv1d(conv)
    with torch.no_grad():
        expected, got = conv(x), converted(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert got.stride(1) == 1  # time-major out, so the next convolution needs no copy


def test_other_padding_is_refused():
    with pytest.raises(ValueError, match="zero padding"):
        ChannelsLastConv1d(nn.Conv1d(2, 2, 3, padding="same"))
    with pytest.raises(ValueError, match="zero padding"):
        ChannelsLastConv1d(nn.Conv1d(2, 2, 3, padding=1, padding_mode="reflect"))


@pytest.mark.parametrize("name,kwargs", [("demucs_split", {"channels": 4, "depth": 4}),
                                         ("demucs_v1", {"channels": 4, "depth": 4})])
def test_a_demucs_converts_every_convolution_and_separates_the_same(name, kwargs):
    torch.manual_seed(1)
    model = models.build(name, **kwargs).eval()
    convolutions = _plain(model)
    converted = copy.deepcopy(model)
    assert conv1d_to_channels_last(converted) == convolutions > 0
    assert _plain(converted) == 0 and _converted(converted) == convolutions
    wav = torch.randn(2, 2, 9_000) * 0.1
    with torch.no_grad():
        torch.testing.assert_close(converted(wav), model(wav), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_the_runner_converts_a_copy_on_the_cpu_and_leaves_the_callers_model_alone(precision):
    torch.manual_seed(2)
    model = models.build("demucs_split", channels=4, depth=4).eval()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    runner = ModelRunner(model, CPU, EngineOptions(precision=precision))
    assert runner.model is not model and _plain(runner.model) == 0 and _converted(runner.model) == _plain(model)
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(value, before[key]) for key, value in model.state_dict().items())
    owned = ModelRunner(copy.deepcopy(model), CPU, EngineOptions(precision=precision), own_model=True)
    assert _plain(owned.model) == 0
    chunk = torch.randn(2, 20_000) * 0.1
    with torch.no_grad():
        reference = model(chunk.unsqueeze(0))[0]
    tolerance = 1e-5 if precision == "float32" else 3e-2
    torch.testing.assert_close(runner(chunk), reference, rtol=0, atol=tolerance * reference.abs().max().item())


def test_a_training_model_is_left_as_it_is():
    model = models.build("demucs_split", channels=4, depth=4).train()
    runner = ModelRunner(model, CPU, EngineOptions(precision="float32"))
    assert runner.model is model and _converted(model) == 0


def test_a_bfloat16_convolution_that_disagrees_with_float32_computes_in_float32(monkeypatch):
    """oneDNN's wrong strided bfloat16 kernels (some CPUs) are simulated by a sign flip in
    bfloat16 only: the first call's probe catches it, and the result is float32's."""
    torch.manual_seed(3)
    conv = nn.Conv1d(16, 32, 8, stride=4)
    x = torch.randn(1, 16, 400).to(torch.bfloat16)
    with torch.no_grad():
        expected = nn.functional.conv1d(x.float(), conv.weight.to(torch.bfloat16).float(),
                                        conv.bias.to(torch.bfloat16).float(), stride=4)
        sound = ChannelsLastConv1d(conv).to(torch.bfloat16)
        torch.testing.assert_close(sound(x).float(), expected, rtol=0, atol=3e-2 * expected.abs().max().item())
        broken = ChannelsLastConv1d(conv).to(torch.bfloat16)
        convolve = broken._convolve
        monkeypatch.setattr(broken, "_convolve",
                            lambda planes, *rest: convolve(planes, *rest) * (-1 if planes.dtype == torch.bfloat16 else 1))
        got = broken(x)
    assert sound.agrees is not None and broken.agrees is False  # sound: whatever this CPU does, right
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), expected, rtol=0, atol=1e-2 * expected.abs().max().item())
