"""Bundles: a set of models, their weights and the per-source blend table.

Two formats are read:

- ours, a folder with `bundle.json` (registry name, constructor kwargs, weights file,
  sha256 and blend weights of each member; versions) and one `.safetensors` file per member;
- the original Danna-Sep tool's checkpoint folder: `unet_attention.pth`,
  `demucs_4_decoders.pth` and `xumx_mwf.pth` TorchScript files, blended with the paper's
  table (`fast=True`: U-Net and Demucs only, with the fast table).

A missing, truncated or tampered weights file is a `BundleError` naming the file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from . import __version__, models
from .catalog import BUNDLE_FILE, ORIGINAL_FILES, ORIGINAL_XUMX_ONNX
from .errors import USAGE, DannaSepError
from .models import SOURCES

log = logging.getLogger(__name__)

FORMAT = "danna-sep-bundle"
FORMAT_VERSION = 1

# The paper's blend (SPEC-models.md): model -> source -> weight; each source sums to 1.
PAPER_BLEND = {
    "xumx": {"drums": 0.2, "bass": 0.1, "other": 0.0, "vocals": 0.2},
    "unet_attn": {"drums": 0.2, "bass": 0.17, "other": 0.5, "vocals": 0.4},
    "demucs_split": {"drums": 0.6, "bass": 0.73, "other": 0.5, "vocals": 0.4},
}
FAST_BLEND = {
    "unet_attn": {"drums": 0.4, "bass": 0.27, "other": 0.5, "vocals": 0.6},
    "demucs_split": {"drums": 0.6, "bass": 0.73, "other": 0.5, "vocals": 0.4},
}

class OnnxMaskModel(nn.Module):
    """An X-UMX-style ONNX file run by onnxruntime on the CPU, with the original calling
    convention: magnitude `(1, 2, 2049, frames)` -> masks `(1, 4, 2, 2049, frames)`."""

    sources = list(SOURCES)
    samplerate = 44100
    audio_channels = 2
    input_domain = "magnitude"
    output_kind = "mask"

    def __init__(self, path: str | os.PathLike):
        super().__init__()
        import onnxruntime  # deferred: optional

        self.path = str(path)
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only
        self.session = onnxruntime.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, mag: torch.Tensor) -> torch.Tensor:
        feed = {self.input_name: mag.detach().to("cpu", torch.float32).contiguous().numpy()}
        (mask,) = self.session.run(None, feed)[:1]
        return torch.from_numpy(mask).to(mag.device)


def _load_onnx_xumx(path: Path) -> nn.Module:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise BundleError(f"{path}: running xumx.onnx needs onnxruntime (pip install onnxruntime), "
                          "or use --fast to skip X-UMX") from None
    try:
        return OnnxMaskModel(path)
    except Exception as exc:  # onnxruntime raises its own exception types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BundleError(f"{path}: not a readable ONNX file ({first})") from None


class BundleError(DannaSepError):
    """A bundle that cannot be loaded; the message names the file and the problem."""


@dataclass
class Member:
    """One model of a bundle with its blend weights per source."""

    name: str
    model: nn.Module
    blend: Dict[str, float]
    kwargs: Dict[str, Any] = field(default_factory=dict)


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
    """Write `members` as a bundle folder, atomically (a temporary folder renamed when complete)."""
    from safetensors.torch import save_file

    target = Path(folder)
    if target.exists() and not force:
        raise BundleError(f"{target}: already exists (use --force to overwrite)")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        entries = []
        for index, member in enumerate(members):
            models.get(member.name)  # an unknown name fails here, before anything is written
            filename = f"{index:02d}-{member.name}.safetensors"
            state = {k: v.detach().cpu().contiguous() for k, v in member.model.state_dict().items()}
            save_file(state, str(staging / filename))
            entries.append({
                "name": member.name,
                "kwargs": member.kwargs,
                "weights": filename,
                "sha256": sha256_of(staging / filename),
                "blend": {s: float(member.blend.get(s, 0.0)) for s in sources},
            })
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "sources": list(sources),
            "samplerate": 44100,
            "models": entries,
            "versions": {"danna_sep": __version__, "torch": torch.__version__},
        }
        if extra:
            manifest.update(extra)
        (staging / BUNDLE_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        # mkdtemp (and safetensors) create owner-only files; a bundle is meant to be shared
        # (installed as package data, copied to other users), so give it the usual modes.
        umask = os.umask(0)
        os.umask(umask)
        for path in staging.iterdir():
            path.chmod(0o666 & ~umask)
        staging.chmod(0o777 & ~umask)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _read_manifest(folder: Path) -> Dict[str, Any]:
    path = folder / BUNDLE_FILE
    if not path.is_file():
        raise BundleError(f"{folder}: not a bundle (no {BUNDLE_FILE})")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{path}: not a danna-sep bundle manifest")
    if not isinstance(manifest.get("models"), list) or not manifest["models"]:
        raise BundleError(f"{path}: lists no models")
    return manifest


def _build_with_weights(name: str, kwargs: Mapping[str, Any], state: Mapping[str, torch.Tensor],
                        weights: Path) -> nn.Module:
    """The registry model `name` holding the tensors of `state` themselves.

    The model is built on the meta device, so its random initial weights never take memory
    beside the loaded ones (a full-size bundle loads in half the peak memory).
    """
    with torch.device("meta"):
        model = models.build(name, **kwargs)
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
    manifest = _read_manifest(root)
    sources = list(manifest.get("sources", SOURCES))
    members = []
    for entry in manifest["models"]:
        name = entry.get("name")
        try:
            models.get(name)
        except KeyError as exc:
            raise BundleError(f"{root / BUNDLE_FILE}: {exc.args[0]}") from None
        weights = root / str(entry.get("weights", ""))
        if not weights.is_file():
            raise BundleError(f"{weights}: weights file missing")
        if sha256_of(weights) != entry.get("sha256"):
            raise BundleError(f"{weights}: sha256 does not match the bundle (truncated or tampered)")
        try:
            state = load_file(str(weights))
        except (SafetensorError, OSError) as exc:
            raise BundleError(f"{weights}: unreadable weights ({exc})") from None
        kwargs = dict(entry.get("kwargs", {}))
        model = _build_with_weights(name, kwargs, state, weights)
        model.eval()
        members.append(Member(name=name, model=model, blend=dict(entry.get("blend", {})), kwargs=kwargs))
    return Bundle(members=members, sources=sources, origin=str(root))


# --- the original tool's TorchScript files -------------------------------------------------

def _infer_original_kwargs(name: str, state: Mapping[str, torch.Tensor], scripted: Any) -> Dict[str, Any]:
    """Constructor arguments of our class that reproduce a TorchScript file's shapes."""
    if name == "xumx":
        bins = state["output_means"].numel() // 4
        max_bins = state["input_means"].numel() // 4
        layers = len([k for k in state if k.startswith("drums_lstm.weight_ih_l") and "reverse" not in k])
        return {
            "n_fft": (bins - 1) * 2,
            "hidden_channels": state["affine1.1.weight"].numel() // 4,
            "max_bins": max_bins,
            "nb_channels": state["affine1.0.weight"].shape[1] // max_bins,
            "nb_layers": layers,
        }
    if name == "unet_attn":
        k = state["down_convs.0.0.d2_layers.0.conv_layers.0.weight"].shape[0] // 5
        # Files the original tool wrote carry no bias attribute and were trained with its
        # -1e-9; files we export carry ours, so a U-Net we trained keeps its -1e9.
        from .models.unet import ORIGINAL_PADDING_BIAS

        biases = [getattr(m, "padding_bias") for _, m in scripted.named_modules() if hasattr(m, "padding_bias")]
        original = not biases or float(biases[0]) == ORIGINAL_PADDING_BIAS
        # The attention's widths: narrower than the paper's in the default bundle.
        heads = [getattr(m, "n_heads") for _, m in scripted.named_modules() if hasattr(m, "n_heads")]
        return {"max_bins": int(getattr(scripted, "max_bins", 1487)), "k": k, "original_padding_bias": original,
                "attn_channels": state["attn.0.out_conv.weight"].shape[0],
                "attn_d_model": state["attn.0.out_conv.weight"].shape[1],
                "attn_heads": int(heads[0]) if heads else 8}
    if name == "demucs_split":
        depth = len({k.split(".")[1] for k in state if k.startswith("encoder.")})
        return {
            "channels": state["encoder.0.0.weight"].shape[0],
            "depth": depth,
            "resample": "up_sample.kernel" in state,
            "kernel_size": state["encoder.0.0.weight"].shape[-1],
            "stride": int(getattr(scripted, "stride", 4)),
            "lstm_layers": len([k for k in state if k.startswith("lstm.weight_ih_l") and "reverse" not in k]),
        }
    raise KeyError(name)


def load_original_file(name: str, path: str | os.PathLike) -> Tuple[nn.Module, Dict[str, Any]]:
    """One of the original tool's files as our module for member `name` ("xumx", "unet_attn",
    "demucs_split"; "xumx_onnx" for xumx.onnx, run by onnxruntime), and its constructor
    arguments. A TorchScript file's state dict is loaded with `strict=True`."""
    path = Path(path)
    if name == "xumx_onnx":
        return _load_onnx_xumx(path), {}
    try:
        scripted = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BundleError(f"{path}: not a readable TorchScript file ({first})") from None
    state = dict(scripted.state_dict())
    try:
        kwargs = _infer_original_kwargs(name, state, scripted)
        model = models.build(name, **kwargs)
        model.load_state_dict(state, strict=True)
    except (KeyError, RuntimeError, IndexError) as exc:
        raise BundleError(f"{path}: weights do not fit {name} ({type(exc).__name__}: {exc})") from None
    return model.eval(), kwargs


def load_original(folder: str | os.PathLike, fast: bool = False) -> Bundle:
    """Load the original tool's TorchScript checkpoints into our modules.

    The files' state dicts are loaded into our classes with `strict=True`; our modules
    then run them (with the U-Net's original attention padding bias).
    """
    from .download import fetch_command

    root = Path(folder)
    if not root.is_dir():
        raise BundleError(f"{root}: checkpoint folder not found ({fetch_command(root, fast)} fetches the "
                          "original tool's files)")
    table = FAST_BLEND if fast else PAPER_BLEND
    members = []
    for name, blend in table.items():
        path = root / ORIGINAL_FILES[name]
        onnx_path = root / ORIGINAL_XUMX_ONNX
        if name == "xumx" and not path.is_file() and onnx_path.is_file():
            members.append(Member(name=name, model=_load_onnx_xumx(onnx_path), blend=dict(blend), kwargs={}))
            continue
        if not path.is_file():
            hint = f"or {ORIGINAL_XUMX_ONNX}; {fetch_command(root)} fetches them, or use --fast to skip X-UMX" \
                if name == "xumx" else f"{fetch_command(root, fast)} fetches it"
            raise BundleError(f"{path}: checkpoint missing ({hint})")
        model, kwargs = load_original_file(name, path)
        members.append(Member(name=name, model=model, blend=dict(blend), kwargs=kwargs))
    return Bundle(members=members, sources=list(SOURCES), origin=str(root))


def _export_onnx(model: nn.Module, path: str) -> None:
    """X-UMX to ONNX with a variable number of frames (needs the `onnx` package)."""
    import warnings

    example = torch.rand(1, 2, 2049, 16)
    with warnings.catch_warnings():  # the TorchScript-based exporter is deprecated but handles LSTMs
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (example,), path, dynamo=False, input_names=["magnitude"], output_names=["mask"],
            dynamic_axes={"magnitude": {3: "frames"}, "mask": {4: "frames"}}, opset_version=17,
        )


def export_original(bundle: Bundle, folder: str | os.PathLike, xumx_onnx: bool = False) -> Path:
    """Write a bundle's X-UMX / U-Net / Demucs members as TorchScript files with the original
    names; with `xumx_onnx`, X-UMX goes to `xumx.onnx` instead."""
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    for member in bundle.members:
        if member.name not in ORIGINAL_FILES:
            raise BundleError(f"{member.name} has no place in the original tool's checkpoint folder")
        onnx = xumx_onnx and member.name == "xumx"
        final = root / (ORIGINAL_XUMX_ONNX if onnx else ORIGINAL_FILES[member.name])
        fd, temp = tempfile.mkstemp(prefix=f".{final.name}.tmp-", dir=root)
        os.close(fd)
        try:
            if onnx:
                _export_onnx(member.model.eval(), temp)
            else:
                torch.jit.script(member.model).save(temp)
            os.replace(temp, final)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
    return root
