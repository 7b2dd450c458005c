"""The shipped default bundle's output, pinned: a guard against silent numeric drift.

Three seconds of examples/synth-song.mp3 (from 10 s in) go through the default bundle at
float32 on the CPU. The stems, rounded to 16 bits as a WAV file would hold them, are
stored losslessly in tests/data/golden-default.flac (eight channels: each stem's left and
right, in SOURCES order), with the sha256 of each stem's bytes in golden-default.json.

A change meant to leave the numbers alone (moving code, splitting modules) keeps every
checksum. Where a checksum moves, the test reports how far: it still passes when at most
one sample in a thousand moved by one step of 16 bits (a float32 sum taken in another order
lands across a rounding boundary) and the stem stays 70 dB or more from the reference;
anything larger is drift and fails.

After a deliberate change of the numbers, regenerate with
`DANNA_GOLDEN_WRITE=1 python -m pytest tests/test_golden.py` and say why in the commit.
"""

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from danna_sep import SOURCES
from danna_sep.audio import read_audio
from danna_sep.evaluate import sdr_mdx
from danna_sep.separator import Separator, resolve_bundle

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "synth-song.mp3"
GOLDEN = Path(__file__).resolve().parent / "data" / "golden-default.flac"
CHECKSUMS = GOLDEN.with_suffix(".json")
START_SECONDS, SECONDS = 10.0, 3.0
# Drift that a change of summation order can cause, and no more.
MOVED_FRACTION, MOVED_STEPS, MIN_SDR_DB = 1e-3, 1, 70.0


def _rounded_stems() -> dict:
    wav, rate = read_audio(EXAMPLE)
    assert rate == 44100, rate
    clip = wav[:, int(START_SECONDS * rate):int((START_SECONDS + SECONDS) * rate)]
    stems = Separator(resolve_bundle("default"), device="cpu", precision="float32").separate_tensor(clip, rate)
    return {s: np.clip(np.round(stems[s].numpy() * 32768), -32768, 32767).astype(np.int16) for s in SOURCES}


def _sha256(stem: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(stem).astype("<i2").tobytes()).hexdigest()


def _load_golden() -> tuple:
    frames, _ = soundfile.read(GOLDEN, dtype="int16", always_2d=True)
    stems = {s: np.ascontiguousarray(frames[:, 2 * j:2 * j + 2].T) for j, s in enumerate(SOURCES)}
    return stems, json.loads(CHECKSUMS.read_text())["sha256"]


@pytest.fixture(scope="module")
def rounded():
    torch.manual_seed(0)
    return _rounded_stems()


def test_the_default_bundle_gives_the_stored_stems(rounded):
    if os.environ.get("DANNA_GOLDEN_WRITE"):
        GOLDEN.parent.mkdir(exist_ok=True)
        soundfile.write(GOLDEN, np.concatenate([rounded[s] for s in SOURCES]).T, 44100, subtype="PCM_16")
        CHECKSUMS.write_text(json.dumps({"clip": [str(EXAMPLE.name), START_SECONDS, SECONDS],
                                         "sha256": {s: _sha256(rounded[s]) for s in SOURCES}}, indent=1) + "\n")
        pytest.skip(f"wrote {GOLDEN}")
    golden, checksums = _load_golden()
    report = []
    for s in SOURCES:
        reference = golden[s]
        assert _sha256(reference) == checksums[s], f"{GOLDEN} is damaged ({s})"
        now = rounded[s]
        assert now.shape == reference.shape, (s, now.shape, reference.shape)
        if _sha256(now) == checksums[s]:
            continue
        steps = np.abs(now.astype(np.int32) - reference.astype(np.int32))
        sdr = float(sdr_mdx(reference[None].astype(np.float64), now[None].astype(np.float64))[0])
        report.append(f"{s}: {np.mean(steps > 0):.2e} of samples moved, at most {steps.max()} steps, "
                      f"{sdr:.1f} dB from the reference")
        assert np.mean(steps > 0) <= MOVED_FRACTION and steps.max() <= MOVED_STEPS and sdr >= MIN_SDR_DB, report


def test_the_stored_stems_are_music_not_silence():
    """The reference itself is a separation: every stem carries signal, and they sum to
    about the clip (the blend's Wiener filter keeps the mixture)."""
    golden, _ = _load_golden()
    wav, rate = read_audio(EXAMPLE)
    clip = wav[:, int(START_SECONDS * rate):int((START_SECONDS + SECONDS) * rate)].numpy()
    total = sum(golden[s].astype(np.float64) for s in SOURCES) / 32768
    for s in SOURCES:
        assert np.sqrt(np.mean((golden[s] / 32768.0) ** 2)) > 1e-3, s
    assert float(sdr_mdx(clip[None].astype(np.float64), total[None])[0]) > 20
