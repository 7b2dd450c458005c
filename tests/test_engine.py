"""Chunked inference: segmenting, cross-fading, shifts, spectrogram pipeline."""

import pytest
import torch
from torch import nn

from danna_sep import engine, models
from danna_sep.engine import EngineOptions, ModelRunner
from conftest import randomize

CPU = torch.device("cpu")


class LocalConv(nn.Module):
    """A waveform 'separator' with a receptive field of 31 samples."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(2, 8, 31, padding=15)
        self.sources = ["drums", "bass", "other", "vocals"]
        self.samplerate = 44100
        self.audio_channels = 2
        self.input_domain = "waveform"
        self.output_kind = "waveform"

    def forward(self, wav):
        return self.conv(wav).view(wav.shape[0], 4, 2, wav.shape[-1])


@pytest.mark.parametrize("length", [1000, 44100, 44100 * 3 + 17, 52918, 44100 * 5 - 1])
@pytest.mark.parametrize("overlap", [0.1, 0.25, 0.5])
def test_segmented_equals_one_pass_for_short_receptive_field(length, overlap):
    torch.manual_seed(0)
    runner = ModelRunner(LocalConv().eval(), CPU, EngineOptions())
    track = torch.randn(2, length)
    one_pass = runner(track)
    options = EngineOptions(segment=1.0, overlap=overlap)
    segmented = engine.separate(runner, track, 44100, options)
    assert segmented.shape == (4, 2, length)
    assert (segmented - one_pass).abs().max().item() < 1e-5


def test_segments_cover_track_once_and_overlap_as_asked():
    bounds = engine.plan_segments(100_000, 44100, 0.25)
    assert bounds[0][0] == 0 and bounds[-1][1] == 100_000
    for (a0, a1), (b0, b1) in zip(bounds, bounds[1:]):
        assert a1 - b0 == round(44100 * 0.25)
        assert b1 > a1
    assert engine.plan_segments(500, 44100, 0.25) == [(0, 500)]
    # A last segment that would be a few samples long starts earlier: a quarter of a segment.
    bounds = engine.plan_segments(83_800, 44100, 0.1)  # strides of 39690: the third would be 4420 long
    assert bounds == [(0, 44100), (39690, 83790), (83_800 - 44100 // 4, 83_800)]
    for length in (44100 + 100, 3 * 44100 - 5, 10 * 44100 + 1):
        bounds = engine.plan_segments(length, 44100, 0.1)
        assert bounds[-1][1] == length and bounds[-1][1] - bounds[-1][0] >= 44100 // 4
        assert all(b0 > a0 and b0 < a1 for (a0, a1), (b0, _) in zip(bounds, bounds[1:]))


def test_stream_yields_consecutive_blocks_and_progress():
    runner = ModelRunner(LocalConv().eval(), CPU, EngineOptions())
    track = torch.randn(2, 200_001)
    calls = []
    position = 0
    for start, block in engine.stream(runner, track, 44100, EngineOptions(segment=1.0), lambda d, t: calls.append((d, t))):
        assert start == position and block.shape[:2] == (4, 2)
        position += block.shape[-1]
    assert position == 200_001
    assert calls[-1] == (200_001, 200_001)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_shift_trick_is_reproducible_and_exact_for_shift_invariant_model():
    torch.manual_seed(1)
    runner = ModelRunner(LocalConv().eval(), CPU, EngineOptions())
    track = torch.randn(2, 30_000)
    options = EngineOptions(segment=0.5, overlap=0.25, shifts=3, max_shift=0.01, seed=5)
    first = engine.separate(runner, track, 44100, options)
    again = engine.separate(runner, track, 44100, options)
    assert torch.equal(first, again)
    # a convolution is shift-equivariant: averaging shifted passes changes nothing away from the start
    plain = runner(track)
    assert (first[..., 1000:] - plain[..., 1000:]).abs().max().item() < 1e-5


@pytest.mark.parametrize("name,kwargs", [
    ("xumx", dict(hidden_channels=16, max_bins=200, nb_layers=1)),
    ("unet_attn", dict(max_bins=128, k=2)),
])
def test_spectrogram_runner_shapes_and_silence(name, kwargs):
    model = randomize(models.build(name, **kwargs), seed=1).eval()
    runner = ModelRunner(model, CPU, EngineOptions(wiener_iterations=1))
    for length in (1000, 30_001):
        out = runner(torch.randn(2, length) * 0.1)
        assert out.shape == (4, 2, length)
        assert torch.isfinite(out).all()
    silent = runner(torch.zeros(2, 20_000))
    assert torch.isfinite(silent).all() and silent.abs().max() < 1e-6


def test_masks_of_one_reconstruct_the_mixture():
    class AllPass(nn.Module):
        sources = ["drums", "bass", "other", "vocals"]
        input_domain = "magnitude"
        output_kind = "mask"

        def forward(self, mag):
            return torch.full((mag.shape[0], 4) + tuple(mag.shape[1:]), 0.25)

    track = torch.randn(2, 50_000) * 0.3
    for iterations in (0, 1):
        runner = ModelRunner(AllPass(), CPU, EngineOptions(wiener_iterations=iterations))
        out = engine.separate(runner, track, 44100, EngineOptions(segment=0.4))
        assert (out.sum(dim=0) - track).abs().max().item() < 1e-4


def test_blend_weights_sources():
    class Constant(nn.Module):
        input_domain = "waveform"
        output_kind = "waveform"

        def __init__(self, value, sources):
            super().__init__()
            self.value, self.sources = value, sources

        def forward(self, wav):
            return torch.full((1, len(self.sources), 2, wav.shape[-1]), float(self.value))

    a = ModelRunner(Constant(1.0, ["drums", "bass", "other", "vocals"]), CPU, EngineOptions())
    b = ModelRunner(Constant(10.0, ["vocals", "drums"]), CPU, EngineOptions())
    blend = engine.Blend([a, b], [{"drums": 0.5, "vocals": 0.25, "bass": 1.0}, {"drums": 0.5, "vocals": 0.75}],
                         ["drums", "bass", "other", "vocals"])
    out = blend(torch.zeros(2, 10))
    assert out[:, 0, 0].tolist() == [5.5, 1.0, 0.0, 7.75]


def test_blend_shares_one_stft_and_one_istft_between_spectrogram_members(monkeypatch):
    """The blend of spectrogram members takes the mixture's STFT once and inverts the weighted sum
    of their filtered spectrograms once, and equals the weighted sum of each member run alone."""
    from danna_sep import spectral

    members = [randomize(models.build("xumx", hidden_channels=16, max_bins=200, nb_layers=1), seed=1).eval(),
               randomize(models.build("unet_attn", max_bins=128, k=2), seed=2).eval(),
               LocalConv().eval()]
    options = EngineOptions(wiener_iterations=1, blend_bins="all")  # every weight on every bin
    runners = [ModelRunner(model, CPU, options) for model in members]
    sources = ["drums", "bass", "other", "vocals"]
    weights = [{"drums": 0.7, "bass": 0.3, "vocals": 0.5}, {"drums": 0.3, "bass": 0.7, "other": 1.0, "vocals": 0.25},
               {"vocals": 0.25}]
    chunk = torch.randn(2, 30_001) * 0.1
    alone = torch.zeros(4, 2, chunk.shape[-1])
    for runner, table in zip(runners, weights):
        out = runner(chunk)
        for j, name in enumerate(runner.sources):
            alone[sources.index(name)] += table.get(name, 0.0) * out[j]
    calls = {"stft": 0, "istft": 0}
    for name in calls:
        def counted(*args, name=name, real=getattr(spectral, name), **kwargs):
            calls[name] += 1
            return real(*args, **kwargs)
        monkeypatch.setattr(spectral, name, counted)
    blended = engine.Blend(runners, weights, sources)(chunk)
    assert calls == {"stft": 1, "istft": 1}
    torch.testing.assert_close(blended, alone, rtol=0, atol=1e-4 * alone.abs().max().item())


def _blend_of_three():
    members = [randomize(models.build("xumx", hidden_channels=16, max_bins=200, nb_layers=1), seed=1).eval(),
               randomize(models.build("unet_attn", max_bins=128, k=2), seed=2).eval(),
               LocalConv().eval()]
    weights = [{"drums": 0.7, "bass": 0.3, "vocals": 0.5}, {"drums": 0.3, "bass": 0.7, "other": 1.0, "vocals": 0.25},
               {"vocals": 0.25, "drums": 0.5}]
    return members, weights


@pytest.mark.parametrize("batch", [2, 3])
def test_segments_in_batches_give_what_one_at_a_time_gives(batch):
    members, weights = _blend_of_three()
    sources = ["drums", "bass", "other", "vocals"]
    track = torch.randn(2, 5 * 8820 + 1234) * 0.1  # segments of 0.2 s: 6 of one length, a shorter last
    one = EngineOptions(segment=0.2, overlap=0.1, batch_segments=1)
    several = EngineOptions(segment=0.2, overlap=0.1, batch_segments=batch)
    expected = engine.separate(engine.Blend([ModelRunner(m, CPU, one) for m in members], weights, sources),
                               track, 44100, one)
    runners = [ModelRunner(m, CPU, several) for m in members]
    seen = []
    real_call = ModelRunner.__call__

    def spy(self, chunk):
        seen.append(tuple(chunk.shape[:-2]))
        return real_call(self, chunk)

    done = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ModelRunner, "__call__", spy)
        got = engine.separate(engine.Blend(runners, weights, sources), track, 44100, several,
                              progress=lambda d, t: done.append(d))
    bounds = engine.plan_segments(track.shape[-1], 8820, 0.1)
    full = [i for i, (a, b) in enumerate(bounds) if b - a == 8820]
    calls = [min(batch, len(full) - i) for i in range(0, len(full), batch)]
    # the blend calls its waveform member with each batch (a single chunk as a batch of one); the
    # spectrogram members take the batch's shared STFT through `filtered`
    assert seen == [(size,) for size in calls] + [(1,)] * (len(bounds) - len(full))
    assert done == sorted(done) and done[-1] == track.shape[-1]
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5 * expected.abs().max().item())


def test_automatic_batches_halve_until_they_fit(monkeypatch, caplog):
    """On a GPU the automatic batch starts at 16 segments and halves while a batch runs out of memory."""

    class FitsTwo(LocalConv):
        def forward(self, wav):
            if wav.shape[0] > 2:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (a test's model)")
            return super().forward(wav)

    model = FitsTwo().eval()
    track = torch.randn(2, 12 * 4410) * 0.1
    one = EngineOptions(segment=0.1, overlap=0.0, batch_segments=1)
    expected = engine.separate(ModelRunner(model, CPU, one), track, 44100, one)
    monkeypatch.setattr(engine, "_batchable", lambda fn: torch.device("cuda"))  # as if on a GPU
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    automatic = EngineOptions(segment=0.1, overlap=0.0, batch_segments=0)
    with caplog.at_level("INFO", logger="danna_sep.engine"):
        torch.testing.assert_close(engine.separate(ModelRunner(model, CPU, automatic), track, 44100, automatic),
                                   expected)
    tries = [record.getMessage() for record in caplog.records if "do not fit" in record.getMessage()]
    assert tries == [f"{n} segments at once do not fit in the GPU's memory; trying {n // 2}" for n in (12, 6)] + [
        "3 segments at once do not fit in the GPU's memory; trying 1"]
    fixed = EngineOptions(segment=0.1, overlap=0.0, batch_segments=4)
    with pytest.raises(torch.cuda.OutOfMemoryError):  # a batch asked for is not shrunk
        engine.separate(ModelRunner(model, CPU, fixed), track, 44100, fixed)


def test_joint_wiener_filters_the_blended_magnitudes_once():
    """wiener_blend="joint": the spectrogram members' magnitudes, weighted per source and normalised
    by the weights' sum, go through one Wiener filter, scaled back by that sum; identical members
    give what filtering each gives."""
    from danna_sep import spectral
    from danna_sep.runner import mixture_stft
    from danna_sep.wiener import apply_wiener

    members, weights = _blend_of_three()
    sources = ["drums", "bass", "other", "vocals"]
    joint = EngineOptions(wiener_blend="joint", blend_bins="all")
    runners = [ModelRunner(m, CPU, joint) for m in members]
    chunk = torch.randn(2, 30_001) * 0.1
    got = engine.Blend(runners, weights, sources)(chunk)

    mix = mixture_stft(chunk.unsqueeze(0))
    magnitude, share = torch.zeros((1, 4) + mix.shape[1:]), torch.zeros(4)
    for runner, table in zip(runners[:2], weights[:2]):
        estimates = runner.estimates(mix)
        for j, name in enumerate(runner.sources):
            magnitude[:, j] += table.get(name, 0.0) * estimates[:, j]
            share[j] += table.get(name, 0.0)
    filtered = apply_wiener(magnitude / share[None, :, None, None, None], mix) * share[None, :, None, None, None]
    expected = spectral.istft(filtered[0], 30_001)
    expected[0] += 0.5 * runners[2](chunk)[0]  # the waveform member, drums 0.5 and vocals 0.25
    expected[3] += 0.25 * runners[2](chunk)[3]
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5 * expected.abs().max().item())

    # Two copies of one member: the joint filter of their blend is each one's filter.
    twin = [members[0], members[0]]
    tables = [{"drums": 0.3, "bass": 0.6, "other": 0.5, "vocals": 0.2}, {"drums": 0.7, "bass": 0.4, "other": 0.5,
                                                                        "vocals": 0.8}]
    apart = engine.Blend([ModelRunner(m, CPU, EngineOptions(blend_bins="all")) for m in twin], tables,
                         sources)(chunk)
    together = engine.Blend([ModelRunner(m, CPU, joint) for m in twin], tables, sources)(chunk)
    torch.testing.assert_close(together, apart, rtol=0, atol=1e-5 * apart.abs().max().item())
    assert not torch.allclose(got, engine.Blend([ModelRunner(m, CPU, EngineOptions(blend_bins="all"))
                                                 for m in members], weights, sources)(chunk), atol=1e-4)


def test_modelled_bin_weights_known_answer():
    """Above a member's modelled bins its weight goes to the members that model them, in
    proportion to their weights; where no member with a weight models a bin, weights stay."""

    class Limited:
        def __init__(self, bins):
            self.output_bins = bins

    runners = [Limited(None), Limited(3), Limited(5)]
    weights = [{"drums": 0.2, "bass": 0.0}, {"drums": 0.5, "bass": 0.6}, {"drums": 0.3, "bass": 0.4}]
    got = engine.modelled_bin_weights(runners, weights, ["drums", "bass"], 6)
    drums = [[0.2] * 3 + [0.4] * 2 + [1.0], [0.5] * 3 + [0.0] * 3, [0.3] * 3 + [0.6] * 2 + [0.0]]
    bass = [[0.0] * 6, [0.6] * 3 + [0.0] * 2 + [0.6], [0.4] * 3 + [1.0] * 2 + [0.4]]
    for m in range(3):
        torch.testing.assert_close(got[runners[m]], torch.tensor([drums[m], bass[m]]))


@pytest.mark.parametrize("covered", [False, True])
@pytest.mark.parametrize("wiener_blend", ["members", "joint"])
def test_blend_weighs_a_member_only_on_the_bins_it_models(wiener_blend, covered):
    """blend_bins="modelled" (the default): the U-Net of 128 bins outputs a constant mask above
    them, so there the X-UMX (all bins) takes both weights; where the X-UMX has no weight
    ("other", unless `covered`), the U-Net keeps its own. When `covered`, the U-Net weighs
    nothing above its bins, which the blend then leaves unfiltered: the result is the same."""
    from danna_sep import spectral
    from danna_sep.runner import mixture_stft
    from danna_sep.wiener import apply_wiener

    members, weights = _blend_of_three()
    if covered:
        weights[0]["other"] = 0.4
    assert members[1].output_bins == 128 and members[0].output_bins == 2049
    sources = ["drums", "bass", "other", "vocals"]
    options = EngineOptions(wiener_blend=wiener_blend)
    assert options.blend_bins == "modelled"
    runners = [ModelRunner(m, CPU, options) for m in members]
    chunk = torch.randn(2, 30_001) * 0.1
    got = engine.Blend(runners, weights, sources)(chunk)

    mix = mixture_stft(chunk.unsqueeze(0))
    parts = [runner.filtered(mix) if wiener_blend == "members" else runner.estimates(mix) for runner in runners[:2]]
    spectrum = torch.zeros_like(parts[0])
    for j, name in enumerate(sources):
        low, high = weights[0].get(name, 0.0), weights[1].get(name, 0.0)
        spectrum[:, j, ..., :128, :] = low * parts[0][:, j, ..., :128, :] + high * parts[1][:, j, ..., :128, :]
        if low:
            spectrum[:, j, ..., 128:, :] = (low + high) * parts[0][:, j, ..., 128:, :]
        else:
            spectrum[:, j, ..., 128:, :] = high * parts[1][:, j, ..., 128:, :]
    if wiener_blend == "joint":
        share = torch.tensor([weights[0].get(s, 0.0) + weights[1].get(s, 0.0) for s in sources])[None, :, None, None,
                                                                                                   None]
        spectrum = apply_wiener(spectrum / share, mix) * share
    expected = spectral.istft(spectrum[0], 30_001)
    waveform = runners[2](chunk)
    expected[0] += 0.5 * waveform[0]
    expected[3] += 0.25 * waveform[3]
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5 * expected.abs().max().item())
    flat = engine.Blend([ModelRunner(m, CPU, EngineOptions(wiener_blend=wiener_blend, blend_bins="all"))
                         for m in members], weights, sources)(chunk)
    assert not torch.allclose(got, flat, atol=1e-4)
    with pytest.raises(ValueError, match="track statistics"):
        EngineOptions(wiener_blend="joint", wiener_statistics="track")


def test_options_are_checked():
    with pytest.raises(ValueError, match="overlap"):
        EngineOptions(overlap=0.8)
    with pytest.raises(ValueError, match="segment"):
        EngineOptions(segment=0)
    assert engine.resolve_device("cpu") == CPU


@pytest.mark.parametrize("cuda,mps,want", [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")])
def test_auto_device_prefers_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, want):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert engine.resolve_device("auto") == torch.device(want)


def test_runner_layout_and_precision():
    """Channels-last (always on for 2D convolutions) gives the plain model's masks; bfloat16 stays close."""
    from danna_sep import models
    from danna_sep.engine import EngineOptions, ModelRunner

    torch.manual_seed(0)
    plain = models.build("unet_attn", max_bins=128, k=2).eval()
    twin = models.build("unet_attn", max_bins=128, k=2).eval()
    twin.load_state_dict(plain.state_dict())
    chunk = torch.randn(2, 30_000, generator=torch.Generator().manual_seed(1)) * 0.3
    exact = ModelRunner(twin, torch.device("cpu"), EngineOptions(wiener_iterations=0))
    assert exact.channels_last
    mag = torch.stft(chunk, 4096, 1024, window=torch.hann_window(4096), return_complex=True).abs()
    with torch.no_grad():
        assert (exact._forward(mag.unsqueeze(0)) - plain(mag.unsqueeze(0))).abs().max() < 1e-5
    fast = ModelRunner(twin, torch.device("cpu"), EngineOptions(wiener_iterations=0, precision="bfloat16"))
    a, b = exact(chunk), fast(chunk)
    assert a.shape == b.shape == (4, 2, 30_000)
    assert (a - b).norm() / a.norm() < 2e-2  # measured errors are 1e-3 to 6e-3 (test_precision.py)
    with pytest.raises(ValueError, match="precision"):
        EngineOptions(precision="float16")


@pytest.mark.parametrize("name,kwargs", [
    ("xumx", dict(hidden_channels=16, max_bins=64)),
    ("unet_attn", dict(max_bins=128, k=2, attn_channels=8, attn_d_model=8, attn_heads=2)),
    ("demucs_split", dict(channels=4, depth=2)),
    ("umx", dict(hidden_size=16, max_bin=64)),
    ("demucs_v1", dict(channels=4, depth=2)),
])
def test_bfloat16_runs_a_copy_close_to_float32(name, kwargs):
    """bfloat16 runs a bfloat16 copy of the model (the caller's stays float32) whose stems
    stay close to float32's; with own_model the model itself is converted."""
    from danna_sep import models
    from danna_sep.engine import EngineOptions, ModelRunner

    torch.manual_seed(0)
    model = models.build(name, **kwargs).eval()
    chunk = torch.randn(2, 30_000, generator=torch.Generator().manual_seed(1)) * 0.3
    exact = ModelRunner(model, CPU, EngineOptions(precision="float32"))(chunk)
    runner = ModelRunner(model, CPU, EngineOptions(precision="bfloat16"))
    assert runner.cast and not runner.autocast
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(p.dtype == torch.bfloat16 for p in runner.model.parameters())
    fast = runner(chunk)
    assert fast.dtype == torch.float32 and fast.shape == exact.shape
    assert (fast - exact).norm() / exact.norm() < 2e-2
    assert not torch.equal(fast, exact)
    owner = ModelRunner(model, CPU, EngineOptions(precision="bfloat16"), own_model=True)
    assert owner.model is model and all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert torch.equal(owner(chunk), fast)


def test_auto_precision_follows_the_hardware(monkeypatch):
    from danna_sep.engine import EngineOptions, ModelRunner, resolve_precision

    assert resolve_precision("float32", CPU) == "float32"
    assert resolve_precision("bfloat16", CPU) == "bfloat16"
    assert resolve_precision("auto", torch.device("cuda")) == "float32"
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert resolve_precision("auto", CPU) == "bfloat16"
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert resolve_precision("auto", CPU) == "float32"
    from danna_sep import models

    runner = ModelRunner(models.build("xumx", hidden_channels=8, max_bins=32), CPU, EngineOptions(precision="auto"))
    assert runner.options.precision == "float32" and not runner.cast


class _OneTarget(nn.Module):
    """A single-target magnitude model whose output is fixed by the test: `(1, channels, bins, frames)`."""

    sources = ["vocals"]
    input_domain = "magnitude"
    output_kind = "magnitude"

    def __init__(self, output):
        super().__init__()
        self.output = output

    def forward(self, mag):
        return self.output(mag)


def test_a_single_target_model_is_filtered_against_the_residual():
    """One estimated source must not take the whole mixture: an oracle magnitude separates
    the vocals well, half the mixture's magnitude does not (without the residual both came
    back within 1e-5 of the mixture)."""
    from danna_sep import spectral
    from danna_sep.evaluate import sdr_mdx

    generator = torch.Generator().manual_seed(0)
    t = torch.arange(3 * 44100) / 44100
    vocals = 0.3 * torch.sin(2 * torch.pi * 220 * t * (1 + 0.01 * torch.sin(2 * torch.pi * 5 * t)))
    vocals = torch.stack([vocals, 0.8 * vocals]) * (torch.sin(2 * torch.pi * 0.7 * t) > 0)
    backing = 0.1 * torch.randn(2, t.numel(), generator=generator)
    mixture = vocals + backing
    truth = spectral.stft(vocals).abs().unsqueeze(0)
    oracle = ModelRunner(_OneTarget(lambda mag: truth), CPU, EngineOptions(precision="float32"))
    half = ModelRunner(_OneTarget(lambda mag: 0.5 * mag), CPU, EngineOptions(precision="float32"))
    oracle_out, half_out = oracle(mixture), half(mixture)
    assert oracle_out.shape == half_out.shape == (1, 2, t.numel())
    oracle_sdr = sdr_mdx(vocals[None].numpy(), oracle_out.numpy())[0]
    half_sdr = sdr_mdx(vocals[None].numpy(), half_out.numpy())[0]
    mixture_sdr = sdr_mdx(vocals[None].numpy(), mixture[None].numpy())[0]
    # 27.4 and 4.2 dB here; without the residual, 17.4 (the filter's eps still silences the
    # rests) and 2.9 (the mixture's own 2.86).
    assert oracle_sdr > 22.0
    assert oracle_sdr > half_sdr + 15.0
    # Half the mixture's magnitude against a residual of the other half: about half the mixture back.
    assert torch.allclose(half_out[0], 0.5 * mixture, atol=0.02)
    assert abs(half_sdr - mixture_sdr) > 1.0


def test_track_wiener_statistics_filter_as_one_window_over_the_track():
    """Two passes over overlapping segments give the segments the Wiener filter of the whole
    track's statistics: on one segment exactly the one-window filter, and over several much
    closer to the whole-track filter than per-window statistics are."""
    torch.manual_seed(0)
    model = randomize(models.build("xumx", hidden_channels=8, max_bins=64, nb_layers=1), seed=2, scale=0.3).eval()
    track = torch.randn(2, 44100 * 6) * 0.3
    whole = ModelRunner(model, CPU, EngineOptions(wiener_window=10**6))(track)
    one = engine.separate(ModelRunner(model, CPU, EngineOptions(segment=10.0, wiener_statistics="track")),
                          track, 44100, EngineOptions(segment=10.0, wiener_statistics="track"))
    assert (one - whole).abs().max() < 1e-5 * whole.abs().max()

    def error(options):
        out = engine.separate(ModelRunner(model, CPU, options), track, 44100, options)
        return float((out - whole).square().sum() / whole.square().sum())

    assert error(EngineOptions(segment=2.0, wiener_statistics="track")) < 0.1 * error(
        EngineOptions(segment=2.0, wiener_window=50))
    weights = [engine._segment_weights(engine.plan_segments(300_000, 44100, 0.25), i) for i in range(9)]
    total = torch.zeros(300_000, dtype=torch.float64)
    for (start, stop), w in zip(engine.plan_segments(300_000, 44100, 0.25), weights):
        total[start:stop] += w
    assert torch.allclose(total, torch.ones_like(total))
