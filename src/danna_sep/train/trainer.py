"""The training loop: Adam, schedulers, AMP, accumulation, DDP under torchrun, exact resume.

A run is put together from its rooms: `inputs` (tracks, segments, their order), `objective`
(the loss through the model's contract), `run` (the run folder: config, logs, checkpoints,
best-k) and `danna_sep.distributed` (the processes of a torchrun job). This module steps the
optimiser over epochs, validates through the separation engine and decides when to save.

Reproducibility: each optimiser step reseeds torch (and the augmentations' generator) from
(seed, step, rank), and the segment sampler is a pure function of (seed, epoch, index), so a
run resumed from a checkpoint repeats the losses of an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from .. import SAMPLERATE, distributed, models
from ..metrics import mdx_sdr
from ..models import SOURCES
from ..progress import TaskProgressFn
from .checkpoint import checkpoint_record, load_initial_weights, rng_state, set_rng_state, state_digest
from .config import Config, ConfigError, config_to_dict
from .inputs import epoch_batches, input_statistics, normalize_by_song, run_data
from .objective import Objective
from .run import RunFolder, TrainError

log = logging.getLogger(__name__)

__all__ = ["Trainer", "TrainError", "TrainSummary", "train", "step_seed"]


def step_seed(seed: int, step: int, rank: int) -> int:
    """A seed for one optimiser step of one process (splitmix64 of the three numbers)."""
    x = (seed * 0x9E3779B97F4A7C15 + step * 0xBF58476D1CE4E5B9 + rank * 0x94D049BB133111EB) % (1 << 64)
    x ^= x >> 31
    x = (x * 0xBF58476D1CE4E5B9) % (1 << 64)
    x ^= x >> 27
    return x % (1 << 63)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


@dataclass
class TrainSummary:
    """What a finished (or stopped) run reached."""

    run_dir: Path
    steps: int
    epochs_done: int
    last_loss: float
    valid: Optional[Dict[str, float]] = None
    best_checkpoint: Optional[Path] = None


@dataclass
class _Progress:
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0


class Trainer:
    """Train one model from a `Config` into a run folder.

    `resume=True` continues from `RUN_DIR/checkpoints/last.pt`; `weights` starts from a
    weights file; `force=True` replaces an existing run. Launched by torchrun, every process
    builds a Trainer and they train together with DistributedDataParallel.
    """

    def __init__(
        self,
        config: Config,
        run_dir: str | os.PathLike,
        *,
        resume: bool = False,
        weights: Optional[str | os.PathLike] = None,
        device: str | torch.device = "auto",
        force: bool = False,
        progress: Optional[TaskProgressFn] = None,
        config_source: str = "<config>",
    ):
        from ..engine import resolve_device

        self.config = config
        self.source = config_source
        device = resolve_device(device)
        self.dist = distributed.join(device)
        self.device = self.dist.local_device(device)
        self.run = RunFolder(run_dir, self.dist)
        self.report = progress if progress and self.dist.main else None
        self.amp = bool(config.train.amp and self.device.type == "cuda")
        if config.train.amp and not self.amp:
            log.info("mixed precision asked for but the device is %s: training in float32", self.device)

        if config.train.deterministic:
            # warn_only: a few CUDA kernels have no deterministic version; they warn instead of failing.
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        seed_everything(config.train.seed)

        self.data = run_data(config, self.source)  # a bad track fails here, before anything is written

        # Model, optimiser, schedule.
        m = config.model
        try:
            self.model = models.build(m.name, **m.kwargs)
        except TypeError as exc:
            raise ConfigError(f"{self.source}: model.kwargs do not fit {m.name}: {exc}") from None
        self.sources: List[str] = list(self.model.sources)
        self.source_index = [SOURCES.index(s) for s in self.sources]

        self.run.prepare(config, self.source, resume=resume, force=force)
        if m.input_statistics and not resume and weights is None and self.dist.main:
            # Other ranks receive the statistics with the weights DDP broadcasts from rank 0.
            mean, std = input_statistics(self.data.train_tracks, self.model.input_bins, progress=self.report)
            self.model.set_input_statistics(mean, std)
        if weights is not None and not resume:
            load_initial_weights(self.model, weights)
        elif weights is not None:
            log.warning("--weights %s ignored: --resume continues from %s", weights, self.run.paths.last)
        self.model.to(self.device)

        o = config.optim
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=o.lr, betas=tuple(o.betas),
                                          weight_decay=o.weight_decay)
        s = config.schedule
        self.scheduler: Any = None
        if s.kind == "multistep":
            self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, s.milestones, s.gamma)
        elif s.kind == "plateau":
            mode = "max" if s.monitor == "valid_sdr" else "min"
            self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.optimizer, mode=mode, factor=s.gamma, patience=s.patience)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)

        self.progress = _Progress()
        self.epoch_losses: List[float] = []  # losses of the current epoch's steps so far
        self.last_valid: Optional[Dict[str, float]] = None
        if resume:
            self._resume()

        self.ddp: nn.Module = self.model
        if self.dist.active:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=ids)
        self.objective = Objective(config.loss, self.model, self.source_index, self._autocast)
        self.run.open_logs(self.progress.global_step, resume)

    # --- checkpoints -------------------------------------------------------------------

    def _save_last(self) -> None:
        if not self.dist.main:
            return
        p = self.progress
        self.run.save_last(checkpoint_record(
            "training-state", self.model, config_to_dict(self.config),
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict() if self.scheduler is not None else {},
            scaler=self.scaler.state_dict(),
            rng=rng_state(),
            progress={"epoch": p.epoch, "step_in_epoch": p.step_in_epoch, "global_step": p.global_step,
                      "epoch_losses": list(self.epoch_losses) if p.step_in_epoch else []},
            valid=self.last_valid,
            world_size=self.dist.world,
        ))

    def _resume(self) -> None:
        """Put the model, optimiser, schedule, scaler, random states and position back as
        last.pt has them."""
        path = self.run.paths.last
        state = self.run.load_last()
        try:
            self.model.load_state_dict(state["state_dict"], strict=True)
            self.optimizer.load_state_dict(state["optimizer"])
            if self.scheduler is not None and state.get("scheduler"):
                self.scheduler.load_state_dict(state["scheduler"])
            if state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
        except (RuntimeError, KeyError, ValueError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise TrainError(f"{path}: does not fit this config ({first})") from None
        if state.get("world_size", 1) != self.dist.world:
            log.warning("%s: saved by %d process(es), resumed by %d: the data order changes",
                        path, state.get("world_size", 1), self.dist.world)
        set_rng_state(state["rng"])
        p = state["progress"]
        self.progress = _Progress(int(p["epoch"]), int(p["step_in_epoch"]), int(p["global_step"]))
        self.epoch_losses = [float(v) for v in p.get("epoch_losses", [])]
        self.last_valid = state.get("valid")
        log.info("resumed %s at epoch %d, step %d", path, self.progress.epoch + 1, self.progress.global_step)

    def _save_best(self, epoch: int, valid: Dict[str, float]) -> None:
        """Keep this epoch's weights if they rank among the `keep_best` best by validation SDR."""
        step = self.progress.global_step
        self.run.keep_if_best(epoch + 1, step, valid["mean"], self.config.train.keep_best, lambda: checkpoint_record(
            "weights", self.model, config_to_dict(self.config),
            progress={"epoch": epoch + 1, "global_step": step}, valid=dict(valid)))

    # --- data --------------------------------------------------------------------------

    def steps_in_epoch(self, batches: Sequence[Sequence[int]]) -> int:
        steps = len(batches) // self.config.train.accumulation
        if self.config.train.steps_per_epoch is not None:
            steps = min(steps, self.config.train.steps_per_epoch)
        return steps

    def _load_batches(self, batches: Sequence[Sequence[int]]) -> Iterator[torch.Tensor]:
        """Stacked segments `(batch, sources, channels, samples)` for each micro-batch, in order,
        normalised per song when the config asks for it."""
        dataset = self.data.dataset
        workers = self.config.train.num_workers
        if workers == 0:
            for indices in batches:
                yield normalize_by_song(torch.stack([dataset[i] for i in indices]), indices, self.data)
            return
        loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=[list(b) for b in batches], num_workers=workers,
            collate_fn=torch.stack, pin_memory=self.device.type == "cuda")
        for indices, batch in zip(batches, loader):
            yield normalize_by_song(batch, indices, self.data)

    # --- one step ----------------------------------------------------------------------

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp:
            return torch.autocast(device_type="cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def _train_step(self, micro_batches: Sequence[torch.Tensor], seed: int) -> Dict[str, float]:
        """One optimiser step over `accumulation` micro-batches; returns the mean loss and parts."""
        torch.manual_seed(seed)  # dropout and anything else drawing from the global generator
        generator = torch.Generator().manual_seed(seed)
        self.optimizer.zero_grad(set_to_none=True)
        count = len(micro_batches)
        total = 0.0
        parts: Dict[str, float] = {}
        for index, batch in enumerate(micro_batches):
            # Augmentations run on the CPU, where the per-step generator lives.
            sources = self.data.augment(batch, generator=generator).to(self.device, non_blocking=True)
            last = index == count - 1
            sync = contextlib.nullcontext() if (last or not self.dist.active) else self.ddp.no_sync()
            with sync:
                result = self.objective(self.ddp, sources)
                if not torch.isfinite(result.loss):
                    raise FloatingPointError(f"loss is {float(result.loss)} at step {self.progress.global_step + 1}")
                self.scaler.scale(result.loss / count).backward()
            total += float(result.loss.detach()) / count
            for key, value in result.parts.items():
                parts[key] = parts.get(key, 0.0) + value / count
        if self.config.optim.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return {"loss": total, **parts}

    # --- validation --------------------------------------------------------------------

    @torch.no_grad()
    def validate(self) -> Optional[Dict[str, float]]:
        """MDX SDR per source over the validation items, through the separation engine.

        Spectrogram models go STFT -> mask -> Wiener filter (1 iteration) -> iSTFT as in
        `danna-sep separate`. Items are shared out among the processes and the sums reduced.
        """
        valid_set = self.data.valid_set
        if valid_set is None or len(valid_set) == 0:
            return None
        from ..engine import EngineOptions, ModelRunner, separate

        # DDP broadcasts buffers at the start of each forward pass, so after the last step each
        # process holds the batch-norm statistics of its own last batch: validate with rank 0's.
        distributed.broadcast_buffers(self.model, self.dist)
        self.model.eval()
        options = EngineOptions(segment=self.config.data.valid_engine_segment, overlap=0.25, wiener_iterations=1)
        runner = ModelRunner(self.model, self.device, options)
        sums = torch.zeros(len(self.sources) + 1, dtype=torch.float64)
        indices = range(self.dist.rank, len(valid_set), self.dist.world)
        if self.report:
            self.report("validation", 0, len(indices), "")
        for done, i in enumerate(indices, start=1):
            item = valid_set[i]  # (4, channels, samples)
            estimates = separate(runner, item.sum(dim=0), SAMPLERATE, options)
            sums[:-1] += mdx_sdr(item[self.source_index].double(), estimates.double())
            sums[-1] += 1
            if self.report:
                self.report("validation", done, len(indices), "")
        self.model.train()
        sums = distributed.sum_across(sums, self.dist, self.device)
        count = float(sums[-1])
        if count == 0:
            return None
        scores = {name: float(sums[j]) / count for j, name in enumerate(self.sources)}
        scores["mean"] = sum(scores[s] for s in self.sources) / len(self.sources)
        return scores

    # --- the loop ----------------------------------------------------------------------

    def fit(self) -> TrainSummary:
        t = self.config.train
        last_loss = float("nan")
        stopped = False
        try:
            while self.progress.epoch < t.epochs and not stopped:
                epoch = self.progress.epoch
                self.data.dataset.set_epoch(epoch)
                batches = epoch_batches(len(self.data.dataset), t.seed, epoch, t.batch_size, self.dist)
                steps = self.steps_in_epoch(batches)
                if steps == 0:
                    raise TrainError(f"{self.run.paths.root}: an epoch has no whole batch "
                                     f"({len(self.data.dataset)} segments for batch size {t.batch_size} "
                                     f"x {t.accumulation} on {self.dist.world} process(es))")
                start = self.progress.step_in_epoch
                accumulation = t.accumulation
                remaining = batches[start * accumulation: steps * accumulation]
                stream = self._load_batches(remaining)
                task = f"epoch {epoch + 1}/{t.epochs}"
                if self.report:
                    self.report(task, start, steps, "")
                started = time.monotonic()
                if start == 0:
                    self.epoch_losses = []
                epoch_losses = self.epoch_losses
                ran = 0
                for step_in_epoch in range(start, steps):
                    if t.max_steps is not None and self.progress.global_step >= t.max_steps:
                        stopped = True
                        break
                    micro = [next(stream) for _ in range(accumulation)]
                    seed = step_seed(t.seed, self.progress.global_step, self.dist.rank)
                    values = distributed.mean_across(self._train_step(micro, seed), self.dist, self.device)
                    self.progress.global_step += 1
                    self.progress.step_in_epoch = step_in_epoch + 1
                    last_loss = values["loss"]
                    epoch_losses.append(last_loss)
                    ran += 1
                    self._log_step(epoch, values)
                    if self.report:
                        self.report(task, step_in_epoch + 1, steps, f"loss={last_loss:.4g}")
                    every = t.checkpoint_every_steps
                    if every and self.progress.global_step % every == 0 and self.progress.step_in_epoch < steps:
                        self._save_last()
                stream.close()
                finished_epoch = self.progress.step_in_epoch >= steps
                if not finished_epoch and ran == 0:
                    break  # stopped by max_steps before this epoch began: nothing new to record
                self._end_epoch(epoch, epoch_losses, time.monotonic() - started, finished_epoch)
                if t.max_steps is not None and self.progress.global_step >= t.max_steps:
                    stopped = True
        finally:
            self.run.close()
        self._record_rank_digests()
        best = self.run.best_checkpoint() if self.dist.main else None
        # What a script checks before starting this run again (recipes/default.sh skips it).
        self.run.write_json(self.run.paths.summary, {
            "steps": self.progress.global_step, "epochs_done": self.progress.epoch,
            "finished": self.progress.epoch >= t.epochs, "valid_sdr": self.last_valid,
            "best_checkpoint": None if best is None else best.name})
        return TrainSummary(self.run.paths.root, self.progress.global_step, self.progress.epoch,
                            last_loss, self.last_valid, best)

    def _record_rank_digests(self) -> None:
        """Under DDP, write every process's weight digest to RUN_DIR/ranks.json (they must agree)."""
        if not self.dist.active:
            return
        distributed.broadcast_buffers(self.model, self.dist)
        digests = distributed.all_gather(state_digest(self.model.state_dict()), self.dist)
        step = self.progress.global_step
        self.run.write_json(self.run.paths.ranks, {"world_size": self.dist.world, "step": step,
                                                   "weights_sha256": digests})
        if self.dist.main and len(set(digests)) != 1:
            log.warning("the processes' weights differ after step %d: %s", step, digests)

    def _end_epoch(self, epoch: int, epoch_losses: List[float], seconds: float, finished: bool) -> None:
        """Validate, step the schedule, log and checkpoint at the end of an epoch (or of a run cut short)."""
        valid = self.validate() if self.config.train.validate else None
        train_loss = float(np.mean(epoch_losses)) if epoch_losses else float("nan")
        if finished and self.scheduler is not None:
            if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                metric = valid["mean"] if (self.config.schedule.monitor == "valid_sdr" and valid) else train_loss
                self.scheduler.step(metric)
            else:
                self.scheduler.step()
        self.last_valid = valid
        record = {"epoch": epoch + 1, "step": self.progress.global_step, "complete": finished,
                  "train_loss": train_loss, "lr": self.optimizer.param_groups[0]["lr"],
                  "seconds": round(seconds, 3)}
        if valid is not None:
            record["valid_sdr"] = {k: v for k, v in valid.items() if k != "mean"}
            record["valid_sdr_mean"] = valid["mean"]
        scalars = {"epoch/train_loss": train_loss, **{f"valid/sdr_{k}": v for k, v in (valid or {}).items()}}
        self.run.log(record, scalars, self.progress.global_step, epoch_end=True)
        if self.dist.main:
            sdr = "" if valid is None else f", validation SDR {valid['mean']:.3f} dB (" + ", ".join(
                f"{s} {valid[s]:.2f}" for s in self.sources) + ")"
            log.info("epoch %d: %d steps, train loss %.5g%s, %.1f s", epoch + 1,
                     self.progress.global_step, train_loss, sdr, seconds)
        if finished:
            self.progress.epoch = epoch + 1
            self.progress.step_in_epoch = 0
        if valid is not None and finished:
            self._save_best(epoch, valid)
        self._save_last()

    def _log_step(self, epoch: int, values: Dict[str, float]) -> None:
        lr = self.optimizer.param_groups[0]["lr"]
        scalars = {f"train/{key}": value for key, value in values.items()}
        scalars["train/lr"] = lr
        self.run.log({"step": self.progress.global_step, "epoch": epoch + 1, **values, "lr": lr}, scalars,
                     self.progress.global_step, epoch_end=False)


def train(config: Config, run_dir: str | os.PathLike, **options: Any) -> TrainSummary:
    """Train `config` into `run_dir` with the `Trainer`'s keyword options (resume, weights,
    device, force, progress, config_source); leaves the process group torchrun made.

    The process-wide determinism switches the run sets are restored afterwards.
    """
    deterministic = (torch.are_deterministic_algorithms_enabled(),
                     torch.is_deterministic_algorithms_warn_only_enabled())
    benchmark = torch.backends.cudnn.benchmark
    threads = torch.get_num_threads()
    if config.train.threads is not None:
        # Fewer threads than cores is often faster for small models, and far faster on a
        # shared machine, where spinning OpenMP threads wait for each other.
        torch.set_num_threads(config.train.threads)
    finished = False
    try:
        trainer = Trainer(config, run_dir, **options)
        summary = trainer.fit()
        finished = True
        return summary
    finally:
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
        torch.backends.cudnn.benchmark = benchmark
        torch.set_num_threads(threads)
        if distributed.Distributed.from_environment().active:
            distributed.leave_process_group(wait=finished)
