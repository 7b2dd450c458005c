"""Spectrogram pictures of stems for the web app, drawn block by block from the stem files.

Only a picture: the STFT here is numpy's, sized for the eye (log-spaced rows, one column per
slice of the track), and has nothing to do with the models' STFT (`danna_sep.spectral`).
Memory stays bounded by a block of the file and the picture, whatever the track's length.
"""

from __future__ import annotations

import os
from typing import Iterable, Tuple

import numpy as np

#: The picture's colours, from silence to full scale: control points of a dark-to-light
#: ramp (near-black, violet, red, orange, pale yellow) joined by straight lines in RGB.
COLOUR_STOPS = np.array([
    [0.00, 0, 0, 4],
    [0.25, 80, 18, 123],
    [0.50, 183, 55, 121],
    [0.75, 252, 137, 97],
    [1.00, 252, 253, 191],
], dtype=np.float64)

#: Levels drawn, in dB relative to a full-scale sine: quieter is the first colour.
FLOOR_DB, TOP_DB = -100.0, -10.0
LOWEST_HZ = 30.0


def colour_ramp(levels: np.ndarray) -> np.ndarray:
    """uint8 RGB `(..., 3)` for levels in [0, 1] (clipped) along `COLOUR_STOPS`."""
    levels = np.clip(levels, 0.0, 1.0)
    rgb = [np.interp(levels, COLOUR_STOPS[:, 0], COLOUR_STOPS[:, channel]) for channel in (1, 2, 3)]
    return np.round(np.stack(rgb, axis=-1)).astype(np.uint8)


def band_matrix(bins: int, samplerate: int, rows: int, lowest_hz: float = LOWEST_HZ) -> np.ndarray:
    """`(rows, bins)` weights that average an rfft's power bins into `rows` log-spaced bands
    from `lowest_hz` to Nyquist (row 0 the lowest). A band narrower than a bin takes the bin
    nearest its centre, so that no row of the picture is left empty at low frequencies."""
    nyquist = samplerate / 2
    frequencies = np.linspace(0.0, nyquist, bins)
    edges = np.geomspace(lowest_hz, nyquist, rows + 1)
    weights = np.zeros((rows, bins))
    for row in range(rows):
        inside = (frequencies >= edges[row]) & (frequencies < edges[row + 1])
        if inside.any():
            weights[row, inside] = 1.0 / inside.sum()
        else:
            centre = np.sqrt(edges[row] * edges[row + 1])
            weights[row, int(np.argmin(np.abs(frequencies - centre)))] = 1.0
    return weights


def column_power(blocks: Iterable[np.ndarray], frames: int, columns: int, n_fft: int = 2048) -> np.ndarray:
    """Mean power spectrum `(columns, n_fft // 2 + 1)` of a track read as float32 `(channels, n)`
    blocks, `frames` long in all, cut into `columns` equal slices of time (a slice no STFT
    frame starts in takes its left neighbour's). Power is scaled so that a full-scale sine
    reads 1 (0 dB) in its bin."""
    if frames <= 0 or columns <= 0:
        raise ValueError(f"need frames > 0 and columns > 0, got {frames} and {columns}")
    hop = int(np.clip(frames // columns, 64, n_fft // 2))
    window = np.hanning(n_fft + 1)[:-1].astype(np.float32)  # periodic Hann
    scale = (2.0 / window.sum()) ** 2
    sums = np.zeros((columns, n_fft // 2 + 1))
    counts = np.zeros(columns)
    carry = np.zeros(0, dtype=np.float32)
    started = 0  # STFT frames taken so far: frame f starts at sample f * hop

    def take(signal: np.ndarray) -> np.ndarray:
        nonlocal started
        count = (len(signal) - n_fft) // hop + 1
        if count <= 0:
            return signal
        starts = np.arange(count) * hop
        frames_here = np.lib.stride_tricks.sliding_window_view(signal, n_fft)[starts] * window
        power = np.abs(np.fft.rfft(frames_here, axis=-1)) ** 2 * scale
        column = np.minimum((started + np.arange(count)) * hop * columns // frames, columns - 1)
        np.add.at(sums, column, power)
        np.add.at(counts, column, 1)
        started += count
        return signal[count * hop:]

    for block in blocks:
        carry = take(np.concatenate([carry, block.mean(axis=0, dtype=np.float32)]))
    # The last samples: zeros after them complete the frames that start inside the track.
    if len(carry):
        wanted = -(-len(carry) // hop)  # frames still to start before the track's end
        take(np.concatenate([carry, np.zeros(n_fft + (wanted - 1) * hop - len(carry), dtype=np.float32)]))
    for column in range(columns):
        if counts[column]:
            sums[column] /= counts[column]
        elif column:
            sums[column] = sums[column - 1]
    return sums


def spectrogram_picture(blocks: Iterable[np.ndarray], frames: int, samplerate: int,
                        size: Tuple[int, int] = (960, 160)) -> np.ndarray:
    """uint8 RGB `(height, width, 3)`: time to the right, log frequency upwards, level as colour
    from `FLOOR_DB` to `TOP_DB`."""
    width, height = size
    n_fft = 2048
    power = column_power(blocks, frames, width, n_fft)
    bands = power @ band_matrix(n_fft // 2 + 1, samplerate, height).T  # (width, height)
    decibels = 10.0 * np.log10(bands + 1e-20)
    levels = (decibels - FLOOR_DB) / (TOP_DB - FLOOR_DB)
    return np.ascontiguousarray(colour_ramp(levels.T[::-1]))


def write_spectrogram(stem: "os.PathLike[str] | str", target: "os.PathLike[str] | str",
                      size: Tuple[int, int] = (960, 160)) -> None:
    """Draw the spectrogram of the audio file `stem` into the PNG file `target`."""
    from PIL import Image

    from ..audio import declared_length, open_blocks

    declared = declared_length(stem)
    reader = open_blocks(stem)
    frames = declared[0] if declared is not None else None
    if frames is None:  # no header length (not so for the formats the app writes): read it twice
        frames = sum(block.shape[1] for block in open_blocks(stem))
    picture = spectrogram_picture(reader, frames, reader.samplerate, size)
    Image.fromarray(picture).save(target, format="PNG")
