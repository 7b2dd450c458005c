"""Files written before issue 14 changed the model contract, the bundle loader and the
trainer still load: a bundle, the original tool's TorchScript files and a training run
folder, made by the code of that time (tests/data/old-formats/make.py says how)."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from danna_sep import bundle as bundles
from danna_sep.cli import main
from test_train import dataset_root, read_jsonl

OLD = Path(__file__).resolve().parent / "data" / "old-formats"

# The seeded inputs the expected outputs were computed on: name -> shape.
SHAPES = {
    "xumx": (1, 2, 33, 5),
    "unet_attn": (1, 2, 70, 7),
    "demucs_split": (1, 2, 700),
    "umx": (1, 2, 33, 5),
    "demucs_v1": (1, 2, 700),
}


def example(name: str) -> torch.Tensor:
    x = torch.randn(SHAPES[name], generator=torch.Generator().manual_seed(7))
    return x.abs() if len(SHAPES[name]) == 4 else x


@pytest.fixture(scope="module")
def expected():
    return load_file(str(OLD / "bundle-v1" / "expected.safetensors"))


def test_a_bundle_saved_before_issue_14_loads_and_separates_as_it_did(expected):
    bundle = bundles.load_bundle(OLD / "bundle-v1")
    assert [m.name for m in bundle.members] == ["xumx", "demucs_split", "umx", "demucs_v1"]
    assert bundle.members[2].model.sources == ["vocals"]
    for member in bundle.members:
        assert member.blend == {s: 0.25 for s in ("drums", "bass", "other", "vocals")}
        with torch.no_grad():
            torch.testing.assert_close(member.model(example(member.name)), expected[member.name])


def test_torchscript_files_from_before_issue_14_load_into_our_models(expected):
    folder = OLD / "checkpoints-v1"
    original = bundles.load_original(folder)
    assert [m.name for m in original.members] == ["xumx", "unet_attn", "demucs_split"]
    for member in original.members:
        scripted = torch.jit.load(str(folder / bundles.ORIGINAL_FILES[member.name]), map_location="cpu")
        with torch.no_grad():
            ours = member.model(example(member.name))
            torch.testing.assert_close(ours, expected[member.name])
            torch.testing.assert_close(ours, scripted(example(member.name)))
    # files we exported carry our U-Net's attention padding bias (-1e9), not the original's
    assert original.members[1].model.attn[0].padding_bias == -1e9
    fast = bundles.load_original(folder, fast=True)
    assert [m.name for m in fast.members] == ["unet_attn", "demucs_split"]


def _without_seconds(records: list) -> list:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def _close(ours, theirs, where: str = "") -> None:
    """Records equal, numbers within 1e-4 relative (the run was cut and resumed on another machine)."""
    if isinstance(ours, dict):
        assert isinstance(theirs, dict) and sorted(ours) == sorted(theirs), where
        for key in ours:
            _close(ours[key], theirs[key], f"{where}.{key}")
    elif isinstance(ours, float):
        assert ours == pytest.approx(theirs, rel=1e-4, abs=1e-6), where
    else:
        assert ours == theirs, where


def test_a_run_folder_from_before_issue_14_resumes_and_exports(tmp_path, capsys):
    """The run stopped after step 4 of 6, inside its second epoch; --resume finishes it with
    the losses and validation scores of the uninterrupted run, and it exports as a bundle."""
    run = tmp_path / "run"
    shutil.copytree(OLD / "run-v1", run)
    data = dataset_root(tmp_path)  # the generated tracks the run was trained on
    code = main(["train", str(run / "config.json"), "--data", str(data), "--out", str(run),
                 "--resume", "--max-steps", "6", "-q"])
    assert code == 0, capsys.readouterr().err
    losses = read_jsonl(run / "losses.jsonl")
    expected_losses = read_jsonl(OLD / "run-v1-expected-losses.jsonl")
    assert [r["step"] for r in losses] == list(range(1, 7))
    for ours, theirs in zip(losses, expected_losses):
        _close(ours, theirs, f"step {theirs['step']}")
    metrics = _without_seconds(read_jsonl(run / "metrics.jsonl"))
    expected_metrics = _without_seconds(read_jsonl(OLD / "run-v1-expected-metrics.jsonl"))
    assert [(m["epoch"], m["step"], m["complete"]) for m in metrics] == [(1, 3, True), (2, 4, False), (2, 6, True)]
    for ours, theirs in zip([metrics[0], metrics[2]], expected_metrics):
        _close(ours, theirs, f"epoch {theirs['epoch']}")

    out = tmp_path / "bundle"
    assert main(["export", str(run), "-o", str(out), "-q"]) == 0, capsys.readouterr().err
    exported = bundles.load_bundle(out)
    assert [m.name for m in exported.members] == ["demucs_split"]
    best = json.loads((run / "checkpoints" / "best.json").read_text())
    assert json.loads((out / "bundle.json").read_text())["training"][0]["checkpoint"].endswith(best[0]["file"])
