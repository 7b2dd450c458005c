"""Demucs v1, the seed report's system, end to end: a tiny run trains, exports to a bundle,
and separates with the shift trick through the command line."""

import json

import numpy as np
import soundfile as sf
import torch

from danna_sep import bundle as bundles
from danna_sep.cli import main
from danna_sep.separator import Separator
from fakemusdb import synth_stems
from test_train import shared_base, trained_run


def test_a_demucs_v1_run_exports_and_separates_with_shifts(tmp_path_factory, tmp_path, capsys):
    run = trained_run(shared_base(tmp_path_factory), "demucs_v1")
    bundle = tmp_path / "bundle"
    assert main(["export", str(run), "-o", str(bundle)]) == 0, capsys.readouterr().err
    manifest = json.loads((bundle / "bundle.json").read_text())
    assert [m["name"] for m in manifest["models"]] == ["demucs_v1"]
    kwargs = manifest["models"][0]["kwargs"]
    assert (kwargs["channels"], kwargs["depth"]) == (4, 4)  # the tiny config's, beside every default

    song = tmp_path / "song.wav"
    stems = synth_stems(3.0, seed=11)
    mixture = sum(stems.values())
    sf.write(song, mixture.T, 44100, subtype="FLOAT")
    out = tmp_path / "stems"
    assert main(["separate", str(song), "--bundle", str(bundle), "-o", str(out), "--device", "cpu",
                 "--shifts", "2", "--clip", "none", "--bit-depth", "32", "--precision", "float32", "-q"]) == 0, capsys.readouterr().err
    written = {p.stem: sf.read(p, dtype="float32")[0].T for p in (out / "song").iterdir()}
    assert sorted(written) == ["bass", "drums", "other", "vocals"]
    assert all(w.shape == (2, 3 * 44100) and np.abs(w).max() > 0 for w in written.values())

    # The shift trick: the command's stems are those of the API with two shifts, and differ
    # from one pass without any (the shifted passes are averaged).
    wav = torch.from_numpy(mixture.astype(np.float32))
    loaded = bundles.load_bundle(bundle)
    shifted = Separator(loaded, device="cpu", shifts=2, precision="float32").separate_tensor(wav, 44100)
    plain = Separator(loaded, device="cpu", shifts=0, precision="float32").separate_tensor(wav, 44100)
    for stem, data in written.items():
        assert np.allclose(data, shifted[stem].numpy(), atol=1e-6), stem
    assert not torch.allclose(shifted["bass"], plain["bass"], atol=1e-5)
