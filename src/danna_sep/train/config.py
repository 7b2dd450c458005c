"""Training configurations: JSON in, typed dataclasses out, resolved JSON saved with every run.

A config file has the sections `model`, `data`, `loss`, `optim`, `schedule` and `train`
(plus an optional `name` and `description`). Every key is checked once, here: an unknown key, a
value of the wrong type or a word outside its set is a `ConfigError` whose message starts
with the file's path and names the key.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Mapping, Optional, Tuple, Union

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


# --- JSON -> dataclasses ----------------------------------------------------------------

def _type_name(kind: Any) -> str:
    origin = typing.get_origin(kind)
    if origin is Literal:
        return " | ".join(json.dumps(a) for a in typing.get_args(kind))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(kind))
    if kind is type(None):
        return "null"
    if origin in (list, List):
        return f"list of {_type_name(typing.get_args(kind)[0])}"
    if origin in (tuple, Tuple):
        return f"list of {len(typing.get_args(kind))} numbers"
    if origin in (dict, Dict):
        return "object"
    if dataclasses.is_dataclass(kind):
        return "object"
    return {int: "integer", float: "number", bool: "true/false", str: "string"}.get(kind, str(kind))


def _convert(value: Any, kind: Any, key: str, source: str) -> Any:
    """`value` checked against the annotation `kind`; ConfigError naming `key` otherwise."""
    def bad() -> ConfigError:
        return ConfigError(f"{source}: {key}: expected {_type_name(kind)}, got {json.dumps(value)}")

    origin = typing.get_origin(kind)
    if kind is Any:
        return value
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, Mapping):
            raise bad()
        return _build(kind, value, key + ".", source)
    if origin in (Union, types.UnionType):
        options = typing.get_args(kind)
        if value is None:
            if type(None) in options:
                return None
            raise bad()
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, key, source)
            except ConfigError as exc:
                errors.append(exc)
        raise bad()
    if origin is Literal:
        if value not in typing.get_args(kind) or isinstance(value, bool):
            raise bad()
        return value
    if origin in (list, List):
        if not isinstance(value, list):
            raise bad()
        (item,) = typing.get_args(kind)
        return [_convert(v, item, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin in (tuple, Tuple):
        items = typing.get_args(kind)
        if not isinstance(value, (list, tuple)) or len(value) != len(items):
            raise bad()
        return tuple(_convert(v, t, f"{key}[{i}]", source) for i, (v, t) in enumerate(zip(value, items)))
    if origin in (dict, Dict):
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise bad()
        return dict(value)
    if kind is bool:
        if not isinstance(value, bool):
            raise bad()
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad()
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad()
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise bad()
        return value
    raise TypeError(f"unsupported annotation {kind!r}")  # pragma: no cover - a bug in this file


def _build(cls: type, data: Mapping[str, Any], prefix: str, source: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise ConfigError(
            f"{source}: unknown key {prefix}{unknown[0]!s} (known in {prefix.rstrip('.') or 'the top level'}: "
            f"{', '.join(fields)})"
        )
    values = {}
    for name, spec in fields.items():
        if name in data:
            values[name] = _convert(data[name], hints[name], prefix + name, source)
        elif spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{source}: missing key {prefix}{name}")
    return cls(**values)


def _check(config: Config, source: str) -> None:
    """Value ranges and cross-field rules that types alone do not catch."""
    from .. import models

    def fail(message: str) -> None:
        raise ConfigError(f"{source}: {message}")

    if config.model.name not in models.names():
        fail(f"model.name: unknown model {config.model.name!r}; known: {', '.join(models.names())}")
    if config.model.input_statistics and not models.get(config.model.name).takes_input_statistics:
        fail(f"model.input_statistics: {config.model.name} has no input normalisation to set")
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
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a JSON object at the top level")
    config = _build(Config, data, "", source)
    _check(config, source)
    return config


def load_config(path: str | os.PathLike, data_root: Optional[str] = None) -> Config:
    """Read and check a JSON config file; `data_root` replaces `data.root`."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{source}: no such config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: unreadable ({exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{source}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    config = config_from_dict(data, source)
    if data_root is not None:
        config.data.root = str(data_root)
    return config


def config_to_dict(config: Config) -> Dict[str, Any]:
    """Plain JSON-ready form of a config, every default filled in (the 'resolved' config)."""
    def plain(value: Any) -> Any:
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))


def differences(a: Config, b: Config) -> List[str]:
    """Dotted keys whose values differ between two configs."""
    def walk(x: Any, y: Any, prefix: str) -> List[str]:
        if isinstance(x, dict) and isinstance(y, dict):
            out: List[str] = []
            for key in sorted(set(x) | set(y)):
                out.extend(walk(x.get(key), y.get(key), f"{prefix}{key}."))
            return out
        return [] if x == y else [prefix.rstrip(".")]

    return walk(config_to_dict(a), config_to_dict(b), "")
