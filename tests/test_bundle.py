"""Bundles: our format (manifest + safetensors + sha256) and the original tool's TorchScript folder."""

import errno
import json
import os
from pathlib import Path

import pytest
import torch

from danna_sep import bundle as bundles
from danna_sep import models
from danna_sep.bundle import Bundle, BundleError, Member
from danna_sep.engine import EngineOptions
from danna_sep.separator import Separator
from conftest import randomize

TINY = {
    "xumx": dict(hidden_channels=8, max_bins=64, nb_layers=1),
    "unet_attn": dict(max_bins=128, k=2, original_padding_bias=True),
    "demucs_split": dict(channels=4, depth=4),
}


def tiny_members(seed=0, fast=False):
    table = bundles.FAST_BLEND if fast else bundles.PAPER_BLEND
    members = []
    for index, (name, blend) in enumerate(table.items()):
        torch.manual_seed(seed + index)
        model = randomize(models.build(name, **TINY[name]), seed=seed + index, scale=0.05).eval()
        members.append(Member(model, dict(blend)))
    return members


@pytest.fixture(scope="module")
def saved_bundle(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bundles") / "tiny"
    bundles.save_bundle(folder, tiny_members())
    return folder


def test_save_and_load_round_trip(saved_bundle):
    manifest = json.loads((saved_bundle / "bundle.json").read_text())
    assert manifest["format"] == "danna-sep-bundle"
    assert [m["name"] for m in manifest["models"]] == ["xumx", "unet_attn", "demucs_split"]
    for entry in manifest["models"]:
        assert len(entry["sha256"]) == 64
        assert abs(sum(entry["blend"].values()) - sum(bundles.PAPER_BLEND[entry["name"]].values())) < 1e-9
    loaded = bundles.load_bundle(saved_bundle)
    for original, member in zip(tiny_members(), loaded.members):
        for key, value in original.model.state_dict().items():
            assert torch.equal(member.model.state_dict()[key], value)
    assert not any(p.name.startswith(".") for p in saved_bundle.parent.iterdir())
    # readable by others, like any installed file (mkdtemp alone would make it owner-only)
    umask = os.umask(0)
    os.umask(umask)
    assert saved_bundle.stat().st_mode & 0o777 == 0o777 & ~umask
    assert all(p.stat().st_mode & 0o777 == 0o666 & ~umask for p in saved_bundle.iterdir())


def test_existing_bundle_not_overwritten_without_force(saved_bundle):
    with pytest.raises(BundleError, match="already exists"):
        bundles.save_bundle(saved_bundle, tiny_members())


def _copy(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _failing_save(monkeypatch, failure, seed):
    """Members whose saving fails at the second member, and the exception it raises.

    "unknown model": the second member names no registered model (the first member's
    weights are already written when that is found). "disk full" / "interrupted": the
    second weights file is written half, then the write raises.
    """
    members = tiny_members(seed=seed)
    if failure == "unknown model":
        class Unregistered(models.SeparationModel):
            name = "no_such_model"

            def __init__(self):
                super().__init__()
                self.linear = torch.nn.Linear(2, 2)

        members.insert(1, Member(Unregistered(), {"vocals": 1.0}))
        return members, KeyError
    import safetensors.torch

    real_save = safetensors.torch.save_file
    calls = []

    def save_file(tensors, filename, *args, **kwargs):
        calls.append(filename)
        real_save(tensors, filename, *args, **kwargs)
        if len(calls) == 2:
            os.truncate(filename, os.path.getsize(filename) // 2)
            if failure == "disk full":
                raise OSError(errno.ENOSPC, "No space left on device", filename)
            raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    return members, OSError if failure == "disk full" else KeyboardInterrupt


@pytest.mark.parametrize("failure", ["unknown model", "disk full", "interrupted"])
def test_a_failed_save_leaves_no_bundle_and_no_staging_folder(tmp_path, monkeypatch, failure):
    members, expected = _failing_save(monkeypatch, failure, seed=0)
    parent = tmp_path / "bundles"
    parent.mkdir()
    with pytest.raises(expected):
        bundles.save_bundle(parent / "new", members)
    assert list(parent.iterdir()) == []  # neither the target nor a hidden staging folder


@pytest.mark.parametrize("failure", ["unknown model", "disk full", "interrupted"])
def test_a_failed_forced_save_keeps_the_old_bundle(saved_bundle, tmp_path, monkeypatch, failure):
    old = _copy(saved_bundle, tmp_path / "old")
    before = {p.name: p.read_bytes() for p in old.iterdir()}
    members, expected = _failing_save(monkeypatch, failure, seed=1)  # other weights than old's
    with pytest.raises(expected):
        bundles.save_bundle(old, members, force=True)
    assert [p.name for p in tmp_path.iterdir()] == ["old"]  # no staging folder left beside it
    assert {p.name: p.read_bytes() for p in old.iterdir()} == before
    loaded = bundles.load_bundle(old)
    for original, member in zip(tiny_members(seed=0), loaded.members):
        for key, value in original.model.state_dict().items():
            assert torch.equal(member.model.state_dict()[key], value)


def test_tampered_truncated_and_missing_weights_are_named(saved_bundle, tmp_path):
    weights = sorted(p.name for p in saved_bundle.glob("*.safetensors"))
    tampered = _copy(saved_bundle, tmp_path / "tampered")
    data = bytearray((tampered / weights[0]).read_bytes())
    data[-1] ^= 0xFF
    (tampered / weights[0]).write_bytes(bytes(data))
    with pytest.raises(BundleError, match=f"{weights[0]}: sha256 does not match"):
        bundles.load_bundle(tampered)

    truncated = _copy(saved_bundle, tmp_path / "truncated")
    (truncated / weights[1]).write_bytes((truncated / weights[1]).read_bytes()[:100])
    with pytest.raises(BundleError, match=f"{weights[1]}: sha256 does not match"):
        bundles.load_bundle(truncated)

    missing = _copy(saved_bundle, tmp_path / "missing")
    (missing / weights[2]).unlink()
    with pytest.raises(BundleError, match=f"{weights[2]}: weights file missing"):
        bundles.load_bundle(missing)

    with pytest.raises(BundleError, match="not a bundle"):
        bundles.load_bundle(tmp_path)


def test_separator_blend_equals_weighted_members(saved_bundle):
    loaded = bundles.load_bundle(saved_bundle)
    options = dict(device="cpu", segment=0.5, overlap=0.25, blend_bins="all")  # every weight on every bin
    separator = Separator(loaded, **options)
    gen = torch.Generator().manual_seed(3)
    wav = torch.randn(2, 30_000, generator=gen) * 0.2
    before = wav.clone()
    stems = separator.separate_tensor(wav)
    assert torch.equal(wav, before)
    assert list(stems) == ["drums", "bass", "other", "vocals"]
    expected = {s: torch.zeros(2, 30_000) for s in stems}
    for member in loaded.members:
        alone = Separator(Bundle([Member(member.model, {s: 1.0 for s in stems})], list(stems)), **options)
        single = alone.separate_tensor(wav)
        for s in stems:
            expected[s] += member.blend[s] * single[s]
    for s in stems:
        assert stems[s].shape == (2, 30_000)
        assert (stems[s] - expected[s]).abs().max().item() < 1e-5


def test_bfloat16_converts_only_a_bundle_the_separator_loaded(saved_bundle):
    given = bundles.load_bundle(saved_bundle)
    Separator(given, device="cpu", precision="bfloat16")
    assert all(p.dtype == torch.float32 for m in given.members for p in m.model.parameters())
    loaded = Separator(saved_bundle, device="cpu", precision="bfloat16")
    assert all(p.dtype == torch.bfloat16 for m in loaded.bundle.members for p in m.model.parameters())


def test_original_checkpoints_give_the_same_stems_as_the_eager_bundle(saved_bundle, tmp_path):
    loaded = bundles.load_bundle(saved_bundle)
    folder = bundles.export_original(loaded, tmp_path / "checkpoints")
    assert sorted(p.name for p in folder.iterdir()) == sorted(bundles.ORIGINAL_FILES.values())
    original = bundles.load_original(folder)
    wav = torch.randn(2, 25_000, generator=torch.Generator().manual_seed(4)) * 0.2
    # the U-Net loaded from an original file keeps the original's attention padding bias
    assert original.members[1].model.config["original_padding_bias"] is True
    # float32: TorchScript files run bfloat16 through autocast, eager models as bfloat16 copies
    eager = Separator(loaded, device="cpu", segment=0.5, precision="float32").separate_tensor(wav)
    from_files = Separator(checkpoints=folder, device="cpu", segment=0.5, precision="float32").separate_tensor(wav)
    for s in eager:
        assert (eager[s] - from_files[s]).abs().max().item() < 1e-5

    fast = bundles.load_original(folder, fast=True)
    assert [m.name for m in fast.members] == ["unet_attn", "demucs_split"]
    (folder / "xumx_mwf.pth").unlink()
    with pytest.raises(BundleError, match="xumx_mwf.pth: checkpoint missing"):
        bundles.load_original(folder)
    (folder / "unet_attention.pth").write_text("garbage")
    with pytest.raises(BundleError, match="unet_attention.pth: not a readable TorchScript file"):
        bundles.load_original(folder, fast=True)


def test_the_default_bundle_ships_and_loads():
    from danna_sep.separator import PRETRAINED

    folder = PRETRAINED / "default"
    size = sum(f.stat().st_size for f in folder.iterdir())
    assert size <= 60 * 2**20
    separator = Separator(device="cpu")  # checks every declared sha256 on the way
    assert [m.name for m in separator.bundle.members] == ["xumx", "unet_attn", "demucs_split"]
    for source in separator.sources:
        assert sum(m.blend[source] for m in separator.bundle.members) == pytest.approx(1.0)


def test_the_default_bundle_was_trained_with_the_shipped_configs():
    """`recipes/default.sh` must rebuild what ships: each member's training record (the
    resolved config its last checkpoint carried) equals its last stage's config in
    everything but its wording (name, description) and the corpus path: the config of its
    last stage-3 round (configs/default/closs3/, closs2/ or closs/) for the members stage 3
    tunes (their weights at the recipe's default ALPHA3_NAME towards stage 2), else
    configs/default/finetune/ (halfway towards stage 1, the recipe's default ALPHA)."""
    from danna_sep.separator import PRETRAINED
    from danna_sep.train.config import config_from_dict, differences, load_config

    manifest = json.loads((PRETRAINED / "default" / "bundle.json").read_text())
    configs = Path(__file__).resolve().parents[1] / "configs" / "default"
    recipe = (Path(__file__).resolve().parents[1] / "recipes" / "default.sh").read_text()
    assert len(manifest["training"]) == 3
    stages = set()
    for record, name in zip(manifest["training"], ["x_umx", "unet_attn", "demucs_split"]):
        third = (configs / "closs" / f"{name}.json").is_file()
        stages.add(third)
        last = next(stage for stage in ("closs3", "closs2", "closs", "finetune")
                    if (configs / stage / f"{name}.json").is_file())
        assert third or last == "finetune", f"{name}: a second stage-3 round without a first"
        shipped = load_config(configs / last / f"{name}.json")
        trained = config_from_dict(record["config"])
        assert set(differences(shipped, trained)) <= {"name", "description", "data.root"}, name
        assert 1 <= record["progress"]["epoch"] <= shipped.train.epochs  # the best epoch by validation
        alpha = record["interpolated"]["alpha"] if "interpolated" in record else 1
        if third:  # each stage-3 member has its share, which ALPHA3 overrides
            variable = f"ALPHA3_{name.upper()}"
            assert f'{variable.lower()}="${{{variable}:-${{ALPHA3:-{alpha:g}}}}}"' in recipe, name
        else:
            assert f'alpha="${{ALPHA:-{alpha:g}}}"' in recipe, name
    assert stages == {True, False}  # stage 3 tuned some members and carried the others


def test_default_bundle_missing_is_one_clear_error(tmp_path, monkeypatch):
    from danna_sep import catalog

    monkeypatch.setattr(catalog, "PRETRAINED", tmp_path)
    monkeypatch.delenv("DANNA_BUNDLES", raising=False)
    with pytest.raises(BundleError, match="no default bundle installed"):
        Separator(device="cpu")


def test_xumx_onnx_runs_through_onnxruntime(saved_bundle, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    loaded = bundles.load_bundle(saved_bundle)
    folder = bundles.export_original(loaded, tmp_path / "checkpoints", onnx=True)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["xumx.onnx", "unet_attention.pth", "demucs_4_decoders.pth"])
    original = bundles.load_original(folder)
    assert isinstance(original.members[0].model, bundles.OnnxModel)
    assert original.members[0].name == "xumx" and original.members[0].model.output_kind == "mask"
    mag = torch.rand(1, 2, 2049, 37, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (original.members[0].model(mag) - loaded.members[0].model(mag)).abs().max().item() < 1e-4
    wav = torch.randn(2, 25_000, generator=torch.Generator().manual_seed(4)) * 0.2
    # float32: TorchScript files run bfloat16 through autocast, eager models as bfloat16 copies
    eager = Separator(loaded, device="cpu", segment=0.5, precision="float32").separate_tensor(wav)
    from_files = Separator(checkpoints=folder, device="cpu", segment=0.5, precision="float32").separate_tensor(wav)
    for s in eager:
        assert (eager[s] - from_files[s]).abs().max().item() < 1e-4
    (folder / "xumx.onnx").write_bytes(b"not onnx")
    with pytest.raises(BundleError, match="xumx.onnx: not a readable ONNX file"):
        bundles.load_original(folder)


def test_exported_unet_keeps_its_attention_padding_bias(tmp_path):
    """A U-Net we trained (bias -1e9) comes back from TorchScript with -1e9, the original's files with -1e-9."""
    model = models.build("unet_attn", max_bins=128, k=2).eval()
    folder = tmp_path / "ts"
    folder.mkdir()
    torch.jit.script(model).save(str(folder / "unet_attention.pth"))
    scripted = torch.jit.load(str(folder / "unet_attention.pth"))
    kwargs = models.get("unet_attn").original_kwargs(dict(scripted.state_dict()), scripted)
    assert kwargs["original_padding_bias"] is False
    assert bundles.load_original_file("unet_attn", folder / "unet_attention.pth").config == model.config


def test_loading_builds_on_meta_but_keeps_state_outside_the_state_dict(tmp_path, monkeypatch):
    from danna_sep import models

    class WithWindow(models.SeparationModel):
        name = "with_window"

        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(3, 3)
            self.register_buffer("window", torch.hann_window(8), persistent=False)

    monkeypatch.setitem(models._REGISTRY, "with_window", WithWindow)
    torch.manual_seed(0)
    original = WithWindow()
    folder = bundles.save_bundle(tmp_path / "b", [Member(original, {"vocals": 1.0})])
    loaded = bundles.load_bundle(folder).members[0].model
    assert torch.equal(loaded.window, torch.hann_window(8))
    assert torch.equal(loaded.linear.weight, original.linear.weight)
    assert not any(t.is_meta for t in [*loaded.parameters(), *loaded.buffers()])


# --- bundle.json is checked key by key (danna_sep.schema) ------------------------------------

def _edited(tmp_path, edit):
    """A copy of the old-format fixture bundle with its manifest edited by `edit(manifest)`."""
    folder = tmp_path / "edited"
    folder.mkdir()
    source = Path(__file__).resolve().parent / "data" / "old-formats" / "bundle-v1"
    for path in source.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    manifest = json.loads((folder / "bundle.json").read_text())
    edited = edit(manifest)
    (folder / "bundle.json").write_text(edited if isinstance(edited, str) else json.dumps(manifest))
    return folder


def _set(path, value):
    def edit(manifest):
        *parents, last = path
        target = manifest
        for key in parents:
            target = target[key]
        if value is KeyError:
            del target[last]
        else:
            target[last] = value
    return edit


@pytest.mark.parametrize("edit,words", [
    (_set(["models", 1, "sha256"], 5), "models[1].sha256: expected string, got 5"),
    (_set(["models", 0, "weights"], KeyError), "missing key models[0].weights"),
    (_set(["models", 2, "blnd"], {}), "unknown key models[2].blnd (known in models[2]: name, kwargs, weights"),
    (_set(["models", 3, "name"], "demucs_v2"), "models[3].name: unknown model 'demucs_v2'; known: xumx"),
    (_set(["models", 0, "blend", "vox"], 0.5), "models[0].blend.vox: not one of the bundle's sources"),
    (_set(["models", 0, "blend", "bass"], "half"), "models[0].blend.bass: expected number, got \"half\""),
    (_set(["models", 1, "kwargs", "chanels"], 4), "models[1].kwargs do not fit demucs_split: "),
    (_set(["models", 0, "kwargs"], [1, 2]), "models[0].kwargs: expected object, got [1, 2]"),
    (_set(["models"], []), "lists no models"),
    (_set(["samplerate"], 48000), "samplerate: 48000, but the models work at 44100 Hz"),
    (_set(["format_version"], 3), "format_version: 3 is newer than this danna-sep reads (2)"),
    (_set(["sources"], ["drums", "piano"]), "sources: ['drums', 'piano'] is not a selection of"),
    (_set(["format"], "something-else"), "not a danna-sep bundle manifest"),
    (lambda manifest: '{"format": "danna-sep-bundle",\n "models": [}', "not valid JSON (line 2, column 13"),
])
def test_a_malformed_manifest_is_one_line_naming_the_key(tmp_path, capsys, edit, words):
    import soundfile as sf
    from danna_sep.cli import main

    folder = _edited(tmp_path, edit)
    song = tmp_path / "song.wav"
    sf.write(str(song), torch.zeros(4410, 2).numpy(), 44100)
    out = tmp_path / "out"
    code = main(["separate", str(song), "--bundle", str(folder), "-o", str(out), "-q"])
    err = capsys.readouterr().err
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"danna-sep: {folder / 'bundle.json'}: "), err
    assert words in lines[0]
    assert not out.exists() or not any(out.rglob("*.wav"))
