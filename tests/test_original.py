"""pipeline="original" against the original Danna-Sep tool's separation, replayed here.

The reference below is the original tool's inference rewritten from the facts of issue 17
(the 1024-sample pad, whole-track X-UMX and Demucs, the U-Net in 2584-frame calls, one
whole-track Wiener filter by norbert with its default epsilon and scaling, Demucs' 0.5 s
lead-in and +-0.99 clamp, the blend), with torch's STFT and norbert's `wiener`: none of
danna-sep's pipeline code (engine, spectral, wiener) runs in it, only the networks.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from danna_sep import models
from danna_sep.bundle import PAPER_BLEND, Bundle, Member
from danna_sep.engine import EngineOptions
from danna_sep.separator import Separator
from conftest import randomize

norbert = pytest.importorskip("norbert")

RATE = 44100
SOURCES = ["drums", "bass", "other", "vocals"]
TINY = {
    "xumx": dict(hidden_channels=8, max_bins=64, nb_layers=1),
    "unet_attn": dict(max_bins=128, k=2, original_padding_bias=True),
    "demucs_split": dict(channels=4, depth=4),
}


def tiny(name, seed):
    torch.manual_seed(seed)
    return randomize(models.build(name, **TINY[name]), seed=seed, scale=0.05).eval()


@pytest.fixture(scope="module")
def networks():
    nets = {name: tiny(name, seed) for seed, name in enumerate(TINY, start=7)}
    with torch.no_grad():  # a louder Demucs, so that its output reaches the original's clamp
        nets["demucs_split"].decoder[-1][0].weight.mul_(300)
        nets["demucs_split"].decoder[-1][0].bias.mul_(300)
    return nets


def clip(seconds, seed):
    """A loud stereo noise clip with a silent start, so the clamp and the filter's eps both matter."""
    gen = torch.Generator().manual_seed(seed)
    n = int(seconds * RATE)
    wav = torch.randn(2, n, generator=gen) * 0.4
    wav[:, : RATE // 4] = 0
    envelope = 0.5 + 0.5 * torch.sin(torch.linspace(0, 20, n)).abs()
    return (wav * envelope).float()


@torch.no_grad()
def reference(track, nets, weights, unet_chunk=2584):
    """The original tool's separation of `track` (2, n): {source: (2, n)}."""
    n = track.shape[-1]
    x = F.pad(track, (0, 1024))
    window = torch.hann_window(4096)
    spec = torch.stft(x, 4096, 1024, window=window, center=True, pad_mode="reflect", return_complex=True)
    mag = spec.abs()  # (2, 2049, frames)
    frames = mag.shape[-1]

    def wiener_istft(masks):  # masks (4, 2, 2049, frames)
        v = (masks * mag).permute(3, 2, 1, 0).double().numpy()  # (frames, bins, channels, sources)
        mix = spec.permute(2, 1, 0).numpy().astype(np.complex128)  # norbert scales its argument in place
        y = norbert.wiener(v, mix, iterations=1, use_softmask=False)
        y = torch.from_numpy(y).permute(3, 2, 1, 0).to(torch.complex64)  # (sources, channels, bins, frames)
        wav = torch.istft(y.reshape(8, 2049, frames), 4096, 1024, window=window, center=True)
        return wav.reshape(4, 2, -1)[..., :n]

    outputs = {}
    if "xumx" in nets:
        outputs["xumx"] = wiener_istft(nets["xumx"](mag[None])[0])
    if "unet_attn" in nets:
        masks = torch.cat([nets["unet_attn"](mag[None, ..., s:s + unet_chunk])[0]
                           for s in range(0, frames, unet_chunk)], dim=-1)
        outputs["unet_attn"] = wiener_istft(masks)
    if "demucs_split" in nets:
        lead = RATE // 2
        out = nets["demucs_split"](F.pad(x, (lead, 0))[None])[0]
        outputs["demucs_split"] = out[..., lead:lead + n].clamp(-0.99, 0.99)
    return {s: sum(weights[m][s] * outputs[m][j] for m in outputs) for j, s in enumerate(SOURCES)}, outputs


def sdr(ref, est):
    ref, est = ref.double(), est.double()
    return float(10 * torch.log10(ref.square().sum() / (ref - est).square().sum().clamp_min(1e-40)))


def bundle_of(nets, weights):
    return Bundle(members=[Member(model, dict(weights[name]))
                           for name, model in nets.items()],
                  sources=list(SOURCES))


@pytest.mark.parametrize("seconds", [1.5, 10.0, 30.0])
def test_original_pipeline_matches_the_original_tool(networks, seconds):
    track = clip(seconds, seed=int(seconds * 10))
    want, parts = reference(track, networks, PAPER_BLEND)
    # the clamp is reached: the reference's Demucs pass is not a plain forward
    assert parts["demucs_split"].abs().max() == pytest.approx(0.99)
    got = Separator(bundle_of(networks, PAPER_BLEND), device="cpu", precision="float32",
                    pipeline="original").separate_tensor(track)
    for s in SOURCES:
        assert got[s].shape == track.shape
        assert sdr(want[s], got[s]) >= 60, s


@pytest.mark.parametrize("name", ["xumx", "unet_attn"])
@pytest.mark.parametrize("seconds", [1.5, 10.0])
def test_original_pipeline_spectrogram_models_alone_match_to_100_db(networks, name, seconds):
    track = clip(seconds, seed=3)
    weights = {name: {s: 1.0 for s in SOURCES}}
    want, _ = reference(track, {name: networks[name]}, weights)
    got = Separator(bundle_of({name: networks[name]}, weights), device="cpu", precision="float32",
                    pipeline="original").separate_tensor(track)
    for s in SOURCES:
        assert sdr(want[s], got[s]) >= 100, s


def test_the_unet_runs_in_chunks_of_its_original_frames(networks):
    """The U-Net's calls are cut where the original cut them (2584 frames; fewer here to see it)."""
    unet = tiny("unet_attn", seed=8)
    assert unet.original_chunk_frames == 2584
    unet.original_chunk_frames = 150
    track = clip(10.0, seed=5)  # 432 frames: calls of 150, 150, 132
    weights = {"unet_attn": {s: 1.0 for s in SOURCES}}
    want, _ = reference(track, {"unet_attn": unet}, weights, unet_chunk=150)
    whole, _ = reference(track, {"unet_attn": unet}, weights, unet_chunk=10_000)
    got = Separator(bundle_of({"unet_attn": unet}, weights), device="cpu", precision="float32",
                    pipeline="original").separate_tensor(track)
    for s in SOURCES:
        assert sdr(want[s], got[s]) >= 100, s
    assert min(sdr(whole[s], got[s]) for s in SOURCES) < 80  # the chunking is visible


def test_the_original_pipeline_is_one_piece_and_refuses_shifts(networks):
    with pytest.raises(ValueError, match="no shift trick"):
        EngineOptions(pipeline="original", shifts=2)
    with pytest.raises(ValueError, match="pipeline must be"):
        EngineOptions(pipeline="whole")
    separator = Separator(bundle_of(networks, PAPER_BLEND), device="cpu", precision="float32",
                          pipeline="original", segment=1.0)
    track = clip(3.0, seed=1)
    blocks = list(separator.stream(track))
    assert [(start, block.shape[-1]) for start, block in blocks] == [(0, track.shape[-1])]


def test_separate_pipeline_original_on_the_command_line(networks, tmp_path, capsys):
    import soundfile as sf

    from danna_sep import bundle as bundles
    from danna_sep.cli import main

    folder = bundles.save_bundle(tmp_path / "bundle", bundle_of(networks, PAPER_BLEND).members)
    track = clip(3.0, seed=9) * 0.5
    sf.write(tmp_path / "song.wav", track.T.numpy(), RATE, subtype="FLOAT")
    argv = ["separate", str(tmp_path / "song.wav"), "-o", str(tmp_path / "out"), "--bundle", str(folder),
            "--pipeline", "original", "--precision", "float32", "--clip", "none", "-q"]
    assert main(argv) == 0
    want = Separator(bundles.load_bundle(folder), device="cpu", precision="float32",
                     pipeline="original").separate_tensor(track)
    for s in SOURCES:
        got, rate = sf.read(tmp_path / "out" / "song" / f"{s}.wav", dtype="float32")
        assert rate == RATE
        assert np.abs(got.T - want[s].numpy()).max() < 1e-6, s

    code = main(argv[:-1] + ["--shifts", "2", "--force"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "--pipeline original runs no shift trick" in err[0]
