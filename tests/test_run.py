"""The run folder (danna_sep.train.run): starting, resuming, logs and checkpoints, without
training anything."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from danna_sep import atomic, models
from danna_sep.train.checkpoint import checkpoint_record, load_checkpoint
from danna_sep.train.config import ConfigError, config_from_dict, config_to_dict
from danna_sep.train.run import RunFolder, TrainError

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny" / "demucs_split.json"


def config(**train):
    data = json.loads(TINY.read_text())
    data["data"]["root"] = "/data/somewhere"
    data["train"].update(train)
    return config_from_dict(data, "tiny.json")


def state(cfg, step: int) -> dict:
    model = models.build("demucs_split", channels=4, depth=2)
    return checkpoint_record("training-state", model, config_to_dict(cfg), progress={"global_step": step})


def test_a_new_run_refuses_a_folder_that_holds_one_unless_forced(tmp_path):
    cfg = config()
    run = RunFolder(tmp_path / "run")
    run.prepare(cfg, "tiny.json")
    p = run.paths
    assert json.loads(p.config.read_text()) == config_to_dict(cfg) and p.checkpoints.is_dir()
    p.losses.write_text('{"step": 1}\n')
    p.ranks.write_text("{}")
    (p.tensorboard / "events").mkdir(parents=True)
    run.save_last(state(cfg, 1))
    with pytest.raises(TrainError, match="holds a run already .use --resume to continue it, or --force"):
        RunFolder(p.root).prepare(cfg, "tiny.json")
    assert p.losses.is_file() and p.last.is_file()
    RunFolder(p.root).prepare(config(epochs=5), "tiny.json", force=True)
    assert not p.losses.exists() and not p.last.exists() and not p.ranks.exists() and not p.tensorboard.exists()
    assert json.loads(p.config.read_text())["train"]["epochs"] == 5


def test_resume_needs_last_pt_and_the_runs_own_config(tmp_path):
    cfg = config()
    run = RunFolder(tmp_path / "run")
    with pytest.raises(TrainError, match=r"no checkpoint to resume from \(.*last.pt missing\)"):
        run.prepare(cfg, "tiny.json", resume=True)
    run.prepare(cfg, "tiny.json")
    run.save_last(state(cfg, 3))
    changed = config()
    changed.optim.lr = 0.1
    changed.train.seed = 7
    with pytest.raises(ConfigError, match=r"tiny.json: differs from the run's .*config.json in optim.lr, train.seed"):
        RunFolder(run.paths.root).prepare(changed, "tiny.json", resume=True)
    # where the data is, how long to go on and how often to save may change
    longer = config(epochs=9, max_steps=40, checkpoint_every_steps=5, keep_best=1, num_workers=2)
    longer.data.root = "/data/moved"
    RunFolder(run.paths.root).prepare(longer, "tiny.json", resume=True)
    assert json.loads(run.paths.config.read_text())["train"]["epochs"] == 9
    run.paths.config.write_text('{"model": ')
    with pytest.raises(TrainError, match=r"config.json: not valid JSON \(line 1"):
        RunFolder(run.paths.root).prepare(cfg, "tiny.json", resume=True)


def test_resume_drops_what_was_logged_after_the_checkpoint(tmp_path):
    """A run killed after its checkpoint at step 3 had logged steps 4 and 5 (the last line
    torn): the resumed run's logs read as if it had never stopped."""
    cfg = config()
    run = RunFolder(tmp_path / "run")
    run.prepare(cfg, "tiny.json")
    run.open_logs(0, resume=False)
    for step in range(1, 6):
        run.log({"step": step, "loss": 1.0 / step}, {"train/loss": 1.0 / step}, step, epoch_end=False)
    run.log({"epoch": 1, "step": 2}, {"epoch/train_loss": 0.5}, 2, epoch_end=True)
    run.log({"epoch": 2, "step": 5}, {"epoch/train_loss": 0.2}, 5, epoch_end=True)
    run.close()
    with open(run.paths.losses, "a") as handle:
        handle.write('{"step": 6, "lo')
    assert list(run.paths.tensorboard.glob("events.out.tfevents.*"))

    again = RunFolder(run.paths.root)
    again.open_logs(3, resume=True)
    again.close()
    assert [json.loads(line)["step"] for line in run.paths.losses.read_text().splitlines()] == [1, 2, 3]
    assert [json.loads(line)["epoch"] for line in run.paths.metrics.read_text().splitlines()] == [1]


def test_resume_removes_what_a_killed_writer_left(tmp_path):
    cfg = config()
    run = RunFolder(tmp_path / "run")
    run.prepare(cfg, "tiny.json")
    run.save_last(state(cfg, 3))
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(gone.stdout)
    left = [run.paths.checkpoints / f".last.pt.tmp-{pid}-{atomic.host_tag()}0a0b",
            run.paths.root / f".losses.jsonl.tmp-{pid}-{atomic.host_tag()}0c0d"]
    for path in left:
        path.write_bytes(b"half")
    RunFolder(run.paths.root).prepare(cfg, "tiny.json", resume=True)
    assert not any(path.exists() for path in left)
    assert load_checkpoint(run.paths.last)["progress"] == {"global_step": 3}


def test_the_best_epochs_are_kept_and_come_back_with_last_pt(tmp_path):
    cfg = config()
    run = RunFolder(tmp_path / "run")
    run.prepare(cfg, "tiny.json")
    made = []

    def weights(epoch):
        def make():
            made.append(epoch)
            return state(cfg, epoch)
        return make

    for epoch, score in enumerate([1.0, 3.0, 2.0, 0.5, math.nan, 2.5], start=1):
        run.keep_if_best(epoch, 10 * epoch, score, keep=2, weights=weights(epoch))
    assert made == [1, 2, 3, 6]  # what could not rank was never even built
    table = json.loads(run.paths.best_index.read_text())
    assert [(e["file"], e["epoch"], e["step"], e["valid_sdr"]) for e in table] == [
        ("best-epoch0002.pt", 2, 20, 3.0), ("best-epoch0006.pt", 6, 60, 2.5)]
    assert sorted(p.name for p in run.paths.checkpoints.glob("best-*.pt")) == ["best-epoch0002.pt", "best-epoch0006.pt"]
    assert run.best_checkpoint() == run.paths.checkpoints / "best-epoch0002.pt"
    run.keep_if_best(7, 70, 9.0, keep=0, weights=weights(7))
    assert made == [1, 2, 3, 6]

    run.save_last(state(cfg, 60))
    resumed = RunFolder(run.paths.root)
    saved = resumed.load_last()
    assert resumed.best == table == saved["best"]
    assert saved["model"] == {"name": "demucs_split", "kwargs": models.build("demucs_split", channels=4, depth=2).config}
    (run.paths.last).write_bytes(b"not a checkpoint")
    with pytest.raises(TrainError, match="last.pt: not a readable checkpoint"):
        RunFolder(run.paths.root).load_last()
    assert torch.load(run.paths.checkpoints / "best-epoch0002.pt", weights_only=True)["progress"] == {"global_step": 2}
