"""Training end to end on a generated 4-track dataset: the three Danna-Sep recipes (tiny), exact
resume after SIGKILL, DDP under torchrun, clear errors for bad data and configs."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from danna_sep import models
from danna_sep.cli import main
from danna_sep.train import config_from_dict, config_to_dict, load_config
from danna_sep.train.checkpoint import load_checkpoint, state_digest
from fakemusdb import make_musdb_hq

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
TINY = CONFIGS / "tiny"
DANNA = ("x_umx_mwf", "unet_attn", "demucs_split")


def dataset_root(base: Path) -> Path:
    """4 tracks of 3 s in the train subset: 3 for training, 1 with a MUSDB18 validation name."""
    root = base / "fakemusdb"
    if not (root / "train").is_dir():
        make_musdb_hq(root, tracks=4, seconds=3.0, subsets=("train",), seed=0)
    return root


def trained_run(base: Path, name: str) -> Path:
    """The run folder of configs/tiny/NAME trained for its 100 steps (trained once per session)."""
    run = base / "runs" / name
    done = run / "done.json"
    if not done.is_file():
        started = time.monotonic()
        code = main(["train", str(TINY / f"{name}.json"), "--data", str(dataset_root(base)),
                     "--out", str(run), "-q", "--force"])
        assert code == 0
        done.write_text(json.dumps({"seconds": time.monotonic() - started}))
    return run


def read_jsonl(path: Path) -> list:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="session")
def base(tmp_path_factory):
    return tmp_path_factory.getbasetemp()


@pytest.mark.parametrize("name", DANNA)
def test_tiny_recipe_trains_100_steps(base, name):
    run = trained_run(base, name)
    losses = read_jsonl(run / "losses.jsonl")
    assert [r["step"] for r in losses] == list(range(1, 101))
    values = [r["loss"] for r in losses]
    assert all(np.isfinite(values))
    assert np.mean(values[-20:]) < np.mean(values[:20]), "the training loss did not fall"
    if name != "demucs_split":
        assert {"loss_f", "loss_t"} <= set(losses[0])  # the combination loss reports its parts

    metrics = read_jsonl(run / "metrics.jsonl")
    assert [m["epoch"] for m in metrics] == [1, 2]
    for record in metrics:
        assert set(record["valid_sdr"]) == {"drums", "bass", "other", "vocals"}
        assert np.isfinite(record["valid_sdr_mean"])
    # the resolved config: every default filled in, equal to the recipe it came from
    saved = json.loads((run / "config.json").read_text())
    assert saved["train"]["keep_best"] == 2 and "deterministic" in saved["train"]
    assert config_from_dict(saved) == load_config(TINY / f"{name}.json", data_root=saved["data"]["root"])

    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert last["progress"]["global_step"] == 100 and last["progress"]["epoch"] == 2
    assert last["model"]["name"] == load_config(TINY / f"{name}.json").model.name
    best = json.loads((run / "checkpoints" / "best.json").read_text())
    assert 1 <= len(best) <= 2 and best == sorted(best, key=lambda e: -e["valid_sdr"])
    assert all((run / "checkpoints" / e["file"]).is_file() for e in best)
    assert sorted(p.name for p in (run / "checkpoints").glob("best-*.pt")) == sorted(e["file"] for e in best)
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert not list(run.rglob(".*.tmp-*"))  # no temporary file left behind


def test_the_three_recipes_train_fast_enough(base):
    """Acceptance: the three tiny recipes, 100 steps each, within 2 minutes on 2 quiet cores.
    Other work on the machine inflates this; the bound here is loose on purpose."""
    seconds = {name: json.loads((trained_run(base, name) / "done.json").read_text())["seconds"] for name in DANNA}
    print("training seconds:", {k: round(v, 1) for k, v in seconds.items()})
    assert sum(seconds.values()) < 600


def test_sigkill_then_resume_repeats_the_uninterrupted_losses(base, tmp_path):
    reference = read_jsonl(trained_run(base, "demucs_split") / "losses.jsonl")
    run = tmp_path / "killed"
    command = [sys.executable, "-m", "danna_sep.cli", "train", str(TINY / "demucs_split.json"),
               "--data", str(dataset_root(base)), "--out", str(run), "-q"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last = run / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 120
    while not last.is_file():
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "no checkpoint within 2 minutes"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    process.stderr.close()
    assert process.returncode == -signal.SIGKILL

    saved_step = load_checkpoint(last)["progress"]["global_step"]
    assert saved_step % 25 == 0 and saved_step < 100
    stop = saved_step + 20
    assert main(["train", str(TINY / "demucs_split.json"), "--data", str(dataset_root(base)),
                 "--out", str(run), "--resume", "--max-steps", str(stop), "-q"]) == 0
    resumed = read_jsonl(run / "losses.jsonl")
    # lines the killed process wrote after its checkpoint are replaced, not duplicated
    assert [r["step"] for r in resumed] == list(range(1, stop + 1))
    for ours, theirs in zip(resumed[saved_step:stop], reference[saved_step:stop]):
        assert ours["step"] == theirs["step"]
        assert abs(ours["loss"] - theirs["loss"]) <= 1e-6, (ours, theirs)
    assert load_checkpoint(last)["progress"]["global_step"] == stop


def test_resume_refuses_a_changed_recipe_and_train_refuses_to_overwrite(base, tmp_path, capsys):
    run = trained_run(base, "demucs_split")
    changed = json.loads((TINY / "demucs_split.json").read_text())
    changed["optim"]["lr"] = 0.1
    path = tmp_path / "changed.json"
    path.write_text(json.dumps(changed))
    data = str(dataset_root(base))
    assert main(["train", str(path), "--data", data, "--out", str(run), "--resume", "-q"]) == 2
    err = capsys.readouterr().err
    assert "optim.lr" in err and str(path) in err
    assert main(["train", str(TINY / "demucs_split.json"), "--data", data, "--out", str(run), "-q"]) == 1
    assert "holds a run already" in capsys.readouterr().err
    assert main(["train", str(TINY / "demucs_split.json"), "--data", data, "--out", str(tmp_path / "new"),
                 "--resume", "-q"]) == 1
    assert "no checkpoint to resume from" in capsys.readouterr().err


def test_torchrun_ddp_keeps_ranks_in_sync(base, tmp_path):
    data = str(dataset_root(base))
    run = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "danna_sep.cli", "train", str(TINY / "demucs_split.json"), "--data", data,
               "--out", str(run), "--max-steps", "4", "-q"]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = json.loads((run / "ranks.json").read_text())
    assert ranks["world_size"] == 2 and ranks["step"] == 4
    first, second = ranks["weights_sha256"]
    assert first == second, "the two processes hold different weights"
    ddp_state = load_checkpoint(run / "checkpoints" / "last.pt")["state_dict"]
    assert state_digest(ddp_state) == first

    # One process on one shard (the same batch size) ends elsewhere: DDP averaged both shards.
    alone = tmp_path / "alone"
    assert main(["train", str(TINY / "demucs_split.json"), "--data", data, "--out", str(alone),
                 "--max-steps", "4", "-q"]) == 0
    single = load_checkpoint(alone / "checkpoints" / "last.pt")["state_dict"]
    assert state_digest(single) != first
    assert len(read_jsonl(run / "losses.jsonl")) == 4


def test_a_torchrun_process_exits_with_its_code_and_all_its_output(tmp_path):
    # Under torchrun the command skips interpreter teardown (os._exit), which drops
    # whatever Python still buffers: a table piped to another program must still arrive.
    env = dict(os.environ, WORLD_SIZE="2", RANK="0", LOCAL_RANK="0")
    env.pop("PYTHONUNBUFFERED", None)  # a pipe is then block-buffered, as it is by default
    listing = subprocess.run([sys.executable, "-m", "danna_sep.cli", "models"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0, listing.stderr
    assert {line.split()[0] for line in listing.stdout.splitlines()[1:]} == set(models.names())
    missing = tmp_path / "missing.wav"
    failed = subprocess.run([sys.executable, "-m", "danna_sep.cli", "separate", str(missing), "-o",
                             str(tmp_path / "out")], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=120)
    assert failed.returncode == 1
    assert failed.stderr.strip() == f"danna-sep: {missing}: no such file"


# --- bad data and configs: one clear line, before training starts ------------------------

def _bad_dataset(tmp_path, problem):
    root = make_musdb_hq(tmp_path / "bad", tracks=4, seconds=1.0, subsets=("train",), seed=3)
    track = root / "train" / "Fake Artist 01 - Train Song"
    if problem == "missing stem":
        (track / "bass.wav").unlink()
    elif problem == "length":
        data, rate = sf.read(track / "vocals.wav")
        sf.write(track / "vocals.wav", data[: len(data) // 2], rate, subtype="PCM_16")
    elif problem == "rate":
        data, rate = sf.read(track / "drums.wav")
        sf.write(track / "drums.wav", data[::2], rate // 2, subtype="PCM_16")
    return root, track


@pytest.mark.parametrize("problem,words", [("missing stem", "bass"), ("length", ""), ("rate", "")])
def test_bad_tracks_are_named_before_training(tmp_path, capsys, problem, words):
    root, track = _bad_dataset(tmp_path, problem)
    run = tmp_path / "run"
    code = main(["train", str(TINY / "demucs_split.json"), "--data", str(root), "--out", str(run), "-q"])
    err = capsys.readouterr().err
    assert code == 1
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert track.name in err and words in err
    assert not run.exists()


def test_empty_root_is_a_clear_error(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code = main(["train", str(TINY / "unet_attn.json"), "--data", str(empty), "--out", str(tmp_path / "run"), "-q"])
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert str(empty) in err and "no tracks" in err


@pytest.mark.parametrize("edit,words", [
    (lambda c: c["train"].update(warmup=3), ["unknown key train.warmup"]),
    (lambda c: c.update(optimiser={}), ["unknown key optimiser"]),
    (lambda c: c["model"].update(name="wavenet"), ["model.name", "wavenet", "xumx, unet_attn, demucs_split"]),
    (lambda c: c["loss"].update(kind="sdr"), ["loss.kind", '"closs" | "l1"']),
    (lambda c: c["train"].update(batch_size="4"), ["train.batch_size", "expected integer"]),
    (lambda c: c["loss"].update(kind="closs"), ["loss.kind 'closs' does not fit demucs_split"]),
    (lambda c: c["data"].update(augment=["reverb"]), ["data.augment", "reverb"]),
])
def test_bad_configs_are_one_line_usage_errors(tmp_path, capsys, edit, words):
    config = json.loads((TINY / "demucs_split.json").read_text())
    edit(config)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(config))
    root = make_musdb_hq(tmp_path / "data", tracks=4, seconds=1.0, subsets=("train",))
    code = main(["train", str(path), "--data", str(root), "--out", str(tmp_path / "run"), "-q"])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith(f"danna-sep: {path}: ")
    for word in words:
        assert word in err
    assert not (tmp_path / "run" / "losses.jsonl").exists()


def test_unreadable_config_and_missing_file(tmp_path, capsys):
    broken = tmp_path / "broken.json"
    broken.write_text("{\"model\": ")
    assert main(["train", str(broken), "--out", str(tmp_path / "run")]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "nope.json")]) == 2
    assert "no such config file" in capsys.readouterr().err


# --- the shipped configs -------------------------------------------------------------------

@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.json")) + sorted(TINY.glob("*.json")),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_config_loads_and_round_trips(path):
    config = load_config(path)
    assert config.model.name in models.names()
    assert config_from_dict(config_to_dict(config), str(path)) == config
    if path.parent == TINY:
        model = models.build(config.model.name, **config.model.kwargs)
        assert models.parameter_count(model) < 3_000_000  # the U-Net's attention keeps 256 channels


def test_tiny_configs_mirror_the_full_ones():
    full = {p.name for p in CONFIGS.glob("*.json")}
    assert full == {p.name for p in TINY.glob("*.json")}
    assert {"x_umx_mwf.json", "unet_attn.json", "demucs_split.json", "umx.json", "demucs_v1.json"} <= full
    for name in full:
        big, small = load_config(CONFIGS / name), load_config(TINY / name)
        assert (big.model.name, big.loss.kind, big.schedule.kind) == (small.model.name, small.loss.kind, small.schedule.kind)


def test_full_configs_carry_the_published_recipes():
    x = load_config(CONFIGS / "x_umx_mwf.json")
    assert (x.loss.kind, x.loss.mcoeff, x.loss.wiener_iterations) == ("closs", 10.0, 1)
    assert (x.optim.lr, x.optim.weight_decay) == (1e-4, 1e-5)
    assert (x.schedule.kind, x.schedule.milestones, x.schedule.gamma) == ("multistep", [45], 0.3)
    assert (x.train.epochs, x.train.batch_size, x.data.segment_seconds, x.data.samples_per_track) == (70, 4, 6.0, 64)
    assert x.model.kwargs == dict(n_fft=4096, hidden_channels=512, max_bins=1487, nb_channels=2, nb_layers=3)
    u = load_config(CONFIGS / "unet_attn.json")
    assert (u.loss.kind, u.loss.wiener_iterations, u.optim.lr) == ("closs", 0, 2e-4)
    assert (u.train.epochs, u.train.steps_per_epoch, u.train.batch_size) == (700, 200, 16)
    assert int(round(u.data.segment_seconds * 44100)) // 1024 + 1 == 512  # 512 STFT frames
    d = load_config(CONFIGS / "demucs_split.json")
    assert (d.loss.kind, d.optim.lr, d.train.batch_size, d.train.accumulation, d.train.amp) == ("l1", 3e-4, 3, 21, True)
    assert d.data.segment_seconds == 10.0 and d.model.kwargs["channels"] == 48
    o = load_config(CONFIGS / "umx.json")
    assert (o.loss.kind, o.optim.lr, o.schedule.kind, o.model.input_statistics) == ("mse_mag", 1e-3, "plateau", True)
    v = load_config(CONFIGS / "demucs_v1.json")
    assert (v.loss.kind, v.optim.lr, v.data.normalize, v.data.remix) == ("l1", 3e-4, "song", False)
    assert [a if isinstance(a, str) else a["name"] for a in v.data.augment] == ["sign_flip", "channel_swap", "remix"]


def test_inference_never_imports_training():
    code = ("import sys, danna_sep.cli, danna_sep.separator, danna_sep.bundle; danna_sep.cli.build_parser(); "
            "bad = [m for m in sys.modules if m.startswith('danna_sep.train') or m.startswith('tensorboard')]; "
            "print(', '.join(bad)); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr


# --- the other recipes and the pieces they use ----------------------------------------------

def test_umx_input_statistics_match_a_numpy_stft(tmp_path, base):
    from danna_sep.data import find_tracks
    from danna_sep.train.trainer import input_statistics

    tracks = find_tracks(dataset_root(base), subset="train", split="train")
    mean, std = input_statistics(tracks, max_bin=100)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(4096) / 4096)  # periodic Hann
    frames = []
    for track in tracks:
        mix = sum(sf.read(track.path / f"{s}.wav", dtype="float64")[0] for s in ("drums", "bass", "other", "vocals")).T
        padded = np.pad(mix, ((0, 0), (2048, 2048)), mode="reflect")
        count = mix.shape[1] // 1024 + 1
        spec = np.stack([np.fft.rfft(padded[:, i * 1024:i * 1024 + 4096] * window, axis=-1) for i in range(count)], -1)
        frames.append(np.abs(spec).mean(axis=0)[:100])  # channel-averaged magnitude (bins, frames)
    every = np.concatenate(frames, axis=1)
    ref_std = np.maximum(every.std(axis=1), 1e-4 * every.std(axis=1).max())
    np.testing.assert_allclose(mean.numpy(), every.mean(axis=1), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(std.numpy(), ref_std, rtol=1e-3, atol=1e-7)


@pytest.mark.parametrize("name", ["umx", "demucs_v1"])
def test_other_tiny_recipes_run(base, tmp_path, name):
    run = tmp_path / name
    assert main(["train", str(TINY / f"{name}.json"), "--data", str(dataset_root(base)), "--out", str(run),
                 "--max-steps", "6", "-q"]) == 0
    losses = [r["loss"] for r in read_jsonl(run / "losses.jsonl")]
    assert len(losses) == 6 and all(np.isfinite(losses))
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    sources = read_jsonl(run / "metrics.jsonl")[-1]["valid_sdr"]
    if name == "umx":
        assert list(sources) == ["vocals"]
        # input statistics from the training set: -mean and 1/std, not the defaults 0 and 1
        assert state["state_dict"]["input_mean"].abs().max() > 0
        assert not torch.allclose(state["state_dict"]["input_scale"], torch.ones(64))
    else:
        assert list(sources) == ["drums", "bass", "other", "vocals"]


@pytest.mark.filterwarnings("ignore:dropout option adds dropout")
def test_weights_from_an_asteroid_xumx_checkpoint(base, tmp_path):
    from conftest import import_reference, randomize
    from danna_sep.convert import xumx_from_asteroid
    from danna_sep.train.trainer import Trainer

    x_umx = import_reference("asteroid.models.x_umx")
    config = load_config(TINY / "x_umx_mwf.json", data_root=str(dataset_root(base)))
    kwargs = config.model.kwargs
    reference = x_umx.BrokenXUMX(sources=["bass", "drums", "vocals", "other"], window_length=4096, in_chan=4096,
                                 n_hop=1024, hidden_size=kwargs["hidden_channels"], nb_channels=2,
                                 nb_layers=kwargs["nb_layers"], max_bin=kwargs["max_bins"])
    randomize(reference, seed=4)
    path = tmp_path / "pretrained_xumx.pth"
    torch.save({"model_name": "XUMX", "state_dict": reference.state_dict()}, path)
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        trainer = Trainer(config, tmp_path / "run", weights=path, progress=False)
    finally:  # the Trainer switches deterministic algorithms on for the process (train() restores it)
        torch.use_deterministic_algorithms(deterministic)
    _, expected = xumx_from_asteroid(reference.state_dict())
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(value, expected[key]), key
    # a file of the wrong shape is one clear line
    bad = tmp_path / "bad.pth"
    torch.save({"fc1.weight": torch.zeros(3, 3)}, bad)
    code = main(["train", str(TINY / "x_umx_mwf.json"), "--data", str(dataset_root(base)),
                 "--out", str(tmp_path / "run2"), "--weights", str(bad), "-q"])
    assert code == 1


def test_data_loader_workers_draw_the_same_segments(base, tmp_path):
    """Segments are a function of (seed, epoch, index): worker processes change nothing."""
    config = json.loads((TINY / "demucs_split.json").read_text())
    config["train"]["num_workers"] = 2
    path = tmp_path / "workers.json"
    path.write_text(json.dumps(config))
    data = str(dataset_root(base))
    assert main(["train", str(path), "--data", data, "--out", str(tmp_path / "w"), "--max-steps", "3", "-q"]) == 0
    with_workers = [r["loss"] for r in read_jsonl(tmp_path / "w" / "losses.jsonl")]
    without = [r["loss"] for r in read_jsonl(trained_run(base, "demucs_split") / "losses.jsonl")[:3]]
    assert with_workers == without
