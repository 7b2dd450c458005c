"""Channel and sample conversions: downmixing to what the models take, and quantising floats
to PCM codes for the encoders."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

# ITU-R BS.775 weight of the centre and surround channels in a stereo downmix.
_ITU_WEIGHT = 1.0 / math.sqrt(2.0)


def downmix(wav: torch.Tensor, channels: int = 2) -> torch.Tensor:
    """`(in_channels, samples)` to `(channels, samples)` with channels 1 or 2.

    Mono is copied to both sides. Six channels are taken as 5.1 in the WAV/SMPTE/ffmpeg
    order (FL, FR, FC, LFE, BL, BR) and folded down as ITU-R BS.775 (centre and surrounds
    at -3 dB, LFE dropped), scaled down only if that would exceed full scale. Any other
    count above two is averaged.
    """
    if channels not in (1, 2):
        raise ValueError(f"channels must be 1 or 2, got {channels}")
    count = wav.shape[0]
    if count == channels:
        return wav
    if count == 1:
        return wav.expand(channels, -1).contiguous()
    if count == 2 or channels == 1 and count != 6:
        mono = wav.mean(dim=0, keepdim=True)
        return mono if channels == 1 else mono.expand(2, -1).contiguous()
    if count == 6:
        front_l, front_r, centre, _lfe, back_l, back_r = wav
        left = front_l + _ITU_WEIGHT * (centre + back_l)
        right = front_r + _ITU_WEIGHT * (centre + back_r)
        out = torch.stack([left, right])
        peak = float(out.abs().max()) if out.numel() else 0.0
        if peak > 1.0:
            out = out / peak
        return out if channels == 2 else out.mean(dim=0, keepdim=True)
    mono = wav.mean(dim=0, keepdim=True)
    return mono.expand(2, -1).contiguous()


def note_downmix(path: Path, count: int, channels: int) -> None:
    """Say (a warning) that `path`'s `count` channels are downmixed to `channels`, and how."""
    if count > 2:
        how = "ITU-R BS.775 5.1 downmix, LFE dropped" if count == 6 else "channels averaged"
        log.warning("%s: %d channels downmixed to %s (%s)", path, count, "stereo" if channels == 2 else "mono", how)


def quantise(frames: np.ndarray, bits: int) -> np.ndarray:
    """float `(samples, channels)` to integers for `bits`-bit PCM: scaled by 2**(bits-1),
    rounded and clamped (so +1.0 becomes the largest code, nothing wraps). 24-bit codes
    sit in the top of int32, as libsndfile expects."""
    if bits == 16:
        scaled = np.rint(np.clip(frames, -1.0, 1.0) * 32768.0)
        return np.clip(scaled, -32768, 32767).astype(np.int16)
    scaled = np.rint(np.clip(frames.astype(np.float64), -1.0, 1.0) * 8388608.0)
    return (np.clip(scaled, -8388608, 8388607).astype(np.int32) << 8).astype(np.int32)
