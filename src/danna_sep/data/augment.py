"""Augmentations of training batches: nn.Modules on sources `(batch, sources, channels, samples)`.

They run where the batch is (the training device), with torch operations only, after the
data loader and before the mixture is formed as the sum of the sources. Each module draws
its random numbers from the `generator` given to `forward` (on the generator's device,
then moved to the batch's), so a seeded generator makes a run reproducible; without one
the global torch RNG is used. None of them changes its input in place, and each is the
identity in eval mode (`module.eval()`), so one pipeline serves training and validation.

- `RandomGain`: each source of each item scaled by a factor uniform in [low, high].
- `ChannelSwap`: each source of each item has its left and right swapped with probability p.
- `SignFlip`: each source of each item multiplied by -1 with probability p.
- `RemixBatch` (Demucs v1): each source shuffled across the batch on its own.
- `RandomEQ`: each source of each item (both channels alike) through a random smooth
  zero-phase equaliser: a spectral tilt and a few broad peaks and dips, so that a
  generated instrument's timbre stops being one soundfont's.
- `PitchSpeed`: per item (all its sources alike, so they stay aligned), a speed change
  (pitch and tempo together) and/or a pitch shift (tempo kept); see `change_speed` and
  `pitch_shift` for the method.
"""

from __future__ import annotations

import math
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Type, Union

import torch
import torch.nn.functional as F
from torch import nn

from .. import SAMPLERATE

__all__ = [
    "RandomGain", "ChannelSwap", "SignFlip", "RandomEQ", "PitchSpeed", "RemixBatch", "AugmentSequence",
    "AUGMENTATIONS", "build_augment", "change_speed", "pitch_shift", "resample_fft", "time_stretch",
]


def _uniform(shape: Tuple[int, ...], low: float, high: float, generator: Optional[torch.Generator],
             device: torch.device) -> torch.Tensor:
    where = generator.device if generator is not None else torch.device("cpu")
    values = torch.rand(shape, generator=generator, device=where)
    return (low + (high - low) * values).to(device)


def _chance(shape: Tuple[int, ...], p: float, generator: Optional[torch.Generator],
            device: torch.device) -> torch.Tensor:
    return _uniform(shape, 0.0, 1.0, generator, device) < p


def _check_batch(x: torch.Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"expected sources (batch, sources, channels, samples), got shape {tuple(x.shape)}")


def _check_probability(name: str, p: float) -> float:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be between 0 and 1, got {p}")
    return float(p)


class _Augmentation(nn.Module):
    """Shared checks: a 4-D batch in, identity in eval mode."""

    def forward(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        _check_batch(x)
        if not self.training:
            return x
        return self.augment(x, generator)

    def augment(self, x: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
        raise NotImplementedError


class RandomGain(_Augmentation):
    """Scale each source of each item by a factor drawn uniformly from [low, high]."""

    def __init__(self, low: float = 0.25, high: float = 1.25):
        super().__init__()
        if not 0.0 <= low <= high:
            raise ValueError(f"need 0 <= low <= high, got low={low}, high={high}")
        self.low = float(low)
        self.high = float(high)

    def augment(self, x: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
        gains = _uniform(x.shape[:2], self.low, self.high, generator, x.device).to(x.dtype)
        return x * gains[:, :, None, None]

    def extra_repr(self) -> str:
        return f"low={self.low}, high={self.high}"


class _EachSourceMaybe(_Augmentation):
    """Replace each source of each item by `changed(x)`'s with probability p."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        self.p = _check_probability("p", p)

    def changed(self, x: torch.Tensor) -> torch.Tensor:
        """`(batch, sources, channels, samples)`, all of them changed."""
        raise NotImplementedError

    def augment(self, x: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
        chosen = _chance(x.shape[:2], self.p, generator, x.device)
        return torch.where(chosen[:, :, None, None], self.changed(x), x)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class ChannelSwap(_EachSourceMaybe):
    """Reverse the channel order (left <-> right) of each source of each item with probability p."""

    def changed(self, x: torch.Tensor) -> torch.Tensor:
        return x.flip(2)


class SignFlip(_EachSourceMaybe):
    """Multiply each source of each item by -1 with probability p."""

    def changed(self, x: torch.Tensor) -> torch.Tensor:
        return -x


class RemixBatch(_Augmentation):
    """Demucs v1's remix: each source gets its own random permutation of the batch, so the
    items of the batch become new mixtures of sources from different items."""

    def augment(self, x: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
        batch, sources = x.shape[:2]
        where = generator.device if generator is not None else torch.device("cpu")
        parts = []
        for source in range(sources):
            order = torch.randperm(batch, generator=generator, device=where).to(x.device)
            parts.append(x[order, source])
        return torch.stack(parts, dim=1)


class RandomEQ(_Augmentation):
    """A random equaliser per source of each item, applied with probability p: gain in dB
    over log frequency = a tilt of up to +-`tilt_db` per octave (about 1 kHz) plus `bands`
    raised-cosine bumps of up to +-`band_db`, each 0.5 to 2 octaves wide, centred between 60 Hz
    and 12 kHz (at 44.1 kHz). Zero phase (a real gain on the segment's spectrum), so the
    sources stay aligned; the sum of the equalised sources is the new mixture, as for every
    augmentation here."""

    def __init__(self, p: float = 0.5, tilt_db: float = 1.5, band_db: float = 6.0, bands: int = 3,
                 samplerate: int = SAMPLERATE):
        super().__init__()
        self.p = _check_probability("p", p)
        if tilt_db < 0 or band_db < 0 or bands < 0 or samplerate <= 0:
            raise ValueError(f"need tilt_db, band_db, bands >= 0 and samplerate > 0, got {tilt_db}, {band_db}, "
                             f"{bands}, {samplerate}")
        self.tilt_db, self.band_db, self.bands, self.samplerate = float(tilt_db), float(band_db), int(bands), samplerate

    def gains_db(self, shape: Tuple[int, ...], bins: int, generator: Optional[torch.Generator],
                 device: torch.device) -> torch.Tensor:
        """`shape + (bins,)` gains in dB on the rfft bins of a segment of 2 * (bins - 1) samples."""
        frequency = torch.linspace(0, self.samplerate / 2, bins, device=device, dtype=torch.float64)
        octaves = torch.log2(frequency.clamp(min=20.0) / 1000.0)  # below 20 Hz held at 20 Hz's gain
        tilt = _uniform(shape, -self.tilt_db, self.tilt_db, generator, device).double()
        gains = tilt[..., None] * octaves.clamp(-5.6, 4.5)  # the tilt stops at 20 Hz and 22 kHz
        for _ in range(self.bands):
            centre = _uniform(shape, math.log2(60 / 1000), math.log2(12000 / 1000), generator, device).double()
            width = _uniform(shape, 0.5, 2.0, generator, device).double()
            height = _uniform(shape, -self.band_db, self.band_db, generator, device).double()
            distance = ((octaves - centre[..., None]) / width[..., None]).clamp(-1.0, 1.0)
            gains = gains + height[..., None] * 0.5 * (1 + torch.cos(math.pi * distance))
        return gains

    def augment(self, x: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
        samples = x.shape[-1]
        gains = self.gains_db(x.shape[:2], samples // 2 + 1, generator, x.device)
        apply = _chance(x.shape[:2], self.p, generator, x.device)
        if not bool(apply.any()):
            return x
        spectrum = torch.fft.rfft(x.double(), dim=-1)
        shaped = torch.fft.irfft(spectrum * (10.0 ** (gains / 20.0))[:, :, None, :], n=samples, dim=-1)
        return torch.where(apply[:, :, None, None], shaped.to(x.dtype), x)  # the others untouched, bit for bit

    def extra_repr(self) -> str:
        return f"p={self.p}, tilt_db={self.tilt_db}, band_db={self.band_db}, bands={self.bands}"


# --------------------------------------------------------------------------- speed and pitch


def resample_fft(x: torch.Tensor, length: int, margin: int = 1024) -> torch.Tensor:
    """Band-limited resampling of `(..., n)` to `(..., length)` samples by the FFT.

    The spectrum is cut (an ideal low-pass, so nothing aliases) or zero-padded and
    inverted at the new length; played at the same rate, every frequency is multiplied by
    n / length. The FFT sees the signal as periodic, so `margin` samples are reflected
    at both ends first and the resampled margins are cut off, which keeps the jump from the
    last sample to the first from ringing into the signal.
    """
    n = x.shape[-1]
    if length <= 0:
        raise ValueError(f"length must be positive, got {length}")
    if length == n:
        return x.clone()
    pad = min(margin, n - 1)
    if pad > 0:
        lead = x.shape[:-1]
        flat = x.reshape(-1, 1, n)
        x = F.pad(flat, (pad, pad), mode="reflect").reshape(lead + (n + 2 * pad,))
    total = n + 2 * pad
    new_total = int(round(total * length / n))
    spectrum = torch.fft.rfft(x, dim=-1)
    bins = new_total // 2 + 1
    if bins <= spectrum.shape[-1]:
        spectrum = spectrum[..., :bins]
    else:
        spectrum = F.pad(spectrum, (0, bins - spectrum.shape[-1]))
    y = torch.fft.irfft(spectrum, n=new_total, dim=-1) * (new_total / total)
    start = int(round(pad * length / n))
    y = y[..., start:start + length]
    if y.shape[-1] < length:  # rounding of the margins
        y = F.pad(y, (0, length - y.shape[-1]))
    return y


def time_stretch(x: torch.Tensor, length: int, frame: int = 1024, tolerance: int = 256) -> torch.Tensor:
    """Change the duration of `(batch, ..., n)` to `(batch, ..., length)` without changing pitch.

    WSOLA (waveform-similarity overlap-add, Verhelst and Roelands 1993): output frames of
    `frame` samples, Hann-windowed, are laid down every frame // 2 samples (the windows sum
    to one). Output frame k is read from the input near k * hop * n / length; within
    +-`tolerance` samples, the start is chosen where the input best matches (largest
    cross-correlation, by FFT) the natural continuation of the previous frame, so that
    overlapping frames add in phase instead of cancelling. The alignment is chosen per
    batch item over all its other dimensions together (sources and channels stay in
    step). No phase vocoder and no learned part: plain torch ops on any device.
    """
    n = x.shape[-1]
    if length == n:
        return x.clone()
    batch = x.shape[0]
    out = _wsola(list(x.reshape(batch, -1, n)), length, frame, tolerance)
    return out.reshape(x.shape[:-1] + (length,))


def _wsola(signals: List[torch.Tensor], length: int, frame: int, tolerance: int) -> torch.Tensor:
    """WSOLA of items `(k, n_i)` of their own lengths, all to `length`: `(items, k, length)`.

    One loop over output frames serves the whole batch, each item with its own rate.
    """
    device, dtype = signals[0].device, signals[0].dtype
    batch, channels = len(signals), signals[0].shape[0]
    hop = frame // 2
    hop_in = torch.tensor([hop * s.shape[-1] / length for s in signals], dtype=torch.float64)
    # Output frame k covers output samples [(k - 1) * hop, (k - 1) * hop + frame): frame 0
    # starts half a frame early so that the first samples get the full window sum.
    frames = math.ceil(length / hop) + 1
    # Zeros before the signal, so that frame 0 (input from -hop_in) and every search range fit.
    left = tolerance + hop + math.ceil(float(hop_in.max()))
    needed = int(round((frames - 1) * float(hop_in.max()))) + left + 2 * tolerance + hop + frame + 1
    total = max(needed, left + max(s.shape[-1] for s in signals))
    padded = torch.zeros(batch, channels, total, dtype=dtype, device=device)
    for i, signal in enumerate(signals):
        padded[i, :, left:left + signal.shape[-1]] = signal
    # where output sample (k - 1) * hop lies in the input, in padded coordinates: (frames, batch)
    grid = torch.arange(-1, frames - 1, dtype=torch.float64)[:, None] * hop_in[None, :]
    nominal = (grid.round().long() + left).to(device)
    window = torch.hann_window(frame, periodic=True, dtype=dtype, device=device)
    steps = torch.arange(frame, device=device)
    span = frame + 2 * tolerance
    region_steps = torch.arange(span, device=device)
    search = torch.arange(-tolerance, tolerance + 1, device=device)
    # A tiny preference for the nominal position: silence (all scores 0) keeps the grid.
    bias = -search.abs().to(dtype) * 1e-12
    fft_size = 1 << (span - 1).bit_length()

    def take(starts: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        index = (starts[:, None, None] + offsets).expand(-1, channels, -1)
        return torch.gather(padded, 2, index)

    out = torch.zeros(batch, channels, (frames + 1) * hop, dtype=dtype, device=device)
    start = nominal[0]
    for k in range(frames):
        if k > 0:
            template = take(start + hop, steps)  # the natural continuation of the last frame
            region = take(nominal[k] - tolerance, region_steps)
            # score[d] = sum over channels and t of template[t] * region[d + t], d in [0, 2 tolerance]
            spectrum = torch.fft.rfft(region, n=fft_size) * torch.fft.rfft(template, n=fft_size).conj()
            score = torch.fft.irfft(spectrum.sum(dim=1), n=fft_size)[:, : 2 * tolerance + 1]
            start = nominal[k] - tolerance + torch.argmax(score + bias, dim=-1)
        out[:, :, k * hop:k * hop + frame] += take(start, steps) * window
    return out[:, :, hop:hop + length]


def change_speed(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Play `(..., n)` `factor` times faster (tempo and pitch together), cut or zero-padded
    at the end back to n samples: FFT resampling to round(n / factor) samples."""
    n = x.shape[-1]
    y = resample_fft(x, max(1, int(round(n / factor))))
    if y.shape[-1] >= n:
        return y[..., :n]
    return F.pad(y, (0, n - y.shape[-1]))


def pitch_shift(x: torch.Tensor, semitones: Union[float, Sequence[float]], frame: int = 1024,
                tolerance: int = 256) -> torch.Tensor:
    """Shift `(batch, ..., n)` by `semitones` (one value, or one per batch item) at the same
    tempo and length.

    Each item is resampled by the FFT to n / 2^(semitones / 12) samples (every frequency
    times 2^(semitones / 12), duration shortened alike), then the batch is stretched back
    to n samples by WSOLA (`time_stretch`).
    """
    batch, n = x.shape[0], x.shape[-1]
    shifts = [float(semitones)] * batch if isinstance(semitones, (int, float)) else [float(s) for s in semitones]
    if len(shifts) != batch:
        raise ValueError(f"{len(shifts)} semitone values for a batch of {batch}")
    items = []
    for item, shift in zip(x.reshape(batch, -1, n), shifts):
        items.append(resample_fft(item, max(frame + 1, int(round(n / 2.0 ** (shift / 12.0))))))
    return _wsola(items, n, frame, tolerance).reshape(x.shape)


class PitchSpeed(_Augmentation):
    """Per item: with probability `p_speed` a speed change by a factor uniform in `speed`
    (`change_speed`: tempo and pitch, length kept by cutting or zero-padding the end), then
    with probability `p_pitch` a pitch shift uniform in +-`max_semitones` (`pitch_shift`:
    tempo kept). All sources of an item get the same change, so they stay in time.

    Speed changes are FFT resamplings item by item; pitch shifts of the whole batch share
    one WSOLA loop of one small batched FFT correlation per 512 output samples.
    """

    def __init__(self, p_pitch: float = 0.2, p_speed: float = 0.2, max_semitones: float = 2,
                 speed: Tuple[float, float] = (0.9, 1.1), frame: int = 1024, tolerance: int = 256):
        super().__init__()
        self.p_pitch = _check_probability("p_pitch", p_pitch)
        self.p_speed = _check_probability("p_speed", p_speed)
        if max_semitones < 0:
            raise ValueError(f"max_semitones must be 0 or more, got {max_semitones}")
        low, high = speed
        if not 0 < low <= high:
            raise ValueError(f"speed must be a range (low, high) with 0 < low <= high, got {speed}")
        self.max_semitones = float(max_semitones)
        self.speed = (float(low), float(high))
        self.frame = int(frame)
        self.tolerance = int(tolerance)

    def augment(self, x: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
        batch = x.shape[0]
        cpu = torch.device("cpu")
        do_speed = _chance((batch,), self.p_speed, generator, cpu).tolist()
        factors = _uniform((batch,), self.speed[0], self.speed[1], generator, cpu).tolist()
        do_pitch = _chance((batch,), self.p_pitch, generator, cpu).tolist()
        shifts = _uniform((batch,), -self.max_semitones, self.max_semitones, generator, cpu).tolist()
        if not any(do_speed) and not any(do_pitch):
            return x
        out = x
        speed_items = [i for i in range(batch) if do_speed[i]]
        if speed_items:
            changed = [change_speed(x[i], factors[i]) for i in speed_items]
            out = out.index_copy(0, torch.tensor(speed_items, device=x.device), torch.stack(changed))
        pitch_items = [i for i in range(batch) if do_pitch[i] and shifts[i] != 0.0]
        if pitch_items:
            index = torch.tensor(pitch_items, device=x.device)
            shifted = pitch_shift(out.index_select(0, index), [shifts[i] for i in pitch_items],
                                  frame=self.frame, tolerance=self.tolerance)
            out = out.index_copy(0, index, shifted)
        return out

    def extra_repr(self) -> str:
        return (f"p_pitch={self.p_pitch}, p_speed={self.p_speed}, "
                f"max_semitones={self.max_semitones}, speed={self.speed}")


# --------------------------------------------------------------------------- pipelines


class AugmentSequence(nn.Sequential):
    """nn.Sequential whose forward passes the generator to every augmentation."""

    def forward(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        for module in self:
            x = module(x, generator=generator)
        return x


#: Names accepted by `build_augment`.
AUGMENTATIONS: Dict[str, Type[nn.Module]] = {
    "gain": RandomGain,
    "channel_swap": ChannelSwap,
    "sign_flip": SignFlip,
    "eq": RandomEQ,
    "pitch_speed": PitchSpeed,
    "remix": RemixBatch,
}


def build_augment(names: Sequence[str], **kwargs: Mapping[str, object]) -> AugmentSequence:
    """The augmentations `names` (keys of AUGMENTATIONS), applied in that order.

    Keyword arguments are per name: `build_augment(["gain", "pitch_speed"],
    gain={"low": 0.5, "high": 1.5}, pitch_speed={"p_pitch": 0.3})`.
    """
    unknown = [name for name in names if name not in AUGMENTATIONS]
    if unknown:
        raise ValueError(f"unknown augmentation {unknown[0]!r}; known: {', '.join(AUGMENTATIONS)}")
    stray = [key for key in kwargs if key not in names]
    if stray:
        raise ValueError(f"options given for {stray[0]!r}, which is not among the augmentations {list(names)}")
    modules = []
    for name in names:
        options = dict(kwargs.get(name, {}))
        try:
            modules.append(AUGMENTATIONS[name](**options))
        except TypeError as error:
            raise ValueError(f"augmentation {name!r}: {error}") from None
    return AugmentSequence(*modules)
