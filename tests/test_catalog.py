"""`danna-sep models` and what it lists: shipped bundles, `$DANNA_BUNDLES`, `$DANNA_CHECKPOINTS`,
the registry's architectures; bundle names found the same way by `--bundle NAME`."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from danna_sep import catalog
from danna_sep.cli import main

REPO = Path(__file__).resolve().parents[1]


def fake_bundle(folder: Path, members=("xumx", "demucs_split")) -> Path:
    """A bundle folder whose manifest names `members` (no weights: listing never loads them)."""
    folder.mkdir(parents=True)
    manifest = {"format": "danna-sep-bundle", "format_version": 1, "sources": ["drums", "bass", "other", "vocals"],
                "models": [{"name": name, "weights": f"{i:02d}-{name}.safetensors"} for i, name in enumerate(members)]}
    (folder / "bundle.json").write_text(json.dumps(manifest))
    return folder


@pytest.fixture
def bundle_env(tmp_path, monkeypatch):
    """$DANNA_BUNDLES = a folder, one that is not there, and another folder, with bundles."""
    first, second, missing = tmp_path / "first", tmp_path / "second", tmp_path / "missing"
    fake_bundle(first / "vocal-only", ["umx"])
    fake_bundle(first / "default", ["xumx"])  # shadowed by the shipped default
    fake_bundle(second / "mine")
    (second / "not-a-bundle").mkdir()
    (second / "broken").mkdir()
    (second / "broken" / "bundle.json").write_text("{\"models\": ")
    monkeypatch.setenv("DANNA_BUNDLES", f"{first}:{missing}:{second}")
    monkeypatch.delenv("DANNA_CHECKPOINTS", raising=False)
    return first, second, missing


def test_models_json_lists_shipped_and_env_bundles_and_the_architectures(bundle_env, capsys):
    first, second, missing = bundle_env
    assert main(["models", "--json"]) == 0
    captured = capsys.readouterr()
    listing = json.loads(captured.out)
    bundles = [(b["name"], b["origin"], b["path"], b["models"], b["shadowed"], b["problem"] is not None)
               for b in listing["bundles"]]
    assert bundles == [
        ("default", "shipped", str(catalog.PRETRAINED / "default"), ["xumx", "unet_attn", "demucs_split"], False,
         False),
        ("default", "$DANNA_BUNDLES", str(first / "default"), ["xumx"], True, False),
        ("vocal-only", "$DANNA_BUNDLES", str(first / "vocal-only"), ["umx"], False, False),
        ("broken", "$DANNA_BUNDLES", str(second / "broken"), [], False, True),
        ("mine", "$DANNA_BUNDLES", str(second / "mine"), ["xumx", "demucs_split"], False, False),
    ]
    assert "unreadable bundle.json" in listing["bundles"][3]["problem"]
    assert [a["name"] for a in listing["architectures"]] == list(catalog.ARCHITECTURES)
    assert listing["architectures"][0] == {"name": "xumx", "network": "X-UMX (CrossNet-Open-Unmix)",
                                           "input": "magnitude", "output": "mask"}
    assert listing["checkpoints"] is None
    assert captured.err == f"danna-sep: $DANNA_BUNDLES: {missing}: no such folder\n"


def test_models_table_says_the_same(bundle_env, capsys):
    first, second, _ = bundle_env
    assert main(["models"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("bundles")
    rows = {line.split()[0]: line for line in out[2:7]}
    assert set(rows) == {"default", "vocal-only", "broken", "mine"}
    assert "xumx, unet_attn, demucs_split" in out[2] and str(catalog.PRETRAINED / "default") in out[2]
    assert f"{first / 'default'} (shadowed by the one above)" in out[3]
    assert "unreadable bundle.json" in rows["broken"] and "xumx, demucs_split" in rows["mine"]
    names = [line.split()[0] for line in out[out.index(next(l for l in out if l.startswith("architectures"))) + 2:]]
    assert names == list(catalog.ARCHITECTURES)


def test_models_names_the_checkpoints_folder_of_DANNA_CHECKPOINTS(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "danna-sep-checkpoints"
    folder.mkdir()
    (folder / "unet_attention.pth").write_bytes(b"")
    monkeypatch.setenv("DANNA_CHECKPOINTS", str(folder))
    monkeypatch.delenv("DANNA_BUNDLES", raising=False)
    assert main(["models", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["checkpoints"] == {
        "env": "DANNA_CHECKPOINTS", "path": str(folder), "exists": True, "files": ["unet_attention.pth"]}
    assert main(["models"]) == 0
    assert f"$DANNA_CHECKPOINTS): {folder}: unet_attention.pth" in capsys.readouterr().out
    monkeypatch.setenv("DANNA_CHECKPOINTS", str(tmp_path / "nowhere"))
    assert main(["models"]) == 0
    assert f"{tmp_path / 'nowhere'}: no such folder" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["models"], ["models", "--json"], ["separate", "--help"], ["train", "--help"]])
def test_listing_and_help_never_import_torch(argv):
    """What makes `danna-sep models` and `--help` answer in a fraction of a second."""
    code = (f"import sys\nfrom danna_sep.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO TORCH', file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.stderr.strip().splitlines()[-1] == "NO TORCH", result.stderr


def test_a_bundle_name_is_looked_up_shipped_first_then_in_DANNA_BUNDLES(bundle_env):
    first, second, _ = bundle_env
    assert catalog.find_bundle("mine") == second / "mine"
    assert catalog.find_bundle("vocal-only") == first / "vocal-only"
    assert catalog.find_bundle("default") == catalog.PRETRAINED / "default"
    assert catalog.find_bundle("nothing") is None
    assert catalog.find_bundle(f"{second.name}/mine") is None  # a path is not a name
    assert catalog.find_bundle("..") is None


def test_separate_bundle_name_from_DANNA_BUNDLES(tmp_path, monkeypatch, capsys):
    import numpy as np
    import soundfile as sf

    from danna_sep import bundle as bundles
    from test_bundle import tiny_members

    bundles.save_bundle(tmp_path / "store" / "tiny", tiny_members(seed=3))
    monkeypatch.setenv("DANNA_BUNDLES", str(tmp_path / "store"))
    source = tmp_path / "in.wav"
    sf.write(source, 0.1 * np.random.default_rng(0).standard_normal((44100, 2)), 44100)
    common = ["separate", str(source), "--device", "cpu", "-q", "-o", str(tmp_path / "out")]
    assert main(common + ["--bundle", "tiny"]) == 0, capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "out" / "in").iterdir()) == [
        "bass.wav", "drums.wav", "other.wav", "vocals.wav"]
    assert main(common + ["--bundle", "tiny2"]) == 2  # a usage error, found before any model loads
    err = capsys.readouterr().err
    assert "--bundle tiny2: no such bundle folder or name" in err
    assert len(err.strip().splitlines()) == 1


def test_DANNA_CHECKPOINTS_is_used_when_no_bundle_is_named(tmp_path, monkeypatch, capsys):
    """As for the original tool, $DANNA_CHECKPOINTS names its checkpoints folder: separate uses
    it unless --bundle or --checkpoints says otherwise."""
    import numpy as np
    import soundfile as sf

    from danna_sep import bundle as bundles
    from danna_sep.separator import resolve_bundle
    from test_bundle import tiny_members

    tiny = bundles.save_bundle(tmp_path / "tiny", tiny_members(seed=4))
    checkpoints = bundles.export_original(bundles.load_bundle(tiny), tmp_path / "danna-sep-checkpoints")
    source = tmp_path / "in.wav"
    sf.write(source, 0.1 * np.random.default_rng(1).standard_normal((30000, 2)), 44100, subtype="FLOAT")
    common = ["separate", str(source), "--device", "cpu", "-q", "--precision", "float32", "--bit-depth", "32",
              "--clip", "none"]

    def stems(out):
        return {p.name: sf.read(p)[0] for p in sorted((tmp_path / out / "in").iterdir())}

    assert main(common + ["-o", str(tmp_path / "explicit"), "--checkpoints", str(checkpoints)]) == 0
    monkeypatch.setenv("DANNA_CHECKPOINTS", str(checkpoints))
    assert resolve_bundle().origin == str(checkpoints)
    assert [m.name for m in resolve_bundle(fast=True).members] == ["unet_attn", "demucs_split"]
    assert main(common + ["-o", str(tmp_path / "env")]) == 0, capsys.readouterr().err
    assert stems("env").keys() == stems("explicit").keys()
    for name, data in stems("env").items():
        np.testing.assert_array_equal(data, stems("explicit")[name], err_msg=name)

    # the variable points at a broken folder: the default fails naming it, --bundle is unaffected
    monkeypatch.setenv("DANNA_CHECKPOINTS", str(tmp_path / "nowhere"))
    assert resolve_bundle(str(tiny)).origin == str(tiny)
    assert main(common + ["-o", str(tmp_path / "bundle"), "--bundle", str(tiny)]) == 0
    capsys.readouterr()
    assert main(common + ["-o", str(tmp_path / "default")]) != 0
    assert f"{tmp_path / 'nowhere'}: checkpoint folder not found" in capsys.readouterr().err


def test_fast_takes_the_checkpoints_of_DANNA_CHECKPOINTS(tmp_path, monkeypatch, capsys):
    import numpy as np
    import soundfile as sf

    from danna_sep import bundle as bundles
    from test_bundle import tiny_members

    tiny = bundles.save_bundle(tmp_path / "tiny", tiny_members(seed=5, fast=True))
    checkpoints = bundles.export_original(bundles.load_bundle(tiny), tmp_path / "danna-sep-checkpoints")
    source = tmp_path / "in.wav"
    sf.write(source, 0.1 * np.random.default_rng(2).standard_normal((30000, 2)), 44100)
    common = ["separate", str(source), "--device", "cpu", "-q", "--fast"]
    assert main(common + ["-o", str(tmp_path / "none")]) == 2  # no checkpoints anywhere
    monkeypatch.setenv("DANNA_CHECKPOINTS", str(checkpoints))
    assert main(common + ["-o", str(tmp_path / "bundle"), "--bundle", str(tiny)]) == 2  # --bundle wins: no --fast
    err = capsys.readouterr().err
    assert err.count("danna-sep: --fast picks members of the original checkpoints: give --checkpoints too") == 2
    assert main(common + ["-o", str(tmp_path / "env")]) == 0, capsys.readouterr().err
    assert len(list((tmp_path / "env" / "in").iterdir())) == 4
