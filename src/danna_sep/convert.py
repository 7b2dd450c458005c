"""Converters from upstream checkpoints to danna-sep models.

- the official X-UMX (asteroid layout, `pretrained_xumx_musdb18HQ.pth`) -> `xumx`
- an open-unmix target (umxhq / umxl layout, e.g. `vocals-b62c91ce.pth`) -> `umx`, and a
  set of four as a bundle (`load_umx`, `danna-sep separate --umx`)

Files are read with `torch.load(weights_only=True)`: no pickled code is ever run.
Each converter returns `(kwargs, state_dict)`: `models.build(name, **kwargs)` then
`load_state_dict(state_dict, strict=True)`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Tuple

import torch

from .errors import DannaSepError
from .models import SOURCES, SeparationModel

if TYPE_CHECKING:
    from .bundle import Bundle

StateDict = Dict[str, torch.Tensor]


class CheckpointError(DannaSepError):
    """A checkpoint file that cannot be read or converted; the message names the file."""


def load_state_file(path: str | os.PathLike) -> StateDict:
    """Read a checkpoint's tensors without unpickling code.

    Accepts a bare state dict, or a dict holding one under "state_dict" (asteroid,
    Lightning) whose keys may carry a "model." prefix.
    """
    try:
        obj = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except Exception as exc:  # torch raises many kinds for bad files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable weights file ({reason})") from None
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: holds no state dict of tensors")
    state = {str(k): v for k, v in obj.items()}
    if state and all(k.startswith("model.") for k in state):
        state = {k[len("model.") :]: v for k, v in state.items()}
    return state


def _lstm_layers(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"weight_ih_l(\d+)$")
    found = [int(m.group(1)) for k in state if (m := pattern.match(k))]
    if not found:
        raise CheckpointError(f"no LSTM weights under {prefix!r}")
    return max(found) + 1


def xumx_from_asteroid(state: Mapping[str, torch.Tensor]) -> Tuple[Dict[str, Any], StateDict]:
    """Map an asteroid X-UMX state dict (any source order) onto `xumx` (drums, bass, other, vocals)."""
    missing = [s for s in SOURCES if f"layer_enc.{s}.enc.0.weight" not in state]
    if missing:
        raise CheckpointError(f"not an X-UMX checkpoint: no encoder for {', '.join(missing)}")
    ms = "mean_scale."
    enc_weight = state["layer_enc.drums.enc.0.weight"]
    hidden, enc_inputs = enc_weight.shape
    max_bins = state[f"{ms}input_mean_drums"].numel()
    nb_output_bins = state[f"{ms}output_mean_drums"].numel()
    kwargs = {
        "n_fft": (nb_output_bins - 1) * 2,
        "hidden_channels": hidden,
        "max_bins": max_bins,
        "nb_channels": enc_inputs // max_bins,
        "nb_layers": _lstm_layers(state, "layer_lstm.drums."),
    }

    def cat(key: str) -> torch.Tensor:
        return torch.cat([state[key.format(src=s)] for s in SOURCES], dim=0)

    out: StateDict = {
        "input_means": cat(ms + "input_mean_{src}"),
        "input_scale": cat(ms + "input_scale_{src}"),
        "output_means": cat(ms + "output_mean_{src}"),
        "output_scale": cat(ms + "output_scale_{src}"),
        "affine1.0.weight": cat("layer_enc.{src}.enc.0.weight").unsqueeze(-1),
        "affine2.0.weight": cat("layer_dec.{src}.dec.0.weight").unsqueeze(-1),
        "affine2.3.weight": cat("layer_dec.{src}.dec.3.weight").unsqueeze(-1),
    }
    norms = {"affine1.1": "layer_enc.{src}.enc.1", "affine2.1": "layer_dec.{src}.dec.1",
             "affine2.4": "layer_dec.{src}.dec.4"}
    for ours, theirs in norms.items():
        for field in ("weight", "bias", "running_mean", "running_var"):
            out[f"{ours}.{field}"] = cat(f"{theirs}.{field}")
        counter = f"{theirs.format(src=SOURCES[0])}.num_batches_tracked"
        out[f"{ours}.num_batches_tracked"] = state.get(counter, torch.tensor(0))
    for src in SOURCES:
        prefix = f"layer_lstm.{src}."
        for key, value in state.items():
            if key.startswith(prefix):
                out[f"{src}_lstm.{key[len(prefix):]}"] = value
    return kwargs, out


# Keys some open-unmix files carry that are not part of the target network.
_UMX_EXTRA = re.compile(r"(^|\.)(window|sample_rate)$|^(stft|transform|istft)\.")


def umx_from_openunmix(
    state: Mapping[str, torch.Tensor], target: str = "vocals"
) -> Tuple[Dict[str, Any], StateDict]:
    """An open-unmix target state dict (umxhq, umxl, ...) -> `umx` kwargs and state dict."""
    state = {k: v for k, v in state.items() if not _UMX_EXTRA.search(k)}
    for key in ("fc1.weight", "fc3.weight", "input_mean", "output_mean"):
        if key not in state:
            raise CheckpointError(f"not an open-unmix checkpoint: no {key!r}")
    hidden, fc1_inputs = state["fc1.weight"].shape
    max_bin = state["input_mean"].numel()
    nb_bins = state["output_mean"].numel()
    kwargs = {
        "nb_bins": nb_bins,
        "nb_channels": fc1_inputs // max_bin,
        "hidden_size": hidden,
        "nb_layers": _lstm_layers(state, "lstm."),
        "unidirectional": "lstm.weight_ih_l0_reverse" not in state,
        "max_bin": max_bin,
        "target": target,
    }
    return kwargs, dict(state)


# --- Open-Unmix's published files, as torch hub keeps them --------------------------------

#: Open-Unmix's file names: the target, then the start of the file's sha256 (torch hub's
#: convention: at least 8 hex digits in the published files).
UMX_FILE = re.compile(r"(?P<target>[a-z]+)-(?P<digest>[0-9a-f]{8,64})\.pth")
#: The families `--umx` takes by name, in torch hub's checkpoints folder.
UMX_FAMILIES = ("umxhq", "umxl")


def umx_files(spec: str | os.PathLike) -> Dict[str, Path]:
    """`{target: file}` of one Open-Unmix set: `spec` is "umxhq" or "umxl" (their published
    names in torch hub's checkpoints folder, where `danna-sep download` puts them) or a folder
    holding one `TARGET-HASH.pth` per source (with several sets, the one published set
    complete there). A missing or ambiguous file is a `CheckpointError` naming the folder."""
    from .download.sources import FAMILIES, torch_hub_checkpoints

    family = str(spec) if str(spec) in UMX_FAMILIES else None
    folder = torch_hub_checkpoints() if family else Path(spec)
    fetch = f"danna-sep download {family or 'umxhq'}" + ("" if family else f" --to {folder}")
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such folder ({fetch} fetches Open-Unmix's files)")
    found: Dict[str, List[Path]] = {source: [] for source in SOURCES}
    for path in sorted(folder.iterdir()):
        match = UMX_FILE.fullmatch(path.name)
        if match and match["target"] in found and path.is_file():
            found[match["target"]].append(path)
    published = {name: {f.name for f in FAMILIES[name].files} for name in UMX_FAMILIES}
    if family is not None:
        found = {t: [p for p in paths if p.name in published[family]] for t, paths in found.items()}
    elif any(len(paths) > 1 for paths in found.values()):
        complete = [name for name in UMX_FAMILIES
                    if all(any(p.name in published[name] for p in paths) for paths in found.values())]
        if len(complete) != 1:
            target = next(t for t, paths in found.items() if len(paths) > 1)
            raise CheckpointError(f"{folder}: several Open-Unmix files for {target} "
                                  f"({', '.join(p.name for p in found[target])}): keep one set per folder")
        found = {t: [p for p in paths if p.name in published[complete[0]]] for t, paths in found.items()}
    missing = [t for t, paths in found.items() if not paths]
    if missing:
        names = ", ".join(f"{t}-HASH.pth" for t in missing)
        if family is not None:
            names = ", ".join(f.name for f in FAMILIES[family].files if UMX_FILE.fullmatch(f.name)["target"] in missing)
        raise CheckpointError(f"{folder}: no Open-Unmix {names} ({fetch} fetches them)")
    return {target: paths[0] for target, paths in found.items()}


def load_umx_file(path: Path, target: str) -> SeparationModel:
    """One Open-Unmix target file (an `openunmix` state dict, read with weights_only) as our
    network, after checking the sha256 prefix its name carries; loaded with `strict=True`."""
    from . import models
    from .download.sources import FAMILIES
    from .hashing import file_sha256

    digest = UMX_FILE.fullmatch(path.name)["digest"]
    actual = file_sha256(path)
    if not actual.startswith(digest):
        family = next((name for name in UMX_FAMILIES if path.name in {f.name for f in FAMILIES[name].files}), None)
        again = f"danna-sep download {family} fetches it again" if family else "fetch it again"
        raise CheckpointError(f"{path}: sha256 starts {actual[:len(digest)]}, not {digest} as its name says "
                              f"(a damaged or partial file; {again})")
    state = load_state_file(path)
    try:
        kwargs, _ = umx_from_openunmix(state, target=target)
        model = models.build("umx", **kwargs)
        model.load_state_dict(model.adopt_state(state), strict=True)
    except (CheckpointError, RuntimeError, ValueError, TypeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{path}: not an Open-Unmix target ({first})") from None
    return model.eval()


def load_umx(spec: str | os.PathLike) -> "Bundle":
    """Open-Unmix's four targets (`umx_files(spec)`) as a bundle of one member, a group whose
    magnitudes share one Wiener filter, as `openunmix.Separator` filters them."""
    from .bundle import Bundle, Member
    from .models import TargetGroup

    files = umx_files(spec)
    group = TargetGroup([load_umx_file(path, target) for target, path in files.items()])
    return Bundle([Member(group, {source: 1.0 for source in files})], list(SOURCES),
                  origin=str(next(iter(files.values())).parent))
