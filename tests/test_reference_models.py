"""Our networks against independent implementations from PyPI, with random weights."""

import pytest
import torch

from danna_sep import models
from danna_sep.convert import CheckpointError, load_state_file, umx_from_openunmix, xumx_from_asteroid
from danna_sep.models.common import FractionalResample
from conftest import import_reference, randomize

# The official X-UMX's source order differs from ours on purpose.
ASTEROID_SOURCES = ["bass", "drums", "vocals", "other"]


class Payload:
    """An arbitrary class: unpickling it would mean running code from the file."""


def test_umx_equals_openunmix():
    openunmix_model = import_reference("openunmix.model")
    reference = openunmix_model.OpenUnmix(nb_bins=2049, nb_channels=2, hidden_size=512, nb_layers=3, max_bin=1487)
    randomize(reference, seed=11)
    reference.eval()
    kwargs, state = umx_from_openunmix(reference.state_dict(), target="vocals")
    ours = models.build("umx", **kwargs)
    ours.load_state_dict(state, strict=True)
    ours.eval()
    assert kwargs["hidden_size"] == 512 and kwargs["max_bin"] == 1487 and kwargs["nb_layers"] == 3

    x = torch.rand(2, 2, 2049, 20, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = reference(x.clone())
        got = ours(x)
    assert got.shape == expected.shape == (2, 2, 2049, 20)
    assert (got - expected).abs().max().item() < 1e-5
    assert expected.abs().max().item() > 1e-2  # the comparison is not between zeros


def test_umx_state_dict_keys_equal_openunmix():
    openunmix_model = import_reference("openunmix.model")
    reference = openunmix_model.OpenUnmix(nb_bins=2049, nb_channels=2, hidden_size=512, nb_layers=3, max_bin=1487)
    assert set(reference.state_dict()) == set(models.build("umx").state_dict())


def _asteroid_xumx(seed=21, **overrides):
    x_umx = import_reference("asteroid.models.x_umx")
    config = dict(sources=ASTEROID_SOURCES, window_length=4096, in_chan=4096, n_hop=1024,
                  hidden_size=512, nb_channels=2, nb_layers=3, max_bin=1487)
    config.update(overrides)
    reference = x_umx.BrokenXUMX(**config)
    randomize(reference, seed=seed)
    return reference.eval()


def _compare_xumx(reference, ours, bins, frames=12):
    mag = torch.rand(2, 2, bins, frames, generator=torch.Generator().manual_seed(1))  # (batch, ch, bins, frames)
    with torch.no_grad():
        # asteroid's masker reads (frames, batch, channels, bins) and edits its input in place
        theirs = reference.forward_masker(mag.permute(3, 0, 1, 2).clone())
        got = ours(mag)
    assert got.shape == (2, 4, 2, bins, frames)
    worst = 0.0
    for ours_index, source in enumerate(models.SOURCES):
        expected = theirs[ASTEROID_SOURCES.index(source)].permute(1, 2, 3, 0)
        worst = max(worst, (got[:, ours_index] - expected).abs().max().item())
        assert expected.abs().max().item() > 1e-2
    return worst


def test_xumx_converted_from_asteroid_equals_asteroid():
    reference = _asteroid_xumx()
    kwargs, state = xumx_from_asteroid(reference.state_dict())
    assert kwargs == dict(n_fft=4096, hidden_channels=512, max_bins=1487, nb_channels=2, nb_layers=3)
    ours = models.build("xumx", **kwargs)
    ours.load_state_dict(state, strict=True)
    ours.eval()
    assert _compare_xumx(reference, ours, bins=2049) < 1e-4


def test_xumx_conversion_from_a_checkpoint_file(tmp_path):
    reference = _asteroid_xumx(seed=5, in_chan=256, window_length=256, hidden_size=32, nb_layers=2, max_bin=90)
    path = tmp_path / "pretrained_xumx.pth"
    # asteroid's published files hold the state dict next to the model's arguments
    torch.save({"model_name": "XUMX", "state_dict": reference.state_dict(), "model_args": {"hidden_size": 32}}, path)
    kwargs, state = xumx_from_asteroid(load_state_file(path))
    assert kwargs == dict(n_fft=256, hidden_channels=32, max_bins=90, nb_channels=2, nb_layers=2)
    ours = models.build("xumx", **kwargs)
    ours.load_state_dict(state, strict=True)
    ours.eval()
    assert _compare_xumx(reference, ours, bins=129) < 1e-5


def test_bad_checkpoint_files_are_clear_errors(tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="notes.pth: not a readable weights file"):
        load_state_file(text)
    with pytest.raises(CheckpointError, match="missing.pth: no such file"):
        load_state_file(tmp_path / "missing.pth")
    # a pickle that is not plain tensors is refused, not executed
    evil = tmp_path / "evil.pth"
    torch.save({"x": Payload()}, evil)
    with pytest.raises(CheckpointError, match="evil.pth"):
        load_state_file(evil)
    with pytest.raises(CheckpointError, match="not an X-UMX checkpoint"):
        xumx_from_asteroid({"fc1.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="not an open-unmix checkpoint"):
        umx_from_openunmix({"layer_enc.drums.enc.0.weight": torch.zeros(1)})


@pytest.mark.parametrize("old,new", [(1, 2), (2, 1)])
def test_resampler_equals_julius(old, new):
    julius = import_reference("julius")
    theirs = julius.ResampleFrac(old, new)
    ours = FractionalResample(old, new)
    assert ours.kernel.shape == theirs.kernel.shape
    assert (ours.kernel - theirs.kernel).abs().max().item() < 1e-6
    x = torch.randn(2, 2, 10007, generator=torch.Generator().manual_seed(2))
    expected = theirs(x)
    got = ours(x)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() < 1e-5
