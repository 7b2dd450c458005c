"""danna_sep.audio: reading, loading, resampling and atomic writing, on files made here."""

from __future__ import annotations

import logging
import math
import tracemalloc
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile
import torch

from danna_sep.audio import (
    AUDIO_EXTENSIONS,
    AudioError,
    is_audio_file,
    load,
    load_spooled,
    read_audio,
    read_audio_streams,
    resample,
    write_audio,
)


def sine(freq: float, rate: int, seconds: float, channels: int = 2, amp: float = 0.5) -> torch.Tensor:
    """float32 `(channels, samples)` sine, channel k scaled by 1 / (k + 1)."""
    t = torch.arange(int(round(rate * seconds)), dtype=torch.float64) / rate
    wave = amp * torch.sin(2 * math.pi * freq * t)
    return torch.stack([wave / (k + 1) for k in range(channels)]).float()


def peak_hz(signal: torch.Tensor, rate: int) -> float:
    """Frequency of the largest FFT bin of a 1-D signal."""
    spectrum = torch.fft.rfft(signal.double() * torch.hann_window(signal.shape[-1], dtype=torch.float64))
    return float(spectrum.abs().argmax()) * rate / signal.shape[-1]


def leftovers(folder: Path) -> list:
    """Temporary files our writer may have left behind."""
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


def write_pyav(path: Path, streams: list, rate: int, codec: str = "aac") -> None:
    """Encode each `(2, samples)` tensor as one audio stream of `path` (container from the suffix)."""
    with av.open(str(path), mode="w") as container:
        outs = []
        for _ in streams:
            out = container.add_stream(codec, rate=rate, layout="stereo")
            out.bit_rate = 96000
            outs.append(out)
        block = 4096
        length = streams[0].shape[-1]
        for start in range(0, length, block):
            for out, wav in zip(outs, streams):
                chunk = np.ascontiguousarray(wav[:, start:start + block].numpy())
                frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
                frame.sample_rate = rate
                frame.pts = start
                for packet in out.encode(frame):
                    container.mux(packet)
        for out in outs:
            for packet in out.encode(None):
                container.mux(packet)


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize(
    "fmt, bits, subtype",
    [("wav", 16, "PCM_16"), ("wav", 24, "PCM_24"), ("wav", 32, "FLOAT"), ("flac", 16, "PCM_16"), ("flac", 24, "PCM_24")],
)
def test_round_trip_lossless(tmp_path, fmt, bits, subtype):
    gen = torch.Generator().manual_seed(bits)
    wav = (torch.rand(2, 4000, generator=gen) * 1.8 - 0.9).float()
    path = write_audio(tmp_path / f"x.{fmt}", wav, 22050, format=fmt, bit_depth=bits)
    info = soundfile.info(str(path))
    assert info.subtype == subtype and info.format == fmt.upper()
    assert info.samplerate == 22050 and info.channels == 2 and info.frames == 4000
    back, rate = read_audio(path)
    assert rate == 22050 and back.dtype == torch.float32 and back.shape == wav.shape
    error = (back - wav).abs().max().item()
    if bits == 32:
        assert error == 0.0
    else:  # rounding to the nearest code: at most half a quantisation step
        step = 2.0 ** (1 - bits)
        assert error <= 0.5 * step + 1e-9
        assert error > 0.0  # random values are not all on the grid: quantisation happened


@pytest.mark.parametrize("bits", [16, 24])
def test_pcm_clamps_instead_of_wrapping(tmp_path, bits):
    wav = torch.tensor([[1.5, -1.5, 1.0, -1.0, 0.25]])
    back, _ = read_audio(write_audio(tmp_path / "c.wav", wav, 8000, bit_depth=bits))
    step = 2.0 ** (1 - bits)
    expected = torch.tensor([[1 - step, -1.0, 1 - step, -1.0, 0.25]])
    assert torch.allclose(back, expected, atol=1e-9)


def test_float_wav_keeps_values_beyond_full_scale(tmp_path):
    wav = torch.tensor([[1.5, -2.0, 0.125]])
    back, _ = read_audio(write_audio(tmp_path / "f.wav", wav, 8000, bit_depth=32))
    assert torch.equal(back, wav)


def test_mp3_round_trip(tmp_path):
    rate = 44100
    wav = sine(440, rate, 1.0)
    path = write_audio(tmp_path / "s.mp3", wav, rate, format="mp3", mp3_bitrate=192)
    assert soundfile.info(str(path)).format == "MP3"
    back, back_rate = read_audio(path)
    assert back_rate == rate and back.shape[0] == 2
    # The LAME header lets the decoder drop encoder delay and padding; tolerate up to one
    # MP3 frame (1152 samples) in case a decoder does not honour it.
    assert abs(back.shape[-1] - wav.shape[-1]) <= 1152
    n = min(back.shape[-1], wav.shape[-1])
    for channel in range(2):
        corr = np.corrcoef(back[channel, :n].numpy(), wav[channel, :n].numpy())[0, 1]
        assert corr > 0.9
    assert abs(peak_hz(back[0], rate) - 440) < 2


def test_mp3_bitrate_is_applied(tmp_path):
    wav = sine(440, 44100, 2.0)
    low = write_audio(tmp_path / "low.mp3", wav, 44100, format="mp3", mp3_bitrate=64)
    high = write_audio(tmp_path / "high.mp3", wav, 44100, format="mp3", mp3_bitrate=320)
    # constant bitrate: file size ~ kbps * seconds / 8 (plus a small header)
    assert abs(low.stat().st_size - 64000 * 2 / 8) < 0.1 * 64000 * 2 / 8
    assert abs(high.stat().st_size - 320000 * 2 / 8) < 0.1 * 320000 * 2 / 8


# ----------------------------------------------------------------------------- PyAV path


def test_read_m4a_through_pyav(tmp_path):
    rate = 44100
    wav = sine(1000, rate, 1.0)
    path = tmp_path / "song.m4a"
    write_pyav(path, [wav], rate)
    back, back_rate = read_audio(path)
    assert back_rate == rate and back.shape[0] == 2
    # the MP4 edit list removes AAC priming and padding; allow one AAC frame either way
    assert abs(back.shape[-1] - wav.shape[-1]) <= 1024
    assert abs(peak_hz(back[0], rate) - 1000) < 2
    n = min(back.shape[-1], wav.shape[-1])
    assert np.corrcoef(back[0, :n].numpy(), wav[0, :n].numpy())[0, 1] > 0.9
    loaded, original = load(path)
    assert original == rate and loaded.shape == (2, back.shape[-1])
    assert torch.equal(loaded, back)


def test_read_stem_mp4_streams_in_order(tmp_path):
    rate = 44100
    freqs = [300, 500, 700, 900, 1100]  # mixture, drums, bass, other, vocals
    path = tmp_path / "track.stem.mp4"
    write_pyav(path, [sine(f, rate, 0.5) for f in freqs], rate)
    assert is_audio_file(path)
    streams, back_rate = read_audio_streams(path)
    assert back_rate == rate and len(streams) == 5
    assert len({s.shape for s in streams}) == 1
    assert abs(streams[0].shape[-1] - int(rate * 0.5)) <= 1024
    for stream, freq in zip(streams, freqs):
        assert stream.shape[0] == 2 and abs(peak_hz(stream[0], rate) - freq) < 4
    vocals, _ = read_audio(path, stream=4)
    assert abs(peak_hz(vocals[0], rate) - 1100) < 4
    assert torch.equal(vocals, streams[4][:, : vocals.shape[-1]])
    with pytest.raises(AudioError, match=r"track\.stem\.mp4.*stream 5"):
        read_audio(path, stream=5)


def test_read_audio_streams_single_stream_file(tmp_path):
    path = write_audio(tmp_path / "one.wav", sine(440, 8000, 0.1), 8000)
    streams, rate = read_audio_streams(path)
    assert rate == 8000 and len(streams) == 1 and streams[0].shape == (2, 800)


# ----------------------------------------------------------------------------- load


def test_load_mono_becomes_identical_stereo(tmp_path):
    mono = sine(440, 44100, 0.2, channels=1)
    path = tmp_path / "mono.wav"
    soundfile.write(str(path), mono.numpy().T, 44100, subtype="FLOAT")
    wav, rate = load(path)
    assert rate == 44100 and wav.shape == (2, mono.shape[-1]) and wav.dtype == torch.float32
    assert torch.equal(wav[0], wav[1]) and torch.equal(wav[0], mono[0])


def test_load_six_channels_downmixes_with_warning(tmp_path, caplog):
    n = 2000
    channels = torch.zeros(6, n)
    channels[0] = 0.1  # front left
    channels[1] = 0.2  # front right
    channels[2] = 0.3  # centre
    channels[3] = 0.9  # LFE, dropped
    channels[4] = 0.05  # back left
    channels[5] = -0.05  # back right
    path = tmp_path / "surround.wav"
    soundfile.write(str(path), channels.numpy().T, 44100, subtype="FLOAT")
    with caplog.at_level(logging.WARNING, logger="danna_sep.audio"):
        wav, rate = load(path)
    assert wav.shape == (2, n) and rate == 44100
    g = 1 / math.sqrt(2)
    assert torch.allclose(wav[0], torch.full((n,), 0.1 + g * (0.3 + 0.05)), atol=1e-6)
    assert torch.allclose(wav[1], torch.full((n,), 0.2 + g * (0.3 - 0.05)), atol=1e-6)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("surround.wav" in r.getMessage() and "6 channels" in r.getMessage() for r in warnings)


@pytest.mark.parametrize("rate", [8000, 96000])
def test_load_resamples_to_44100(tmp_path, rate):
    seconds = 0.5
    wav = sine(1000, rate, seconds)
    path = tmp_path / f"r{rate}.wav"
    soundfile.write(str(path), wav.numpy().T, rate, subtype="FLOAT")
    out, original = load(path)
    assert original == rate
    expected = wav.shape[-1] * 44100 / rate
    assert abs(out.shape[-1] - expected) <= 1
    assert abs(peak_hz(out[0], 44100) - 1000) < 3
    assert abs(peak_hz(out[1], 44100) - 1000) < 3


def test_load_rejects_bad_channel_request(tmp_path):
    path = write_audio(tmp_path / "a.wav", sine(440, 8000, 0.1), 8000)
    with pytest.raises(ValueError):
        load(path, channels=3)


def _write_noise(path: Path, seconds: float, seed: int) -> None:
    """Stereo noise at 44.1 kHz: 16-bit PCM through libsndfile, or AAC in MP4 through PyAV."""
    gen = torch.Generator().manual_seed(seed)
    wav = (torch.rand(2, int(44100 * seconds), generator=gen) - 0.5) * 0.4
    if path.suffix == ".m4a":
        write_pyav(path, [wav], 44100)
    else:
        soundfile.write(str(path), wav.numpy().T, 44100, subtype="PCM_16")


def _traced_peak(call):
    """`call()`'s result and the peak of Python/numpy memory allocated while it ran."""
    tracemalloc.start()
    try:
        result = call()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return result, peak


# wav and flac are decoded by libsndfile, m4a (AAC) by PyAV: each path must stream.
@pytest.mark.parametrize("suffix", [".wav", ".flac", ".m4a"])
def test_load_spooled_memory_does_not_grow_with_the_track(tmp_path, suffix):
    short, long = tmp_path / f"short{suffix}", tmp_path / f"long{suffix}"
    _write_noise(short, 10, seed=1)
    _write_noise(long, 60, seed=2)
    (spool_short, _, _), peak_short = _traced_peak(lambda: load_spooled(short))
    (spool_long, rate, length), peak_long = _traced_peak(lambda: load_spooled(long))
    with spool_short, spool_long:
        whole, _ = read_audio(long)
        assert rate == 44100 and length == whole.shape[-1] == spool_long.length
        middle = length // 2
        assert torch.equal(spool_long.read(middle, middle + 1000), whole[:, middle:middle + 1000])
        assert torch.equal(spool_long.read(length - 1000, length), whole[:, -1000:])
    decoded = whole.numel() * 4  # bytes of the long track as float32
    # The measure sees the decoders' buffers: reading the whole track at once shows in it.
    _, peak_whole = _traced_peak(lambda: read_audio(long))
    assert peak_whole >= decoded
    # Streaming: a track six times as long peaks at about the same memory, a small part
    # of the decoded track (decoding it whole would peak at six times the short one).
    assert peak_long < 1.5 * peak_short, (peak_short, peak_long)
    assert peak_long < decoded / 4, (peak_long, decoded)


# ----------------------------------------------------------------------------- bad input


def test_missing_file(tmp_path):
    with pytest.raises(AudioError, match=r"nothere\.wav: no such file"):
        load(tmp_path / "nothere.wav")


def test_directory(tmp_path):
    folder = tmp_path / "album.wav"
    folder.mkdir()
    with pytest.raises(AudioError, match=r"album\.wav: .*folder"):
        load(folder)


def test_empty_file(tmp_path):
    path = tmp_path / "song.wav"
    path.write_bytes(b"")
    with pytest.raises(AudioError, match=r"song\.wav: empty file \(0 bytes\)"):
        load(path)


def test_text_file_named_wav(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("these are my notes, not a song\n" * 20)
    with pytest.raises(AudioError, match=r"notes\.wav: not an audio file") as info:
        load(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("chop", [1, 2, 1000])
def test_truncated_wav(tmp_path, chop):
    good = write_audio(tmp_path / "full.wav", sine(440, 8000, 0.5), 8000)
    data = good.read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(data[:-chop])
    with pytest.raises(AudioError, match=r"cut\.wav: truncated or corrupt audio"):
        read_audio(cut)
    read_audio(good)  # the intact file still reads


def test_truncated_flac(tmp_path):
    good = write_audio(tmp_path / "full.flac", sine(440, 8000, 0.5), 8000, format="flac")
    cut = tmp_path / "cut.flac"
    cut.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(AudioError, match=r"cut\.flac: truncated or corrupt audio"):
        read_audio(cut)


def test_zero_sample_wav(tmp_path):
    path = tmp_path / "x.wav"
    soundfile.write(str(path), np.zeros((0, 2), dtype=np.float32), 44100, subtype="PCM_16")
    assert path.stat().st_size > 0
    with pytest.raises(AudioError, match=r"x\.wav: no samples"):
        load(path)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_float_wav(tmp_path, bad):
    data = np.zeros((100, 2), dtype=np.float32)
    data[37, 1] = bad
    path = tmp_path / "x.wav"
    soundfile.write(str(path), data, 44100, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"x\.wav: contains NaN or infinite samples"):
        load(path)


# ----------------------------------------------------------------------------- write_audio


def test_existing_file_needs_force(tmp_path):
    target = tmp_path / "out.wav"
    target.write_bytes(b"original bytes")
    with pytest.raises(AudioError, match=r"out\.wav: already exists \(use --force to overwrite\)"):
        write_audio(target, sine(440, 8000, 0.1), 8000)
    assert target.read_bytes() == b"original bytes"
    assert leftovers(tmp_path) == []
    write_audio(target, sine(440, 8000, 0.1), 8000, force=True)
    assert soundfile.info(str(target)).frames == 800
    assert leftovers(tmp_path) == []


def test_flac_32_bit_is_rejected_without_leftovers(tmp_path):
    with pytest.raises(AudioError, match=r"x\.flac: .*16 or 24"):
        write_audio(tmp_path / "x.flac", sine(440, 8000, 0.1), 8000, format="flac", bit_depth=32)
    assert list(tmp_path.iterdir()) == []


def test_bad_tensor_is_rejected_without_leftovers(tmp_path):
    with pytest.raises(ValueError):
        write_audio(tmp_path / "x.wav", torch.zeros(2, 100, dtype=torch.int32), 8000)
    with pytest.raises(ValueError):
        write_audio(tmp_path / "x.wav", torch.zeros(100), 8000)
    with pytest.raises(AudioError, match="NaN"):
        write_audio(tmp_path / "x.wav", torch.full((2, 100), float("nan")), 8000)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, OSError])
def test_failure_mid_write_removes_temporary(tmp_path, monkeypatch, interrupt):
    target = tmp_path / "out.wav"
    target.write_bytes(b"keep me")
    calls = []

    def failing_write(self, data):
        calls.append(len(data))
        raise interrupt("stopped mid-write")

    # The encoder (a dependency, not the code under test) fails after the temporary file exists.
    monkeypatch.setattr(soundfile.SoundFile, "write", failing_write)
    expected = KeyboardInterrupt if interrupt is KeyboardInterrupt else AudioError
    with pytest.raises(expected):
        write_audio(target, sine(440, 8000, 0.1), 8000, force=True)
    assert calls, "the write never started"
    assert target.read_bytes() == b"keep me"
    assert leftovers(tmp_path) == []


def test_parent_is_a_file(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    with pytest.raises(AudioError, match=r"blocker") as info:
        write_audio(blocker / "sub" / "x.wav", sine(440, 8000, 0.1), 8000)
    assert "\n" not in str(info.value)
    with pytest.raises(AudioError, match=r"blocker"):
        write_audio(blocker / "x.wav", sine(440, 8000, 0.1), 8000)
    assert blocker.read_text() == "a file, not a folder"


def test_creates_folders_and_handles_unicode_names(tmp_path):
    wav = sine(440, 8000, 0.1)
    target = tmp_path / "new folder" / "Ünïcødé söng – 日本.flac"
    path = write_audio(target, wav, 8000, format="flac", bit_depth=24)
    assert path == target and target.is_file()
    back, rate = read_audio(target)
    assert rate == 8000 and torch.allclose(back, wav, atol=2.0**-23)
    assert leftovers(target.parent) == []


def test_mp3_at_a_rate_mp3_cannot_carry(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="danna_sep.audio"):
        path = write_audio(tmp_path / "hi.mp3", sine(440, 96000, 0.2), 96000, format="mp3", mp3_bitrate=128)
    assert soundfile.info(str(path)).samplerate == 48000
    assert any("96000" in r.getMessage() for r in caplog.records)


# ----------------------------------------------------------------------------- resample, extensions


@pytest.mark.parametrize("from_rate, to_rate", [(44100, 48000), (48000, 44100), (44100, 16000)])
def test_resample_sine(from_rate, to_rate):
    wav = sine(1000, from_rate, 0.5)
    original = wav.clone()
    out = resample(wav, from_rate, to_rate)
    assert torch.equal(wav, original)
    assert out.dtype == torch.float32 and out.shape[0] == 2
    assert abs(out.shape[-1] - wav.shape[-1] * to_rate / from_rate) <= 1
    assert abs(peak_hz(out[0], to_rate) - 1000) < 3
    # amplitude is kept away from the edges (soxr's filter settles within a few ms)
    middle = out[0, out.shape[-1] // 4: 3 * out.shape[-1] // 4]
    assert abs(middle.abs().max().item() - 0.5) < 0.01


def test_resample_identity_and_leading_dims():
    wav = sine(440, 8000, 0.1)
    assert resample(wav, 8000, 8000) is wav
    batch = torch.stack([wav, wav * 0.5])  # (2, 2, samples)
    out = resample(batch, 8000, 16000)
    assert out.shape == (2, 2, 1600)
    assert torch.allclose(out[1], out[0] * 0.5, atol=1e-6)


def test_audio_extensions():
    assert all(ext.startswith(".") and ext == ext.lower() for ext in AUDIO_EXTENSIONS)
    for name in ["a.wav", "b.FLAC", "c.stem.mp4", "d.m4a", "e.opus", "f.aif", "g.webm", "h.mka", "i.mp3"]:
        assert is_audio_file(name), name
    for name in ["notes.txt", "cover.jpg", "wav", ".x.wav.tmp-1234abcd.wav", "._song.wav", "model.safetensors"]:
        assert not is_audio_file(name), name


def test_a_file_is_written_in_the_format_its_name_says(tmp_path):
    wav = sine(440, 8000, 0.1)
    assert soundfile.info(write_audio(tmp_path / "a.flac", wav, 8000)).format == "FLAC"
    assert soundfile.info(write_audio(tmp_path / "b.WAV", wav, 8000)).format == "WAV"
    assert soundfile.info(write_audio(tmp_path / "c.out", wav, 8000, format="flac")).format == "FLAC"  # no audio name
    with pytest.raises(ValueError, match="a .wav file cannot hold flac"):
        write_audio(tmp_path / "d.wav", wav, 8000, format="flac")
    with pytest.raises(ValueError, match="cannot write .ogg files"):
        write_audio(tmp_path / "e.ogg", wav, 8000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.flac", "b.WAV", "c.out"]


def test_the_writer_resamples_its_blocks_once_and_lands_on_the_length_it_is_given(tmp_path):
    """Blocks at 44.1 kHz into a 48 kHz file through the writer's one streaming resampler: the
    same audio as resampling the whole at once, cut or padded with silence to `length`."""
    from danna_sep.audio import AudioWriter

    wav = sine(440, 44100, 1.0)
    whole = resample(wav, 44100, 48000)
    for extra in (-300, 0, 300):
        target = tmp_path / f"{extra}.wav"
        with AudioWriter(target, 48000, 2, bit_depth=32, source_rate=44100, length=whole.shape[-1] + extra) as writer:
            for start in range(0, wav.shape[-1], 10000):
                writer.write(wav[:, start:start + 10000])
        back, rate = read_audio(target)
        assert rate == 48000 and back.shape == (2, whole.shape[-1] + extra)
        common = min(whole.shape[-1], back.shape[-1])
        # block-wise and whole-track soxr differ only near the ends
        assert torch.allclose(back[:, 2000:common - 2000], whole[:, 2000:common - 2000], atol=1e-4)
        if extra > 0:
            assert torch.count_nonzero(back[:, -extra:]) == 0
    assert leftovers(tmp_path) == []


def test_a_tracks_files_appear_together_or_not_at_all(tmp_path, monkeypatch):
    """AudioWriters finishes every file before renaming any: where the second cannot be
    finished (here its encoder fails as it closes, as on a full disk), neither file appears,
    and the folder made for them goes too."""
    from danna_sep.audio import AudioWriters

    closing = soundfile.SoundFile.close
    calls = []

    def close_fails_the_second_time(self):
        calls.append(self.name)
        closing(self)
        if len(calls) == 2:
            raise OSError("stopped while closing")

    folder = tmp_path / "track"
    with AudioWriters() as writers:
        for name in ("a.wav", "b.flac"):
            writers.open(folder / name, 8000, 2).write(sine(440, 8000, 0.1))
        monkeypatch.setattr(soundfile.SoundFile, "close", close_fails_the_second_time)
        with pytest.raises(AudioError, match=r"b\.flac: cannot write \(stopped while closing\)"):
            writers.commit()
    assert len(calls) >= 2 and not folder.exists() and list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    with AudioWriters() as writers:
        for name in ("a.wav", "b.flac"):
            writers.open(folder / name, 8000, 2).write(sine(440, 8000, 0.1))
        assert writers.commit() == [folder / "a.wav", folder / "b.flac"]
    assert sorted(p.name for p in folder.iterdir()) == ["a.wav", "b.flac"]
