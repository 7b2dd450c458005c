"""Export: trained runs -> our bundle format (and the original TorchScript files) -> `danna-sep separate`."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from danna_sep import bundle as bundles
from danna_sep import models
from danna_sep.cli import main
from danna_sep.train.checkpoint import load_checkpoint
from fakemusdb import make_musdb_hq, synth_stems
from test_train import DANNA, TINY, dataset_root, shared_base, trained_run


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a loaded 2-core machine, 2 spinning threads make separation ~10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = shared_base(tmp_path_factory)
    return {name: trained_run(base, name) for name in DANNA}


@pytest.fixture(scope="module")
def song(tmp_path_factory):
    path = tmp_path_factory.mktemp("songs") / "song.wav"
    stems = synth_stems(4.0, seed=77)
    sf.write(path, sum(stems.values()).T, 44100, subtype="PCM_16")
    return path


def _best_state(run):
    entry = json.loads((run / "checkpoints" / "best.json").read_text())[0]
    return load_checkpoint(run / "checkpoints" / entry["file"]), entry


def test_export_bundle_then_separate(runs, song, tmp_path, capsys):
    out = tmp_path / "bundle"
    assert main(["export", *(str(runs[n]) for n in DANNA), "-o", str(out)]) == 0
    manifest = json.loads((out / "bundle.json").read_text())
    assert [m["name"] for m in manifest["models"]] == ["xumx", "unet_attn", "demucs_split"]
    for entry, name, training in zip(manifest["models"], DANNA, manifest["training"]):
        config = json.loads((TINY / f"{name}.json").read_text())
        # constructor arguments travel with the weights, every default filled in
        with torch.device("meta"):
            assert entry["kwargs"] == models.build(entry["name"], **config["model"]["kwargs"]).config
        assert entry["kwargs"].items() >= config["model"]["kwargs"].items()
        assert entry["blend"] == bundles.PAPER_BLEND[entry["name"]]  # Danna-Sep's table by default
        assert training["config"]["model"] == {**config["model"], "input_statistics": config["model"].get("input_statistics", False)}
        assert training["checkpoint"].endswith(".pt") and "best-epoch" in training["checkpoint"]
        assert set(training["valid_sdr"]) == {"drums", "bass", "other", "vocals", "mean"}
    loaded = bundles.load_bundle(out)
    for member, name in zip(loaded.members, DANNA):
        best, _ = _best_state(runs[name])
        for key, value in member.model.state_dict().items():
            assert torch.equal(value, best["state_dict"][key]), (name, key)

    stems = tmp_path / "stems"
    code = main(["separate", str(song), "--bundle", str(out), "-o", str(stems), "--device", "cpu", "-q"])
    assert code == 0, capsys.readouterr().err
    written = sorted(p.name for p in (stems / "song").iterdir())
    assert written == ["bass.wav", "drums.wav", "other.wav", "vocals.wav"]
    data, rate = sf.read(stems / "song" / "bass.wav")
    assert rate == 44100 and data.shape == (4 * 44100, 2) and np.abs(data).max() > 0


def test_export_torchscript_loads_with_checkpoints(runs, song, tmp_path, capsys):
    out = tmp_path / "original"
    assert main(["export", *(str(runs[n]) for n in DANNA), "-o", str(out), "--torchscript"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["demucs_4_decoders.pth", "unet_attention.pth", "xumx_mwf.pth"]
    # the original calling convention: magnitude (1, 2, 2049, F) -> masks (1, 4, 2, 2049, F); waveform -> (1, 4, 2, T)
    xumx = torch.jit.load(str(out / "xumx_mwf.pth"))
    mag = torch.rand(1, 2, 2049, 30, generator=torch.Generator().manual_seed(0))
    best, _ = _best_state(runs["x_umx_mwf"])
    ours = models.build("xumx", **best["model"]["kwargs"])
    ours.load_state_dict(best["state_dict"])
    ours.eval()
    with torch.no_grad():
        torch.testing.assert_close(xumx(mag), ours(mag))
    demucs = torch.jit.load(str(out / "demucs_4_decoders.pth"))
    with torch.no_grad():
        assert demucs(torch.randn(1, 2, 5000)).shape == (1, 4, 2, 5000)

    stems = tmp_path / "stems"
    code = main(["separate", str(song), "--checkpoints", str(out), "-o", str(stems), "--device", "cpu", "-q"])
    assert code == 0, capsys.readouterr().err
    assert len(list((stems / "song").iterdir())) == 4
    # existing files are kept unless --force
    assert main(["export", str(runs["unet_attn"]), "-o", str(out), "--torchscript"]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["export", str(runs["unet_attn"]), "-o", str(out), "--torchscript", "--force"]) == 0


def test_blend_options(runs, tmp_path, capsys):
    two = [str(runs["unet_attn"]), str(runs["demucs_split"])]
    # paper: the "fast" table for U-Net + Demucs
    assert main(["export", *two, "-o", str(tmp_path / "fast"), "--blend", "paper"]) == 0
    manifest = json.loads((tmp_path / "fast" / "bundle.json").read_text())
    assert [m["blend"] for m in manifest["models"]] == [bundles.FAST_BLEND["unet_attn"], bundles.FAST_BLEND["demucs_split"]]
    assert main(["export", *two, "-o", str(tmp_path / "equal"), "--blend", "equal"]) == 0
    manifest = json.loads((tmp_path / "equal" / "bundle.json").read_text())
    assert all(w == 0.5 for m in manifest["models"] for w in m["blend"].values())
    table = {"unet_attn": {"vocals": 1.0, "other": 0.3}, "demucs_split": {"drums": 1, "bass": 1, "other": 0.7}}
    path = tmp_path / "blend.json"
    path.write_text(json.dumps(table))
    assert main(["export", *two, "-o", str(tmp_path / "custom"), "--blend", str(path)]) == 0
    manifest = json.loads((tmp_path / "custom" / "bundle.json").read_text())
    assert manifest["models"][0]["blend"] == {"drums": 0.0, "bass": 0.0, "other": 0.3, "vocals": 1.0}
    # a single checkpoint file works as well as a run folder
    best = sorted((runs["demucs_split"] / "checkpoints").glob("best-*.pt"))[0]
    assert main(["export", str(best), "-o", str(tmp_path / "single")]) == 0
    capsys.readouterr()

    bad = [
        (["--blend", json.dumps({"unet_attn": {"piano": 1}})], 2, "unknown source 'piano'"),
        (["--blend", json.dumps({"xumx": {"vocals": 1}})], 2, "not one of the models"),
        (["--blend", "louder"], 2, "--blend louder"),
    ]
    for extra, code, words in bad:
        assert main(["export", *two, "-o", str(tmp_path / "bad"), *extra]) == code
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()
    assert main(["export", *two, "-o", str(tmp_path / "custom")]) == 1  # exists: needs --force
    assert "already exists" in capsys.readouterr().err
    empty = tmp_path / "not-a-run"
    empty.mkdir()
    assert main(["export", str(empty), "-o", str(tmp_path / "x")]) == 1
    assert "no checkpoint" in capsys.readouterr().err


def test_bundle_member_weights_start_a_training(runs, tmp_path):
    from danna_sep.train import load_config
    from danna_sep.train.trainer import Trainer

    """--weights takes a bundle member's .safetensors file or one of our checkpoints."""
    out = tmp_path / "bundle"
    assert main(["export", str(runs["unet_attn"]), "-o", str(out)]) == 0
    best, entry = _best_state(runs["unet_attn"])
    config = load_config(TINY / "unet_attn.json", data_root=str(dataset_root(runs["unet_attn"].parent.parent)))
    for index, weights in enumerate([next(out.glob("*.safetensors")), runs["unet_attn"] / "checkpoints" / entry["file"]]):
        deterministic = torch.are_deterministic_algorithms_enabled()
        try:
            trainer = Trainer(config, tmp_path / f"run{index}", weights=weights, progress=False)
        finally:  # the Trainer switches deterministic algorithms on for the process (train() restores it)
            torch.use_deterministic_algorithms(deterministic)
        for key, value in trainer.model.state_dict().items():
            assert torch.equal(value, best["state_dict"][key]), (weights, key)


def test_export_fit_chooses_weights_on_held_out_tracks(runs, tmp_path, capsys):
    held_out = tmp_path / "held-out"
    make_musdb_hq(held_out, tracks=2, seconds=3.0, subsets=("test",), seed=11)
    three = [str(runs[name]) for name in DANNA]
    out = tmp_path / "fitted"
    assert main(["export", *three, "-o", str(out), "--fit", str(held_out), "-q"]) == 0
    err = capsys.readouterr().err
    manifest = json.loads((out / "bundle.json").read_text())
    fit = manifest["blend_fit"]
    assert len(fit["tracks"]) == 2 and "blend fitted on 2 tracks" in err
    for source in manifest["sources"]:
        weights = [m["blend"][source] for m in manifest["models"]]
        assert sum(weights) == pytest.approx(1.0) and min(weights) >= 0
        # the chosen weights are at least as good as each model alone (each is a grid point)
        assert fit["blend_sdr"][source] >= max(alone[source] for alone in fit["member_sdr"]) - 1e-9
    # the bundle separates
    assert bundles.load_bundle(out).members[0].blend == manifest["models"][0]["blend"]

    bad = [
        (["--fit", str(held_out), "--blend", "equal"], 2, "--fit chooses the blend weights"),
        (["--fit", str(tmp_path / "nowhere")], 1, "no such folder"),
        (["--fit", str(held_out), "--fit-tracks", "0"], 2, "--fit-tracks"),
    ]
    for extra, code, words in bad:
        assert main(["export", *three, "-o", str(tmp_path / "bad"), *extra]) == code
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()


def test_interpolate_moves_weights_towards_an_anchor_bundle(runs, tmp_path, capsys):
    """--interpolate ANCHOR --alpha A: every float weight is (1 - A) * anchor + A * trained."""
    run = str(runs["unet_attn"])
    plain = tmp_path / "plain"
    assert main(["export", run, "-o", str(plain), "-q"]) == 0
    trained = bundles.load_bundle(plain).members[0]
    generator = torch.Generator().manual_seed(5)
    anchor_state = {key: (torch.randn(value.shape, generator=generator).to(value.dtype)
                          if value.is_floating_point() else value)
                    for key, value in trained.model.state_dict().items()}
    anchor_model = type(trained.model)(**trained.model.config)
    anchor_model.load_state_dict(anchor_state)
    anchor = tmp_path / "anchor"
    bundles.save_bundle(anchor, [bundles.Member(anchor_model, trained.blend)])
    best = trained.model.state_dict()
    for alpha in (0.0, 0.25, 1.0):
        out = tmp_path / f"mixed-{alpha}"
        assert main(["export", run, "-o", str(out), "--interpolate", str(anchor), "--alpha", str(alpha), "-q"]) == 0
        mixed = bundles.load_bundle(out).members[0].model.state_dict()
        floats = 0
        for key, value in mixed.items():
            if not value.is_floating_point():
                assert torch.equal(value, best[key])
                continue
            floats += 1
            expected = (1 - alpha) * anchor_state[key].double() + alpha * best[key].double()
            if alpha in (0.0, 1.0):  # either end is that end's weights to the bit
                assert torch.equal(value, (anchor_state if alpha == 0.0 else best)[key]), key
            torch.testing.assert_close(value.double(), expected, rtol=1e-6, atol=1e-7)
        assert floats > 10
        training = json.loads((out / "bundle.json").read_text())["training"][0]
        assert training["interpolated"]["alpha"] == alpha
    capsys.readouterr()

    two = tmp_path / "two"
    assert main(["export", run, str(runs["demucs_split"]), "-o", str(two), "-q"]) == 0
    capsys.readouterr()
    bad = [
        ([run, "--alpha", "0.5"], 2, "--alpha"),
        ([run, "--interpolate", str(anchor), "--alpha", "1.5"], 2, "--alpha"),
        ([run, "--interpolate", str(anchor), "--alpha", "0.5,0.2"], 2, "2 shares for 1 models"),
        ([run, "--interpolate", str(anchor), "--alpha", "0.5,"], 2, "--alpha"),
        ([run, "--interpolate", str(two)], 1, "2 models, but 1"),
        ([str(runs["demucs_split"]), "--interpolate", str(anchor)], 1, "cannot be interpolated"),
        ([run, "--interpolate", str(anchor), "--torchscript"], 2, "--torchscript"),
    ]
    for args, code, words in bad:
        assert main(["export", *args, "-o", str(tmp_path / "bad")]) == code, args
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "bad").exists()


def test_a_bundle_member_is_carried_into_a_new_bundle(runs, tmp_path, capsys):
    """One model's weights file of a bundle is an export input: the model as the bundle holds
    it (sha256 checked) with the bundle's training record for it, so a stage that fine-tunes
    some members keeps the others; interpolating towards that bundle leaves it as it was."""
    exported = tmp_path / "exported"
    assert main(["export", *(str(runs[n]) for n in DANNA), "-o", str(exported), "-q"]) == 0
    # the bundle a later stage starts from: its X-UMX moved away from the run's weights
    members = bundles.load_bundle(exported).members
    generator = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for value in members[0].model.parameters():
            value.add_(0.01 * torch.randn(value.shape, generator=generator))
    first = tmp_path / "first"
    bundles.save_bundle(first, members, extra={"training": json.loads((exported / "bundle.json").read_text())["training"]})
    old = json.loads((first / "bundle.json").read_text())
    files = [entry["weights"] for entry in old["models"]]
    later = tmp_path / "later"
    assert main(["export", str(runs[DANNA[0]]), str(runs[DANNA[1]]), str(first / files[2]), "-o", str(later),
                 "--interpolate", str(first), "--alpha", "0.5", "-q"]) == 0
    new = json.loads((later / "bundle.json").read_text())
    assert [m["name"] for m in new["models"]] == ["xumx", "unet_attn", "demucs_split"]
    assert new["models"][2]["sha256"] == old["models"][2]["sha256"]  # the same weights, to the bit
    assert new["training"][2] == {**old["training"][2], "bundle": str(first / files[2])}
    assert "interpolated" not in new["training"][2]
    assert new["training"][0]["interpolated"] == {"anchor": str(first), "alpha": 0.5}
    assert "interpolated" not in new["training"][1]  # the run's U-Net is the anchor's: nothing moved
    capsys.readouterr()
    (tmp_path / "stray.safetensors").write_bytes(b"x")
    (first / "other.safetensors").write_bytes(b"x")
    for path, words in [(first / "other.safetensors", "not one of the weights files"),
                        (tmp_path / "stray.safetensors", "stray.safetensors")]:
        assert main(["export", str(path), "-o", str(tmp_path / "bad")]) == 1, path
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "bad").exists()


def test_interpolate_takes_one_share_per_model(runs, tmp_path, capsys):
    """--alpha A,B: the first model moves to (1 - A) * anchor + A * trained, the second with B."""
    inputs = [str(runs["unet_attn"]), str(runs["demucs_split"])]
    plain = tmp_path / "plain"
    assert main(["export", *inputs, "-o", str(plain), "-q"]) == 0
    trained = bundles.load_bundle(plain).members
    generator = torch.Generator().manual_seed(6)
    anchors = []
    for member in trained:
        model = type(member.model)(**member.model.config)
        model.load_state_dict({key: (torch.randn(value.shape, generator=generator).to(value.dtype)
                                     if value.is_floating_point() else value)
                               for key, value in member.model.state_dict().items()})
        anchors.append(bundles.Member(model, member.blend))
    anchor = tmp_path / "anchor"
    bundles.save_bundle(anchor, anchors)
    out = tmp_path / "mixed"
    assert main(["export", *inputs, "-o", str(out), "--interpolate", str(anchor), "--alpha", "0.25,1", "-q"]) == 0
    mixed = bundles.load_bundle(out).members
    for index, alpha in enumerate((0.25, 1.0)):
        ours, start, end = (m.state_dict() for m in (mixed[index].model, anchors[index].model, trained[index].model))
        for key, value in ours.items():
            if value.is_floating_point():
                expected = (1 - alpha) * start[key].double() + alpha * end[key].double()
                torch.testing.assert_close(value.double(), expected, rtol=1e-6, atol=1e-7)
    training = json.loads((out / "bundle.json").read_text())["training"]
    assert [record["interpolated"]["alpha"] for record in training] == [0.25, 1.0]
    capsys.readouterr()
