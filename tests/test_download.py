"""`danna-sep download`: fetching published weights, against an HTTP server on 127.0.0.1 that
serves generated files and misbehaves on demand (cuts bodies short, ignores Range, sends web
pages, answers 503, changes a file between runs)."""

import hashlib
import json
import os
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest
import torch

from danna_sep import bundle as bundles
from danna_sep import download as dl
from danna_sep import models
from danna_sep.cli import main
from danna_sep.download import DownloadError, RemoteFile, fetch
from danna_sep.errors import UsageError
from conftest import randomize


@dataclass
class Served:
    """One file of the test server, and how the server misbehaves with it."""

    data: bytes
    content_type: str = "application/octet-stream"
    cut_always: Optional[int] = None
    """Bytes of body sent per response before the connection is closed (None: all)."""
    cuts: List[int] = field(default_factory=list)
    """The same for the next responses, one each (before `cut_always`)."""
    ignore_range: bool = False
    fail_first: int = 0
    """The first N requests are answered 503."""
    etag: str = '"v1"'


@dataclass
class Server:
    url: str
    files: Dict[str, Served] = field(default_factory=dict)
    requests: List[Tuple[str, Optional[str], Optional[str]]] = field(default_factory=list)
    """(path, Range, If-Range) of each request."""

    def ranges(self, name: str) -> List[Optional[str]]:
        return [r for path, r, _ in self.requests if path == "/" + name]


def _handler(server: Server):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def do_GET(self):
            name = self.path.lstrip("/")
            server.requests.append((self.path, self.headers.get("Range"), self.headers.get("If-Range")))
            if name.startswith("moved/"):  # as zenodo's and Drive's links answer
                self.send_response(302)
                self.send_header("Location", f"{server.url}/{name[len('moved/'):]}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            served = server.files.get(name)
            if served is None:
                page = b"<!DOCTYPE html><html><head><title>404 Not Found</title></head></html>"
                self.send_response(404)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)
                return
            if served.fail_first:
                served.fail_first -= 1
                self.send_error(503, "Busy")
                return
            data, start = served.data, 0
            wanted = self.headers.get("Range")
            if_range = self.headers.get("If-Range")
            if wanted and not served.ignore_range and (if_range is None or if_range == served.etag):
                start = int(wanted.split("=")[1].split("-")[0])
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            self.send_header("Content-Type", served.content_type)
            self.send_header("Content-Length", str(len(data) - start))
            self.send_header("ETag", served.etag)
            self.end_headers()
            body = data[start:]
            cut = served.cuts.pop(0) if served.cuts else served.cut_always
            if cut is not None:
                body = body[:cut]
            self.wfile.write(body)
            self.wfile.flush()
            if cut is not None:
                self.close_connection = True  # the client sees the body end early

    return Handler


@pytest.fixture
def server(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    state = Server(url="")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()


def _data(size: int, seed: int = 0) -> bytes:
    return torch.randint(0, 256, (size,), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8) \
        .numpy().tobytes()


def _hashed(server: Server, size: int, seed: int = 0, **how) -> RemoteFile:
    """A generated file served under a name that carries its sha256 prefix, as Open-Unmix's do."""
    data = _data(size, seed)
    prefix = hashlib.sha256(data).hexdigest()[:8]
    name = f"vocals-{prefix}.pth"
    server.files[name] = Served(data, **how)
    return RemoteFile(name, f"{server.url}/{name}", size, sha256_prefix=prefix)


def _only(folder: Path) -> List[str]:
    return sorted(p.name for p in folder.iterdir())


# --- transfers ---------------------------------------------------------------------------------

def test_a_transfer_cut_short_is_resumed_in_the_same_run(server, tmp_path):
    remote = _hashed(server, 250_000, cut_always=100_000)
    seen: List[Tuple[int, Optional[int]]] = []
    got = fetch(remote, tmp_path, retries=0, retry_wait=0, progress=lambda name, done, total: seen.append((done, total)))
    assert got.status == "downloaded" and got.path == tmp_path / remote.name
    assert got.path.read_bytes() == server.files[remote.name].data
    # each try asked for the bytes after those it had, and made progress (so retries=0 was enough)
    assert server.ranges(remote.name) == [None, "bytes=100000-", "bytes=200000-"]
    assert _only(tmp_path) == [remote.name]
    assert seen[-1] == (250_000, 250_000) and all(t == 250_000 for _, t in seen)


def test_a_run_cut_short_is_resumed_by_the_next_run(server, tmp_path):
    # 100 kB, then two answers that end at once: the second try without progress gives up
    remote = _hashed(server, 250_000, cuts=[100_000, 0, 0])
    with pytest.raises(DownloadError, match=r"gave up after 2 tries without progress \(100000 bytes kept: run the "
                                            r"command again to resume\)") as raised:
        fetch(remote, tmp_path, retries=1, retry_wait=0)
    assert "\n" not in str(raised.value)
    assert not (tmp_path / remote.name).exists()
    assert (tmp_path / f".{remote.name}.part").stat().st_size == 100_000
    # the server mends; the next run asks for what is missing only
    server.requests.clear()
    got = fetch(remote, tmp_path, retries=0)
    assert got.path.read_bytes() == server.files[remote.name].data
    assert server.ranges(remote.name) == ["bytes=100000-"]
    assert server.requests[0][2] == '"v1"'  # If-Range: the server's ETag from the first run
    assert _only(tmp_path) == [remote.name]


def test_a_file_changed_on_the_server_between_runs_is_fetched_afresh_not_spliced(server, tmp_path):
    remote = _hashed(server, 200_000, seed=1, cuts=[50_000, 0])
    with pytest.raises(DownloadError, match="50000 bytes kept"):
        fetch(remote, tmp_path, retries=0, retry_wait=0)
    # a new version under the same name: its first bytes differ, its ETag too
    changed = _hashed(server, 200_000, seed=2)
    server.files[remote.name] = Served(server.files.pop(changed.name).data, etag='"v2"')
    remote = RemoteFile(remote.name, remote.url, 0, sha256_prefix=changed.sha256_prefix)
    server.requests.clear()
    got = fetch(remote, tmp_path, retries=0)
    assert got.path.read_bytes() == server.files[remote.name].data
    assert server.requests == [("/" + remote.name, "bytes=50000-", '"v1"')]  # answered 200: the whole new file


def test_redirects_are_followed_with_the_range(server, tmp_path):
    remote = _hashed(server, 120_000, cuts=[70_000])
    moved = RemoteFile(remote.name, f"{server.url}/moved/{remote.name}", 0, sha256_prefix=remote.sha256_prefix)
    assert fetch(moved, tmp_path, retries=0).path.read_bytes() == server.files[remote.name].data
    assert [r for _, r, _ in server.requests] == [None, None, "bytes=70000-", "bytes=70000-"]


def test_a_server_that_ignores_range_is_read_from_the_start(server, tmp_path):
    remote = _hashed(server, 180_000, cuts=[60_000], ignore_range=True)
    got = fetch(remote, tmp_path, retries=0, retry_wait=0)
    assert got.path.read_bytes() == server.files[remote.name].data
    assert server.ranges(remote.name) == [None, "bytes=60000-"]  # asked to resume, got 200 and the whole file

    # one that ignores Range and always stops at the same place never gets further: given up
    stuck = _hashed(server, 180_000, seed=3, cut_always=60_000, ignore_range=True)
    with pytest.raises(DownloadError, match="gave up after 3 tries without progress"):
        fetch(stuck, tmp_path, retries=2, retry_wait=0)
    assert len(server.ranges(stuck.name)) == 4  # the first try made progress, then three did not
    assert not (tmp_path / stuck.name).exists()


def test_busy_answers_are_tried_again(server, tmp_path):
    remote = _hashed(server, 10_000, fail_first=2)
    assert fetch(remote, tmp_path, retries=2, retry_wait=0).status == "downloaded"
    failing = _hashed(server, 10_000, seed=4, fail_first=5)
    with pytest.raises(DownloadError, match=r"HTTP 503 .*gave up after 2 tries"):
        fetch(failing, tmp_path, retries=1, retry_wait=0)


def test_wrong_hash_and_wrong_size_are_refused_and_nothing_is_kept(server, tmp_path):
    remote = _hashed(server, 20_000)
    wrong = RemoteFile(remote.name, remote.url, 0, sha256_prefix="00000000")
    with pytest.raises(DownloadError, match=f"sha256 starts {remote.sha256_prefix}, the published name says 00000000"):
        fetch(wrong, tmp_path)
    assert _only(tmp_path) == []
    sized = RemoteFile(remote.name, remote.url, 0, sha256_prefix=remote.sha256_prefix, size=20_001)
    with pytest.raises(DownloadError, match="offers 20000 bytes, the file has 20001"):
        fetch(sized, tmp_path)
    assert _only(tmp_path) == []
    # a file there already whose bytes do not match its name
    (tmp_path / remote.name).write_bytes(b"x" * 20_000)
    with pytest.raises(DownloadError, match=r"its name says .* \(damaged\?\); --force fetches it again"):
        fetch(remote, tmp_path)
    assert fetch(remote, tmp_path, force=True).path.read_bytes() == server.files[remote.name].data
    assert fetch(remote, tmp_path).status == "present"


@pytest.mark.parametrize("how", ["content-type", "body"])
def test_a_web_page_instead_of_the_data_is_refused(server, tmp_path, how):
    page = b"<!DOCTYPE html><html><head><title>Quota exceeded</title></head><body>Too many users</body></html>"
    if how == "content-type":  # said by the header alone (a byte-order mark first: the body check would miss it)
        kind, page = "text/html; charset=utf-8", b"\xef\xbb\xbf" + page
    else:  # said by the body alone
        kind, page = "application/octet-stream", b"\n  " + page
    server.files["a.pth"] = Served(page, content_type=kind)
    remote = RemoteFile("a.pth", f"{server.url}/a.pth", 0, sha256_prefix="12345678")
    with pytest.raises(DownloadError, match=r"sent a web page \('Quota exceeded'\) instead of the file"):
        fetch(remote, tmp_path)
    assert _only(tmp_path) == []
    with pytest.raises(DownloadError, match="HTTP 404 Not Found"):
        fetch(RemoteFile("gone.pth", f"{server.url}/gone.pth", 0), tmp_path)


def test_ctrl_c_keeps_what_came_and_the_next_run_finishes(server, tmp_path):
    remote = _hashed(server, 3 * dl.CHUNK + 5)

    def interrupt(name, done, total):
        if done:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fetch(remote, tmp_path, progress=interrupt)
    kept = (tmp_path / f".{remote.name}.part").stat().st_size
    assert 0 < kept < 3 * dl.CHUNK + 5 and not (tmp_path / remote.name).exists()
    server.requests.clear()
    assert fetch(remote, tmp_path).path.read_bytes() == server.files[remote.name].data
    assert server.ranges(remote.name) == [f"bytes={kept}-"]

    # stopped after the last byte, before the rename: the next run asks for nothing
    other = _hashed(server, 1000, seed=5)

    def at_the_end(name, done, total):
        if done == total:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fetch(other, tmp_path, progress=at_the_end)
    server.requests.clear()
    assert fetch(other, tmp_path).path.read_bytes() == server.files[other.name].data
    assert server.requests == []


def test_one_download_per_folder_at_a_time(server, tmp_path):
    import fcntl

    handle = os.open(tmp_path, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(DownloadError, match="another danna-sep download is writing into this folder"):
            dl.download("umxhq", tmp_path, mirror=server.url)
    finally:
        os.close(handle)


# --- where files go, and which addresses ----------------------------------------------------------

def test_folders_are_the_ones_the_tools_use(tmp_path, monkeypatch):
    import torch.hub

    for env in ({}, {"XDG_CACHE_HOME": str(tmp_path / "xdg")}, {"TORCH_HOME": str(tmp_path / "th"),
                                                                 "XDG_CACHE_HOME": str(tmp_path / "xdg")}):
        for name in ("TORCH_HOME", "XDG_CACHE_HOME"):
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        assert dl.torch_hub_checkpoints() == Path(torch.hub.get_dir()) / "checkpoints"
    assert dl.default_checkpoints() == Path.home() / "danna-sep-checkpoints"
    monkeypatch.setenv("DANNA_CHECKPOINTS", str(tmp_path / "ck"))
    assert dl.default_folder(dl.FAMILIES["danna-sep"]) == tmp_path / "ck"
    assert dl.default_folder(dl.FAMILIES["umxl"]) == Path(torch.hub.get_dir()) / "checkpoints"
    assert dl.fetch_command(tmp_path / "ck") == "danna-sep download danna-sep"
    assert dl.fetch_command(tmp_path / "my dir", fast=True) == f"danna-sep download danna-sep-fast --to '{tmp_path}/my dir'"


def test_published_addresses():
    # Open-Unmix's names carry the sha256 prefix that torch.hub checks
    for family in ("umxhq", "umxl"):
        for remote in dl.FAMILIES[family].files:
            assert remote.url.startswith("https://zenodo.org/records/") and remote.url.endswith("/" + remote.name)
            assert remote.name == f"{remote.name.split('-')[0]}-{remote.sha256_prefix}.pth"
    assert {f.name for f in dl.FAMILIES["danna-sep"].files} == set(bundles.ORIGINAL_FILES.values())
    assert {f.name for f in dl.FAMILIES["danna-sep-fast"].files} == {"unet_attention.pth", "demucs_4_decoders.pth"}
    assert {f.name for f in dl.files_of(dl.FAMILIES["danna-sep"], xumx_onnx=True)} == {
        "unet_attention.pth", "demucs_4_decoders.pth", "xumx.onnx"}
    # a Drive link is fetched from Drive's download host, past its "cannot scan" page
    assert dl.fetch_url("https://drive.google.com/uc?id=ABC") == \
        "https://drive.usercontent.google.com/download?id=ABC&export=download&confirm=t"
    assert dl.fetch_url("https://zenodo.org/records/1/files/a.pth") == "https://zenodo.org/records/1/files/a.pth"
    with pytest.raises(UsageError, match="danna-sep-fast has no X-UMX file"):
        dl.download("danna-sep-fast", xumx_onnx=True)


# --- the command, end to end -----------------------------------------------------------------------

TINY = {
    "xumx": dict(hidden_channels=8, max_bins=64, nb_layers=1),
    "unet_attn": dict(max_bins=128, k=2, original_padding_bias=True),
    "demucs_split": dict(channels=4, depth=4),
}


@pytest.fixture(scope="module")
def original_files(tmp_path_factory) -> Dict[str, bytes]:
    """The original tool's three TorchScript files, of tiny random models."""
    members = [bundles.Member(randomize(models.build(name, **kwargs), seed=i).eval(), {})
               for i, (name, kwargs) in enumerate(TINY.items())]
    folder = bundles.export_original(bundles.Bundle(members=members, sources=list(models.SOURCES), origin="test"),
                                     tmp_path_factory.mktemp("original"))
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def _one_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def test_danna_sep_fetched_checked_by_loading_and_recorded(server, tmp_path, original_files, capsys, monkeypatch):
    for name, data in original_files.items():
        server.files[name] = Served(data)
    folder = tmp_path / "checkpoints"
    monkeypatch.setenv("DANNA_CHECKPOINTS", str(folder))
    assert main(["download", "danna-sep", "--mirror", server.url, "-q"]) == 0
    assert _only(folder) == sorted(list(original_files) + [dl.RECORD_FILE])
    record = json.loads((folder / dl.RECORD_FILE).read_text())["files"]
    for name, data in original_files.items():
        assert (folder / name).read_bytes() == data
        assert record[name]["sha256"] == hashlib.sha256(data).hexdigest() and record[name]["bytes"] == len(data)
    assert len(bundles.load_original(folder).members) == 3

    # a second run fetches nothing and checks the files against the record
    server.requests.clear()
    assert main(["download", "danna-sep", "--mirror", server.url]) == 0
    assert server.requests == []
    assert "3 files in" in capsys.readouterr().err
    damaged = bytearray(original_files["demucs_4_decoders.pth"])
    damaged[len(damaged) // 2] ^= 0xFF
    (folder / "demucs_4_decoders.pth").write_bytes(bytes(damaged))
    assert main(["download", "danna-sep-fast", "--mirror", server.url, "-q"]) == 1
    assert _one_line(capsys) == (f"danna-sep: {folder / 'demucs_4_decoders.pth'}: not the file that was downloaded "
                                 f"(its sha256 differs from the one recorded in {dl.RECORD_FILE}); --force fetches "
                                 "it again")
    assert main(["download", "danna-sep-fast", "--mirror", server.url, "--force", "-q"]) == 0
    assert (folder / "demucs_4_decoders.pth").read_bytes() == original_files["demucs_4_decoders.pth"]


def test_danna_sep_files_that_do_not_load_are_not_kept(server, tmp_path, original_files, capsys):
    server.files["unet_attention.pth"] = Served(_data(50_000))  # not HTML, not TorchScript
    assert main(["download", "danna-sep-fast", "--to", str(tmp_path), "--mirror", server.url, "-q"]) == 1
    line = _one_line(capsys)
    assert line.startswith(f"danna-sep: {server.url}/unet_attention.pth: what came does not load as "
                           "unet_attention.pth (not a readable TorchScript file")
    assert line.endswith("): not kept")
    assert _only(tmp_path) == []

    # files the original tool fetched (no record): checked by loading, then recorded
    (tmp_path / "unet_attention.pth").write_bytes(original_files["unet_attention.pth"])
    (tmp_path / "demucs_4_decoders.pth").write_bytes(original_files["demucs_4_decoders.pth"])
    server.requests.clear()
    assert main(["download", "danna-sep-fast", "--to", str(tmp_path), "--mirror", server.url]) == 0
    assert server.requests == []
    record = json.loads((tmp_path / dl.RECORD_FILE).read_text())["files"]
    assert set(record) == {"unet_attention.pth", "demucs_4_decoders.pth"}


def test_umx_files_are_checked_against_the_hash_in_their_names(server, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for remote in dl.FAMILIES["umxhq"].files:
        server.files[remote.name] = Served(_data(3000))
    assert main(["download", "umxhq", "--mirror", server.url + "/", "-q"]) == 1
    first = dl.FAMILIES["umxhq"].files[0]
    digest = hashlib.sha256(_data(3000)).hexdigest()[:8]
    assert _one_line(capsys) == (f"danna-sep: {server.url}/{first.name}: the data's sha256 starts {digest}, the "
                                 f"published name says {first.sha256_prefix}: not kept")
    assert not (tmp_path / "torch").exists()  # the folders it made, and left empty, are gone
    # a web page in its place
    server.files[first.name] = Served(b"<html><title>Sign in</title></html>", content_type="text/html")
    assert main(["download", "umxhq", "--mirror", server.url, "-q"]) == 1
    assert "the server sent a web page ('Sign in') instead of the file" in _one_line(capsys)


def test_separate_without_the_files_names_the_command_that_fetches_them(tmp_path, capsys):
    import numpy as np
    import soundfile as sf

    song = tmp_path / "song.wav"
    sf.write(song, np.zeros((4410, 2), dtype=np.float32), 44100)
    missing = tmp_path / "nothing here"
    assert main(["separate", str(song), "-o", str(tmp_path / "out"), "--checkpoints", str(missing), "-q"]) != 0
    assert _one_line(capsys).endswith(f"{missing}: checkpoint folder not found (danna-sep download danna-sep "
                                      f"--to '{missing}' fetches the original tool's files)")
    missing.mkdir()
    assert main(["separate", str(song), "-o", str(tmp_path / "out"), "--checkpoints", str(missing), "--fast",
                 "-q"]) != 0
    line = _one_line(capsys)
    assert line.endswith(f"unet_attention.pth: checkpoint missing (danna-sep download danna-sep-fast "
                         f"--to '{missing}' fetches it)"), line
    with pytest.raises(bundles.BundleError, match=r"xumx_mwf.pth: checkpoint missing \(or xumx.onnx; danna-sep "
                                                   r"download danna-sep --to .* fetches them, or use --fast"):
        (missing / "unet_attention.pth").touch()
        (missing / "demucs_4_decoders.pth").touch()
        bundles.load_original(missing)
