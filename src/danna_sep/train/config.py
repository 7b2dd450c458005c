"""Training configurations: JSON in, typed dataclasses out, resolved JSON saved with every run.

A config file has the sections `model`, `data`, `loss`, `optim`, `schedule` and `train`
(plus an optional `name` and `description`). Every key is checked once, here, through the
package's one JSON loader (`danna_sep.schema`): an unknown key, a value of the wrong type or
a word outside its set is a `ConfigError` whose message starts with the file's path and
names the key; `_check` adds the ranges and the rules that join keys.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Mapping, Optional, Tuple, Union

from .. import schema
from ..errors import USAGE, DannaSepError
from .losses import LossKind

AugmentSpec = Union[str, Dict[str, Any]]


class ConfigError(DannaSepError):
    """A configuration that cannot be used; the message starts with the file and names the key."""

    exit_code = USAGE


@dataclass
class ModelConfig:
    name: str
    """Registry name (`danna_sep.models.names()`)."""
    kwargs: Dict[str, Any] = field(default_factory=dict)
    """Constructor arguments; saved with every checkpoint and bundle."""
    input_statistics: bool = False
    """Set the model's input normalisation from the training set (models whose class
    `takes_input_statistics`): mean and std of the channel-averaged magnitudes, std floored
    at 1e-4 * max."""


@dataclass
class DataConfig:
    root: Optional[str] = None
    """MUSDB18-HQ style root (`--data` overrides)."""
    subset: Optional[Literal["train", "test"]] = "train"
    """MUSDB subset (None: both); ignored for a plain folder of tracks."""
    split: Optional[Literal["train", "valid"]] = None
    """None: every track of `subset`; "train"/"valid": MUSDB's split of the train subset."""
    segment_seconds: float = 6.0
    samples_per_track: int = 64
    """Training segments drawn per track and epoch."""
    remix: bool = True
    """Each source from a random track (the recipes' random-track mix)."""
    augment: List[AugmentSpec] = field(default_factory=list)
    """Batch augmentations, in order (`danna_sep.data.build_augment`)."""
    normalize: Literal["none", "song"] = "none"
    """"song": z-score each source by the mean and std of its song's mono mixture (the recipe of Défossez et al. 2019)."""
    valid_subset: Optional[Literal["train", "test"]] = "train"
    valid_split: Optional[Literal["train", "valid"]] = "valid"
    valid_segment_seconds: Optional[float] = None
    """Validation items: chunks of this length, or whole tracks (None)."""
    valid_tracks: Optional[int] = None
    """Validate on at most this many tracks (None: all)."""
    valid_engine_segment: float = 10.0
    """Segment length of the inference engine during validation, in seconds."""


@dataclass
class LossConfig:
    kind: LossKind = "l1"
    wiener_iterations: int = 1
    """closs: EM iterations of the Wiener filter before the loss (0: mask * mixture STFT)."""
    mcoeff: float = 10.0
    """closs: weight of the time-domain (weighted SDR) term."""


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: Tuple[float, float] = (0.9, 0.999)
    grad_clip: Optional[float] = None
    """Clip the gradient norm to this value (None: no clipping)."""


@dataclass
class ScheduleConfig:
    kind: Literal["multistep", "plateau", "none"] = "none"
    milestones: List[int] = field(default_factory=list)
    """multistep: epochs at which the learning rate is multiplied by `gamma`."""
    gamma: float = 0.3
    """multistep / plateau: the factor."""
    patience: int = 10
    """plateau: epochs without improvement before reducing."""
    monitor: Literal["valid_sdr", "train_loss"] = "valid_sdr"
    """plateau: what must improve (validation SDR up, or training loss down)."""


@dataclass
class TrainConfig:
    epochs: int = 1
    batch_size: int = 4
    """Examples per optimiser micro-batch, per process."""
    accumulation: int = 1
    """Micro-batches per optimiser step."""
    steps_per_epoch: Optional[int] = None
    """At most this many optimiser steps per epoch (None: one pass over the segments)."""
    max_steps: Optional[int] = None
    """Stop after this many optimiser steps in all (None: after `epochs`)."""
    amp: bool = False
    """Mixed precision (float16 autocast + GradScaler); CUDA only, ignored on the CPU."""
    seed: int = 0
    num_workers: int = 0
    checkpoint_every_steps: Optional[int] = None
    """Also save `last.pt` every this many steps (always at the end of an epoch)."""
    keep_best: int = 3
    """Keep the checkpoints of this many best epochs by validation SDR."""
    validate: bool = True
    deterministic: bool = True
    """torch.use_deterministic_algorithms (where implemented): reproducible CPU runs."""
    threads: Optional[int] = None
    """CPU threads for torch in this run (None: torch's default). Results on the CPU depend
    on it in the last bits, so an exact resume needs the same number."""


@dataclass
class Config:
    model: ModelConfig
    loss: LossConfig
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    name: str = ""
    description: str = ""


def _check(config: Config, source: str) -> None:
    """Value ranges and cross-field rules that types alone do not catch."""
    from .. import models

    def fail(message: str) -> None:
        raise ConfigError(f"{source}: {message}")

    if config.model.name not in models.names():
        fail(f"model.name: unknown model {config.model.name!r}; known: {', '.join(models.names())}")
    network = models.get(config.model.name)
    if config.model.input_statistics and not network.takes_input_statistics:
        fail(f"model.input_statistics: {config.model.name} has no input normalisation to set")
    from .objective import check_loss_fits  # it imports this module

    check_loss_fits(config.loss.kind, network, lambda message: ConfigError(f"{source}: {message}"))
    t, d, o, s, loss = config.train, config.data, config.optim, config.schedule, config.loss
    positive = {
        "train.epochs": t.epochs, "train.batch_size": t.batch_size, "train.accumulation": t.accumulation,
        "data.samples_per_track": d.samples_per_track, "train.keep_best": t.keep_best + 1,
    }
    for key, value in positive.items():
        if value < 1:
            fail(f"{key}: must be at least 1")
    for key, value in {"train.steps_per_epoch": t.steps_per_epoch, "train.max_steps": t.max_steps,
                       "train.checkpoint_every_steps": t.checkpoint_every_steps,
                       "data.valid_tracks": d.valid_tracks, "train.threads": t.threads}.items():
        if value is not None and value < 1:
            fail(f"{key}: must be at least 1 (or null)")
    if d.segment_seconds <= 0:
        fail("data.segment_seconds: must be positive")
    if d.valid_segment_seconds is not None and d.valid_segment_seconds <= 0:
        fail("data.valid_segment_seconds: must be positive (or null for whole tracks)")
    if d.valid_engine_segment <= 0:
        fail("data.valid_engine_segment: must be positive")
    if t.num_workers < 0:
        fail("train.num_workers: must be 0 or more")
    if o.lr <= 0:
        fail("optim.lr: must be positive")
    if o.weight_decay < 0:
        fail("optim.weight_decay: must be 0 or more")
    if not all(0 <= b < 1 for b in o.betas):
        fail("optim.betas: each must be in [0, 1)")
    if o.grad_clip is not None and o.grad_clip <= 0:
        fail("optim.grad_clip: must be positive (or null)")
    if loss.wiener_iterations < 0:
        fail("loss.wiener_iterations: must be 0 or more")
    if d.split is not None and d.subset != "train":
        fail("data.split: applies to the train subset only (set data.subset to \"train\")")
    if d.valid_split is not None and d.valid_subset != "train":
        fail("data.valid_split: applies to the train subset only (set data.valid_subset to \"train\")")
    if s.kind == "multistep" and not s.milestones:
        fail("schedule.milestones: multistep needs at least one epoch")
    if s.gamma <= 0 or (s.kind == "plateau" and s.gamma >= 1):
        fail("schedule.gamma: must be positive (and below 1 for plateau)")
    if s.kind == "plateau" and s.monitor == "valid_sdr" and not t.validate:
        fail("schedule.monitor: valid_sdr needs train.validate true")
    if d.augment:
        from ..data import build_augment

        names, options = augment_arguments(d.augment, source)
        try:
            build_augment(names, **options)
        except ValueError as exc:
            fail(f"data.augment: {exc}")


def augment_arguments(entries: List[AugmentSpec], source: str = "<config>") -> Tuple[List[str], Dict[str, Dict[str, Any]]]:
    """`data.augment` -> (names, options per name) for `danna_sep.data.build_augment`.

    Each entry is a name ("sign_flip") or an object with "name" and the options
    ({"name": "gain", "low": 0.25, "high": 1.25}).
    """
    names: List[str] = []
    options: Dict[str, Dict[str, Any]] = {}
    for index, entry in enumerate(entries):
        if isinstance(entry, str):
            name, extra = entry, {}
        else:
            extra = dict(entry)
            name = extra.pop("name", None)
            if not isinstance(name, str):
                raise ConfigError(f"{source}: data.augment[{index}]: an object needs a \"name\"")
        if name in names:
            raise ConfigError(f"{source}: data.augment[{index}]: {name!r} appears twice")
        names.append(name)
        if extra:
            options[name] = extra
    return names, options


def config_from_dict(data: Mapping[str, Any], source: str = "<config>") -> Config:
    """A checked `Config` from parsed JSON; errors start with `source`."""
    config = schema.from_json(Config, data, source, error=ConfigError)
    _check(config, source)
    return config


def load_config(path: str | os.PathLike, data_root: Optional[str] = None) -> Config:
    """Read and check a JSON config file; `data_root` replaces `data.root`."""
    config = config_from_dict(schema.read_json(path, ConfigError, "config file"), str(path))
    if data_root is not None:
        config.data.root = str(data_root)
    return config


def config_to_dict(config: Config) -> Dict[str, Any]:
    """Plain JSON-ready form of a config, every default filled in (the 'resolved' config)."""
    return schema.to_json(config)


def differences(a: Config, b: Config) -> List[str]:
    """Dotted keys whose values differ between two configs."""
    return schema.differences(a, b)
