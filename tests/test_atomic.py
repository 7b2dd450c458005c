"""danna_sep.atomic: one policy for every file and folder danna-sep writes (names, modes, fsync)."""

from __future__ import annotations

import os
import stat
import subprocess

import pytest

from danna_sep import atomic


@pytest.fixture
def umask():
    """Set the process's umask for a test; the old one comes back after it."""
    saved = os.umask(0o022)
    os.umask(saved)
    yield lambda mask: os.umask(mask)
    os.umask(saved)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_files_and_folders_get_the_modes_a_plain_open_gives(tmp_path, umask, mask):
    """Not mkstemp's owner-only 0o600: a report, a checkpoint or a bundle is an ordinary file."""
    umask(mask)
    text = atomic.write_text(tmp_path / "report.json", "{}\n")
    with atomic.writing(tmp_path / "bundle", directory=True) as staging:
        (staging / "weights.bin").write_bytes(b"w")
    assert (_mode(text), _mode(tmp_path / "bundle")) == (0o666 & ~mask, 0o777 & ~mask)
    assert _mode(tmp_path / "bundle" / "weights.bin") == 0o666 & ~mask


def test_the_data_is_synced_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    events = []
    fsync, replace = os.fsync, os.replace

    def watched_fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return fsync(fd)

    def watched_replace(source, target):
        events.append(("rename", str(target)))
        return replace(source, target)

    monkeypatch.setattr(os, "fsync", watched_fsync)
    monkeypatch.setattr(os, "replace", watched_replace)
    target = tmp_path / "best.json"
    atomic.write_text(target, "[]\n")
    monkeypatch.undo()
    kinds = [kind for kind, _ in events]
    assert kinds == ["fsync", "rename", "fsync"], events
    assert atomic.is_temporary_name(os.path.basename(events[0][1]))  # the temporary's data, before
    assert events[2][1] == str(tmp_path)  # the folder that now names it, after


def test_a_failed_write_keeps_the_old_target_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "last.pt"
    target.write_bytes(b"old")

    def half_then_fail(temporary):
        temporary.write_bytes(b"ne")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic.write_with(target, half_then_fail)
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_a_folder_replaces_a_folder_whole(tmp_path):
    target = tmp_path / "bundle"
    target.mkdir()
    (target / "old.safetensors").write_bytes(b"old")
    with atomic.writing(target, directory=True) as staging:
        assert atomic.is_temporary_name(staging.name) and staging.parent == tmp_path
        (staging / "new.safetensors").write_bytes(b"new")
    assert [p.name for p in target.iterdir()] == ["new.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]  # the old one moved aside, then removed
    with pytest.raises(RuntimeError):
        with atomic.writing(target, directory=True) as staging:
            (staging / "half.safetensors").write_bytes(b"h")
            raise RuntimeError("the save failed")
    assert [p.name for p in target.iterdir()] == ["new.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_a_killed_writers_temporary_folder_is_removed_too(tmp_path):
    gone = subprocess.Popen(["true"])
    gone.wait()
    left = tmp_path / f".bundle.tmp-{gone.pid}-{atomic.host_tag()}beef"
    left.mkdir()
    (left / "weights.safetensors").write_bytes(b"w")
    mine = tmp_path / atomic.temporary_name("other")
    mine.mkdir()
    assert atomic.remove_stale_temporaries(tmp_path) == [left]
    assert [p.name for p in tmp_path.iterdir()] == [mine.name]
