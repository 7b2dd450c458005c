"""The training loop: Adam, schedulers, AMP, accumulation, DDP under torchrun, exact resume.

One run lives in one folder:

```
RUN_DIR/config.json            the resolved config (every default filled in)
RUN_DIR/losses.jsonl           one line per optimiser step: step, epoch, loss (+ parts), lr
RUN_DIR/metrics.jsonl          one line per epoch: training loss, validation SDR per source
RUN_DIR/tensorboard/           TensorBoard event files
RUN_DIR/checkpoints/last.pt    the full state, for --resume
RUN_DIR/checkpoints/best-epochNNNN.pt, best.json   the best `keep_best` epochs by validation SDR
```

Reproducibility: each optimiser step reseeds torch (and the augmentations' generator) from
(seed, step, rank), and the segment sampler is a pure function of (seed, epoch, index), so a
run resumed from a checkpoint repeats the losses of an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from .. import SAMPLERATE, __version__, models, spectral
from ..distributed import leave_process_group
from ..errors import DannaSepError
from ..models import SOURCES, SeparationModel
from ..progress import TaskProgressFn
from . import losses as L
from .checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    CheckpointFileError,
    atomic_torch_save,
    atomic_write_text,
    load_checkpoint,
    read_best_index,
    remove_stale_temporaries,
    rng_state,
    set_rng_state,
    state_digest,
)
from .config import Config, ConfigError, augment_arguments, config_from_dict, config_to_dict, differences

log = logging.getLogger(__name__)

# Keys a resumed run may change: where the data is, how long to go on, how often to save.
RESUMABLE_CHANGES = {"data.root", "train.epochs", "train.max_steps", "train.num_workers",
                     "train.checkpoint_every_steps", "train.keep_best"}


class TrainError(DannaSepError):
    """A run that cannot start or continue; the message starts with the path concerned."""


@dataclass
class Distributed:
    """Where this process stands in a torchrun job (rank 0 of 1 when run alone)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def init_distributed(device: torch.device) -> Distributed:
    """Join the process group torchrun describes in the environment (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    import torch.distributed as dist

    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return Distributed(rank=dist.get_rank(), world=dist.get_world_size(),
                       local_rank=int(os.environ.get("LOCAL_RANK", "0")))


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
class RunPaths:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def best_index(self) -> Path:
        return self.checkpoints / "best.json"

    @property
    def losses(self) -> Path:
        return self.root / "losses.jsonl"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"


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


# --- model helpers -----------------------------------------------------------------------

def load_initial_weights(model: SeparationModel, path: str | os.PathLike) -> None:
    """Load `path` into `model`: our checkpoints, bundle safetensors, or a file in an upstream
    layout the model adopts (`SeparationModel.adopt_state`)."""
    from ..convert import CheckpointError, load_state_file

    path = Path(path)
    if not path.is_file():
        raise TrainError(f"{path}: no such weights file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise TrainError(f"{path}: unreadable safetensors file ({exc})") from None
    else:
        try:
            state = load_state_file(path)
        except CheckpointError as exc:
            raise TrainError(str(exc)) from None
    try:
        state = model.adopt_state(state)
    except CheckpointError as exc:
        raise TrainError(f"{path}: {exc}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise TrainError(f"{path}: weights do not fit {model.name}({model.config}): {first}") from None


@torch.no_grad()
def input_statistics(tracks: Sequence[Any], max_bin: int, chunk_seconds: float = 30.0,
                     progress: Optional[TaskProgressFn] = None) -> tuple:
    """Mean and std per bin of the channel-averaged mixture magnitudes of `tracks` `(bins,)`.

    The std is floored at 1e-4 times its maximum, as Stöter et al. 2019 do, so silent bins do not
    blow up the input scale. Tracks are read in chunks of `chunk_seconds`.
    """
    total = torch.zeros(max_bin, dtype=torch.float64)
    total_sq = torch.zeros(max_bin, dtype=torch.float64)
    frames = 0
    chunk = int(chunk_seconds * SAMPLERATE)
    if progress:
        progress("input statistics", 0, len(tracks), "")
    for index, track in enumerate(tracks, start=1):
        for start in range(0, track.num_samples, chunk):
            length = min(chunk, track.num_samples - start)
            if length <= spectral.N_FFT // 2:  # too short for a centred STFT frame
                break
            stems = track.read(start, length, stems=SOURCES)
            mix = sum(stems[name] for name in SOURCES)
            mag = spectral.stft(mix.double()).abs().mean(dim=0)[:max_bin]  # (bins, frames)
            total += mag.sum(dim=-1)
            total_sq += mag.square().sum(dim=-1)
            frames += mag.shape[-1]
        if progress:
            progress("input statistics", index, len(tracks), "")
    if frames == 0:
        raise TrainError("no audio to compute input statistics from")
    mean = total / frames
    std = (total_sq / frames - mean.square()).clamp_min(0).sqrt()
    std = torch.maximum(std, 1e-4 * std.max())
    return mean.float(), std.float()


@torch.no_grad()
def song_statistics(tracks: Sequence[Any], chunk_seconds: float = 60.0) -> torch.Tensor:
    """Mean and std of each track's mono mixture (the sum of its sources): `(tracks, 2)`."""
    out = torch.zeros(len(tracks), 2)
    chunk = int(chunk_seconds * SAMPLERATE)
    for index, track in enumerate(tracks):
        total = total_sq = 0.0
        count = 0
        start = 0
        while start < track.num_samples:
            stems = track.read(start, min(chunk, track.num_samples - start), stems=SOURCES)
            mono = sum(stems[name] for name in SOURCES).double().mean(dim=0)
            total += float(mono.sum())
            total_sq += float(mono.square().sum())
            count += mono.numel()
            start += chunk
        mean = total / max(count, 1)
        std = math.sqrt(max(total_sq / max(count, 1) - mean * mean, 0.0))
        out[index, 0] = mean
        out[index, 1] = std + 1e-5
    return out


def _check_loss_fits(config: Config, model: nn.Module, source: str) -> None:
    kind, output = config.loss.kind, model.output_kind
    fits = {"closs": output == "mask", "l1": output == "waveform", "l2": output == "waveform",
            "mse_mag": output == "magnitude", "mse_mask": output == "mask"}[kind]
    if not fits:
        raise ConfigError(f"{source}: loss.kind {kind!r} does not fit {config.model.name} "
                          f"(its output is a {output}; closs, mse_mask: masks; l1/l2: waveforms; mse_mag: magnitudes)")


# --- the trainer ---------------------------------------------------------------------------

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
        from ..data import DataError, FixedChunks, RemixSegments, build_augment, find_tracks, validation_split
        from ..engine import resolve_device

        self.config = config
        self.source = config_source
        self.paths = RunPaths(Path(run_dir))
        self.device = resolve_device(device)
        self.dist = init_distributed(self.device)
        if self.dist.active and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(self.device)
        self.report = progress if progress and self.dist.main else None
        self.amp = bool(config.train.amp and self.device.type == "cuda")
        if config.train.amp and not self.amp:
            log.info("mixed precision asked for but the device is %s: training in float32", self.device)

        if config.train.deterministic:
            # warn_only: a few CUDA kernels have no deterministic version; they warn instead of failing.
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        seed_everything(config.train.seed)

        # Data first: a bad track fails here, before any model is built or file written.
        d = config.data
        if d.root is None:
            raise ConfigError(f"{self.source}: data.root is not set (pass --data ROOT)")
        root = Path(os.path.expanduser(d.root))
        validate_on_split = config.train.validate and d.valid_split is not None
        split = validation_split(root, d.valid_tracks) if (d.split or validate_on_split) else None
        held_out = split is not None and split.origin == "held out"
        train_split = d.split
        if held_out and not validate_on_split and d.split == "train":
            train_split = None  # tracks are held out only to validate on, and validation is elsewhere
        self.train_tracks = find_tracks(root, subset=d.subset, split=train_split, holdout=d.valid_tracks)
        self.valid_set = None
        if config.train.validate:
            valid_tracks = find_tracks(root, subset=d.valid_subset, split=d.valid_split, holdout=d.valid_tracks)
            if d.valid_tracks is not None:
                valid_tracks = valid_tracks[: d.valid_tracks]
            if not valid_tracks:
                raise DataError(f"{root}: no validation tracks (subset {d.valid_subset}, split {d.valid_split}); "
                                f"choose data.valid_subset / data.valid_split, or set train.validate false")
            if held_out and d.valid_split == "valid":
                # Tracks held out because the folder lists none are never trained on, even by
                # a recipe with data.split null (which on MUSDB18 trains on its 14 too).
                held = {t.path for t in valid_tracks}
                self.train_tracks = [t for t in self.train_tracks if t.path not in held]
            where = split.describe() if d.valid_split == "valid" else f"subset {d.valid_subset}, split {d.valid_split}"
            log.info("validating on %d track(s) (%s): %s", len(valid_tracks), where,
                     ", ".join(t.name for t in valid_tracks))
            valid_segment = None if d.valid_segment_seconds is None else int(round(d.valid_segment_seconds * SAMPLERATE))
            self.valid_set = FixedChunks(valid_tracks, valid_segment)
        if not self.train_tracks:
            raise DataError(f"{root}: no training tracks (subset {d.subset}, split {d.split})")
        self.segment = int(round(d.segment_seconds * SAMPLERATE))
        self.dataset = RemixSegments(self.train_tracks, segment=self.segment,
                                     samples_per_track=d.samples_per_track, remix=d.remix,
                                     seed=config.train.seed)
        names, options = augment_arguments(d.augment, self.source)
        self.augment = build_augment(names, **options)
        self.song_stats = song_statistics(self.train_tracks) if d.normalize == "song" else None

        # Model, optimiser, schedule.
        m = config.model
        try:
            self.model = models.build(m.name, **m.kwargs)
        except TypeError as exc:
            raise ConfigError(f"{self.source}: model.kwargs do not fit {m.name}: {exc}") from None
        _check_loss_fits(config, self.model, self.source)
        self.sources: List[str] = list(self.model.sources)
        self.source_index = [SOURCES.index(s) for s in self.sources]

        self._prepare_run_dir(resume, force)
        if m.input_statistics and not resume and weights is None and self.dist.main:
            # Other ranks receive the statistics with the weights DDP broadcasts from rank 0.
            mean, std = input_statistics(self.train_tracks, self.model.input_bins, progress=self.report)
            self.model.set_input_statistics(mean, std)
        if weights is not None and not resume:
            load_initial_weights(self.model, weights)
        elif weights is not None:
            log.warning("--weights %s ignored: --resume continues from %s", weights, self.paths.last)
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
        self.best: List[Dict[str, Any]] = []
        self.last_valid: Optional[Dict[str, float]] = None
        if resume:
            self._load_last()

        self.ddp: nn.Module = self.model
        if self.dist.active:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=ids)

        self.writer = None
        if self.dist.main:
            self._open_logs(resume)

    # --- run folder --------------------------------------------------------------------

    def _prepare_run_dir(self, resume: bool, force: bool) -> None:
        p = self.paths
        if resume:
            if not p.last.is_file():
                raise TrainError(f"{p.root}: no checkpoint to resume from ({p.last} missing)")
            if self.dist.main:
                remove_stale_temporaries(p.checkpoints)
                remove_stale_temporaries(p.root)
            if p.config.is_file():
                try:
                    saved_data = json.loads(p.config.read_text(encoding="utf-8"))
                except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                    raise TrainError(f"{p.config}: unreadable run config ({exc})") from None
                saved = config_from_dict(saved_data, str(p.config))
                changed = [k for k in differences(saved, self.config) if k not in RESUMABLE_CHANGES]
                if changed:
                    raise ConfigError(
                        f"{self.source}: differs from the run's {p.config} in {', '.join(changed)}; "
                        f"resume with the run's own config")
        else:
            occupied = p.last.is_file() or p.config.is_file() or p.losses.is_file()
            if occupied and not force:
                raise TrainError(f"{p.root}: holds a run already (use --resume to continue it, "
                                 f"or --force to start over)")
            self._barrier()  # every process has looked before the main one changes anything
            if occupied and self.dist.main:
                for path in (p.checkpoints, p.tensorboard):
                    shutil.rmtree(path, ignore_errors=True)
                for path in (p.losses, p.metrics, p.config):
                    path.unlink(missing_ok=True)
        if self.dist.main:
            p.checkpoints.mkdir(parents=True, exist_ok=True)
            atomic_write_text(p.config, json.dumps(config_to_dict(self.config), indent=2) + "\n")
        self._barrier()

    def _open_logs(self, resume: bool) -> None:
        step = self.progress.global_step
        if resume:
            # Lines written after the checkpoint (by a run that was killed) are dropped.
            _truncate_jsonl(self.paths.losses, step)
            _truncate_jsonl(self.paths.metrics, step)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:  # tensorboard is in the `train` extra
            raise TrainError(f"{self.paths.tensorboard}: TensorBoard logging needs the tensorboard "
                             f"package (pip install 'danna-sep[train]'): {exc}") from None
        self.writer = SummaryWriter(log_dir=str(self.paths.tensorboard), purge_step=step if resume else None)

    def _barrier(self) -> None:
        if self.dist.active:
            import torch.distributed as dist

            dist.barrier()

    # --- checkpoints -------------------------------------------------------------------

    def _model_entry(self) -> Dict[str, Any]:
        return {"name": self.model.name, "kwargs": dict(self.model.config)}

    def _state_dict_cpu(self) -> Dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}

    def _save_last(self) -> None:
        if not self.dist.main:
            return
        p = self.progress
        state = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": "training-state",
            "model": self._model_entry(),
            "state_dict": self._state_dict_cpu(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else {},
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            "progress": {"epoch": p.epoch, "step_in_epoch": p.step_in_epoch, "global_step": p.global_step,
                         "epoch_losses": list(self.epoch_losses) if p.step_in_epoch else []},
            "best": list(self.best),
            "valid": self.last_valid,
            "config": config_to_dict(self.config),
            "world_size": self.dist.world,
            "versions": {"danna_sep": __version__, "torch": str(torch.__version__)},
        }
        atomic_torch_save(state, self.paths.last)

    def _load_last(self) -> None:
        path = self.paths.last
        try:
            state = load_checkpoint(path)
            self.model.load_state_dict(state["state_dict"], strict=True)
            self.optimizer.load_state_dict(state["optimizer"])
            if self.scheduler is not None and state.get("scheduler"):
                self.scheduler.load_state_dict(state["scheduler"])
            if state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
        except CheckpointFileError as exc:
            raise TrainError(str(exc)) from None
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
        self.best = [dict(e) for e in state.get("best", [])]
        self.last_valid = state.get("valid")
        log.info("resumed %s at epoch %d, step %d", path, self.progress.epoch + 1, self.progress.global_step)

    def _save_best(self, epoch: int, valid: Dict[str, float]) -> None:
        """Keep this epoch's weights if they rank among the `keep_best` best by validation SDR."""
        keep = self.config.train.keep_best
        score = valid["mean"]
        if keep == 0 or not self.dist.main or not math.isfinite(score):
            return
        if len(self.best) >= keep and score <= min(e["valid_sdr"] for e in self.best):
            return
        name = f"best-epoch{epoch + 1:04d}.pt"
        atomic_torch_save({
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": "weights",
            "model": self._model_entry(),
            "state_dict": self._state_dict_cpu(),
            "progress": {"epoch": epoch + 1, "global_step": self.progress.global_step},
            "valid": dict(valid),
            "config": config_to_dict(self.config),
            "versions": {"danna_sep": __version__, "torch": str(torch.__version__)},
        }, self.paths.checkpoints / name)
        self.best = [e for e in self.best if e["file"] != name]
        self.best.append({"file": name, "epoch": epoch + 1, "step": self.progress.global_step, "valid_sdr": score})
        self.best.sort(key=lambda e: -e["valid_sdr"])
        for dropped in self.best[keep:]:
            (self.paths.checkpoints / dropped["file"]).unlink(missing_ok=True)
        self.best = self.best[:keep]
        atomic_write_text(self.paths.best_index, json.dumps(self.best, indent=2) + "\n")

    # --- data --------------------------------------------------------------------------

    def _epoch_batches(self, epoch: int) -> List[List[int]]:
        """This process's micro-batches of segment indices for one epoch (whole batches only).

        The permutation depends on (seed, epoch) only; it is padded to a multiple of the
        number of processes and dealt out like DistributedSampler does.
        """
        total = len(self.dataset)
        generator = torch.Generator().manual_seed(self.config.train.seed * 1000003 + epoch)
        order = torch.randperm(total, generator=generator).tolist()
        world = self.dist.world
        if total % world:
            order += order[: world - total % world]
        mine = order[self.dist.rank::world]
        size = self.config.train.batch_size
        return [mine[i:i + size] for i in range(0, len(mine) - size + 1, size)]

    def steps_in_epoch(self, batches: Sequence[Sequence[int]]) -> int:
        steps = len(batches) // self.config.train.accumulation
        if self.config.train.steps_per_epoch is not None:
            steps = min(steps, self.config.train.steps_per_epoch)
        return steps

    def _load_batches(self, batches: Sequence[Sequence[int]]) -> Iterator[torch.Tensor]:
        """Stacked segments `(batch, sources, channels, samples)` for each micro-batch, in order,
        normalised per song when the config asks for it."""
        workers = self.config.train.num_workers
        if workers == 0:
            for indices in batches:
                yield self._normalize(indices, torch.stack([self.dataset[i] for i in indices]))
            return
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=[list(b) for b in batches], num_workers=workers,
            collate_fn=torch.stack, pin_memory=self.device.type == "cuda")
        for indices, batch in zip(batches, loader):
            yield self._normalize(indices, batch)

    def _normalize(self, indices: Sequence[int], batch: torch.Tensor) -> torch.Tensor:
        """The z-score of Défossez et al. 2019: each source scaled by the mono mean and std of its own song's mixture.

        (With remixing, the sources of an example come from different songs.) The mean is
        shared out over the sources so that they still sum to the normalised mixture.
        """
        if self.song_stats is None:
            return batch
        picks = torch.tensor([[track for track, _ in self.dataset.draw(i)] for i in indices])  # (batch, sources)
        mean = self.song_stats[picks, 0][:, :, None, None]
        std = self.song_stats[picks, 1][:, :, None, None]
        return (batch - mean / batch.shape[1]) / std

    # --- one step ----------------------------------------------------------------------

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp:
            return torch.autocast(device_type="cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def compute_loss(self, sources: torch.Tensor) -> L.LossResult:
        """The configured loss for a batch of sources `(batch, 4, channels, samples)`; mixture = their sum."""
        cfg = self.config.loss
        mixture = sources.sum(dim=1)
        targets = sources[:, self.source_index]
        if self.model.input_domain == "waveform":
            with self._autocast():
                estimates = self.ddp(mixture)
            estimates = estimates.float()
            loss = L.waveform_l1(estimates, targets) if cfg.kind == "l1" else L.waveform_l2(estimates, targets)
            return L.LossResult(loss, {})
        if cfg.kind == "mse_mask":
            return L.LossResult(self._masked_mse(sources, targets), {})
        mix_stft = spectral.stft(mixture)
        magnitude = mix_stft.abs()
        with self._autocast():
            out = self.ddp(magnitude)
        out = out.float()
        if cfg.kind == "closs":
            return L.closs(out, mix_stft, spectral.stft(targets), targets, mixture,
                           wiener_iterations=cfg.wiener_iterations, mcoeff=cfg.mcoeff)
        reference = spectral.stft(targets[:, 0]).abs()
        return L.LossResult(L.magnitude_mse(out, reference), {})

    def _masked_mse(self, sources: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """`mse_mask` on the bins the model learns (`output_bins`): masks above them (a
        constant, where a network reads fewer bins than it returns) carry no gradient."""
        bins = self.model.output_bins
        target_stft = spectral.stft(targets)[..., :bins, :]
        if len(self.source_index) == sources.shape[1]:
            # The STFT is linear: the mixture's is the sum of the sources', one transform fewer.
            mix_stft = target_stft.sum(dim=1)
        else:
            mix_stft = spectral.stft(sources.sum(dim=1))[..., :bins, :]
        magnitude = mix_stft.abs()  # a network reading fewer bins ignores the rest anyway
        with self._autocast():
            masks = self.ddp(magnitude)
        masks = masks.float()
        return L.masked_magnitude_mse(masks[..., :bins, :], magnitude, target_stft.abs())

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
            sources = self.augment(batch, generator=generator).to(self.device, non_blocking=True)
            last = index == count - 1
            sync = contextlib.nullcontext() if (last or not self.dist.active) else self.ddp.no_sync()
            with sync:
                result = self.compute_loss(sources)
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

    def _mean_across_ranks(self, values: Dict[str, float]) -> Dict[str, float]:
        if not self.dist.active:
            return values
        import torch.distributed as dist

        keys = sorted(values)
        tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=self._collective_device())
        dist.all_reduce(tensor)
        return {k: float(v) / self.dist.world for k, v in zip(keys, tensor.tolist())}

    def _collective_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    # --- validation --------------------------------------------------------------------

    @torch.no_grad()
    def validate(self) -> Optional[Dict[str, float]]:
        """MDX SDR per source over the validation items, through the separation engine.

        Spectrogram models go STFT -> mask -> Wiener filter (1 iteration) -> iSTFT as in
        `danna-sep separate`. Items are shared out among the processes and the sums reduced.
        """
        if self.valid_set is None or len(self.valid_set) == 0:
            return None
        from ..engine import EngineOptions, ModelRunner, separate

        self._sync_buffers()
        self.model.eval()
        options = EngineOptions(segment=self.config.data.valid_engine_segment, overlap=0.25, wiener_iterations=1)
        runner = ModelRunner(self.model, self.device, options)
        sums = torch.zeros(len(self.sources) + 1, dtype=torch.float64)
        indices = range(self.dist.rank, len(self.valid_set), self.dist.world)
        if self.report:
            self.report("validation", 0, len(indices), "")
        for done, i in enumerate(indices, start=1):
            item = self.valid_set[i]  # (4, channels, samples)
            mixture = item.sum(dim=0)
            estimates = separate(runner, mixture, SAMPLERATE, options)
            sdr = L.mdx_sdr(estimates, item[self.source_index])
            sums[:-1] += sdr
            sums[-1] += 1
            if self.report:
                self.report("validation", done, len(indices), "")
        self.model.train()
        if self.dist.active:
            import torch.distributed as dist

            reduced = sums.to(self._collective_device())
            dist.all_reduce(reduced)
            sums = reduced.cpu()
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
                self.dataset.set_epoch(epoch)
                batches = self._epoch_batches(epoch)
                steps = self.steps_in_epoch(batches)
                if steps == 0:
                    raise TrainError(f"{self.paths.root}: an epoch has no whole batch "
                                     f"({len(self.dataset)} segments for batch size {t.batch_size} "
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
                    values = self._mean_across_ranks(self._train_step(micro, seed))
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
            if self.writer is not None:
                self.writer.close()
        self._record_rank_digests()
        best = None
        if self.dist.main:
            index = read_best_index(self.paths.best_index)
            if index:
                best = self.paths.checkpoints / index[0]["file"]
        return TrainSummary(self.paths.root, self.progress.global_step, self.progress.epoch,
                            last_loss, self.last_valid, best)

    def _sync_buffers(self) -> None:
        """Copy rank 0's buffers (batch-norm statistics) to every process.

        DDP broadcasts buffers at the start of each forward pass, so after the last step
        each process holds the statistics of its own last batch; validation and the final
        weights should be the same everywhere.
        """
        if not self.dist.active:
            return
        import torch.distributed as dist

        for buffer in self.model.buffers():
            dist.broadcast(buffer.data, src=0)

    def _record_rank_digests(self) -> None:
        """Under DDP, write every process's weight digest to RUN_DIR/ranks.json (they must agree)."""
        if not self.dist.active:
            return
        import torch.distributed as dist

        self._sync_buffers()
        mine = state_digest(self.model.state_dict())
        digests: List[Any] = [None] * self.dist.world
        dist.all_gather_object(digests, mine)
        if self.dist.main:
            record = {"world_size": self.dist.world, "step": self.progress.global_step, "weights_sha256": digests}
            atomic_write_text(self.paths.root / "ranks.json", json.dumps(record, indent=2) + "\n")
            if len(set(digests)) != 1:
                log.warning("the processes' weights differ after step %d: %s", self.progress.global_step, digests)

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
        if self.dist.main:
            _append_jsonl(self.paths.metrics, record)
            if self.writer is not None:
                step = self.progress.global_step
                self.writer.add_scalar("epoch/train_loss", train_loss, step)
                if valid is not None:
                    for name, value in valid.items():
                        self.writer.add_scalar(f"valid/sdr_{name}", value, step)
                self.writer.flush()
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
        if not self.dist.main:
            return
        lr = self.optimizer.param_groups[0]["lr"]
        record = {"step": self.progress.global_step, "epoch": epoch + 1, **values, "lr": lr}
        _append_jsonl(self.paths.losses, record)
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(f"train/{key}", value, self.progress.global_step)
            self.writer.add_scalar("train/lr", lr, self.progress.global_step)


# --- JSON lines ------------------------------------------------------------------------

def _append_jsonl(path: Path, record: Dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def _truncate_jsonl(path: Path, last_step: int) -> None:
    """Keep the records up to `last_step` (and drop a torn last line), atomically."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("step", 0) <= last_step:
            kept.append(line)
    atomic_write_text(path, "".join(k + "\n" for k in kept))


def train(
    config: Config,
    run_dir: str | os.PathLike,
    *,
    resume: bool = False,
    weights: Optional[str | os.PathLike] = None,
    device: str | torch.device = "auto",
    force: bool = False,
    progress: Optional[TaskProgressFn] = None,
    config_source: str = "<config>",
) -> TrainSummary:
    """Train `config` into `run_dir` (see `Trainer`); leaves the process group torchrun made.

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
        trainer = Trainer(config, run_dir, resume=resume, weights=weights, device=device, force=force,
                          progress=progress, config_source=config_source)
        summary = trainer.fit()
        finished = True
        return summary
    finally:
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
        torch.backends.cudnn.benchmark = benchmark
        torch.set_num_threads(threads)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            leave_process_group(wait=finished)
