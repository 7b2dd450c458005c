"""From training runs to something that separates: our bundle format, or the original tool's files.

`members_from_checkpoints` reads run folders (their best checkpoint by validation SDR, else
the last) or checkpoint files, rebuilds each model from the registry name and constructor
arguments the checkpoint carries, and pairs it with blend weights. Single-target models (one
run per source, such as Open-Unmix's) become one member together, a `TargetGroup` whose
estimates share one Wiener filter. The blend weights, one table per member:

- "paper": Danna-Sep's table (X-UMX, U-Net, Demucs; the "fast" table for U-Net + Demucs);
- "equal": every model that produces a source gets the same share of it;
- a JSON object `{model name: {source: weight}}`, or a list with one `{source: weight}` per
  input in order, given inline or as a file;
- fitted: `export_bundle(..., fit_tracks=TRACKS)` separates held-out tracks with every
  member and keeps, per source, the weights with the best mean SDR (danna_sep.blendfit).

`export_bundle` writes our format (danna_sep.bundle.save_bundle) with each model's training
config and scores in the manifest; `export_torchscript` writes the original tool's
TorchScript files (danna_sep.bundle.export_original).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from . import models
from .bundle import Bundle, BundleError, Member, export_original, save_bundle
from .errors import USAGE, DannaSepError
from .models import FAST_BLEND, PAPER_BLEND, SOURCES, SeparationModel, TargetGroup, contract_of
from .progress import TaskProgressFn

log = logging.getLogger(__name__)

BlendSpec = Union[str, Dict[str, Any], List[Any], None]


class ExportError(DannaSepError):
    """An input or option that cannot be exported; the message starts with the path or option
    (a --blend table that means nothing is a usage error)."""


def _blend_error(message: str) -> ExportError:
    return ExportError(message, exit_code=USAGE)


@dataclass
class TrainedModel:
    """A model rebuilt from a checkpoint, with where it came from."""

    model: SeparationModel
    source: Path
    metadata: Dict[str, Any]

    @property
    def name(self) -> str:
        return self.model.name


def read_trained(path: str | os.PathLike) -> TrainedModel:
    """A run folder (best checkpoint, else last), a checkpoint file, or one model's weights file
    in a bundle folder -> the model it holds."""
    from .train.checkpoint import CheckpointFileError, load_checkpoint, pick_run_checkpoint

    path = Path(path)
    if path.suffix == ".safetensors" and (path.parent / "bundle.json").is_file():
        return _read_bundle_model(path)
    try:
        if path.is_dir():
            path, _ = pick_run_checkpoint(path)
        state = load_checkpoint(path)
    except CheckpointFileError as exc:
        raise ExportError(str(exc)) from None
    name = state["model"].get("name")
    kwargs = dict(state["model"].get("kwargs", {}))
    try:
        model = models.build(name, **kwargs)
        model.load_state_dict(state["state_dict"], strict=True)
    except KeyError as exc:
        raise ExportError(f"{path}: {exc.args[0]}") from None
    except (TypeError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ExportError(f"{path}: weights do not fit {name}({kwargs}): {first}") from None
    model.eval()
    metadata = {
        "checkpoint": str(path),
        "progress": state.get("progress", {}),
        "valid_sdr": state.get("valid"),
        "config": state.get("config"),
        "versions": state.get("versions", {}),
    }
    return TrainedModel(model, path, metadata)


def _read_bundle_model(path: Path) -> TrainedModel:
    """One model of a bundle, by its weights file (checked against the bundle's sha256), with
    the training record the bundle's manifest keeps for it: a member carried over unchanged
    into a new bundle (one stage fine-tunes some members and keeps the others)."""
    from .bundle import BUNDLE_FILE, GroupEntry, load_bundle, read_manifest

    try:
        manifest = read_manifest(path.parent)
        bundle = load_bundle(path.parent)
    except BundleError as exc:
        raise ExportError(str(exc)) from None
    files = [part.weights for entry in manifest.models
             for part in (entry.group if isinstance(entry, GroupEntry) else [entry])]
    if path.name not in files:
        raise ExportError(f"{path}: not one of the weights files of the bundle in {path.parent} "
                          f"({', '.join(files)})")
    index = files.index(path.name)
    model = [network for member in bundle.members for network in member.networks][index]
    records = json.loads((path.parent / BUNDLE_FILE).read_text(encoding="utf-8")).get("training") or []
    record = dict(records[index]) if index < len(records) and isinstance(records[index], dict) else {}
    metadata = {
        "checkpoint": record.get("checkpoint", str(path)),
        "progress": record.get("progress", {}),
        "valid_sdr": record.get("valid_sdr"),
        "config": record.get("config"),
        "versions": record.get("versions", {}),
        "bundle": str(path),
    }
    if "interpolated" in record:
        metadata["interpolated"] = record["interpolated"]
    return TrainedModel(model.eval(), path, metadata)


def _parse_blend_text(text: str) -> Any:
    candidate = Path(text)
    if candidate.suffix == ".json" or candidate.is_file():
        try:
            return json.loads(candidate.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ExportError(f"{text}: no such blend file") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ExportError(f"{text}: not a JSON blend table ({exc})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise _blend_error(f"--blend {text}: expected paper, equal, a JSON object or a .json file") from None


def _weights(table: Any, where: str) -> Dict[str, float]:
    if not isinstance(table, dict):
        raise _blend_error(f"{where}: expected {{source: weight}}")
    out = {}
    for source, weight in table.items():
        if source not in SOURCES:
            raise _blend_error(f"{where}: unknown source {source!r} (sources: {', '.join(SOURCES)})")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
            raise _blend_error(f"{where}: weight of {source} must be a number >= 0")
        out[source] = float(weight)
    return out


def join_targets(trained: Sequence[TrainedModel]) -> List[nn.Module]:
    """The members' models: each trained model, except that the single-target ones, where
    several were given, form one `TargetGroup` (in the order given, where the first stood)."""
    single = [t for t in trained if contract_of(t.model).output_kind == "magnitude"]
    if len(single) < 2:
        return [t.model for t in trained]
    try:
        group = TargetGroup([t.model for t in single])
    except ValueError as exc:  # two runs of one target, or of two networks
        sources = ", ".join(f"{t.source} ({t.name}, {t.model.sources[0]})" for t in single)
        raise ExportError(f"{sources}: single-target models form one group of one network, one per source: "
                          f"{exc}") from None
    out: List[nn.Module] = []
    for t in trained:
        if t is single[0]:
            out.append(group)
        elif all(t is not s for s in single):
            out.append(t.model)
    return out


def blend_tables(members: Sequence[nn.Module], blend: BlendSpec = None) -> List[Dict[str, float]]:
    """Per-member {source: weight} for the members' models (each with a `name` and
    `sources`), from a blend spec (see the module docstring)."""
    names = [m.name for m in members]
    if blend is None:
        blend = "paper" if len(set(names)) == len(names) and set(names) <= set(PAPER_BLEND) and len(names) > 1 else "equal"
    if isinstance(blend, str) and blend not in ("paper", "equal"):
        blend = _parse_blend_text(blend)
    if blend == "paper":
        table = FAST_BLEND if set(names) == set(FAST_BLEND) else PAPER_BLEND
        missing = [n for n in names if n not in table]
        if missing or len(set(names)) != len(names):
            raise _blend_error(f"--blend paper: covers {', '.join(table)} once each, not {', '.join(names)}")
        return [dict(table[n]) for n in names]
    if blend == "equal":
        counts = {s: sum(s in m.sources for m in members) for s in SOURCES}
        return [{s: (1.0 / counts[s] if s in m.sources else 0.0) for s in SOURCES} for m in members]
    if isinstance(blend, list):
        if len(blend) != len(members):
            grouped = " (the single-target models are one member)" if any(
                isinstance(m, TargetGroup) for m in members) else ""
            raise _blend_error(f"--blend: {len(blend)} tables for {len(members)} members{grouped}")
        return [_weights(entry, f"--blend[{i}]") for i, entry in enumerate(blend)]
    if isinstance(blend, dict):
        if len(set(names)) != len(names):
            raise _blend_error("--blend: models repeat a name; give a list with one table per input")
        unknown = [k for k in blend if k not in names]
        if unknown:
            raise _blend_error(f"--blend: {unknown[0]!r} is not one of the models ({', '.join(names)})")
        return [_weights(blend.get(n, {}), f"--blend[{n}]") for n in names]
    raise _blend_error("--blend: expected paper, equal, a JSON object or a list")


def interpolate_weights(trained: Sequence[TrainedModel], anchor: Bundle, alpha: float | Sequence[float]) -> None:
    """Move each trained model's weights to `(1 - alpha) * anchor + alpha * trained`, in place
    (`alpha` one share for all, or one per trained model).

    Weight-space ensembling (WiSE-FT, Wortsman et al. 2022): a model fine-tuned from the
    anchor stays in its basin, so the points between them are good models too; here they
    keep most of what fine-tuning on produced music gains and lose none of the anchor's
    quality on real recordings (README, "The default model"). `anchor` holds the same
    architectures, in the same order, with the same constructor arguments.
    """
    alphas = [float(alpha)] * len(trained) if isinstance(alpha, (int, float)) else [float(a) for a in alpha]
    if len(alphas) != len(trained):
        raise _blend_error(f"--alpha: {len(alphas)} shares for {len(trained)} models")
    for share in alphas:
        if not 0.0 <= share <= 1.0:
            raise _blend_error(f"--alpha {share}: must be between 0 and 1")
    where = anchor.origin or "the anchor bundle"
    networks = [network for member in anchor.members for network in member.networks]  # a group's in order
    if len(networks) != len(trained):
        raise ExportError(f"{where}: {len(networks)} models, but {len(trained)} were given to export")
    for t, network, alpha in zip(trained, networks, alphas):
        if (network.name, network.config) != (t.name, t.model.config):
            raise ExportError(f"{where}: {network.name}({network.config}) cannot be interpolated with "
                              f"{t.source}'s {t.name}({t.model.config})")
        ours, theirs = t.model.state_dict(), network.state_dict()
        if all(torch.equal(ours[key], theirs[key]) for key in ours):
            continue  # the anchor's own model, carried over: nothing moves, its record stays
        mixed = {}
        for key, value in ours.items():
            if value.is_floating_point():
                # in float64, so that alpha 0 and 1 give either end's weights to the bit
                blend = (1.0 - alpha) * theirs[key].double() + alpha * value.double()
                mixed[key] = blend.to(value.dtype)
            else:
                mixed[key] = value
        t.model.load_state_dict(mixed, strict=True)
        t.metadata["interpolated"] = {"anchor": str(where), "alpha": alpha}


def members_from_checkpoints(paths: Sequence[str | os.PathLike], blend: BlendSpec = None,
                             fit_tracks: Optional[Sequence[Any]] = None,
                             progress: Optional[TaskProgressFn] = None,
                             interpolate: Optional[Tuple[Bundle, Union[float, Sequence[float]]]] = None,
                             ) -> Tuple[List[Member], List[Dict[str, Any]], Optional[Dict[str, Any]]]:
    """Bundle members, their training metadata and the blend fit (None unless `fit_tracks`)
    for run folders / checkpoint files; `interpolate=(anchor, alpha)` first moves their
    weights towards the anchor bundle's (`interpolate_weights`)."""
    if not paths:
        raise ExportError("nothing to export: give run folders or checkpoint files")
    trained = [read_trained(p) for p in paths]
    if interpolate is not None:
        interpolate_weights(trained, *interpolate)
    joined = join_targets(trained)
    fitted = None
    if fit_tracks is not None:
        if blend is not None:
            raise _blend_error("--blend: give blend weights or tracks to fit them on, not both")
        from .blendfit import fit_blend

        fit = fit_blend(joined, fit_tracks, SOURCES, device="cpu", progress=progress)
        tables = fit.weights
        fitted = {"tracks": [t.name for t in fit_tracks], "member_sdr": fit.member_sdr,
                  "blend_sdr": fit.blend_sdr}
        for model, table, alone in zip(joined, tables, fit.member_sdr):
            log.debug("%s: weights %s; alone %s", model.name, table, {k: round(v, 2) for k, v in alone.items()})
        log.debug("blend: %s", {k: round(v, 2) for k, v in fit.blend_sdr.items()})
    else:
        tables = blend_tables(joined, blend)
    for source in SOURCES:
        total = sum(t.get(source, 0.0) for t in tables)
        if total and abs(total - 1.0) > 1e-6:
            log.warning("blend weights of %s sum to %.4g, not 1", source, total)
    members = [Member(model, table) for model, table in zip(joined, tables)]
    return members, [t.metadata for t in trained], fitted


def export_bundle(paths: Sequence[str | os.PathLike], out: str | os.PathLike, blend: BlendSpec = None,
                  force: bool = False, fit_tracks: Optional[Sequence[Any]] = None,
                  progress: Optional[TaskProgressFn] = None,
                  interpolate: Optional[Tuple[Bundle, Union[float, Sequence[float]]]] = None) -> Path:
    """Write our bundle format to `out` (refuses to replace it unless `force`).

    With `fit_tracks` (`danna_sep.data.Track`s the models never trained on) the blend
    weights are fitted on them and the fit is recorded in the manifest. With
    `interpolate=(anchor, alpha)` the weights are first moved towards the anchor's.
    """
    if Path(out).exists() and not force:  # before any separating for the fit
        raise ExportError(f"{out}: already exists (use --force to overwrite)")
    members, metadata, fitted = members_from_checkpoints(paths, blend, fit_tracks, progress, interpolate)
    extra: Dict[str, Any] = {"training": metadata}
    if fitted is not None:
        extra["blend_fit"] = fitted
    try:
        return save_bundle(out, members, force=force, extra=extra)
    except BundleError as exc:
        raise ExportError(str(exc)) from None


def export_torchscript(paths: Sequence[str | os.PathLike], out: str | os.PathLike, force: bool = False) -> Path:
    """Write the original tool's TorchScript files (`xumx_mwf.pth`, `unet_attention.pth`, `demucs_4_decoders.pth`)."""
    members, _, _ = members_from_checkpoints(paths, "equal")
    folder = Path(out)
    names = [m.name for m in members]
    files = [type(m.model).original_file for m in members]
    for name, file in zip(names, files):
        if file is None:
            known = [n for n in models.names() if models.get(n).original_file]
            raise ExportError(f"{name}: the original tool has no file for this model (only {', '.join(known)})")
    if len(set(names)) != len(names):
        raise ExportError(f"{folder}: the original tool holds one model of each kind, got {', '.join(names)}")
    existing = [folder / str(f) for f in files if (folder / str(f)).exists()]
    if existing and not force:
        raise ExportError(f"{existing[0]}: already exists (use --force to overwrite)")
    return export_original(Bundle(members=members, sources=list(SOURCES)), folder)
