"""What `danna-sep download` knows of the published weights: each family's files, their
addresses and checks, and the folders the tools look in (see `danna_sep.download`).

Only the standard library, and nothing of torch, so that the command line's help stays quick.
"""

from __future__ import annotations

import os
import shlex
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

from .. import catalog

#: Where the original tool keeps its files when `$DANNA_CHECKPOINTS` is not set.
DEFAULT_CHECKPOINTS = "~/danna-sep-checkpoints"


@dataclass(frozen=True)
class RemoteFile:
    """One published file: its name on disk, where it is published, and how it is checked."""

    name: str
    url: str
    approx_bytes: int
    """Its size, about (float32 parameters x 4 bytes), for the help and the README."""
    sha256_prefix: Optional[str] = None
    """The published start of its sha256 (Open-Unmix's names carry one), or None."""
    loads_as: Optional[str] = None
    """The original-tool member it must load as (`bundle.load_original_file`) when no hash
    is published: "xumx", "unet_attn", "demucs_split", or "xumx_onnx"."""
    size: Optional[int] = None
    """Its exact size in bytes where that is published."""


@dataclass(frozen=True)
class Family:
    """A set of files that together make a model family, and where they are kept."""

    name: str
    summary: str
    source: str
    """Where the files (or the links to them) are published."""
    files: Tuple[RemoteFile, ...]
    cache: str
    """"checkpoints" ($DANNA_CHECKPOINTS) or "torch-hub" (torch hub's checkpoints folder)."""

    @property
    def approx_bytes(self) -> int:
        return sum(f.approx_bytes for f in self.files)


def _drive(file_id: str) -> str:
    return f"https://drive.google.com/uc?id={file_id}"


# The original tool's links (danna_sep/cli.py of github.com/yoyololicon/danna-sep): Google
# Drive files fetched into $DANNA_CHECKPOINTS on first use. Its last version runs X-UMX from
# xumx.onnx and keeps the TorchScript xumx_mwf.pth's link as the older one.
_UNET = RemoteFile("unet_attention.pth", _drive("1qzBbT8UIKKWNMs-kiB3MNHGccdwdBJVf"), 62_700_000,
                   loads_as="unet_attn")
_DEMUCS = RemoteFile("demucs_4_decoders.pth", _drive("1slSKOd7P-YmJ0HnjzaTOKQaOn3pQN0Ge"), 767_700_000,
                     loads_as="demucs_split")
_XUMX = RemoteFile("xumx_mwf.pth", _drive("1DCTJQ1ei4klR9L69fjbBGILMdJAoNN78"), 142_500_000, loads_as="xumx")
XUMX_ONNX = RemoteFile("xumx.onnx", _drive("1rpkvcaoKmHbSP5fk0zwhmDmqiSGVXXT8"), 142_500_000,
                       loads_as="xumx_onnx")
_DANNA_SOURCE = "https://github.com/yoyololicon/danna-sep"


def _umx(record: str, names: Dict[str, str], approx_bytes: int) -> Tuple[RemoteFile, ...]:
    return tuple(RemoteFile(f"{target}-{digest}.pth", f"https://zenodo.org/records/{record}/files/{target}-{digest}.pth",
                            approx_bytes, sha256_prefix=digest)
                 for target, digest in names.items())


#: What `danna-sep download` fetches, by name.
FAMILIES: Dict[str, Family] = {
    "danna-sep": Family(
        "danna-sep", "the original Danna-Sep tool's three models (--checkpoints DIR)", _DANNA_SOURCE,
        (_UNET, _DEMUCS, _XUMX), "checkpoints"),
    "danna-sep-fast": Family(
        "danna-sep-fast", "the U-Net and Demucs only (--checkpoints DIR --fast)", _DANNA_SOURCE,
        (_UNET, _DEMUCS), "checkpoints"),
    # Open-Unmix's published records (the URL tables of the openunmix package); the hash in
    # each name is the start of the file's sha256, as torch.hub checks it.
    "umxhq": Family(
        "umxhq", "Open-Unmix trained on MUSDB18-HQ, one file per target",
        "https://doi.org/10.5281/zenodo.3370489",
        _umx("3370489", {"bass": "8d85a5bd", "drums": "9619578f", "other": "b52fbbf7", "vocals": "b62c91ce"},
             35_600_000), "torch-hub"),
    "umxl": Family(
        "umxl", "Open-Unmix trained on extra data (UMX-L), one file per target",
        "https://doi.org/10.5281/zenodo.5069601",
        _umx("5069601", {"bass": "2ca1ce51", "drums": "69e0ebd4", "other": "c8c5b3e6", "vocals": "bccbd9aa"},
             113_100_000), "torch-hub"),
}


def torch_hub_checkpoints() -> Path:
    """torch hub's checkpoints folder, as `torch.hub.get_dir()` finds it (without importing
    torch): `$TORCH_HOME/hub/checkpoints`, `$TORCH_HOME` defaulting to `$XDG_CACHE_HOME/torch`
    and that to `~/.cache/torch`."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    home = os.environ.get("TORCH_HOME") or os.path.join(cache, "torch")
    return Path(os.path.expanduser(home)) / "hub" / "checkpoints"


def default_checkpoints() -> Path:
    """The original tool's checkpoints folder: `$DANNA_CHECKPOINTS`, else `~/danna-sep-checkpoints`."""
    return catalog.checkpoints_folder() or Path(os.path.expanduser(DEFAULT_CHECKPOINTS))


def default_folder(family: Family) -> Path:
    """Where `family`'s files go without `--to`."""
    return default_checkpoints() if family.cache == "checkpoints" else torch_hub_checkpoints()


def files_of(family: Family, xumx_onnx: bool = False) -> Tuple[RemoteFile, ...]:
    """The family's files; with `xumx_onnx`, the original tool's later xumx.onnx stands in for xumx_mwf.pth."""
    if not xumx_onnx:
        return family.files
    return tuple(XUMX_ONNX if f is _XUMX else f for f in family.files)


def fetch_command(folder: os.PathLike | str, fast: bool = False) -> str:
    """The command that fetches the original tool's files into `folder` (for messages)."""
    command = "danna-sep download danna-sep" + ("-fast" if fast else "")
    target = Path(os.path.expanduser(str(folder)))
    if target.absolute() != default_checkpoints().absolute():
        command += f" --to {shlex.quote(str(folder))}"
    return command


def fetch_url(url: str) -> str:
    """The address to fetch a published link from. Google Drive's `uc?id=` link answers a
    large file with a "cannot scan this file for viruses" page; its download host, asked
    with `confirm=t`, sends the file itself (and honours Range)."""
    parts = urllib.parse.urlsplit(url)
    if parts.netloc == "drive.google.com" and parts.path == "/uc":
        ids = urllib.parse.parse_qs(parts.query).get("id")
        if ids:
            query = urllib.parse.urlencode({"id": ids[0], "export": "download", "confirm": "t"})
            return f"https://drive.usercontent.google.com/download?{query}"
    return url


def mirrored_url(remote: RemoteFile, mirror: Optional[str]) -> str:
    """`remote`'s address, or `MIRROR/NAME` where a mirror holds the files under their names."""
    if mirror is None:
        return fetch_url(remote.url)
    return mirror.rstrip("/") + "/" + urllib.parse.quote(remote.name)

