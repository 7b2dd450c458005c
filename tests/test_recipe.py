"""recipes/default.sh, the default bundle's one command, run whole at toy size, then again."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from danna_sep.train.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]

# The recipe's configs with tiny widths and a few steps; everything else as shipped.
SMALL = {
    "x_umx": {"hidden_channels": 8, "max_bins": 64, "nb_layers": 1},
    "unet_attn": {"max_bins": 64, "k": 2, "attn_channels": 8, "attn_d_model": 8, "attn_heads": 2},
    "demucs_split": {"channels": 4, "depth": 4},
}


def _small_configs(folder: Path, source: Path = ROOT / "configs" / "default") -> Path:
    folder.mkdir()
    for name, kwargs in SMALL.items():
        if not (source / f"{name}.json").is_file():  # stage 3 tunes X-UMX and the U-Net alone
            continue
        config = json.loads((source / f"{name}.json").read_text())
        config["model"]["kwargs"].update(kwargs)
        config["data"].update(segment_seconds=1.0, samples_per_track=4, valid_engine_segment=2.0)
        config["train"].update(epochs=1, steps_per_epoch=3, batch_size=2, checkpoint_every_steps=2)
        config["schedule"]["milestones"] = [1]
        (folder / f"{name}.json").write_text(json.dumps(config))
    return folder


def test_default_recipe_runs_small_and_resumes(tmp_path):
    pytest.importorskip("fluidsynth")
    configs = _small_configs(tmp_path / "configs")
    _small_configs(configs / "finetune", ROOT / "configs" / "default" / "finetune")
    _small_configs(configs / "closs", ROOT / "configs" / "default" / "closs")
    _small_configs(configs / "closs2", ROOT / "configs" / "default" / "closs2")
    _small_configs(configs / "closs3", ROOT / "configs" / "default" / "closs3")
    realval = tmp_path / "realval" / "clip"  # one real-clip folder in the layout of shared/realval
    realval.mkdir(parents=True)
    rng = np.random.default_rng(0)
    voice, backing = rng.standard_normal((2, 16000 * 2)) * 0.1
    for name, audio in (("vocals", voice), ("accompaniment", backing), ("mixture", voice + backing)):
        sf.write(str(realval / f"{name}.wav"), audio, 16000, subtype="FLOAT")
    env = {**os.environ, "CONFIGS": str(configs), "TRACKS": "5",
           "SECONDS_PER_TRACK": "3", "QUALITY_TRACKS": "1", "REALVAL": str(realval.parent),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    work, bundle = tmp_path / "work", tmp_path / "bundle"
    command = ["bash", str(ROOT / "recipes" / "default.sh"), str(work), str(bundle)]
    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    manifest = json.loads((bundle / "bundle.json").read_text())
    assert [m["name"] for m in manifest["models"]] == ["xumx", "unet_attn", "demucs_split"]
    assert manifest["blend_fit"]["tracks"] == ["synth-0-0004"]  # the corpus' one test track
    quality = json.loads((work / "quality.json").read_text())
    assert quality["seed"] == 1 and len(quality["tracks"]) == 1
    assert list(quality["sdr"])[3:] == ["blend", "oracle IRM2 (ceiling)", "mixture (floor)"]
    assert quality["real"]["clips"] == ["clip"]
    assert list(quality["real"]["sdr"])[3:] == ["blend", "oracle IRM2 (ceiling)", "mixture (floor)"]
    steps = {name: (work / "runs" / name / "losses.jsonl").read_text().count("\n") for name in SMALL}
    assert steps == {name: 3 for name in SMALL}
    # Stage 2 starts from the stage-1 export; its bundle holds the weights halfway between the two.
    stage1 = json.loads((work / "stage1" / "bundle.json").read_text())
    stage2 = json.loads((work / "stage2" / "bundle.json").read_text())
    assert [m["name"] for m in stage1["models"]] == ["xumx", "unet_attn", "demucs_split"]
    tuned = {name: (work / "finetune" / name / "losses.jsonl").read_text().count("\n") for name in SMALL}
    assert tuned == {name: 3 for name in SMALL}
    for index, name in enumerate(SMALL):
        start = load_file(str(work / "stage1" / stage1["models"][index]["weights"]))
        middle = load_file(str(work / "stage2" / stage2["models"][index]["weights"]))
        assert set(start) == set(middle)
        assert any(not torch.equal(start[k], middle[k]) for k in start), f"{name}: stage 2 changed nothing"
        tuned_state = load_checkpoint(stage2["training"][index]["checkpoint"])["state_dict"]
        assert stage2["training"][index]["interpolated"]["alpha"] == 0.5
        for key in start:
            if start[key].is_floating_point():
                halfway = (start[key].double() + tuned_state[key].double()) / 2
                torch.testing.assert_close(middle[key].double(), halfway, rtol=1e-6, atol=1e-7)
    # Stage 3 tunes the members with a closs config (the X-UMX) from the stage-2 bundle with the
    # combination loss, then again in each later round with a config (closs2, closs3), each
    # from the round before's best checkpoint; a member is exported from its last round at its
    # share against stage 2 (X-UMX 1: as trained); the others are carried over to the bit.
    default = ROOT / "configs" / "default"
    rounds = {stage: [name for name in SMALL if (default / stage / f"{name}.json").is_file()]
              for stage in ("closs", "closs2", "closs3")}
    assert rounds == {"closs": ["x_umx"], "closs2": ["x_umx"], "closs3": ["x_umx"]}
    third = rounds["closs"]
    trained_steps = {stage: {name: (work / stage / name / "losses.jsonl").read_text().count("\n") for name in names}
                     for stage, names in rounds.items()}
    assert trained_steps == {stage: {name: 3 for name in names} for stage, names in rounds.items()}
    for stage, before in (("closs2", "closs"), ("closs3", "closs2")):
        log = (work / stage / "x_umx.log").read_text()
        assert f"{before}/x_umx/checkpoints/best-epoch0001.pt: loaded into xumx" in log, log[-2000:]
    shares = {"x_umx": 1.0}
    for index, name in enumerate(SMALL):
        record = manifest["training"][index]
        if name in third:
            last_round = [stage for stage, names in rounds.items() if name in names][-1]
            assert record["config"]["loss"]["kind"] == "closs" and f"/{last_round}/" in record["checkpoint"]
            assert record["interpolated"]["alpha"] == shares[name]
            final = load_file(str(bundle / manifest["models"][index]["weights"]))
            start = load_file(str(work / "stage2" / stage2["models"][index]["weights"]))
            trained = load_checkpoint(record["checkpoint"])["state_dict"]
            if shares[name] == 1.0:
                assert all(torch.equal(final[key], trained[key]) for key in final)
            for key in final:
                if final[key].is_floating_point():
                    share = (1 - shares[name]) * start[key].double() + shares[name] * trained[key].double()
                    torch.testing.assert_close(final[key].double(), share, rtol=1e-6, atol=1e-7)
        else:
            assert manifest["models"][index]["sha256"] == stage2["models"][index]["sha256"]
            assert record["checkpoint"] == stage2["training"][index]["checkpoint"]

    # Run again: the corpus is complete, the runs are finished (none starts again), the bundle
    # and the quality tables are kept.
    stamp = (bundle / "bundle.json").stat().st_mtime_ns
    measured = (work / "quality.json").stat().st_mtime_ns
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "exists: kept" in second.stderr
    assert second.stderr.count("finished: kept") == 3 + 3 + sum(map(len, rounds.values())), second.stderr[-3000:]
    assert "resumed" not in second.stderr and "Traceback" not in second.stderr
    assert (bundle / "bundle.json").stat().st_mtime_ns == stamp
    assert (work / "quality.json").stat().st_mtime_ns == measured
    assert {name: (work / "runs" / name / "losses.jsonl").read_text().count("\n") for name in SMALL} == steps
    assert {name: (work / "finetune" / name / "losses.jsonl").read_text().count("\n") for name in SMALL} == tuned
    assert {stage: {name: (work / stage / name / "losses.jsonl").read_text().count("\n") for name in names}
            for stage, names in rounds.items()} == trained_steps
