"""danna_sep.data: track discovery and checks, datasets, augmentations."""

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from danna_sep import SOURCES
from danna_sep.data import (
    MUSDB_VALIDATION,
    ChannelSwap,
    DataError,
    FixedChunks,
    PitchSpeed,
    RandomEQ,
    RandomGain,
    RemixBatch,
    RemixSegments,
    SignFlip,
    build_augment,
    change_speed,
    find_tracks,
    pitch_shift,
    validation_split,
)
from danna_sep.data.tracks import held_out, holdout_count
from fakemusdb import STEMS, make_musdb_hq, synth_stems, write_stem_mp4, write_streams_mp4, write_track

SR = 44100


@pytest.fixture(scope="module")
def musdb_root(tmp_path_factory):
    return make_musdb_hq(tmp_path_factory.mktemp("musdb"), tracks=4, seconds=2.0)


# --------------------------------------------------------------------------- find_tracks


def test_musdb_hq_layout_and_subsets(musdb_root):
    train = find_tracks(musdb_root, "train")
    test = find_tracks(musdb_root, "test")
    both = find_tracks(musdb_root, None)
    assert len(train) == 4 and len(test) == 4 and len(both) == 8
    assert [t.name for t in train] == sorted(t.name for t in train)
    for track in both:
        assert track.layout == "musdb-hq"
        assert (track.samplerate, track.num_samples, track.channels) == (SR, 2 * SR, 2)
        assert track.path.is_dir() and track.path.name == track.name
    assert {t.path.parent.name for t in test} == {"test"}


def test_validation_split(musdb_root):
    assert len(MUSDB_VALIDATION) == 14 and len(set(MUSDB_VALIDATION)) == 14
    assert "Actions - One Minute Smile" in MUSDB_VALIDATION
    assert "Traffic Experiment - Sirens" in MUSDB_VALIDATION
    valid = find_tracks(musdb_root, "train", split="valid")
    train = find_tracks(musdb_root, "train", split="train")
    assert [t.name for t in valid] == ["Actions - One Minute Smile"]
    assert len(train) == 3 and all(t.name not in MUSDB_VALIDATION for t in train)
    with pytest.raises(ValueError, match="train subset"):
        find_tracks(musdb_root, "test", split="valid")


def _plain_folder(root: Path, names, seconds=1.0, mixture=True):
    for i, name in enumerate(names):
        write_track(root / name, synth_stems(seconds, SR, seed=50 + i), SR, mixture=mixture)
    return root


def test_plain_folder_of_tracks_with_valid_list(tmp_path):
    root = _plain_folder(tmp_path / "stems", ["a", "b", "c"])
    tracks = find_tracks(root, subset="test")  # subset is ignored without train/ and test/
    assert [t.name for t in tracks] == ["a", "b", "c"]
    # no list: one track held out by the seeded hash, the others train
    held = [t.name for t in find_tracks(root, split="valid")]
    assert held == held_out(["a", "b", "c"], 1) and len(held) == 1
    assert sorted(held + [t.name for t in find_tracks(root, split="train")]) == ["a", "b", "c"]
    assert validation_split(root).origin == "held out"
    (root / "valid.txt").write_text("# held out\nb\n\n")
    assert [t.name for t in find_tracks(root, split="valid")] == ["b"]
    assert [t.name for t in find_tracks(root, split="train")] == ["a", "c"]
    assert validation_split(root).origin == "list"


def test_a_folder_without_a_validation_list_holds_out_a_fixed_seeded_few(tmp_path):
    """train/ + test/ with no valid.txt and no MUSDB18 names: the split is a seeded few of
    train/, the same on every call, disjoint from the training tracks, never the test subset."""
    root = make_musdb_hq(tmp_path / "stems", tracks=12, seconds=0.05, musdb_names=False)
    names = [p.name for p in sorted((root / "train").iterdir())]
    split = validation_split(root)
    assert split.origin == "held out" and split.folder == root / "train" and len(split.names) == 1
    valid = find_tracks(root, "train", split="valid")
    train = find_tracks(root, "train", split="train")
    assert [t.name for t in valid] == sorted(split.names) == held_out(names, 1)
    assert {t.name for t in valid}.isdisjoint(t.name for t in train)
    assert len(valid) + len(train) == 12
    assert [t.name for t in find_tracks(root, "train", split="valid")] == [t.name for t in valid]
    three = find_tracks(root, "train", split="valid", holdout=3)
    assert len(three) == 3 and len(find_tracks(root, "train", split="train", holdout=3)) == 9
    # the hash, not the name order, picks: not simply the first tracks by name
    assert [t.name for t in three] != names[:3]
    assert held_out(names, 3) == held_out(list(reversed(names)), 3)  # order of listing is irrelevant
    assert held_out(names, 3, seed=1) != held_out(names, 3)
    # a new track changes the choice only by taking a place itself
    for extra in ("Another Song", "Yet Another Song", "A Third Song", "A Fourth Song"):
        chosen = held_out(names + [extra], 3)
        assert chosen == held_out(names, 3) or extra in chosen
    assert [holdout_count(n) for n in (1, 9, 10, 25, 100, 1000)] == [1, 1, 1, 2, 10, 10]
    with pytest.raises(DataError, match=r"/train: 12 track\(s\), too few to hold 12 out for validation"):
        find_tracks(root, "train", split="train", holdout=12)


def test_musdb_names_or_a_valid_list_beat_the_hold_out(tmp_path, musdb_root):
    assert validation_split(musdb_root).origin == "musdb"
    assert validation_split(musdb_root).names == set(MUSDB_VALIDATION)
    root = make_musdb_hq(tmp_path / "stems", tracks=3, seconds=0.05, subsets=("train",), musdb_names=False)
    (root / "valid.txt").write_text("Fake Artist 02 - Train Song\n")
    assert [t.name for t in find_tracks(root, "train", split="valid")] == ["Fake Artist 02 - Train Song"]
    alone = make_musdb_hq(tmp_path / "alone", tracks=1, seconds=0.05, subsets=("train",), musdb_names=False)
    with pytest.raises(DataError, match=r"alone/train: 1 track\(s\), too few .* --valid-subset test"):
        find_tracks(alone, "train", split="valid")


def test_read_matches_the_files_and_pads_past_the_end(musdb_root):
    track = find_tracks(musdb_root, "test")[1]
    stems = track.read()
    assert set(stems) == set(SOURCES) | {"mixture"}
    for name, wav in stems.items():
        expected, rate = soundfile.read(str(track.path / f"{name}.wav"), dtype="float32", always_2d=True)
        assert wav.dtype == torch.float32 and rate == SR
        assert torch.equal(wav, torch.from_numpy(expected.T.copy()))
    part = track.read(1000, 500, stems=["bass"])
    assert list(part) == ["bass"] and torch.equal(part["bass"], stems["bass"][:, 1000:1500])
    tail = track.read(track.num_samples - 100, 300)
    assert tail["vocals"].shape == (2, 300)
    assert torch.equal(tail["vocals"][:, :100], stems["vocals"][:, -100:])
    assert not tail["vocals"][:, 100:].any()


def test_missing_mixture_reads_as_the_sum(tmp_path):
    root = _plain_folder(tmp_path / "stems", ["only"], mixture=False)
    (track,) = find_tracks(root)
    assert not track.has_mixture
    stems = track.read()
    assert torch.allclose(stems["mixture"], sum(stems[s] for s in SOURCES))


def _error(root, **kwargs):
    with pytest.raises(DataError) as info:
        find_tracks(root, **kwargs)
    return str(info.value)


def test_missing_stem_is_named(tmp_path):
    root = make_musdb_hq(tmp_path / "m", tracks=2, seconds=0.5, subsets=("train",))
    broken = root / "train" / "Fake Artist 00 - Train Song"
    (broken / "bass.wav").unlink()
    message = _error(root, subset="train")
    assert message.startswith(str(broken)) and "missing stem bass.wav" in message


def test_stems_of_different_lengths_are_named(tmp_path):
    root = _plain_folder(tmp_path / "s", ["good", "short"], seconds=0.5)
    data, _ = soundfile.read(str(root / "short" / "vocals.wav"))
    soundfile.write(str(root / "short" / "vocals.wav"), data[:-10], SR, subtype="PCM_16")
    message = _error(root)
    assert message.startswith(str(root / "short")) and "different lengths" in message
    assert "vocals.wav 22040 samples" in message


def test_stems_of_different_sample_rates_are_named(tmp_path):
    root = _plain_folder(tmp_path / "s", ["rates"], seconds=0.5)
    data, _ = soundfile.read(str(root / "rates" / "drums.wav"))
    soundfile.write(str(root / "rates" / "drums.wav"), data, 48000, subtype="PCM_16")
    message = _error(root)
    assert message.startswith(str(root / "rates")) and "different sample rates" in message
    assert "drums.wav 48000 Hz" in message


def test_empty_or_missing_root_is_named(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    message = _error(empty)
    assert message.startswith(str(empty)) and "no tracks found" in message
    (empty / "train").mkdir()
    assert _error(empty, subset="train").startswith(str(empty / "train"))
    assert _error(empty, subset="test").startswith(str(empty))
    assert "no such folder" in _error(tmp_path / "nowhere")


def test_a_broken_stem_file_is_named(tmp_path):
    root = _plain_folder(tmp_path / "s", ["junk"], seconds=0.5)
    (root / "junk" / "other.wav").write_bytes(b"not audio at all")
    message = _error(root)
    assert message.startswith(str(root / "junk")) and "other.wav" in message


# --------------------------------------------------------------------------- MUSDB18 stem files


def _snr(reference: np.ndarray, estimate: np.ndarray) -> float:
    return 10 * math.log10((reference ** 2).sum() / ((reference - estimate) ** 2).sum())


def test_stem_mp4_streams_are_read_in_musdb_order(tmp_path):
    root = tmp_path / "musdb18"
    stems = synth_stems(1.0, SR, seed=2)
    write_stem_mp4(root / "test" / "Song 2.stem.mp4", stems, SR)
    (track,) = find_tracks(root, "test")
    assert track.layout == "stem-mp4" and track.name == "Song 2"
    assert (track.samplerate, track.channels) == (SR, 2)
    assert track.num_samples == SR  # the mp4 edit list drops the AAC priming
    decoded = {k: v.numpy() for k, v in track.read().items()}
    truth = dict(stems, mixture=sum(stems[s] for s in STEMS))
    names = list(truth)
    for name in names:
        # AAC is lossy: tones come back within 20 dB, noise bursts (drums) within 10 dB
        snrs = {other: _snr(truth[other], decoded[name]) for other in names}
        assert max(snrs, key=snrs.get) == name, snrs
        assert snrs[name] > (10 if name == "drums" else 20), (name, snrs[name])
        # no encoder delay left: the best alignment with the reference is at lag 0
        lags = range(-64, 65)
        scores = [np.dot(truth[name][0, 2000 + lag:40000 + lag], decoded[name][0, 2000:40000]) for lag in lags]
        assert lags[int(np.argmax(scores))] == 0
    part = track.read(5000, 1000, stems=["bass"])
    assert torch.equal(part["bass"], torch.from_numpy(decoded["bass"][:, 5000:6000]))


def test_stem_mp4_with_too_few_streams_is_named(tmp_path):
    path = tmp_path / "root" / "Two.stem.mp4"
    write_streams_mp4(path, [np.zeros((2, 4096))] * 2, SR)
    message = _error(tmp_path / "root")
    assert message.startswith(str(path)) and "2 audio stream(s)" in message


# --------------------------------------------------------------------------- datasets


def test_remix_segments_shapes_and_determinism(musdb_root):
    tracks = find_tracks(musdb_root, "train")
    data = RemixSegments(tracks, segment=SR // 2, samples_per_track=3, seed=7)
    assert len(data) == 12
    item = data[5]
    assert item.shape == (4, 2, SR // 2) and item.dtype == torch.float32
    again = RemixSegments(tracks, segment=SR // 2, samples_per_track=3, seed=7)
    assert torch.equal(again[5], item) and torch.equal(data[5], item)
    assert not torch.equal(data[6], item)
    data.set_epoch(1)
    assert not torch.equal(data[5], item)
    data.set_epoch(0)
    assert torch.equal(data[5], item)
    other_seed = RemixSegments(tracks, segment=SR // 2, samples_per_track=3, seed=8)
    assert not torch.equal(other_seed[5], item)
    with pytest.raises(IndexError):
        data[12]


def test_loader_workers_give_the_same_batches(musdb_root):
    data = RemixSegments(find_tracks(musdb_root, "train"), segment=2048, samples_per_track=2, seed=1)
    data.set_epoch(3)
    order = torch.Generator().manual_seed(0)
    alone = list(torch.utils.data.DataLoader(data, batch_size=3, shuffle=True, generator=order))
    order.manual_seed(0)
    workers = list(torch.utils.data.DataLoader(data, batch_size=3, shuffle=True, generator=order, num_workers=2))
    assert len(alone) == 3 and all(torch.equal(a, b) for a, b in zip(alone, workers))


def test_remix_draws_sources_from_different_tracks(musdb_root):
    tracks = find_tracks(musdb_root, "train")
    data = RemixSegments(tracks, segment=4096, samples_per_track=16, seed=0)
    draws = [data.draw(i) for i in range(len(data))]
    mixed = sum(len({track for track, _ in picks}) > 1 for picks in draws)
    assert mixed > len(draws) // 2
    assert {track for picks in draws for track, _ in picks} == set(range(len(tracks)))
    # the item holds exactly what the draw names
    picks = draws[3]
    item = data[3]
    for s, (name, (track, offset)) in enumerate(zip(SOURCES, picks)):
        assert torch.equal(item[s], tracks[track].read(offset, 4096, stems=[name])[name])


def test_without_remix_an_item_is_one_track(musdb_root):
    tracks = find_tracks(musdb_root, "train")
    data = RemixSegments(tracks, segment=4096, samples_per_track=2, remix=False, seed=3)
    for index in range(len(data)):
        picks = data.draw(index)
        assert len(set(picks)) == 1 and picks[0][0] == index // 2
        track, offset = picks[0]
        stems = tracks[track].read(offset, 4096)
        assert torch.equal(data[index], torch.stack([stems[s] for s in SOURCES]))


def test_short_tracks_are_zero_padded(tmp_path):
    root = _plain_folder(tmp_path / "short", ["tiny"], seconds=0.1)
    (track,) = find_tracks(root)
    item = RemixSegments([track], segment=SR, samples_per_track=1)[0]
    assert item.shape == (4, 2, SR)
    assert item[:, :, :track.num_samples].abs().sum() > 0 and not item[:, :, track.num_samples:].any()


def test_fixed_chunks_cover_each_track(musdb_root):
    tracks = find_tracks(musdb_root, "test")[:2]
    whole = FixedChunks(tracks)
    assert len(whole) == 2 and whole[1].shape == (4, 2, 2 * SR)
    chunks = FixedChunks(tracks, segment=30000, sources=("vocals", "bass"))
    per_track = math.ceil(2 * SR / 30000)
    assert len(chunks) == 2 * per_track
    joined = torch.cat([chunks[i] for i in range(per_track, 2 * per_track)], dim=-1)
    stems = tracks[1].read()
    assert torch.equal(joined[:, :, : 2 * SR], torch.stack([stems["vocals"], stems["bass"]]))
    assert not joined[:, :, 2 * SR:].any()


# --------------------------------------------------------------------------- augmentations


def _batch(seed=0, batch=3, samples=2048):
    return torch.randn(batch, 4, 2, samples, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("module", [RandomGain(), ChannelSwap(), SignFlip(), RemixBatch(), RandomEQ(p=1.0),
                                    PitchSpeed(p_pitch=1.0, p_speed=1.0, max_semitones=1.0)])
def test_augmentations_keep_shape_input_and_are_seeded(module):
    x = _batch()
    before = x.clone()
    out = module(x, generator=torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(x, before)
    assert not torch.equal(out, x)
    assert torch.equal(module(x, generator=torch.Generator().manual_seed(1)), out)
    module.eval()
    assert torch.equal(module(x), x)
    module.train()


def test_random_eq_is_the_drawn_zero_phase_gain_per_source_and_channel_pair():
    """A sine through RandomEQ comes out at its frequency's drawn gain, in phase, both channels
    alike; p=0 leaves the batch alone. The reference gain is evaluated here from the drawn
    parameters, apart from the module's spectrum code."""
    rate, samples = 44100, 8192
    module = RandomEQ(p=1.0, tilt_db=3.0, band_db=9.0, bands=2, samplerate=rate)
    shape, bins = (2, 4), samples // 2 + 1
    gains = module.gains_db(shape, bins, torch.Generator().manual_seed(5), torch.device("cpu"))
    assert gains.shape == (*shape, bins) and gains.abs().max() <= 3.0 * 5.6 + 2 * 9.0
    assert gains.std(dim=-1).min() > 0.1  # every source gets a curve, not a flat gain
    k = 300  # a sine on an exact bin: its amplitude is scaled by that bin's gain, its phase kept
    t = torch.arange(samples, dtype=torch.float64)
    sine = torch.sin(2 * math.pi * k * t / samples).float()
    x = sine.expand(2, 4, 2, samples).clone()
    out = module(x, generator=torch.Generator().manual_seed(5))
    # the module draws the same curves first, then the coin flips (all heads at p=1)
    expected = 10 ** (gains[..., k] / 20)
    assert torch.allclose(out, expected[:, :, None, None].float() * sine, atol=1e-4)
    assert torch.equal(RandomEQ(p=0.0)(x, generator=torch.Generator().manual_seed(5)), x)
    # the curve rises with the tilt: a flat-band EQ with +tilt lifts 8 kHz over 100 Hz by the slope
    tilt_only = RandomEQ(p=1.0, tilt_db=3.0, band_db=0.0, bands=0, samplerate=rate)
    g = tilt_only.gains_db((64,), bins, torch.Generator().manual_seed(0), torch.device("cpu"))
    f = torch.linspace(0, rate / 2, bins, dtype=torch.float64)
    low, high = int(torch.argmin((f - 100).abs())), int(torch.argmin((f - 8000).abs()))
    slope = (g[:, high] - g[:, low]) / math.log2(f[high] / f[low])
    assert torch.allclose(slope, g[:, high] / math.log2(f[high] / 1000), atol=1e-9)
    assert slope.abs().max() <= 3.0 and slope.std() > 0.5


def test_random_gain_is_per_source_within_range():
    x = _batch(batch=16).abs() + 0.1
    out = RandomGain(0.5, 0.75)(x, generator=torch.Generator().manual_seed(0))
    ratio = out / x
    per_source = ratio[..., :1, :1]
    assert torch.allclose(ratio, per_source.expand_as(ratio), rtol=1e-5)
    assert per_source.min() >= 0.5 and per_source.max() <= 0.75
    assert per_source.std() > 0.03  # sources get their own gains


def test_probabilities_zero_and_one():
    x = _batch()
    for module in (ChannelSwap(p=0.0), SignFlip(p=0.0), PitchSpeed(p_pitch=0.0, p_speed=0.0)):
        assert torch.equal(module(x), x)
    assert torch.equal(ChannelSwap(p=1.0)(x), x.flip(2))
    assert torch.equal(SignFlip(p=1.0)(x), -x)
    flips = SignFlip(p=0.5)(_batch(batch=64), generator=torch.Generator().manual_seed(0))
    share = (flips[..., 0] * _batch(batch=64)[..., 0] < 0).float().mean()
    assert 0.35 < share < 0.65


def test_sign_flip_draws_a_sign_per_item_and_source():
    x = _batch(seed=3, batch=256, samples=64)
    out = SignFlip(p=0.5)(x, generator=torch.Generator().manual_seed(7))
    # every (item, source) is exactly the input or exactly its negative, all channels alike
    kept = (out == x).flatten(2).all(dim=2)
    flipped = (out == -x).flatten(2).all(dim=2)
    assert bool((kept ^ flipped).all()), "a source is neither kept nor negated whole"
    # each source is flipped in about half of the items (binomial, n=256: sd 0.031)
    assert bool(((flipped.float().mean(dim=0) - 0.5).abs() < 0.15).all()), flipped.float().mean(dim=0)
    # independently per source: two sources of an item agree about half of the time, and
    # all four share a sign in about 1/8 of the items (one draw per item would give 1)
    for a in range(4):
        for b in range(a + 1, 4):
            agree = (flipped[:, a] == flipped[:, b]).float().mean()
            assert 0.35 < agree < 0.65, (a, b, agree)
    same = (flipped.all(dim=1) | (~flipped).all(dim=1)).float().mean()
    assert same < 0.3, same


def test_remix_batch_permutes_each_source_across_the_batch():
    x = _batch(batch=8)
    out = RemixBatch()(x, generator=torch.Generator().manual_seed(0))
    orders = []
    for s in range(4):
        order = [next(j for j in range(8) if torch.equal(out[i, s], x[j, s])) for i in range(8)]
        assert sorted(order) == list(range(8))
        orders.append(order)
    assert len({tuple(o) for o in orders}) > 1


def test_build_augment():
    pipeline = build_augment(["gain", "sign_flip", "remix"], gain={"low": 1.0, "high": 1.0},
                             sign_flip={"p": 1.0})
    assert [type(m) for m in pipeline] == [RandomGain, SignFlip, RemixBatch]
    x = _batch()
    out = pipeline(x, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out.sum(0), -x.sum(0), atol=1e-6)  # gain 1, sign -1, permuted
    with pytest.raises(ValueError, match="unknown augmentation 'reverb'"):
        build_augment(["reverb"])
    with pytest.raises(ValueError, match="gain"):
        build_augment(["sign_flip"], gain={"low": 1})
    with pytest.raises(ValueError, match="'gain'"):
        build_augment(["gain"], gain={"loudness": 1})


def _peak_hz(signal: np.ndarray) -> float:
    """Frequency of the strongest spectral peak, refined by parabolic interpolation."""
    spectrum = np.abs(np.fft.rfft(signal * np.hanning(len(signal)), n=8 * len(signal)))
    k = int(np.argmax(spectrum))
    a, b, c = np.log(spectrum[k - 1:k + 2])
    return (k + 0.5 * (a - c) / (a - 2 * b + c)) * SR / (8 * len(signal))


def _sine(hz=440.0, seconds=1.5, onset=None):
    t = np.arange(int(seconds * SR)) / SR
    wave = np.sin(2 * np.pi * hz * t) * (1.0 if onset is None else (t >= onset))
    return torch.tensor(wave, dtype=torch.float32).expand(1, 2, 2, -1).contiguous()


@pytest.mark.parametrize("semitones", [2.0, -2.0, 0.7])
def test_pitch_shift_scales_frequency_and_keeps_length_and_timing(semitones):
    x = _sine(onset=0.5)
    y = pitch_shift(x, semitones)
    assert y.shape == x.shape
    middle = y[0, 1, 0, int(0.7 * SR):int(1.4 * SR)].numpy()
    assert _peak_hz(middle) == pytest.approx(440 * 2 ** (semitones / 12), rel=2e-3)
    assert np.sqrt(np.mean(middle ** 2)) == pytest.approx(np.sqrt(0.5), rel=0.02)
    onset = int(np.argmax(np.abs(y[0, 0, 0].numpy()) > 0.5)) / SR
    assert onset == pytest.approx(0.5, abs=0.012)  # tempo kept: the note starts on time


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_change_speed_scales_frequency_and_time(factor):
    x = _sine(onset=0.5)
    y = change_speed(x, factor)
    assert y.shape == x.shape
    assert _peak_hz(y[0, 0, 1, int(0.7 * SR):int(1.3 * SR)].numpy()) == pytest.approx(440 * factor, rel=1e-3)
    onset = int(np.argmax(np.abs(y[0, 0, 0].numpy()) > 0.5)) / SR
    assert onset == pytest.approx(0.5 / factor, abs=0.003)


def test_pitch_speed_module_draws_within_its_ranges():
    x = _sine(seconds=1.0).expand(4, -1, -1, -1).contiguous()
    gen = torch.Generator().manual_seed(0)
    shifted = PitchSpeed(p_pitch=1.0, p_speed=0.0, max_semitones=2)(x, generator=gen)
    faster = PitchSpeed(p_pitch=0.0, p_speed=1.0, speed=(0.9, 1.1))(x, generator=gen)
    for out, low, high in ((shifted, 2 ** (-2 / 12), 2 ** (2 / 12)), (faster, 0.9, 1.1)):
        assert out.shape == x.shape
        ratios = [_peak_hz(out[i, 0, 0, 5000:40000].numpy()) / 440 for i in range(4)]
        assert all(low - 1e-3 <= r <= high + 1e-3 for r in ratios), ratios
        assert len({round(r, 3) for r in ratios}) == 4  # each item its own draw
        for i in range(4):  # all sources and channels of an item changed alike
            assert torch.allclose(out[i], out[i, :1, :1].expand_as(out[i]), atol=1e-5)
