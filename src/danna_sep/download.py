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
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shlex
import shutil
import time
import urllib.parse
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple

from . import atomic, catalog
from .errors import DannaSepError, UsageError, disk_full, is_no_space

log = logging.getLogger(__name__)

DownloadProgressFn = Callable[[str, int, Optional[int]], None]
"""`progress(name, done, total)`: `done` bytes of the file `name` are on disk, of `total`
(None while the server has not said). Called as a file starts (with the bytes a previous
run kept), after each block, and once more when it is complete."""

#: Where the original tool keeps its files when `$DANNA_CHECKPOINTS` is not set.
DEFAULT_CHECKPOINTS = "~/danna-sep-checkpoints"
#: The sha256 of each file fetched without a published hash, beside the files.
RECORD_FILE = "danna-sep-downloads.json"
CHUNK = 1 << 20
# Answers that say "try again later", retried like a connection that dropped.
_TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


class DownloadError(DannaSepError):
    """A file that could not be fetched, or that is not what was published: one line."""


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


def _mirrored(remote: RemoteFile, mirror: Optional[str]) -> str:
    """`remote`'s address, or `MIRROR/NAME` where a mirror holds the files under their names."""
    if mirror is None:
        return fetch_url(remote.url)
    return mirror.rstrip("/") + "/" + urllib.parse.quote(remote.name)


# --- checks ---------------------------------------------------------------------------------

def sha256_of(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_loads(remote: RemoteFile, path: Path) -> Optional[str]:
    """Why `path` does not load as `remote.loads_as` strictly, or None when it does."""
    from .bundle import BundleError, load_original_file

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


# --- one transfer -----------------------------------------------------------------------------

class _Dropped(Exception):
    """The transfer stopped before the end (a closed connection, a timeout, a busy server): retried."""


def _title(head: bytes) -> str:
    """The <title> of an HTML page's first bytes, for the one-line message ("" if none)."""
    found = re.search(rb"<title[^>]*>(.*?)</title", head, re.IGNORECASE | re.DOTALL)
    if not found:
        return ""
    text = " ".join(found.group(1).decode("utf-8", "replace").split())
    return f" ({text[:80]!r})" if text else ""


def _html_error(url: str, head: bytes = b"") -> DownloadError:
    hint = ""
    if urllib.parse.urlsplit(url).netloc.endswith("google.com"):
        hint = ("; Google Drive sends one when the file's download quota is used up: try again later, or "
                "fetch the file in a browser")
    return DownloadError(f"{url}: the server sent a web page{_title(head)} instead of the file{hint}")


def _looks_like_html(head: bytes) -> bool:
    """True for data that starts like markup: no weights file (zip, pickle, protobuf) starts with '<'."""
    return head.lstrip()[:1] == b"<"


def _content_range(value: str) -> Tuple[Optional[int], Optional[int]]:
    """(first byte, total) of a Content-Range header ("bytes 100-199/200"; total None for "*")."""
    found = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", value or "")
    if not found:
        return None, None
    first = int(found.group(1)) if found.group(1) is not None else None
    total = int(found.group(2)) if found.group(2) != "*" else None
    return first, total


class _Transfer:
    """One file fetched into `part`, resumed from what `part` holds; `meta` keeps the
    server's validators (ETag, Last-Modified) and total size for the next attempt."""

    def __init__(self, url: str, part: Path, name: str, *, size: Optional[int], timeout: float,
                 progress: Optional[DownloadProgressFn]):
        self.url = url
        self.part = part
        self.meta_path = part.with_name(part.name + ".json")
        self.name = name
        self.size = size
        self.timeout = timeout
        self.progress = progress
        self.total: Optional[int] = None
        meta = self._read_meta()
        if meta.get("url") != url:  # kept from a transfer of another address: start again
            self.restart()
        else:
            self.total = meta.get("total")  # type: ignore[assignment]

    def _read_meta(self) -> Dict[str, object]:
        try:
            return dict(json.loads(self.meta_path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            return {}

    def _write_meta(self, headers: Mapping[str, str]) -> None:
        meta = {"url": self.url, "total": self.total, "etag": headers.get("ETag"),
                "last_modified": headers.get("Last-Modified")}
        self.meta_path.write_text(json.dumps(meta), encoding="utf-8")

    def have(self) -> int:
        try:
            return self.part.stat().st_size
        except FileNotFoundError:
            return 0

    def restart(self) -> None:
        self.part.unlink(missing_ok=True)
        self.meta_path.unlink(missing_ok=True)
        self.total = None

    def attempt(self) -> None:
        """Fetch what is missing; returns once `part` is complete, raises `_Dropped` to be retried."""
        import http.client
        import socket
        import urllib.error
        import urllib.request

        have = self.have()
        if have and self.total is not None and have == self.total:
            return  # a run stopped between the last byte and the rename
        if self.total is not None and have > self.total:  # more than the file: nothing in it can be trusted
            self.restart()
            have = 0
        from . import __version__

        headers = {"User-Agent": f"danna-sep/{__version__}", "Accept-Encoding": "identity"}
        if have:
            headers["Range"] = f"bytes={have}-"
            meta = self._read_meta()
            validator = meta.get("etag") or meta.get("last_modified")
            if validator:
                headers["If-Range"] = str(validator)
        request = urllib.request.Request(self.url, headers=headers)
        try:
            response = urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as error:
            with contextlib.closing(error):
                if error.code == 416 and have:
                    _, total = _content_range(error.headers.get("Content-Range", ""))
                    if total is not None and total == have:
                        self.total = total
                        return
                    log.info("%s: the server refused to resume at byte %d; fetching it from the start",
                             self.name, have)
                    self.restart()
                    raise _Dropped("the server refused to resume") from None
                if error.code in _TRANSIENT_STATUS:
                    raise _Dropped(f"HTTP {error.code} {error.reason}") from None
                raise DownloadError(f"{self.url}: HTTP {error.code} {error.reason}") from None
        except urllib.error.URLError as error:
            if isinstance(error.reason, socket.gaierror):
                raise DownloadError(f"{self.url}: cannot find the host ({error.reason.strerror or error.reason})") \
                    from None
            raise _Dropped(f"cannot connect ({error.reason})") from None
        except (OSError, http.client.HTTPException) as error:
            raise _Dropped(f"connection failed ({type(error).__name__}: {error})") from None
        with contextlib.closing(response):
            self._receive(response, have)

    def _receive(self, response: Any, have: int) -> None:
        import http.client

        kind = (response.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if kind in ("text/html", "application/xhtml+xml"):
            raise _html_error(self.url, response.read(4096))
        length = response.headers.get("Content-Length")
        body = int(length) if length is not None and length.strip().isdigit() else None
        if response.status == 206:
            first, total = _content_range(response.headers.get("Content-Range", ""))
            if first is None or first > have or (self.total is not None and total != self.total):
                log.info("%s: the server answered the range request with other bytes; fetching it from the start",
                         self.name)
                self.restart()
                raise _Dropped("the server sent another range")
            start = first
        elif response.status == 200:
            if have:
                log.info("%s: the server sent the whole file again (it ignored the range request, or the file "
                         "changed); fetching it from the start", self.name)
            start, total = 0, body
        else:
            raise DownloadError(f"{self.url}: unexpected HTTP {response.status} {response.reason}")
        if start == 0:
            if self.size is not None and total is not None and total != self.size:
                raise DownloadError(f"{self.url}: the server offers {total} bytes, the file has {self.size}")
            self.restart()
            self.total = total
            self._write_meta(response.headers)
        if self.total is not None:
            free = shutil.disk_usage(self.part.parent).free
            if free < self.total - start:
                raise disk_full(self.part.parent, f"{self.name} needs {(self.total - start) / 1e6:.0f} MB more")
        received = 0
        html = b""
        with open(self.part, "r+b" if self.part.exists() else "wb") as out:
            out.seek(start)
            out.truncate()
            done = start
            if self.progress is not None:
                self.progress(self.name, done, self.total)
            while True:
                try:
                    block = response.read(CHUNK)
                except http.client.IncompleteRead as cut:
                    block = cut.partial
                    if block:
                        out.write(block)
                        done += len(block)
                        received += len(block)
                    raise _Dropped(f"connection closed after {done} bytes") from None
                except (OSError, http.client.HTTPException) as error:
                    raise _Dropped(f"connection lost after {done} bytes ({type(error).__name__})") from None
                if not block:
                    break
                if done == 0 and _looks_like_html(block[:512]):
                    html = block[:4096]
                    break
                try:
                    out.write(block)
                except OSError as error:
                    if is_no_space(error):
                        raise disk_full(self.part.parent, f"{self.name}: {done} bytes kept") from None
                    raise
                done += len(block)
                received += len(block)
                if self.progress is not None:
                    self.progress(self.name, done, self.total)
            out.flush()
            os.fsync(out.fileno())
        if html:
            self.restart()
            raise _html_error(self.url, html)
        if body is not None and received < body:
            raise _Dropped(f"connection closed after {done} of {self.total or start + body} bytes")
        if self.total is None:
            self.total = done  # a server that gave no length: what came is the file
            self._write_meta(response.headers)
        elif done != self.total:
            raise _Dropped(f"got {done} of {self.total} bytes")


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
        digest = sha256_of(path)
        if not digest.startswith(remote.sha256_prefix):
            raise DownloadError(f"{path}: its sha256 starts {digest[:len(remote.sha256_prefix)]}, its name says "
                                f"{remote.sha256_prefix} (damaged?); {again}")
        return digest
    entry = record.get(remote.name) if record is not None else None
    if entry is not None:
        size = path.stat().st_size
        digest = sha256_of(path) if size == entry.get("bytes") else ""
        if digest != entry.get("sha256"):
            raise DownloadError(f"{path}: not the file that was downloaded (its sha256 differs from the one "
                                f"recorded in {RECORD_FILE}); {again}")
        return digest
    problem = _check_loads(remote, path) if remote.loads_as else None
    if problem is not None:
        raise DownloadError(f"{path}: there already, and it does not load ({problem}); {again}")
    digest = sha256_of(path)
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
    url = _mirrored(remote, mirror)
    transfer = _Transfer(url, folder / f".{remote.name}.part", remote.name, size=remote.size, timeout=timeout,
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
            except _Dropped as dropped:
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
    digest = sha256_of(part)
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
