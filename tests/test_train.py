"""Training end to end on a generated 4-track dataset: the three Danna-Sep recipes (tiny), exact
resume after SIGKILL, DDP under torchrun, clear errors for bad data and configs."""

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from filelock import FileLock

from danna_sep import models
from danna_sep.cli import main
from danna_sep.train import config_from_dict, config_to_dict, load_config
from danna_sep.train.checkpoint import load_checkpoint, state_digest
from fakemusdb import make_musdb_hq

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
TINY = CONFIGS / "tiny"
DANNA = ("x_umx_mwf", "unet_attn", "demucs_split")


def shared_base(tmp_path_factory) -> Path:
    """A folder every pytest-xdist worker of this session shares (the workers' basetemps sit
    in it), so that the tiny runs are trained once per session, not once per worker."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def _locked(path: Path) -> FileLock:
    """A lock on `path` among the processes of this session (the file beside it)."""
    return FileLock(str(path.parent / f"{path.name}.lock"))


def dataset_root(base: Path) -> Path:
    """4 tracks of 3 s in the train subset: 3 for training, 1 with a MUSDB18 validation name."""
    root = base / "fakemusdb"
    with _locked(root):
        if not (root / "train").is_dir():
            make_musdb_hq(root, tracks=4, seconds=3.0, subsets=("train",), seed=0)
    return root


def _cpu_seconds() -> float:
    """CPU time of this process (all its threads) and of its finished children."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def trained_run(base: Path, name: str) -> Path:
    """The run folder of configs/tiny/NAME trained for its 100 steps (trained once per session)."""
    run = base / "runs" / name
    done = run / "done.json"
    run.parent.mkdir(parents=True, exist_ok=True)
    with _locked(run):  # another worker may be training it: wait for that run
        if not done.is_file():
            started, cpu_started = time.monotonic(), _cpu_seconds()
            code = main(["train", str(TINY / f"{name}.json"), "--data", str(dataset_root(base)),
                         "--out", str(run), "-q", "--force"])
            assert code == 0
            done.write_text(json.dumps({"seconds": time.monotonic() - started,
                                        "cpu_seconds": _cpu_seconds() - cpu_started}))
    return run


def read_jsonl(path: Path) -> list:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="session")
def base(tmp_path_factory):
    return shared_base(tmp_path_factory)


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
    summary = json.loads((run / "summary.json").read_text())  # what recipes/default.sh checks
    assert summary["finished"] is True and summary["steps"] == 100 and summary["epochs_done"] == 2
    assert summary["valid_sdr"] == {**metrics[-1]["valid_sdr"], "mean": metrics[-1]["valid_sdr_mean"]}
    assert summary["best_checkpoint"] == json.loads((run / "checkpoints" / "best.json").read_text())[0]["file"]
    assert last["model"]["name"] == load_config(TINY / f"{name}.json").model.name
    best = json.loads((run / "checkpoints" / "best.json").read_text())
    assert 1 <= len(best) <= 2 and best == sorted(best, key=lambda e: -e["valid_sdr"])
    assert all((run / "checkpoints" / e["file"]).is_file() for e in best)
    assert sorted(p.name for p in (run / "checkpoints").glob("best-*.pt")) == sorted(e["file"] for e in best)
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert not list(run.rglob(".*.tmp-*"))  # no temporary file left behind


def test_the_three_recipes_train_fast_enough(base):
    """Acceptance: the three tiny recipes, 100 steps each, within 2 minutes on 2 cores. CPU
    time, which other work on the machine does not inflate: at most 2 x 120 s."""
    cpu = {name: json.loads((trained_run(base, name) / "done.json").read_text())["cpu_seconds"] for name in DANNA}
    print("training CPU seconds:", {k: round(v, 1) for k, v in cpu.items()})
    assert sum(cpu.values()) < 2 * 120


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
    assert not (run / "summary.json").exists()  # a killed run never says it ended

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
    summary = json.loads((run / "summary.json").read_text())  # stopped by --max-steps: not finished
    assert summary["finished"] is False and summary["steps"] == stop


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
    assert json.loads((run / "summary.json").read_text())["finished"]  # a refused resume changes nothing
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
    listing = subprocess.run([sys.executable, "-m", "danna_sep.cli", "models", "--json"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0, listing.stderr
    assert [a["name"] for a in json.loads(listing.stdout)["architectures"]] == models.names()
    missing = tmp_path / "missing.wav"
    failed = subprocess.run([sys.executable, "-m", "danna_sep.cli", "separate", str(missing), "-o",
                             str(tmp_path / "out")], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=120)
    # A WORLD_SIZE without torchrun's rendezvous address: the ranks could never meet, said
    # in the one line of a usage error before any work.
    assert failed.returncode == 2
    assert failed.stderr.strip() == ("danna-sep: WORLD_SIZE is 2 but MASTER_ADDR and MASTER_PORT are not set: "
                                     "start the processes with torchrun")


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


@pytest.mark.parametrize("problem,words", [
    ("missing stem", ": missing stem bass.wav"),
    ("length", ": stems have different lengths ("),
    ("rate", ": stems have different sample rates (drums.wav 22050 Hz"),
])
def test_bad_tracks_are_named_before_training(tmp_path, capsys, problem, words):
    root, track = _bad_dataset(tmp_path, problem)
    run = tmp_path / "run"
    code = main(["train", str(TINY / "demucs_split.json"), "--data", str(root), "--out", str(run), "-q"])
    err = capsys.readouterr().err
    assert code == 1
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith(f"danna-sep: {track}{words}"), err
    assert problem != "length" or "vocals.wav 22050 samples" in err
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


# --- any stems folder: validation tracks held out of train/ when none are listed ------------

def plain_root(base: Path) -> Path:
    """train/ (4 tracks) + test/ (2) of 1.5 s with plain names: no valid.txt, not MUSDB18."""
    root = base / "plainstems"
    if not (root / "test").is_dir():
        make_musdb_hq(root, tracks=4, seconds=1.5, subsets=("train",), seed=5, musdb_names=False)
        make_musdb_hq(root, tracks=2, seconds=1.5, subsets=("test",), seed=6)
    return root


def _train_watching_the_tracks(monkeypatch, argv) -> tuple:
    """`main(argv)`'s exit code, and the track names it trained on and validated on."""
    import danna_sep.data as data

    seen = {}

    class Remix(data.RemixSegments):
        def __init__(self, tracks, *args, **kwargs):
            seen["train"] = [t.name for t in tracks]
            super().__init__(tracks, *args, **kwargs)

    class Chunks(data.FixedChunks):
        def __init__(self, tracks, *args, **kwargs):
            seen["valid"] = [t.name for t in tracks]
            super().__init__(tracks, *args, **kwargs)

    monkeypatch.setattr(data, "RemixSegments", Remix)
    monkeypatch.setattr(data, "FixedChunks", Chunks)
    return main(argv), seen.get("train"), seen.get("valid")


@pytest.mark.parametrize("config", sorted(TINY.glob("*.json")), ids=lambda p: p.stem)
def test_every_tiny_recipe_trains_on_a_plain_stems_folder(base, tmp_path, capsys, monkeypatch, config):
    """Acceptance: no edit to the recipe; one track of train/ is held out, named, validated
    on and never trained on."""
    from danna_sep.data.tracks import held_out

    root = plain_root(base)
    names = sorted(p.name for p in (root / "train").iterdir())
    run = tmp_path / "run"
    code, trained, validated = _train_watching_the_tracks(
        monkeypatch, ["train", str(config), "--data", str(root), "--out", str(run), "--max-steps", "1"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert validated == held_out(names, 1) and len(validated) == 1
    assert sorted(trained) == sorted(set(names) - set(validated))
    assert f"validating on 1 track(s) (held out of {root / 'train'}" in err and validated[0] in err
    assert np.isfinite(read_jsonl(run / "metrics.jsonl")[-1]["valid_sdr_mean"])


def test_held_out_tracks_are_not_trained_on_even_when_the_recipe_trains_on_every_track(
        base, tmp_path, capsys, monkeypatch):
    config = json.loads((TINY / "x_umx_mwf.json").read_text())
    config["data"]["split"] = None  # as in configs/x_umx_mwf.json: all of train/ (MUSDB18's 14 included)
    path = tmp_path / "all.json"
    path.write_text(json.dumps(config))
    root = plain_root(base)
    names = sorted(p.name for p in (root / "train").iterdir())
    code, trained, validated = _train_watching_the_tracks(
        monkeypatch, ["train", str(path), "--data", str(root), "--out", str(tmp_path / "run"), "--max-steps", "1",
                      "-q", "--valid-tracks", "2"])
    assert code == 0, capsys.readouterr().err
    assert len(validated) == 2 and sorted(trained + validated) == names
    # on a MUSDB18 layout the recipe trains on its validation tracks too, as published
    code, trained, validated = _train_watching_the_tracks(
        monkeypatch, ["train", str(path), "--data", str(dataset_root(base)), "--out", str(tmp_path / "musdb"),
                      "--max-steps", "1", "-q"])
    assert code == 0 and validated == ["Actions - One Minute Smile"] and validated[0] in trained


def test_valid_flags_choose_the_validation_tracks(base, tmp_path, capsys, monkeypatch):
    root = plain_root(base)
    names = sorted(p.name for p in (root / "train").iterdir())
    tests = sorted(p.name for p in (root / "test").iterdir())
    argv = ["train", str(TINY / "unet_attn.json"), "--data", str(root), "--max-steps", "1", "-q"]
    # the test subset validates: nothing of train/ is held out
    code, trained, validated = _train_watching_the_tracks(
        monkeypatch, argv + ["--out", str(tmp_path / "a"), "--valid-subset", "test", "--valid-tracks", "1"])
    assert code == 0, capsys.readouterr().err
    assert validated == tests[:1] and sorted(trained) == names
    saved = json.loads((tmp_path / "a" / "config.json").read_text())["data"]
    assert (saved["valid_subset"], saved["valid_split"], saved["valid_tracks"]) == ("test", None, 1)
    # every track of train/ validates (and trains)
    code, trained, validated = _train_watching_the_tracks(
        monkeypatch, argv + ["--out", str(tmp_path / "b"), "--valid-split", "all"])
    assert code == 0 and validated == names
    # usage errors: one line, exit 2, before anything is written
    for flags, words in [(["--valid-subset", "test", "--valid-split", "valid"], "--valid-split valid splits the train"),
                         (["--valid-tracks", "0"], "--valid-tracks must be at least 1"),
                         (["--valid-split", "some"], "invalid choice: 'some'")]:
        try:
            code = main(argv + ["--out", str(tmp_path / "c")] + flags)
        except SystemExit as exc:  # argparse's own errors
            code = exc.code
        err = capsys.readouterr().err
        assert code == 2, err
        assert words in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "c").exists()


def test_too_few_tracks_to_hold_out_is_one_clear_line(tmp_path, capsys):
    root = make_musdb_hq(tmp_path / "one", tracks=1, seconds=1.0, subsets=("train", "test"), musdb_names=False)
    code = main(["train", str(TINY / "demucs_split.json"), "--data", str(root), "--out", str(tmp_path / "run"), "-q"])
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith(f"danna-sep: {root / 'train'}: 1 track(s), too few to hold 1 out for validation")
    assert "--valid-subset test" in err


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
    from danna_sep.train.inputs import input_statistics

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


def test_weights_from_a_run_folder_are_its_best_checkpoint(base, tmp_path):
    """`--weights RUN_DIR` starts from the checkpoint `export` takes from that run: its best by
    validation (not its last), and a folder without checkpoints is one clear line."""
    from danna_sep.train.checkpoint import CheckpointFileError, load_initial_weights

    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run(base, "demucs_split") / "checkpoints", run / "checkpoints")
    # The tiny run keeps its two epochs' checkpoints; whichever scored better, list the one
    # that is not its last state first, so that best and last differ.
    index = json.loads((run / "checkpoints" / "best.json").read_text())
    last = load_checkpoint(run / "checkpoints" / "last.pt")["state_dict"]
    earlier = [e for e in index if any(not torch.equal(v, last[k]) for k, v in
                                       load_checkpoint(run / "checkpoints" / e["file"])["state_dict"].items())]
    assert earlier, "no checkpoint differs from the last"
    (run / "checkpoints" / "best.json").write_text(json.dumps(earlier[:1] + [e for e in index if e not in earlier[:1]]))
    expected = load_checkpoint(run / "checkpoints" / earlier[0]["file"])["state_dict"]
    config = load_config(TINY / "demucs_split.json")
    model = models.build(config.model.name, **config.model.kwargs)
    load_initial_weights(model, run)
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected[key]), key
    with pytest.raises(CheckpointFileError, match="no checkpoint in"):
        load_initial_weights(model, tmp_path / "run" / "checkpoints")


def test_resuming_a_finished_run_says_so_and_trains_nothing(base, tmp_path, capsys):
    import shutil

    run = tmp_path / "done"
    shutil.copytree(trained_run(base, "demucs_split"), run)
    losses = (run / "losses.jsonl").read_text()
    (run / "summary.json").unlink(missing_ok=True)
    assert main(["train", str(TINY / "demucs_split.json"), "--data", str(dataset_root(base)),
                 "--out", str(run), "--resume"]) == 0
    err = capsys.readouterr().err
    assert f"{run}: finished already, 100 steps" in err and "nan" not in err
    assert (run / "losses.jsonl").read_text() == losses
    assert json.loads((run / "summary.json").read_text())["finished"] is True


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


# --- exact resume across epoch boundaries and a MultiStep milestone (issue 13) -------------

def _boundary_config(base: Path, max_steps=None):
    """Tiny Demucs, 3 epochs of 3 steps, the learning rate times 0.3 after epoch 2, best 2 kept."""
    config = json.loads((TINY / "demucs_split.json").read_text())
    config["data"]["root"] = str(dataset_root(base))
    config["schedule"] = {"kind": "multistep", "milestones": [2], "gamma": 0.3}
    config["train"].update(epochs=3, steps_per_epoch=3, checkpoint_every_steps=2, keep_best=2,
                           amp=True, max_steps=max_steps)  # amp: a disabled GradScaler on the CPU
    return config_from_dict(config)


def _tensors_equal(a, b, where="") -> None:
    """Nested dicts / lists of tensors and plain values, equal to the last bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and sorted(a, key=str) == sorted(b, key=str), where
        for key in a:
            _tensors_equal(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _tensors_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _without_seconds(path: Path) -> list:
    return [{k: v for k, v in record.items() if k != "seconds"} for record in read_jsonl(path)]


def test_resume_at_epoch_boundaries_across_a_milestone_equals_the_uninterrupted_run(base, tmp_path):
    from danna_sep.train import train

    whole = tmp_path / "whole"
    train(_boundary_config(base), whole, progress=False)

    cut = tmp_path / "cut"
    train(_boundary_config(base, max_steps=3), cut, progress=False)  # stops at the end of epoch 1
    state = load_checkpoint(cut / "checkpoints" / "last.pt")
    assert state["progress"] == {"epoch": 1, "step_in_epoch": 0, "global_step": 3, "epoch_losses": []}
    assert state["scheduler"]["last_epoch"] == 1 and state["optimizer"]["param_groups"][0]["lr"] == 0.003
    # again at the end of epoch 2, right after the milestone
    train(_boundary_config(base, max_steps=6), cut, resume=True, progress=False)
    state = load_checkpoint(cut / "checkpoints" / "last.pt")
    assert state["progress"]["epoch"] == 2 and state["progress"]["global_step"] == 6
    assert state["scheduler"]["last_epoch"] == 2
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.003 * 0.3, rel=1e-12)
    train(_boundary_config(base), cut, resume=True, progress=False)

    ours = load_checkpoint(cut / "checkpoints" / "last.pt")
    theirs = load_checkpoint(whole / "checkpoints" / "last.pt")
    assert theirs["progress"] == {"epoch": 3, "step_in_epoch": 0, "global_step": 9, "epoch_losses": []}
    assert state_digest(ours["state_dict"]) == state_digest(theirs["state_dict"])
    for key in ("progress", "optimizer", "scheduler", "scaler", "best", "valid"):
        _tensors_equal(ours[key], theirs[key], key)
    assert ours["scheduler"]["_last_lr"] == theirs["scheduler"]["_last_lr"]
    assert ours["scheduler"]["_last_lr"][0] == pytest.approx(0.003 * 0.3, rel=1e-12)

    # The milestone falls inside the run: epochs 1-2 at the base rate, epoch 3 at 0.3 of it.
    losses = read_jsonl(whole / "losses.jsonl")
    assert [r["lr"] == 0.003 for r in losses] == [True] * 6 + [False] * 3
    assert read_jsonl(cut / "losses.jsonl") == losses
    metrics = _without_seconds(whole / "metrics.jsonl")
    assert [(m["epoch"], m["step"], m["complete"]) for m in metrics] == [(1, 3, True), (2, 6, True), (3, 9, True)]
    assert _without_seconds(cut / "metrics.jsonl") == metrics

    # best-k: the table, its file and the files beside it
    best = json.loads((whole / "checkpoints" / "best.json").read_text())
    assert len(best) == 2 and best == ours["best"]
    assert json.loads((cut / "checkpoints" / "best.json").read_text()) == best
    names = sorted(p.name for p in (whole / "checkpoints").glob("best-*.pt"))
    assert names == sorted(e["file"] for e in best)
    assert sorted(p.name for p in (cut / "checkpoints").glob("best-*.pt")) == names
    for name in names:
        a = load_checkpoint(cut / "checkpoints" / name)["state_dict"]
        b = load_checkpoint(whole / "checkpoints" / name)["state_dict"]
        assert state_digest(a) == state_digest(b), name
    assert json.loads((cut / "config.json").read_text()) == json.loads((whole / "config.json").read_text())


# --- DDP: two processes at batch b equal one process at batch 2b (issue 13) -----------------

def _fit_recording(config_dict: dict, run: Path, out: Path, tag: str) -> None:
    """Train `config_dict` into `run` on the CPU; write this process's micro-batches (segment
    indices per epoch, as the trainer deals them out), first and last weights to out/TAG.*."""
    from danna_sep.train import Trainer
    from danna_sep.train.inputs import epoch_batches

    config = config_from_dict(config_dict)
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        trainer = Trainer(config, run, device="cpu", progress=False)
        initial = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        t = config.train
        batches = [epoch_batches(len(trainer.data.dataset), t.seed, epoch, t.batch_size, trainer.dist)
                   for epoch in range(t.epochs)]
        summary = trainer.fit()
    finally:  # the Trainer switches deterministic algorithms on for the process
        torch.use_deterministic_algorithms(deterministic)
    steps = config.train.steps_per_epoch * config.train.accumulation
    (out / f"{tag}.json").write_text(json.dumps({"batches": [b[:steps] for b in batches],
                                                 "steps": summary.steps}))
    final = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    torch.save({"initial": initial, "final": final}, out / f"{tag}.pt")


def _ddp_rank(rank: int, world: int, config_dict: dict, run: Path, out: Path) -> None:
    """One process of a gloo group joined through a file store (no port to pick)."""
    from datetime import timedelta

    import torch.distributed as dist
    from danna_sep.distributed import leave_process_group

    torch.set_num_threads(1)
    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", init_method=f"file://{out / 'store'}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=120))
    _fit_recording(config_dict, run, out, f"rank{rank}")
    leave_process_group()
    # As `cli.run` does under torchrun: no interpreter teardown while gloo threads may still run.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def test_ddp_two_ranks_equal_one_process_with_the_doubled_batch(base, tmp_path):
    import torch.multiprocessing as mp

    config = json.loads((TINY / "demucs_split.json").read_text())
    config["data"]["root"] = str(dataset_root(base))
    config["data"]["augment"] = []  # augmentations draw from a per-rank seed: off, so data depends on the index only
    config["train"].update(epochs=2, steps_per_epoch=2, accumulation=1, validate=False, keep_best=0,
                           checkpoint_every_steps=None, amp=False)
    b = 2
    out = tmp_path / "out"
    out.mkdir()
    ddp = dict(config, train=dict(config["train"], batch_size=b))
    mp.spawn(_ddp_rank, args=(2, ddp, tmp_path / "ddp", out), nprocs=2, join=True)
    alone = dict(config, train=dict(config["train"], batch_size=2 * b))
    _fit_recording(alone, tmp_path / "alone", out, "single")

    records = {tag: json.loads((out / f"{tag}.json").read_text()) for tag in ("rank0", "rank1", "single")}
    assert records["rank0"]["steps"] == records["rank1"]["steps"] == records["single"]["steps"] == 4
    # The same data order: each step, the two ranks' items together are the single process's batch.
    for epoch in range(2):
        ranks = [records[f"rank{r}"]["batches"][epoch] for r in (0, 1)]
        single = records["single"]["batches"][epoch]
        assert len(single) == 2 and all(len(batches) == 2 for batches in ranks)
        for step in range(2):
            first, second = ranks[0][step], ranks[1][step]
            assert len(first) == len(second) == b and not set(first) & set(second)
            assert sorted(first + second) == sorted(single[step])

    weights = {tag: torch.load(out / f"{tag}.pt") for tag in ("rank0", "rank1", "single")}
    assert state_digest(weights["rank0"]["initial"]) == state_digest(weights["single"]["initial"])
    rank0, rank1, single = (weights[tag]["final"] for tag in ("rank0", "rank1", "single"))
    assert state_digest(rank0) == state_digest(rank1), "the ranks hold different weights"
    # Adam moves each weight by about lr (0.003) a step: 4 steps leave far more than the tolerance
    moved = max(float((single[k] - weights["single"]["initial"][k]).abs().max()) for k in single)
    assert moved > 1e-3
    for name, value in single.items():
        torch.testing.assert_close(rank0[name], value, rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")
    saved = load_checkpoint(tmp_path / "ddp" / "checkpoints" / "last.pt")
    assert state_digest(saved["state_dict"]) == state_digest(rank0)
    ranks_json = json.loads((tmp_path / "ddp" / "ranks.json").read_text())
    assert ranks_json["world_size"] == 2 and len(set(ranks_json["weights_sha256"])) == 1
    # rank 0 logs the mean loss over both ranks: the loss of the doubled batch
    ddp_losses = [r["loss"] for r in read_jsonl(tmp_path / "ddp" / "losses.jsonl")]
    single_losses = [r["loss"] for r in read_jsonl(tmp_path / "alone" / "losses.jsonl")]
    assert len(ddp_losses) == 4
    np.testing.assert_allclose(ddp_losses, single_losses, rtol=1e-5)


def test_training_reports_progress_to_a_callback_and_draws_no_bar_itself(base, tmp_path, capsys):
    """The library says how far it has got (epoch steps with the loss, validation items);
    only the command line turns that into bars."""
    from danna_sep.train import train

    config = load_config(TINY / "unet_attn.json", data_root=str(plain_root(base)))
    config.train.max_steps = 2
    calls = []
    train(config, tmp_path / "run", device="cpu", progress=lambda *call: calls.append(call))
    epoch = [call for call in calls if call[0].startswith("epoch 1/")]
    steps = epoch[0][2]
    assert epoch[0][1:] == (0, steps, "") and [call[1] for call in epoch[1:]] == [1, 2]
    assert all(call[3].startswith("loss=") for call in epoch[1:])
    validation = [call for call in calls if call[0] == "validation"]
    assert validation[0][1] == 0 and validation[-1][1] == validation[-1][2] > 0
    assert "\r" not in capsys.readouterr().err  # no bar drawn
