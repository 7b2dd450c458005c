"""Bundles: a set of models, their weights and the per-source blend table.

Two formats are read:

- ours, a folder with `bundle.json` (registry name, constructor kwargs, weights file,
  sha256 and blend weights of each member; versions) and one `.safetensors` file per model.
  A member may be a group of single-target models of one network, one per source, whose
  estimates share one Wiener filter (`TargetGroup`): its entry lists each model's kwargs,
  weights file and sha256 under `group` (format_version 2; a bundle without groups is
  still written as version 1, which older readers take);
- the original Danna-Sep tool's checkpoint folder: one TorchScript file per member of the
  paper's blend, named by each network's `original_file` (an ONNX form instead where the
  network names an `original_onnx`), blended with the paper's table (`fast=True`: the fast
  table's members only).

A member is a model (or a `TargetGroup` of them) and its blend weights; the model itself
says what it is (its registry name, its constructor arguments in `model.config`, its
original file), so nothing here asks for a network by its name.

A missing, truncated or tampered weights file is a `BundleError` naming the file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import torch

from . import SAMPLERATE, __version__, atomic, models, schema
from .catalog import BUNDLE_FILE, ORIGINAL_FILES  # noqa: F401 - ORIGINAL_FILES: for the bundle's callers
from .errors import DannaSepError
from .models import FAST_BLEND, PAPER_BLEND, SOURCES, SeparationModel, TargetGroup

log = logging.getLogger(__name__)

FORMAT = "danna-sep-bundle"
FORMAT_VERSION = 2
"""The newest format read and written: 2 added target groups (`GroupEntry`)."""
UNGROUPED_VERSION = 1
"""The version of a bundle without groups, written as such so that older readers take it."""

# `load_original_file(NAME + ONNX_SUFFIX, path)` loads the ONNX form of network NAME.
ONNX_SUFFIX = "_onnx"


class OnnxModel(SeparationModel):
    """The ONNX form of one of the original tool's files, run by onnxruntime on the CPU with
    the calling convention of the network it stands for (`name`), whose contract it takes."""

    def __init__(self, path: str, name: str):
        super().__init__()
        import onnxruntime  # deferred: optional

        network = models.get(name)
        self.name = network.name
        self.input_domain, self.output_kind = network.input_domain, network.output_kind
        self.sources = list(SOURCES)
        self.samplerate = SAMPLERATE
        self.audio_channels = 2
        self.path = str(path)
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only
        self.session = onnxruntime.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feed = {self.input_name: x.detach().to("cpu", torch.float32).contiguous().numpy()}
        (out,) = self.session.run(None, feed)[:1]
        return torch.from_numpy(out).to(x.device)


def _load_onnx(name: str, path: Path) -> SeparationModel:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise BundleError(f"{path}: running {path.name} needs onnxruntime (pip install onnxruntime), "
                          f"or use --fast to skip {name}") from None
    try:
        return OnnxModel(str(path), name)
    except Exception as exc:  # onnxruntime raises its own exception types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BundleError(f"{path}: not a readable ONNX file ({first})") from None


class BundleError(DannaSepError):
    """A bundle that cannot be loaded; the message names the file and the problem."""


@dataclass
class Member:
    """One model of a bundle, or a group of single-target models, with its blend weights per source."""

    model: Union[SeparationModel, TargetGroup]
    blend: Dict[str, float]

    @property
    def name(self) -> str:
        """The model's registry name (a group's: its network's)."""
        return self.model.name

    @property
    def networks(self) -> List[SeparationModel]:
        """The model, or a group's models in order."""
        return self.model.targets if isinstance(self.model, TargetGroup) else [self.model]


@dataclass
class MemberEntry:
    """One model in `bundle.json`."""

    name: str
    """Registry name."""
    kwargs: Dict[str, Any]
    """Constructor arguments (`model.config` when written)."""
    weights: str
    """The safetensors file, in the bundle folder."""
    sha256: str
    blend: Dict[str, float]
    """Weight per source in the blend."""


@dataclass
class GroupModel:
    """One model of a group in `bundle.json`."""

    kwargs: Dict[str, Any]
    """Constructor arguments (`model.config` when written)."""
    weights: str
    """The safetensors file, in the bundle folder."""
    sha256: str


@dataclass
class GroupEntry:
    """A group of single-target models of network `name` in `bundle.json` (format_version 2):
    one member whose models' estimates share one Wiener filter."""

    TAG = "group"  # an entry with this key is a group (danna_sep.schema)
    name: str
    """Registry name of every model of the group."""
    group: List[GroupModel]
    """The models, one per source, in order."""
    blend: Dict[str, float]
    """Weight per source in the blend."""


def _models_of(entry: Union[MemberEntry, GroupEntry]) -> List[GroupModel]:
    """The models an entry lists: a group's, or the one it names."""
    if isinstance(entry, GroupEntry):
        return list(entry.group)
    return [GroupModel(kwargs=entry.kwargs, weights=entry.weights, sha256=entry.sha256)]


@dataclass(kw_only=True)
class Manifest:
    """`bundle.json`. Writers may add keys of their own (export adds the members' training
    records and a blend fit), so keys beyond these are left to them."""

    OPEN_KEYS = True
    format: str
    format_version: int = FORMAT_VERSION
    sources: List[str] = field(default_factory=lambda: list(SOURCES))
    samplerate: int = SAMPLERATE
    models: List[Union[GroupEntry, MemberEntry]]
    versions: Dict[str, str] = field(default_factory=dict)


@dataclass
class Bundle:
    members: List[Member]
    sources: List[str]
    origin: str = ""

    def describe(self) -> str:
        names = ", ".join(m.name for m in self.members)
        return f"{self.origin or 'bundle'} ({names})"


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_bundle(
    folder: str | os.PathLike,
    members: Sequence[Member],
    sources: Sequence[str] = SOURCES,
    force: bool = False,
    extra: Optional[Mapping[str, Any]] = None,
) -> Path:
    """Write `members` as a bundle folder, whole or not at all (a temporary folder renamed when
    complete, danna_sep.atomic), with the modes a plain mkdir and open give: a bundle is meant
    to be shared (installed as package data, copied to other users)."""
    from safetensors.torch import save_file

    target = Path(folder)
    if target.exists() and not force:
        raise BundleError(f"{target}: already exists (use --force to overwrite)")
    for member in members:  # fails before anything is written
        for network in member.networks:
            if models.get(network.name) is not type(network):
                raise KeyError(f"{type(network).__name__} is not the registry's {network.name!r}")
    with atomic.writing(target, directory=True) as staging:
        entries = []
        for index, member in enumerate(members):
            grouped = isinstance(member.model, TargetGroup)
            written = []
            for network in member.networks:
                filename = f"{index:02d}-{member.name}" + (f"-{network.sources[0]}" if grouped else "") + ".safetensors"
                state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
                save_file(state, str(staging / filename))
                written.append(GroupModel(kwargs=network.config, weights=filename, sha256=sha256_of(staging / filename)))
            blend = {s: float(member.blend.get(s, 0.0)) for s in sources}
            entries.append(GroupEntry(name=member.name, group=written, blend=blend) if grouped else
                           MemberEntry(name=member.name, blend=blend, **schema.to_json(written[0])))
        grouped = any(isinstance(entry, GroupEntry) for entry in entries)
        manifest = schema.to_json(Manifest(
            format=FORMAT, format_version=FORMAT_VERSION if grouped else UNGROUPED_VERSION, sources=list(sources),
            samplerate=SAMPLERATE, models=entries, versions={"danna_sep": __version__, "torch": torch.__version__}))
        if extra:
            manifest.update(extra)
        (staging / BUNDLE_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        # safetensors makes its files owner-only; a bundle is meant to be shared (package data,
        # copied to other users): the weights get the mode a plain open() gave bundle.json.
        mode = (staging / BUNDLE_FILE).stat().st_mode & 0o777
        for entry in entries:
            for written_model in _models_of(entry):
                (staging / written_model.weights).chmod(mode)
    return target


def read_manifest(folder: str | os.PathLike) -> Manifest:
    """A bundle folder's checked `bundle.json`: a `BundleError` naming the key otherwise."""
    path = Path(folder) / BUNDLE_FILE
    if not path.is_file():
        raise BundleError(f"{folder}: not a bundle (no {BUNDLE_FILE})")
    data = schema.read_json(path, BundleError, "bundle manifest")
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BundleError(f"{path}: not a danna-sep bundle manifest")
    manifest = schema.from_json(Manifest, data, str(path), error=BundleError)

    def fail(message: str) -> BundleError:
        return BundleError(f"{path}: {message}")

    if manifest.format_version > FORMAT_VERSION:
        raise fail(f"format_version: {manifest.format_version} is newer than this danna-sep reads "
                   f"({FORMAT_VERSION}); upgrade danna-sep")
    if manifest.samplerate != SAMPLERATE:
        raise fail(f"samplerate: {manifest.samplerate}, but the models work at {SAMPLERATE} Hz")
    unknown = [s for s in manifest.sources if s not in SOURCES]
    if unknown or len(set(manifest.sources)) != len(manifest.sources) or not manifest.sources:
        raise fail(f"sources: {manifest.sources} is not a selection of {', '.join(SOURCES)}")
    if not manifest.models:
        raise fail("lists no models")
    for index, entry in enumerate(manifest.models):
        key = f"models[{index}]"
        if isinstance(entry, GroupEntry) and not entry.group:
            raise fail(f"{key}.group: lists no models")
        try:
            models.get(entry.name)
        except KeyError as exc:
            raise fail(f"{key}.name: {exc.args[0]}") from None
        for source, weight in entry.blend.items():
            if source not in manifest.sources:
                raise fail(f"{key}.blend.{source}: not one of the bundle's sources ({', '.join(manifest.sources)})")
            if weight < 0:
                raise fail(f"{key}.blend.{source}: a weight must be 0 or more, got {weight}")
    return manifest


def _build_with_weights(name: str, kwargs: Mapping[str, Any], state: Mapping[str, torch.Tensor],
                        weights: Path, key: str) -> SeparationModel:
    """The registry model `name` holding the tensors of `state` themselves.

    The model is built on the meta device, so its random initial weights never take memory
    beside the loaded ones (a full-size bundle loads in half the peak memory).
    """
    try:
        with torch.device("meta"):
            model = models.build(name, **kwargs)
    except (TypeError, ValueError) as exc:  # arguments the constructor refuses
        raise BundleError(f"{weights.parent / BUNDLE_FILE}: {key}.kwargs do not fit {name}: {exc}") from None
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise BundleError(f"{weights}: weights do not fit {name}({dict(kwargs)}): {first}") from None
    if any(t.is_meta for t in [*model.parameters(), *model.buffers()]):  # state outside the state dict
        fresh = models.build(name, **kwargs)
        fresh.load_state_dict(state, strict=True)
        return fresh
    return model


def load_bundle(folder: str | os.PathLike) -> Bundle:
    """Load our bundle format, checking every weights file against its declared sha256."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    root = Path(folder)
    manifest = read_manifest(root)
    members = []
    for index, entry in enumerate(manifest.models):
        networks = []
        grouped = isinstance(entry, GroupEntry)
        for number, part in enumerate(_models_of(entry)):
            key = f"models[{index}]" + (f".group[{number}]" if grouped else "")
            weights = root / part.weights
            if not weights.is_file():
                raise BundleError(f"{weights}: weights file missing")
            if sha256_of(weights) != part.sha256:
                raise BundleError(f"{weights}: sha256 does not match the bundle (truncated or tampered)")
            try:
                state = load_file(str(weights))
            except (SafetensorError, OSError) as exc:
                raise BundleError(f"{weights}: unreadable weights ({exc})") from None
            networks.append(_build_with_weights(entry.name, part.kwargs, state, weights, key).eval())
        if not grouped:
            model: Union[SeparationModel, TargetGroup] = networks[0]
        else:
            try:
                model = TargetGroup(networks)
            except ValueError as exc:  # not single-target models, or a source twice
                raise BundleError(f"{root / BUNDLE_FILE}: models[{index}].group: {exc}") from None
        members.append(Member(model, dict(entry.blend)))
    return Bundle(members=members, sources=list(manifest.sources), origin=str(root))


# --- the original tool's TorchScript files -------------------------------------------------

def load_original_file(name: str, path: str | os.PathLike) -> SeparationModel:
    """One of the original tool's files as our module for network `name` (a registry name, or
    NAME + ONNX_SUFFIX for the ONNX form, run by onnxruntime). A TorchScript file's state
    dict is loaded with `strict=True` into the network built with the arguments it fits."""
    path = Path(path)
    if name.endswith(ONNX_SUFFIX):
        return _load_onnx(name[: -len(ONNX_SUFFIX)], path)
    try:
        scripted = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BundleError(f"{path}: not a readable TorchScript file ({first})") from None
    state = dict(scripted.state_dict())
    try:
        network = models.get(name)
        model = network(**network.original_kwargs(state, scripted))
        model.load_state_dict(state, strict=True)
    except (KeyError, RuntimeError, IndexError) as exc:
        raise BundleError(f"{path}: weights do not fit {name} ({type(exc).__name__}: {exc})") from None
    return model.eval()


def load_original(folder: str | os.PathLike, fast: bool = False) -> Bundle:
    """Load the original tool's TorchScript checkpoints into our modules.

    The files' state dicts are loaded into our classes with `strict=True`; our modules
    then run them (with whatever the files say of how they were trained, such as an
    attention padding bias).
    """
    from .download import fetch_command

    root = Path(folder)
    if not root.is_dir():
        raise BundleError(f"{root}: checkpoint folder not found ({fetch_command(root, fast)} fetches the "
                          "original tool's files)")
    table = FAST_BLEND if fast else PAPER_BLEND
    members = []
    for name, blend in table.items():
        network = models.get(name)
        path = root / str(network.original_file)
        onnx = network.original_onnx
        if onnx and not path.is_file() and (root / onnx).is_file():
            members.append(Member(_load_onnx(name, root / onnx), dict(blend)))
            continue
        if not path.is_file():
            hint = f"or {onnx}; {fetch_command(root)} fetches them, or use --fast to skip {name}" \
                if onnx else f"{fetch_command(root, fast)} fetches it"
            raise BundleError(f"{path}: checkpoint missing ({hint})")
        members.append(Member(load_original_file(name, path), dict(blend)))
    return Bundle(members=members, sources=list(SOURCES), origin=str(root))


def _export_onnx(model: SeparationModel, path: str) -> None:
    """A spectrogram model to ONNX with a variable number of frames (needs the `onnx` package)."""
    import warnings

    example = torch.rand(1, model.audio_channels, 2049, 16)  # the original tool's STFT: 2049 bins
    with warnings.catch_warnings():  # the TorchScript-based exporter is deprecated but handles LSTMs
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (example,), path, dynamo=False, input_names=[model.input_domain], output_names=[model.output_kind],
            dynamic_axes={model.input_domain: {3: "frames"}, model.output_kind: {4: "frames"}}, opset_version=17,
        )


def export_original(bundle: Bundle, folder: str | os.PathLike, onnx: bool = False) -> Path:
    """Write a bundle's members as TorchScript files with the original tool's names; with
    `onnx`, a member whose network has an ONNX form there goes to that file instead."""
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    for member in bundle.members:
        network = type(member.model)
        if network.original_file is None:
            raise BundleError(f"{member.name} has no place in the original tool's checkpoint folder")
        as_onnx = onnx and network.original_onnx is not None
        final = root / str(network.original_onnx if as_onnx else network.original_file)
        if as_onnx:
            atomic.write_with(final, lambda temporary: _export_onnx(member.model.eval(), str(temporary)))
        else:
            atomic.write_with(final, lambda temporary: torch.jit.script(member.model).save(str(temporary)))
    return root
