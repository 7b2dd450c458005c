"""Open-Unmix end to end: the official umxhq files (`TARGET-HASH.pth`) through `separate --umx`,
against `openunmix.Separator`; a bundle member that is a group of single-target models; four
trained targets exported as one group."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import import_reference, randomize
from danna_sep import bundle as bundles
from danna_sep import models
from danna_sep.cli import main
from danna_sep.convert import CheckpointError, umx_files
from danna_sep.engine import EngineOptions, ModelRunner
from danna_sep.models import SOURCES, TargetGroup

CPU = torch.device("cpu")
RATE = 44100
UMXHQ = dict(nb_bins=4096 // 2 + 1, nb_channels=2, hidden_size=512, max_bin=1487)  # openunmix.umxhq_spec's


def save_official(model: torch.nn.Module, folder: Path, target: str) -> Path:
    """`model`'s state dict as the official files are named: TARGET-<first 8 hex digits of its sha256>.pth."""
    staging = folder / f".{target}.part"
    torch.save(model.state_dict(), staging)
    digest = hashlib.sha256(staging.read_bytes()).hexdigest()[:8]
    return staging.rename(folder / f"{target}-{digest}.pth")


@pytest.fixture(scope="module")
def umxhq(tmp_path_factory):
    """Four openunmix.model.OpenUnmix of umxhq's shape with seeded random weights, and the
    folder of their files under the official names."""
    openunmix = import_reference("openunmix.model")
    folder = tmp_path_factory.mktemp("umxhq")
    targets = {}
    for seed, target in enumerate(["vocals", "drums", "bass", "other"]):  # umxhq's order
        targets[target] = randomize(openunmix.OpenUnmix(**UMXHQ), seed=seed).eval()
        save_official(targets[target], folder, target)
    return targets, folder


def music(seconds: float, seed: int = 3) -> torch.Tensor:
    """Stereo `(2, samples)`: a tremolo tone, a bass line and noise. The noise fills every bin:
    where a mixture has next to no energy, float32's rounding in openunmix's Wiener filter
    alone takes its agreement with ours down to about 70 dB (a tone and a bass with noise at
    0.05: vocals 72 dB, the others 90 dB and more)."""
    t = torch.arange(int(seconds * RATE), dtype=torch.float64) / RATE
    noise = torch.randn(2, t.numel(), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    tone = 0.3 * torch.sin(2 * np.pi * 440 * t) * torch.sin(2 * np.pi * 0.7 * t)
    bass = 0.2 * torch.sin(2 * np.pi * 55 * t + torch.tensor([[0.0], [0.5]]))
    return (tone + bass + 0.2 * noise).float()


def sdr(reference: torch.Tensor, estimate: torch.Tensor) -> float:
    return float(10 * torch.log10(reference.double().square().sum() / (reference - estimate).double().square().sum()))


def test_separate_umx_matches_openunmix_separator(umxhq, tmp_path, capsys):
    """umxhq-shaped files under their official names, through `danna-sep separate --umx`, give
    openunmix.Separator's stems (one EM iteration, no residual, n_fft 4096 / hop 1024, 16 kHz
    bandwidth): 7.5 s, so that the second of openunmix's 300-frame Wiener windows is covered."""
    openunmix = import_reference("openunmix.model")
    targets, folder = umxhq
    reference = openunmix.Separator(targets, niter=1, residual=False, n_fft=4096, n_hop=1024, nb_channels=2,
                                    sample_rate=float(RATE), wiener_win_len=300, filterbank="torch").eval()
    wav = music(7.5)
    with torch.no_grad():
        expected = reference(wav.unsqueeze(0))[0]

    song = tmp_path / "song.wav"
    sf.write(song, wav.T.numpy(), RATE, subtype="FLOAT")
    out = tmp_path / "out"
    code = main(["separate", str(song), "--umx", str(folder), "-o", str(out), "--precision", "float32",
                 "--clip", "none", "--bit-depth", "32", "-q"])
    assert code == 0, capsys.readouterr().err
    for index, target in enumerate(targets):
        stem = torch.from_numpy(sf.read(out / "song" / f"{target}.wav", dtype="float32")[0].T)
        assert sdr(expected[index], stem) >= 60, target


def test_a_file_whose_hash_suffix_does_not_match_is_one_line(umxhq, tmp_path, capsys):
    _, official = umxhq
    folder = tmp_path / "files"
    folder.mkdir()
    for path in official.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    damaged = next(folder.glob("drums-*.pth"))
    data = bytearray(damaged.read_bytes())
    data[-100] ^= 1  # one bit of a weight: still a loadable file, another sha256
    damaged.write_bytes(bytes(data))
    song = tmp_path / "song.wav"
    sf.write(song, music(1.0).T.numpy(), RATE)
    out = tmp_path / "out"
    code = main(["separate", str(song), "--umx", str(folder), "-o", str(out), "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert err.splitlines() == [err] and err.startswith(f"danna-sep: {damaged}: sha256 starts "), err
    assert f"not {damaged.stem.split('-')[1]} as its name says" in err
    assert not out.exists() or not any(out.rglob("*.wav"))


def test_umxhq_and_umxl_are_found_by_their_published_names(tmp_path, monkeypatch, capsys):
    """`--umx umxhq` reads umxhq's published names in torch hub's checkpoints folder (where
    `danna-sep download umxhq` puts them); a folder with both sets takes neither."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    with pytest.raises(CheckpointError, match=r"checkpoints: no Open-Unmix bass-2ca1ce51\.pth, drums-69e0ebd4\.pth, "
                                              r".* \(danna-sep download umxl fetches them\)"):
        umx_files("umxl")
    hq = {"bass": "8d85a5bd", "drums": "9619578f", "other": "b52fbbf7", "vocals": "b62c91ce"}
    large = {"bass": "2ca1ce51", "drums": "69e0ebd4", "other": "c8c5b3e6", "vocals": "bccbd9aa"}
    for names in (hq, large):
        for target, digest in names.items():
            (hub / f"{target}-{digest}.pth").write_bytes(b"not the published data")
    assert umx_files("umxhq") == {t: hub / f"{t}-{hq[t]}.pth" for t in SOURCES}
    assert umx_files("umxl") == {t: hub / f"{t}-{large[t]}.pth" for t in SOURCES}
    for target in SOURCES:  # a folder holding one set of published names and a stray file
        (hub / f"{target}-{large[target]}.pth").unlink()
    (hub / "vocals-0123abcd.pth").write_bytes(b"")
    assert umx_files(hub) == {t: hub / f"{t}-{hq[t]}.pth" for t in SOURCES}
    (hub / f"vocals-{hq['vocals']}.pth").unlink()
    with pytest.raises(CheckpointError, match="several Open-Unmix files for"):
        (hub / "vocals-4567abcd.pth").write_bytes(b"")
        umx_files(hub)

    # the published name checked: the data is not umxhq's, and the line says how to fetch it again
    (hub / f"vocals-{hq['vocals']}.pth").write_bytes(b"not the published data")
    song = tmp_path / "song.wav"
    sf.write(song, music(1.0).T.numpy(), RATE)
    code = main(["separate", str(song), "--umx", "umxhq", "-o", str(tmp_path / "out"), "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.splitlines() == [err], err
    assert err.startswith(f"danna-sep: {hub / 'drums-9619578f.pth'}: sha256 starts ")
    assert err.endswith("(a damaged or partial file; danna-sep download umxhq fetches it again)")
    code = main(["separate", str(song), "--umx", "umxhq", "--bundle", "default", "-o", str(tmp_path / "out")])
    assert code == 2 and "--umx and --bundle exclude each other" in capsys.readouterr().err


def _tiny_umx(target: str, seed: int) -> models.SeparationModel:
    return randomize(models.build("umx", hidden_size=8, nb_layers=1, max_bin=32, target=target), seed=seed).eval()


def test_a_group_is_filtered_together_and_saved_as_one_member(tmp_path):
    """A group's magnitudes share one Wiener filter, and the group is one member of a bundle.

    Each target here estimates `gain * |mixture|` (output scale 0, output mean `gain`): the
    spatial covariances are then the same for all, and one filter over the four gives each
    target the share gain**2 / sum(gains**2) of the mixture. A target filtered alone would
    get the mixture's share against its residual instead."""
    gains = [1.0, 2.0, 3.0, 4.0]
    group = TargetGroup([_tiny_umx(t, seed) for seed, t in enumerate(SOURCES)])
    with torch.no_grad():
        for model, gain in zip(group.targets, gains):
            model.output_scale.zero_()
            model.output_mean.fill_(gain)
    wav = music(2.0)
    runner = ModelRunner(group, CPU, EngineOptions(precision="float32"))
    assert runner.sources == list(SOURCES)
    stems = runner(wav)
    assert stems.shape == (4, 2, wav.shape[-1])
    for stem, gain in zip(stems, gains):
        assert sdr(wav * gain**2 / sum(g**2 for g in gains), stem) > 60
    alone = torch.cat([ModelRunner(m, CPU, EngineOptions(precision="float32"))(wav) for m in group.targets])
    assert all(sdr(a, s) < 20 for a, s in zip(alone, stems))

    folder = bundles.save_bundle(tmp_path / "bundle", [bundles.Member(group, {s: 1.0 for s in SOURCES})])
    manifest = json.loads((folder / "bundle.json").read_text())
    assert manifest["format_version"] == 2
    (entry,) = manifest["models"]
    assert entry["name"] == "umx" and sorted(entry) == ["blend", "group", "name"]
    assert [part["kwargs"]["target"] for part in entry["group"]] == list(SOURCES)
    assert [part["weights"] for part in entry["group"]] == [f"00-umx-{s}.safetensors" for s in SOURCES]
    (member,) = bundles.load_bundle(folder).members
    assert isinstance(member.model, TargetGroup) and member.model.sources == list(SOURCES)
    assert torch.equal(ModelRunner(member.model, CPU, EngineOptions(precision="float32"))(wav), stems)

    # a bundle without groups stays version 1, which danna-sep before groups reads
    single = bundles.save_bundle(tmp_path / "single", [bundles.Member(group.targets[0], {"drums": 1.0})])
    assert json.loads((single / "bundle.json").read_text())["format_version"] == 1


@pytest.mark.parametrize("edit,words", [
    (lambda entry: entry["group"][1].update(sha256=5), "models[0].group[1].sha256: expected string, got 5"),
    (lambda entry: entry["group"][2].pop("weights"), "missing key models[0].group[2].weights"),
    (lambda entry: entry.update(group=[]), "models[0].group: lists no models"),
    (lambda entry: entry["group"][3]["kwargs"].update(target="drums"),
     "models[0].group: a target group holds one model per source; drums has several"),
    (lambda entry: entry.update(weights="x"), "unknown key models[0].weights (known in models[0]: name, group"),
])
def test_a_malformed_group_entry_is_one_line_naming_the_key(tmp_path, edit, words):
    group = TargetGroup([_tiny_umx(t, seed) for seed, t in enumerate(SOURCES)])
    folder = bundles.save_bundle(tmp_path / "bundle", [bundles.Member(group, {s: 1.0 for s in SOURCES})])
    manifest = json.loads((folder / "bundle.json").read_text())
    edit(manifest["models"][0])
    (folder / "bundle.json").write_text(json.dumps(manifest))
    with pytest.raises(bundles.BundleError) as error:
        bundles.load_bundle(folder)
    assert str(error.value).startswith(f"{folder / 'bundle.json'}: ") and words in str(error.value)


def test_four_trained_targets_export_as_one_group(tmp_path, capsys):
    """One tiny umx run per source (`danna-sep train`, 2 steps each) -> `danna-sep export` -> one
    group member -> `separate --bundle`, whose stems add up to the mixture."""
    from test_train import TINY, dataset_root

    recipe = json.loads((TINY / "umx.json").read_text())
    runs = []
    for target in ["vocals", "drums", "bass", "other"]:
        recipe["model"]["kwargs"]["target"] = target
        config = tmp_path / f"umx-{target}.json"
        config.write_text(json.dumps(recipe))
        runs.append(tmp_path / "runs" / target)
        assert main(["train", str(config), "--data", str(dataset_root(tmp_path)), "--out", str(runs[-1]),
                     "--max-steps", "2", "-q"]) == 0, capsys.readouterr().err
    out = tmp_path / "bundle"
    assert main(["export", *map(str, runs), "-o", str(out), "-q"]) == 0, capsys.readouterr().err
    manifest = json.loads((out / "bundle.json").read_text())
    (entry,) = manifest["models"]
    assert [part["kwargs"]["target"] for part in entry["group"]] == ["vocals", "drums", "bass", "other"]
    assert entry["blend"] == {s: 1.0 for s in SOURCES} and len(manifest["training"]) == 4

    song = tmp_path / "song.wav"
    wav = music(2.0)
    sf.write(song, wav.T.numpy(), RATE, subtype="FLOAT")
    stems = tmp_path / "stems"
    code = main(["separate", str(song), "--bundle", str(out), "-o", str(stems), "--precision", "float32",
                 "--clip", "none", "--bit-depth", "32", "-q"])
    assert code == 0, capsys.readouterr().err
    total = sum(torch.from_numpy(sf.read(stems / "song" / f"{s}.wav", dtype="float32")[0].T) for s in SOURCES)
    assert sdr(wav, total) > 60

    # two runs of one target make no group
    code = main(["export", str(runs[0]), str(runs[0]), "-o", str(tmp_path / "twice"), "-q"])
    assert code == 1 and "one model per source; vocals has several" in capsys.readouterr().err
