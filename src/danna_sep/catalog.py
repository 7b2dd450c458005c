"""What can separate, found without importing torch: bundles by name, the original tool's
checkpoints folder, and the names of the registry's architectures.

- Shipped bundles live in `src/danna_sep/pretrained/NAME/`; more can live in the folders
  that `$DANNA_BUNDLES` names (separated like `$PATH`), one bundle folder each. A name
  (`--bundle NAME`) is looked up in that order, the shipped ones first.
- `$DANNA_CHECKPOINTS` names the original Danna-Sep tool's checkpoints folder, as it does
  for that tool (which downloads its files into `~/danna-sep-checkpoints` by default).
- `ARCHITECTURES` names what `danna_sep.models` registers, so that `danna-sep models` can
  list it in a fraction of the time importing torch takes (a test keeps the two equal).

Bundle manifests are read as plain JSON here; `danna_sep.bundle.load_bundle` checks them
properly (weights, sha256) when a bundle is loaded.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

PRETRAINED = Path(__file__).parent / "pretrained"
BUNDLE_FILE = "bundle.json"
BUNDLES_ENV = "DANNA_BUNDLES"
CHECKPOINTS_ENV = "DANNA_CHECKPOINTS"
#: The original tool's checkpoint files, by member.
ORIGINAL_FILES = {
    "xumx": "xumx_mwf.pth",
    "unet_attn": "unet_attention.pth",
    "demucs_split": "demucs_4_decoders.pth",
}
#: The original tool could also run X-UMX from ONNX (through onnxruntime).
ORIGINAL_XUMX_ONNX = "xumx.onnx"

#: The registry's architectures, in registry order: name -> (network, input domain, output
#: kind). `danna_sep.models` is the source; tests/test_models.py checks this copy against it.
ARCHITECTURES: Dict[str, Tuple[str, str, str]] = {
    "xumx": ("X-UMX (CrossNet-Open-Unmix)", "magnitude", "mask"),
    "unet_attn": ("U-Net of D3 blocks, 2D local attention", "magnitude", "mask"),
    "demucs_split": ("Demucs, one decoder per source", "waveform", "waveform"),
    "umx": ("Open-Unmix, one target", "magnitude", "magnitude"),
    "demucs_v1": ("Demucs v1", "waveform", "waveform"),
}


@dataclass(frozen=True)
class BundleEntry:
    """A bundle folder found by name: where it is and what its manifest says."""

    name: str
    path: Path
    origin: str
    """"shipped", or "$DANNA_BUNDLES"."""
    models: List[str] = field(default_factory=list)
    sources: List[str] = field(default_factory=list)
    problem: Optional[str] = None
    """Why the manifest cannot be read, or None."""
    shadowed: bool = False
    """True when an earlier folder holds a bundle of the same name (that one is used)."""

    def as_dict(self) -> Dict[str, object]:
        return {"name": self.name, "path": str(self.path), "origin": self.origin, "models": self.models,
                "sources": self.sources, "problem": self.problem, "shadowed": self.shadowed}


def bundle_folders() -> List[Tuple[str, Path]]:
    """(origin, folder) searched for bundle names, in order: the shipped ones, then each
    folder of `$DANNA_BUNDLES`."""
    folders = [("shipped", PRETRAINED)]
    for part in os.environ.get(BUNDLES_ENV, "").split(os.pathsep):
        if part.strip():
            folders.append((f"${BUNDLES_ENV}", Path(os.path.expanduser(part.strip()))))
    return folders


def find_bundle(name: str) -> Optional[Path]:
    """The folder of the bundle called `name` (shipped first, then `$DANNA_BUNDLES`), or None.

    A name is one folder name: anything with a path separator is a path, not a name.
    """
    if not name or os.sep in name or (os.altsep and os.altsep in name) or name in (".", ".."):
        return None
    for _, folder in bundle_folders():
        candidate = folder / name
        if candidate.is_dir():
            return candidate
    return None


def _entry(path: Path, origin: str, shadowed: bool) -> BundleEntry:
    try:
        manifest = json.loads((path / BUNDLE_FILE).read_text(encoding="utf-8"))
        members = [str(m["name"]) for m in manifest["models"]]
        sources = [str(s) for s in manifest.get("sources", [])]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return BundleEntry(path.name, path, origin, problem=f"unreadable {BUNDLE_FILE} ({exc})", shadowed=shadowed)
    except (KeyError, TypeError, AttributeError):
        return BundleEntry(path.name, path, origin, problem=f"{BUNDLE_FILE} lists no models", shadowed=shadowed)
    return BundleEntry(path.name, path, origin, members, sources, shadowed=shadowed)


def list_bundles() -> Tuple[List[BundleEntry], List[str]]:
    """Every bundle folder (a folder holding `bundle.json`) by name, in lookup order, and a
    line for each `$DANNA_BUNDLES` folder that is not there."""
    entries: List[BundleEntry] = []
    problems: List[str] = []
    seen = set()
    for origin, folder in bundle_folders():
        if not folder.is_dir():
            if origin != "shipped":
                problems.append(f"${BUNDLES_ENV}: {folder}: no such folder")
            continue
        for path in sorted(folder.iterdir(), key=lambda p: p.name):
            if path.name.startswith(".") or not (path / BUNDLE_FILE).is_file():
                continue
            entries.append(_entry(path, origin, shadowed=path.name in seen))
            seen.add(path.name)
    return entries, problems


def checkpoints_folder() -> Optional[Path]:
    """`$DANNA_CHECKPOINTS` as a path, or None when it is unset or empty."""
    value = os.environ.get(CHECKPOINTS_ENV, "").strip()
    return Path(os.path.expanduser(value)) if value else None
