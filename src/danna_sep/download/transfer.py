"""One file's HTTP transfer into its `.NAME.part`, resumed with Range and If-Range, with
the server's validators kept beside it for the next run; a web page served instead of the
data is refused (see `danna_sep.download`).

urllib's client is imported only when a transfer starts, so that the command line's help
stays quick.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import urllib.parse
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from ..errors import DannaSepError, disk_full, is_no_space

log = logging.getLogger(__name__)

DownloadProgressFn = Callable[[str, int, Optional[int]], None]
"""`progress(name, done, total)`: `done` bytes of the file `name` are on disk, of `total`
(None while the server has not said). Called as a file starts (with the bytes a previous
run kept), after each block, and once more when it is complete."""

CHUNK = 1 << 20
# Answers that say "try again later", retried like a connection that dropped.
_TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


class DownloadError(DannaSepError):
    """A file that could not be fetched, or that is not what was published: one line."""


class Dropped(Exception):
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


class Transfer:
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
        """Fetch what is missing; returns once `part` is complete, raises `Dropped` to be retried."""
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
        from .. import __version__

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
                    raise Dropped("the server refused to resume") from None
                if error.code in _TRANSIENT_STATUS:
                    raise Dropped(f"HTTP {error.code} {error.reason}") from None
                raise DownloadError(f"{self.url}: HTTP {error.code} {error.reason}") from None
        except urllib.error.URLError as error:
            if isinstance(error.reason, socket.gaierror):
                raise DownloadError(f"{self.url}: cannot find the host ({error.reason.strerror or error.reason})") \
                    from None
            raise Dropped(f"cannot connect ({error.reason})") from None
        except (OSError, http.client.HTTPException) as error:
            raise Dropped(f"connection failed ({type(error).__name__}: {error})") from None
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
                raise Dropped("the server sent another range")
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
                    raise Dropped(f"connection closed after {done} bytes") from None
                except (OSError, http.client.HTTPException) as error:
                    raise Dropped(f"connection lost after {done} bytes ({type(error).__name__})") from None
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
            raise Dropped(f"connection closed after {done} of {self.total or start + body} bytes")
        if self.total is None:
            self.total = done  # a server that gave no length: what came is the file
            self._write_meta(response.headers)
        elif done != self.total:
            raise Dropped(f"got {done} of {self.total} bytes")

