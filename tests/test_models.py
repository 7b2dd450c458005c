"""Structural tests of the five networks on tiny configurations."""

import inspect
import io
import json
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from danna_sep import models
from danna_sep.cli import main
from conftest import randomize

# name -> (tiny kwargs, input shape)
TINY = {
    "xumx": (dict(n_fft=64, hidden_channels=16, max_bins=20, nb_layers=2), (2, 2, 33, 9)),
    "unet_attn": (dict(max_bins=64, k=3), (2, 2, 70, 37)),
    "demucs_split": (dict(channels=4, depth=4), (2, 2, 3001)),
    "umx": (dict(nb_bins=33, hidden_size=16, max_bin=20, nb_layers=2), (2, 2, 33, 9)),
    "demucs_v1": (dict(channels=4, depth=4), (2, 2, 3001)),
}

# Published parameter counts of the default models (SPEC-models.md).
PUBLISHED = {"xumx": 35.57e6, "unet_attn": 15.68e6, "demucs_split": 191.9e6, "umx": 8.9e6}


def tiny(name, seed=0):
    torch.manual_seed(seed)
    kwargs, shape = TINY[name]
    model = models.build(name, **kwargs)
    return model, shape


def example_input(name, shape, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen)
    return x.abs() if models.get(name)(**TINY[name][0]).input_domain == "magnitude" else x


def expected_shape(model, shape):
    if model.output_kind == "magnitude":
        return shape
    return (shape[0], len(model.sources)) + tuple(shape[1:])


def test_registry_lists_five_models():
    assert models.names() == ["xumx", "unet_attn", "demucs_split", "umx", "demucs_v1"]
    with pytest.raises(KeyError, match="unknown model 'nope'"):
        models.build("nope")


@pytest.mark.parametrize("name", list(TINY))
def test_contract_attributes(name):
    model, _ = tiny(name)
    assert model.samplerate == 44100
    assert model.audio_channels == 2
    assert model.input_domain in ("magnitude", "waveform")
    assert model.output_kind in ("mask", "magnitude", "waveform")
    assert set(model.sources) <= {"drums", "bass", "other", "vocals"}


@pytest.mark.parametrize("name", list(TINY))
def test_config_is_the_constructor_arguments_every_default_filled_in(name):
    """`model.config` is captured without the model's help: the registry name's class built
    from it is the same network, and it survives a JSON round trip unchanged."""
    model, shape = tiny(name)
    cls = models.get(name)
    assert type(model) is cls and model.name == name
    given = TINY[name][0]
    assert model.config.items() >= given.items()
    defaults = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items() if k != "self"}
    assert set(model.config) == set(defaults)
    assert all(model.config[k] == defaults[k] for k in set(defaults) - set(given))
    assert json.loads(json.dumps(model.config)) == model.config
    again = cls(**model.config)
    assert again.config == model.config
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    with torch.device("meta"):
        assert models.build(name, **given).config == model.config


def test_config_is_recorded_by_the_outermost_constructor():
    class Wider(models.get("demucs_v1")):
        def __init__(self, width: int = 6, pads: tuple = (1, 2), **kwargs):
            super().__init__(channels=width, depth=2, **kwargs)

    # as JSON gives it back: lists, not tuples
    assert Wider(normalize=False).config == {"width": 6, "pads": [1, 2], "normalize": False}
    with pytest.raises(TypeError, match=r"\*args"):
        class Positional(models.SeparationModel):
            def __init__(self, *sizes):
                super().__init__()


def test_a_class_states_a_known_contract():
    with pytest.raises(TypeError, match="output_kind"):
        class Spectrum(models.SeparationModel):
            output_kind = "spectrum"
    with pytest.raises(TypeError, match="input_domain"):
        class Text(models.SeparationModel):
            input_domain = "text"


@pytest.mark.parametrize("name", list(TINY))
def test_torchscript_keeps_the_contract(name, tmp_path):
    """A scripted model saved and loaded still says what it reads and returns (TorchScript
    keeps instance attributes only), so the engine can run it as it runs ours."""
    model, _ = tiny(name)
    path = tmp_path / "model.pth"
    torch.jit.script(model).save(str(path))
    loaded = torch.jit.load(str(path))
    assert models.contract_of(loaded) == models.contract_of(model)
    contract = models.contract_of(model)
    assert (contract.input_domain, contract.output_kind) == (type(model).input_domain, type(model).output_kind)
    assert contract.original_chunk_frames == type(model).original_chunk_frames


@pytest.mark.parametrize("name,kwargs", [
    ("xumx", dict(n_fft=64, hidden_channels=12, max_bins=20, nb_layers=2)),
    ("unet_attn", dict(max_bins=64, k=2, attn_channels=8, attn_d_model=12, attn_heads=3)),
    ("unet_attn", dict(max_bins=64, k=1, attn_channels=4, attn_d_model=4, attn_heads=2, original_padding_bias=True)),
    ("demucs_split", dict(channels=4, depth=3, resample=False, stride=2, lstm_layers=1)),
])
def test_original_kwargs_fit_a_scripted_file(name, kwargs, tmp_path):
    """The arguments a network reads off a TorchScript file of itself rebuild it: what the
    file shows equals what it was built with, and the weights load strictly."""
    model = models.build(name, **kwargs)
    shape = TINY[name][1]
    randomize(model, seed=5)
    path = tmp_path / "model.pth"
    torch.jit.script(model.eval()).save(str(path))
    scripted = torch.jit.load(str(path))
    state = dict(scripted.state_dict())
    inferred = models.get(name).original_kwargs(state, scripted)
    assert {k: model.config[k] for k in inferred} == inferred
    assert inferred.items() >= kwargs.items()
    rebuilt = models.build(name, **inferred).eval()
    rebuilt.load_state_dict(state, strict=True)
    x = example_input(name, shape)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))


@pytest.mark.parametrize("name", list(TINY))
def test_input_statistics_where_the_network_normalises_its_input(name):
    model, shape = tiny(name)
    if not type(model).takes_input_statistics:
        with pytest.raises(NotImplementedError, match="no input normalisation"):
            model.set_input_statistics(torch.zeros(1), torch.ones(1))
        return
    bins = model.input_bins
    mean, std = torch.rand(bins + 3) + 0.5, torch.rand(bins + 3) + 0.5
    model.set_input_statistics(mean, std)
    normalised = {k: v for k, v in model.state_dict().items() if k.startswith("input_")}
    means = [v for k, v in normalised.items() if "mean" in k][0].view(-1, bins)
    scales = [v for k, v in normalised.items() if "scale" in k][0].view(-1, bins)
    assert torch.equal(means, -mean[:bins].expand_as(means))  # (x + mean) * scale: -mean and 1/std
    assert torch.allclose(scales, (1.0 / std[:bins]).expand_as(scales))


@pytest.mark.parametrize("name", list(TINY))
def test_scripted_equals_eager(name):
    model, shape = tiny(name)
    model.eval()
    x = example_input(name, shape)
    scripted = torch.jit.script(model)
    with torch.no_grad():
        eager_out = model(x)
        script_out = scripted(x)
    assert eager_out.shape == expected_shape(model, shape)
    assert (eager_out - script_out).abs().max().item() < 1e-5


@pytest.mark.parametrize("name", list(TINY))
def test_forward_backward_in_training_mode(name):
    model, shape = tiny(name)
    model.train()
    x = example_input(name, shape)
    before = x.clone()
    out = model(x)
    assert torch.equal(x, before), "the caller's tensor was modified"
    assert out.shape == expected_shape(model, shape)
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", list(TINY))
def test_state_dict_round_trips(name, tmp_path):
    model, shape = tiny(name, seed=0)
    randomize(model, seed=3)
    model.eval()
    x = example_input(name, shape)
    with torch.no_grad():
        reference = model(x)

    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    fresh, _ = tiny(name, seed=99)
    fresh.load_state_dict(load_file(str(path)), strict=True)
    fresh.eval()

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    other, _ = tiny(name, seed=98)
    other.load_state_dict(torch.load(buffer, weights_only=True), strict=True)
    other.eval()
    with torch.no_grad():
        assert torch.equal(fresh(x), reference)
        assert torch.equal(other(x), reference)


@pytest.mark.parametrize("name", list(TINY))
def test_torchscript_file_state_dict_loads_strictly(name, tmp_path):
    """What a user of the original tool has: `torch.jit.script(model).save(f)`."""
    model, shape = tiny(name)
    randomize(model, seed=4)
    model.eval()
    path = tmp_path / "model.pth"
    torch.jit.script(model).save(str(path))
    loaded = torch.jit.load(str(path), map_location="cpu")
    fresh, _ = tiny(name, seed=7)
    fresh.load_state_dict(loaded.state_dict(), strict=True)
    fresh.eval()
    x = example_input(name, shape)
    with torch.no_grad():
        assert (fresh(x) - loaded(x)).abs().max().item() < 1e-5


@pytest.mark.parametrize("name", ["demucs_split", "demucs_v1"])
@pytest.mark.parametrize("length", [1, 100, 2047, 4410, 4411, 8193])
def test_waveform_models_keep_length(name, length):
    model, _ = tiny(name)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 2, length))
    assert out.shape == (1, 4, 2, length)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("frames", [1, 63, 64, 65, 130])
def test_unet_any_frame_count_and_fill_value(frames):
    model, _ = tiny("unet_attn")
    model.eval()
    with torch.no_grad():
        mask = model(torch.rand(1, 2, 70, frames))
    assert mask.shape == (1, 4, 2, 70, frames)
    assert ((mask >= 0) & (mask <= 1)).all()
    assert torch.all(mask[..., 64:, :] == 0.25)  # above max_bins


def test_unet_matches_itself_when_frames_already_padded():
    model, _ = tiny("unet_attn")
    randomize(model, seed=2)
    model.eval()
    x = torch.rand(1, 2, 70, 100)
    with torch.no_grad():
        padded = model(torch.nn.functional.pad(x, [0, 28]))[..., :100]
        direct = model(x)
    assert torch.equal(padded, direct)


def test_xumx_masks_nonnegative_and_demucs_split_rescaled():
    model, shape = tiny("xumx")
    model.eval()
    with torch.no_grad():
        assert (model(torch.rand(shape)) >= 0).all()
    # Demucs' rescale initialisation: conv weight std is close to sqrt(0.1 * std0)
    ref = torch.nn.Conv1d(2, 4, 8, 4)
    split, _ = tiny("demucs_split")
    first = split.encoder[0][0].weight
    assert abs(first.std().item() - (0.1 * ref.weight.std().item()) ** 0.5) < 0.1


def test_demucs_split_parameter_names_follow_original_layout():
    keys = set(models.build("demucs_split", channels=4, depth=6).state_dict())
    for key in ["up_sample.kernel", "down_sample.kernel", "encoder.0.0.weight", "encoder.5.2.bias",
                "dec_pre_convs.0.weight", "convs_1x1.5.weight", "decoder.0.0.weight", "decoder.5.0.bias",
                "lstm.weight_hh_l1_reverse", "lstm_linear.weight"]:
        assert key in keys
    shapes = {k: tuple(v.shape) for k, v in models.build("demucs_split", channels=4, depth=6).state_dict().items()}
    assert shapes["dec_pre_convs.0.weight"] == (4 * 128, 2 * 128 // 4, 3)  # deepest: C=128, groups 4
    assert shapes["convs_1x1.5.weight"] == (16, 4, 3)
    assert shapes["decoder.5.0.weight"] == (8, 2, 8)  # top: 8 -> 2 channels per source
    assert shapes["lstm_linear.weight"] == (256, 256)


def test_xumx_and_unet_parameter_names():
    xumx_keys = set(models.build("xumx", n_fft=64, hidden_channels=8, max_bins=10).state_dict())
    for key in ["input_means", "input_scale", "output_means", "output_scale", "affine1.0.weight",
                "affine1.1.running_var", "drums_lstm.weight_ih_l2_reverse", "vocals_lstm.bias_hh_l0",
                "affine2.0.weight", "affine2.3.weight", "affine2.4.bias"]:
        assert key in xumx_keys
    unet_keys = set(models.build("unet_attn", k=2).state_dict())
    for key in ["down_convs.0.0.d2_layers.1.conv_layers.4.weight", "down_convs.5.0.d2_layers.0.bn_layers.1.0.weight",
                "attn.0.qkv_conv.weight", "attn.0.qkv_conv.bias", "attn.3.out_conv.weight", "attn.4.running_mean",
                "up_convs.0.1.weight", "up_convs.4.2.weight", "end.0.weight", "end.1.weight", "end.3.bias"]:
        assert key in unet_keys


def test_default_unet_widths():
    model = models.build("unet_attn")
    widths = [level[0].out_channels for level in model.down_convs]
    assert widths == [122, 218, 290, 338, 386, 434]
    assert model.up_convs[0][0].d2_layers[0].conv_layers[0].in_channels == 690


def test_models_command_prints_counts_within_half_percent(capsys):
    assert main(["models", "--sizes"]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = out[out.index(next(line for line in out if line.startswith("architectures"))) + 2:]
    printed = {}
    for line in rows:
        name = line.split()[0]
        printed[name] = int(re.search(r"\((\d+)\)", line).group(1))
        assert re.search(r"\b(magnitude|waveform)\b", line)
    assert list(printed) == models.names()
    for name, figure in PUBLISHED.items():
        assert abs(printed[name] - figure) / figure < 0.005, (name, printed[name])
    assert main(["models", "--sizes", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert {a["name"]: a["parameters"] for a in listing["architectures"]} == printed


def test_the_catalog_names_the_registry():
    """danna_sep.catalog.ARCHITECTURES (read without torch by `danna-sep models`) is the
    registry: the same names in the same order, each with the model's own input and output."""
    from danna_sep.catalog import ARCHITECTURES

    from danna_sep.catalog import ORIGINAL_FILES, ORIGINAL_XUMX_ONNX

    assert list(ARCHITECTURES) == models.names()
    for name, (network, domain, kind) in ARCHITECTURES.items():
        with torch.device("meta"):
            model = models.build(name)
        assert (network, domain, kind) == (model.network, model.input_domain, model.output_kind), name
    originals = {name: models.get(name).original_file for name in models.names() if models.get(name).original_file}
    assert ORIGINAL_FILES == originals
    assert [models.get(n).original_onnx for n in models.names() if models.get(n).original_onnx] == [ORIGINAL_XUMX_ONNX]
