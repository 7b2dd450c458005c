"""How the old-format fixtures beside this file were made (once, at commit ed3dbe1, before
issue 14 changed the model contract, the bundle loader and the trainer's rooms).

    python tests/data/old-formats/make.py     # from the repository root, at that commit

Kept for the record: run today it would write today's formats, which is not what the
fixtures are for. tests/test_old_formats.py reads them:

- bundle-v1/: a bundle of the registry's models at toy widths (`save_bundle`; the U-Net is
  left out for its size: the shipped default bundle holds one), and expected.safetensors,
  each model's output on a seeded input as that code computed it (the U-Net's too);
- checkpoints-v1/: the original tool's three TorchScript files (`export_original`) of the
  X-UMX, the U-Net and the Demucs;
- run-v1/: a training run folder cut after step 4 of 6 (mid-epoch 2), with expected-losses.jsonl
  and expected-metrics.jsonl, the records of the same run left uninterrupted.
"""

import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # tests/, for fakemusdb and conftest

from conftest import randomize  # noqa: E402
from fakemusdb import make_musdb_hq  # noqa: E402

from danna_sep import bundle as bundles, models  # noqa: E402
from danna_sep.train import config_from_dict, train  # noqa: E402

# name -> (constructor arguments, input shape)
TOY = {
    "xumx": (dict(n_fft=64, hidden_channels=4, max_bins=8, nb_layers=1), (1, 2, 33, 5)),
    "unet_attn": (dict(max_bins=64, k=1, attn_channels=4, attn_d_model=4, attn_heads=2), (1, 2, 70, 7)),
    "demucs_split": (dict(channels=4, depth=2), (1, 2, 700)),
    "umx": (dict(nb_bins=33, hidden_size=4, max_bin=8, nb_layers=1, target="vocals"), (1, 2, 33, 5)),
    "demucs_v1": (dict(channels=4, depth=2), (1, 2, 700)),
}


def example(name: str) -> torch.Tensor:
    shape = TOY[name][1]
    x = torch.randn(shape, generator=torch.Generator().manual_seed(7))
    return x.abs() if len(shape) == 4 else x


def make_bundle() -> None:
    members, expected = {}, {}
    for index, (name, (kwargs, _)) in enumerate(TOY.items()):
        model = randomize(models.build(name, **kwargs), seed=index, scale=0.2).eval()
        with torch.no_grad():
            expected[name] = model(example(name)).contiguous()
        members[name] = bundles.Member(name=name, model=model, blend={s: 0.25 for s in models.SOURCES},
                                       kwargs=dict(kwargs))
    in_bundle = [m for name, m in members.items() if name != "unet_attn"]
    folder = bundles.save_bundle(HERE / "bundle-v1", in_bundle, force=True)
    save_file(expected, str(folder / "expected.safetensors"))
    checkpoints = HERE / "checkpoints-v1"
    shutil.rmtree(checkpoints, ignore_errors=True)
    original = [members[name] for name in ("xumx", "unet_attn", "demucs_split")]
    bundles.export_original(bundles.Bundle(members=original, sources=list(models.SOURCES)), checkpoints)


def run_config(root: Path, max_steps):
    config = json.loads((HERE.parents[2] / "configs" / "tiny" / "demucs_split.json").read_text())
    config["name"] = "old-format run"
    config["model"]["kwargs"] = {"channels": 4, "depth": 2}
    config["data"].update(root=str(root), segment_seconds=0.5, samples_per_track=2)
    config["schedule"] = {"kind": "multistep", "milestones": [1], "gamma": 0.5}
    config["train"].update(epochs=2, steps_per_epoch=3, checkpoint_every_steps=2, keep_best=2,
                           max_steps=max_steps)
    return config_from_dict(config)


def make_run() -> None:
    with tempfile.TemporaryDirectory() as temp:
        root = Path(temp) / "fakemusdb"  # tests/test_train.py's dataset_root
        make_musdb_hq(root, tracks=4, seconds=3.0, subsets=("train",), seed=0)
        whole = Path(temp) / "whole"
        train(run_config(root, None), whole, progress=False)
        cut = HERE / "run-v1"
        shutil.rmtree(cut, ignore_errors=True)
        train(run_config(root, 4), cut, progress=False)
        shutil.copy(whole / "losses.jsonl", HERE / "run-v1-expected-losses.jsonl")
        shutil.copy(whole / "metrics.jsonl", HERE / "run-v1-expected-metrics.jsonl")


if __name__ == "__main__":
    torch.set_num_threads(1)
    make_bundle()
    make_run()
