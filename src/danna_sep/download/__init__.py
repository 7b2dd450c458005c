"""Fetching published weights: the original Danna-Sep tool's checkpoints and Open-Unmix's
umxhq / umxl files, one command away (`danna-sep download FAMILY`).

- Where to: the original tool's files go where that tool puts them (`$DANNA_CHECKPOINTS`,
  else `~/danna-sep-checkpoints`); Open-Unmix's go into torch hub's checkpoints folder
  (`$TORCH_HOME/hub/checkpoints`), where `openunmix` and `torch.hub` look before they fetch.
- How: each file is written to a hidden temporary name beside its final one (`.NAME.part`)
  and renamed only once it is complete and checked. An interrupted transfer is resumed with
  an HTTP Range request (with If-Range, so that a file changed on the server is fetched
  afresh), within the same run a few times, and by the next run from what the last one kept.
  A server that ignores Range is read from the start again.
- Checks: Open-Unmix's names carry a sha256 prefix (`vocals-b62c91ce.pth`), which the data
  must match. The original tool published no hashes, so its files are loaded strictly (as
  `--checkpoints` loads them: TorchScript state dicts into our modules with `strict=True`),
  and the sha256 of what was fetched is recorded beside them (`danna-sep-downloads.json`);
  a later run checks the files present against that record.
- A web page (HTML) served instead of the data (an error, sign-in or quota page) is refused.

Only the standard library fetches (urllib, so `https_proxy` and friends apply). urllib's
client and torch are imported only when a file is fetched or checked, so that the command
line's help stays quick.

Rooms: `sources` (the families, their files and addresses, the default folders),
`transfer` (one HTTP transfer with resume), and here the checks, the record, `fetch` and
`download`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, Iterator, List, Optional

from .. import atomic
from ..errors import UsageError
from ..hashing import file_sha256
from .sources import (DEFAULT_CHECKPOINTS, FAMILIES, XUMX_ONNX, Family, RemoteFile, default_checkpoints,
                      default_folder, fetch_command, fetch_url, files_of, mirrored_url, torch_hub_checkpoints)
from .transfer import CHUNK, DownloadError, DownloadProgressFn, Dropped, Transfer

__all__ = ["CHUNK", "DEFAULT_CHECKPOINTS", "FAMILIES", "RECORD_FILE", "XUMX_ONNX", "DownloadError",
           "DownloadProgressFn", "Family", "Fetched", "RemoteFile", "default_checkpoints", "default_folder",
           "download", "fetch", "fetch_command", "fetch_url", "files_of", "torch_hub_checkpoints"]

log = logging.getLogger(__name__)

#: The sha256 of each file fetched without a published hash, beside the files.
RECORD_FILE = "danna-sep-downloads.json"


# --- checks -----------------------------------------------------------------------------------

def _check_loads(remote: RemoteFile, path: Path) -> Optional[str]:
    """Why `path` does not load as `remote.loads_as` strictly, or None when it does."""
    from ..bundle import BundleError, load_original_file

    try:
        load_original_file(str(remote.loads_as), path)
    except BundleError as error:
        text = str(error)
        return text[len(f"{path}: "):] if text.startswith(f"{path}: ") else text
    return None


class _Record:
    """`danna-sep-downloads.json`: the sha256 and size of each file fetched without a
    published hash, so that a later run can tell whether it is still what was fetched."""

    def __init__(self, folder: Path):
        self.path = folder / RECORD_FILE
        self.files: Dict[str, Dict[str, object]] = {}
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                self.files = {str(k): dict(v) for k, v in data["files"].items()}
            except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
                raise DownloadError(f"{self.path}: unreadable ({type(exc).__name__}); delete it, and the next "
                                    "download checks the files present by loading them and records them afresh")

    def get(self, name: str) -> Optional[Dict[str, object]]:
        return self.files.get(name)

    def put(self, name: str, sha256: str, size: int, url: Optional[str]) -> None:
        self.files[name] = {"sha256": sha256, "bytes": size, "url": url,
                            "recorded": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        atomic.write_text(self.path, json.dumps({"files": self.files}, indent=2, sort_keys=True) + "\n")



# --- a family ---------------------------------------------------------------------------------

@dataclass
class Fetched:
    """What `download` did with one file."""

    path: Path
    status: str
    """"downloaded", or "present" (there already, and checked)."""
    sha256: str


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """One download at a time per folder (an flock on the folder itself; none where there is no flock)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    handle = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DownloadError(f"{folder}: another danna-sep download is writing into this folder") from None
        yield
    finally:
        os.close(handle)


def _check_present(remote: RemoteFile, path: Path, record: Optional[_Record]) -> str:
    """The sha256 of a file already there, once it is checked; a DownloadError when it fails."""
    again = "--force fetches it again"
    if remote.sha256_prefix is not None:
        digest = file_sha256(path)
        if not digest.startswith(remote.sha256_prefix):
            raise DownloadError(f"{path}: its sha256 starts {digest[:len(remote.sha256_prefix)]}, its name says "
                                f"{remote.sha256_prefix} (damaged?); {again}")
        return digest
    entry = record.get(remote.name) if record is not None else None
    if entry is not None:
        size = path.stat().st_size
        digest = file_sha256(path) if size == entry.get("bytes") else ""
        if digest != entry.get("sha256"):
            raise DownloadError(f"{path}: not the file that was downloaded (its sha256 differs from the one "
                                f"recorded in {RECORD_FILE}); {again}")
        return digest
    problem = _check_loads(remote, path) if remote.loads_as else None
    if problem is not None:
        raise DownloadError(f"{path}: there already, and it does not load ({problem}); {again}")
    digest = file_sha256(path)
    if record is not None:
        record.put(remote.name, digest, path.stat().st_size, url=None)
        log.info("%s: there already (not fetched by danna-sep): it loads; its sha256 is now recorded", path)
    return digest


def fetch(remote: RemoteFile, folder: Path, *, mirror: Optional[str] = None, force: bool = False,
          retries: int = 3, retry_wait: float = 2.0, timeout: float = 30.0,
          progress: Optional[DownloadProgressFn] = None, record: Optional[_Record] = None) -> Fetched:
    """Fetch `remote` into `folder` (see the module's docstring), or check the copy there.

    `retries` counts attempts in a row that got no further; an attempt that got some bytes
    more resets it. The caller holds the folder's lock.
    """
    final = folder / remote.name
    if final.exists() and not force:
        digest = _check_present(remote, final, record)
        log.info("%s: there already, checked", final)
        return Fetched(final, "present", digest)
    url = mirrored_url(remote, mirror)
    transfer = Transfer(url, folder / f".{remote.name}.part", remote.name, size=remote.size, timeout=timeout,
                         progress=progress)
    if transfer.have():
        log.info("%s: resuming after the %d bytes a previous run kept", remote.name, transfer.have())
    stuck = 0
    try:
        while True:
            before = transfer.have()
            try:
                transfer.attempt()
                break
            except Dropped as dropped:
                stuck = 0 if transfer.have() > before else stuck + 1
                if stuck > retries:
                    kept = transfer.have()
                    raise DownloadError(
                        f"{url}: {dropped}; gave up after {retries + 1} tries without progress"
                        + (f" ({kept} bytes kept: run the command again to resume)" if kept else "")) from None
                log.info("%s: %s; trying again", remote.name, dropped)
                if stuck:
                    time.sleep(retry_wait * stuck)
    except KeyboardInterrupt:
        if transfer.have():
            log.info("%s: %d bytes kept in %s: run the command again to resume", remote.name, transfer.have(),
                     transfer.part)
        raise
    if progress is not None:
        progress(remote.name, transfer.have(), transfer.have())
    part = transfer.part
    size = part.stat().st_size
    if remote.size is not None and size != remote.size:
        transfer.restart()
        raise DownloadError(f"{url}: {size} bytes came, the file has {remote.size}: not kept")
    digest = file_sha256(part)
    if remote.sha256_prefix is not None and not digest.startswith(remote.sha256_prefix):
        transfer.restart()
        raise DownloadError(f"{url}: the data's sha256 starts {digest[:len(remote.sha256_prefix)]}, the published "
                            f"name says {remote.sha256_prefix}: not kept")
    if remote.loads_as is not None:
        problem = _check_loads(remote, part)
        if problem is not None:
            transfer.restart()
            raise DownloadError(f"{url}: what came does not load as {remote.name} ({problem}): not kept")
    if record is not None and remote.sha256_prefix is None:
        previous = record.get(remote.name)
        if previous is not None and previous.get("sha256") != digest:
            log.warning("%s: differs from the copy recorded before (the published file changed?)", remote.name)
    os.replace(part, final)
    transfer.meta_path.unlink(missing_ok=True)
    if record is not None and remote.sha256_prefix is None:
        record.put(remote.name, digest, size, url=url)
    log.info("%s: downloaded (%.1f MB, sha256 %s)", final, size / 1e6, digest[:12])
    return Fetched(final, "downloaded", digest)


def download(family: str, folder: os.PathLike | str | None = None, *, xumx_onnx: bool = False,
             mirror: Optional[str] = None, force: bool = False, retries: int = 3, retry_wait: float = 2.0,
             timeout: float = 30.0, progress: Optional[DownloadProgressFn] = None) -> List[Fetched]:
    """Fetch the published files of `family` ("danna-sep", "danna-sep-fast", "umxhq", "umxl")
    into `folder` (default: `default_folder`), each resumed, checked and renamed into place;
    files already there are checked instead, and kept (`force` fetches them again).

    `mirror` is a base address holding the files under their names (`MIRROR/NAME`), instead
    of the published links. Stops at the first file that fails (a `DownloadError`, one line).
    """
    if family not in FAMILIES:
        raise UsageError(f"{family}: no such model family (one of {', '.join(FAMILIES)})")
    chosen = FAMILIES[family]
    remotes = files_of(chosen, xumx_onnx)
    if xumx_onnx and chosen.files == remotes:
        raise UsageError(f"--xumx-onnx: {family} has no X-UMX file")
    if any(f.loads_as == "xumx_onnx" for f in remotes):
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise UsageError("--xumx-onnx: xumx.onnx runs through onnxruntime, which is not installed "
                             "(pip install onnxruntime); without it, fetch the TorchScript xumx_mwf.pth") from None
    target = Path(os.path.expanduser(str(folder))) if folder is not None else default_folder(chosen)
    if target.exists() and not target.is_dir():
        raise DownloadError(f"{target}: not a folder")
    made = [folder for folder in [target, *target.parents] if not folder.exists()]
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DownloadError(f"{target}: cannot make the folder ({error.strerror or error})") from None
    if not os.access(target, os.W_OK | os.X_OK):
        raise DownloadError(f"{target}: cannot write into this folder")
    fetched: List[Fetched] = []
    try:
        with _folder_lock(target):
            record = _Record(target) if any(f.sha256_prefix is None for f in remotes) else None
            for remote in remotes:
                fetched.append(fetch(remote, target, mirror=mirror, force=force, retries=retries,
                                     retry_wait=retry_wait, timeout=timeout, progress=progress, record=record))
    except BaseException:
        for folder in made:  # folders this call made and left empty (a kept .part stays, with its folder)
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    return fetched
