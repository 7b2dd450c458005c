"""Large batches: `separate` under torchrun and as --shard jobs, --inputs-from, and the
--manifest that lets a killed batch finish on a rerun."""

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile as sf

from danna_sep import SOURCES
from danna_sep import bundle as bundles
from danna_sep.cli import main
from danna_sep.manifest import Manifest, TrackRecord
from test_bundle import tiny_members
from test_cli_separate import song

NAMES = ["a", "b", "c", "d", "e", "f"]


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    """Six short songs and a tiny bundle."""
    root = tmp_path_factory.mktemp("catalog")
    folder = root / "bundle"
    bundles.save_bundle(folder, tiny_members(seed=3))
    songs = []
    for seed, name in enumerate(NAMES):
        path = root / "songs" / f"{name}.wav"
        path.parent.mkdir(exist_ok=True)
        sf.write(path, song(2.0, 44100, seed=seed), 44100)
        songs.append(path)
    listing = root / "catalog.txt"
    listing.write_text("".join(f"{p}\n" for p in songs) + "\n")
    return {"bundle": folder, "songs": songs, "listing": listing}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _lines(manifest: Path) -> list:
    return [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]


def _stems(out: Path, name: str) -> dict:
    return {s: out / name / f"{s}.wav" for s in SOURCES}


def _command(catalog, out: Path, manifest: Path, *extra: str) -> list:
    return ["separate", "--inputs-from", str(catalog["listing"]), "-o", str(out), "--bundle",
            str(catalog["bundle"]), "--device", "cpu", "--manifest", str(manifest), *extra]


def _cli(args: list, **env) -> list:
    return [sys.executable, "-m", "danna_sep.cli", *args]


def _no_temporaries(out: Path) -> None:
    from danna_sep.audio import is_temporary_name

    left = [p for p in out.rglob("*") if is_temporary_name(p.name)]
    assert not left, left


def _check_catalog(out: Path, manifest: Path) -> list:
    """Every song's four stems, each matching the manifest's latest record of it."""
    lines = _lines(manifest)
    latest = {line["input"]: line for line in lines}
    assert sorted(Path(key).stem for key in latest) == NAMES
    for key, line in latest.items():
        assert line["status"] == "done", line
        stems = _stems(out, Path(key).stem)
        assert line["outputs"] == {s: str(p.absolute()) for s, p in stems.items()}
        for s, p in stems.items():
            assert _sha256(p) == line["sha256"][s], (key, s)
    _no_temporaries(out)
    return lines


def test_torchrun_ranks_share_a_catalog_once_and_a_rerun_skips_it(catalog, tmp_path):
    out, manifest = tmp_path / "out", tmp_path / "batch.jsonl"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "danna_sep.cli", *_command(catalog, out, manifest)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    first = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    lines = _check_catalog(out, manifest)
    assert len(lines) == 6
    ranks = {}
    for line in lines:
        ranks.setdefault(line["rank"], []).append(Path(line["input"]).stem)
    # Sorted inputs, every other one: rank 0 takes a, c, e and rank 1 b, d, f.
    assert {rank: sorted(names) for rank, names in ranks.items()} == {0: ["a", "c", "e"], 1: ["b", "d", "f"]}
    assert "6 inputs in 2 processes: 6 done, 0 skipped, 0 failed" in first.stderr
    assert first.stderr.count("inputs in 2 processes") == 1  # rank 0 alone sums up
    written = {p: p.stat().st_mtime_ns for p in out.rglob("*.wav")}

    again = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "6 inputs in 2 processes: 0 done, 6 skipped, 0 failed" in again.stderr
    assert len(_lines(manifest)) == 6  # nothing new to record
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.wav")} == written


def test_a_stem_changed_after_the_batch_makes_a_rerun_redo_its_track(catalog, tmp_path):
    out, manifest = tmp_path / "out", tmp_path / "batch.jsonl"
    assert main(_command(catalog, out, manifest, "-q")) == 0
    first = _check_catalog(out, manifest)
    changed = _stems(out, "c")["bass"]
    original = _sha256(changed)
    frames, rate = sf.read(changed)
    sf.write(changed, frames * 0.5, rate)  # someone edits one stem
    _stems(out, "e")["drums"].unlink()  # and deletes another track's stem
    untouched = _stems(out, "a")["vocals"].stat().st_mtime_ns

    assert main(_command(catalog, out, manifest, "-q")) == 0
    lines = _check_catalog(out, manifest)
    assert len(lines) == len(first) + 2
    assert sorted(Path(line["input"]).stem for line in lines[len(first):]) == ["c", "e"]
    assert _sha256(changed) == original  # separated again, to the same bytes
    assert _stems(out, "a")["vocals"].stat().st_mtime_ns == untouched


def test_a_file_in_the_way_that_the_manifest_never_recorded_still_needs_force(catalog, tmp_path):
    out, manifest = tmp_path / "out", tmp_path / "batch.jsonl"
    mine = _stems(out, "b")["vocals"]
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"someone's file")
    assert main(_command(catalog, out, manifest, "-q")) == 1
    assert mine.read_bytes() == b"someone's file"
    failed = [line for line in _lines(manifest) if line["status"] == "failed"]
    assert [Path(line["input"]).stem for line in failed] == ["b"]
    assert "already exists" in failed[0]["error"]


def _wait_for_lines(manifest: Path, count: int, process: subprocess.Popen, limit: float = 300) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if manifest.exists() and len(_lines(manifest)) >= count:
            return
        assert process.poll() is None, process.communicate()[1][-3000:]
        time.sleep(0.01)
    raise AssertionError(f"no {count} lines in {manifest}")


def test_a_killed_job_leaves_the_others_running_and_a_rerun_completes_the_catalog(catalog, tmp_path):
    """Two --shard jobs share a manifest; one is killed (SIGKILL: no clean-up at all) after its
    first track; the other finishes its share; a rerun of the whole catalog does what is left."""
    out, manifest = tmp_path / "out", tmp_path / "batch.jsonl"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    jobs = [subprocess.Popen(_cli(_command(catalog, out, manifest, "--shard", f"{k}/2", "-q")),
                             stderr=subprocess.PIPE, text=True, env=env) for k in (1, 2)]
    _wait_for_lines(manifest, 1, jobs[0])
    jobs[0].send_signal(signal.SIGKILL)
    jobs[0].wait(timeout=60)
    _, err = jobs[1].communicate(timeout=600)
    assert jobs[1].returncode == 0, err
    survivors = [Path(line["input"]).stem for line in _lines(manifest) if line["rank"] == 1]
    assert sorted(survivors) == ["b", "d", "f"]

    rerun = subprocess.run(_cli(_command(catalog, out, manifest)), capture_output=True, text=True, env=env,
                           timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    lines = _check_catalog(out, manifest)
    done = {}
    for line in lines:
        done[Path(line["input"]).stem] = done.get(Path(line["input"]).stem, 0) + 1
    # Each track once, but for one the kill may have caught between its line and its files.
    assert sum(done.values()) - len(NAMES) <= 1, done
    assert re.search(r"6 inputs: \d done, [3-5] skipped, 0 failed", rerun.stderr), rerun.stderr


def test_inputs_from_a_file_or_standard_input(catalog, tmp_path, monkeypatch, capsys):
    import io

    out = tmp_path / "out"
    listing = tmp_path / "two.txt"
    listing.write_text(f"{catalog['songs'][0]}\n\n{catalog['songs'][1]}\r\n")
    assert main(["separate", "--inputs-from", str(listing), "-o", str(out), "--bundle", str(catalog["bundle"]),
                 "--device", "cpu", "-q", "--stems", "bass"]) == 0
    assert sorted(p.parent.name for p in out.rglob("bass.wav")) == ["a", "b"]
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{catalog['songs'][2]}\n"))
    assert main(["separate", str(catalog["songs"][3]), "--inputs-from", "-", "-o", str(out), "--bundle",
                 str(catalog["bundle"]), "--device", "cpu", "-q", "--stems", "bass"]) == 0
    assert sorted(p.parent.name for p in out.rglob("bass.wav")) == ["a", "b", "c", "d"]


@pytest.mark.parametrize("extra,message", [
    (["--inputs-from", "{tmp}/missing.txt"], "--inputs-from {tmp}/missing.txt: cannot be read (No such file"),
    ([], "no inputs: name audio files or folders"),
    (["x.wav", "--shard", "3/2"], "argument --shard: '3/2': K/N needs 1 <= K <= N"),
    (["x.wav", "--shard", "half"], "argument --shard: 'half': give K/N"),
    (["x.wav", "--manifest", "{tmp}/song.wav"], "--manifest {tmp}/song.wav: is not a danna-sep manifest"),
])
def test_batch_options_refuse_bad_values_in_one_line(catalog, tmp_path, capsys, extra, message):
    (tmp_path / "song.wav").write_bytes(b"RIFF....WAVEfmt \n not a manifest\n")
    extra = [part.replace("{tmp}", str(tmp_path)) for part in extra]
    assert main(["separate", *extra, "-o", str(tmp_path / "out"), "--bundle", str(catalog["bundle"])]) == 2
    err = capsys.readouterr().err
    assert message.replace("{tmp}", str(tmp_path)) in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_shard_under_torchrun_is_a_usage_error(catalog, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert main(["separate", str(catalog["songs"][0]), "--shard", "1/2", "-o", str(tmp_path / "out"),
                 "--bundle", str(catalog["bundle"])]) == 2
    assert "under torchrun the ranks split it" in capsys.readouterr().err


def test_manifest_lines_survive_a_line_cut_short(tmp_path):
    """A process killed while writing its line leaves part of it: the next line still
    parses, and reading skips the broken one."""
    path = tmp_path / "m.jsonl"
    Manifest(path).append(TrackRecord(input="/a.wav", status="done", outputs={"bass": "/x"}, sha256={"bass": "0"}))
    with open(path, "a") as handle:
        handle.write('{"input": "/b.wav", "stat')
    Manifest(path).append(TrackRecord(input="/c.wav", status="failed", error="bad"))
    manifest = Manifest(path)
    assert sorted(manifest.latest) == ["/a.wav", "/c.wav"]
    assert len(path.read_text().splitlines()) == 3


def test_stems_are_recorded_complete_before_they_take_their_names(catalog, tmp_path):
    """write_stems' before_commit sees every stem whole under its temporary name while no
    final name exists yet; when it raises, nothing of the track is left."""
    from danna_sep.errors import DannaSepError
    from danna_sep.separator import Separator

    separator = Separator(catalog["bundle"], device="cpu")
    targets = {s: tmp_path / "out" / f"{s}.flac" for s in ("bass", "no_bass")}
    seen = {}

    def before_commit(temporaries):
        assert set(temporaries) == set(targets)
        assert not any(t.exists() for t in targets.values())
        for stem, temporary in temporaries.items():
            seen[stem] = _sha256(temporary)

    separator.write_stems(catalog["songs"][0], targets, before_commit=before_commit)
    assert seen == {stem: _sha256(target) for stem, target in targets.items()}

    class Refused(DannaSepError):
        pass

    def refuse(temporaries):
        raise Refused("no")

    again = {s: tmp_path / "again" / f"{s}.wav" for s in ("drums",)}
    with pytest.raises(Refused):
        separator.write_stems(catalog["songs"][0], again, before_commit=refuse)
    assert not (tmp_path / "again").exists()


def test_a_track_finished_with_skip_existing_is_recorded_with_all_its_stems(catalog, tmp_path):
    out, manifest = tmp_path / "out", tmp_path / "batch.jsonl"
    one = catalog["songs"][0]
    base = ["separate", str(one), "-o", str(out), "--bundle", str(catalog["bundle"]), "--device", "cpu", "-q"]
    assert main([*base, "--stems", "bass"]) == 0  # an earlier run, without a manifest
    assert main([*base, "--skip-existing", "--manifest", str(manifest)]) == 0
    [line] = _lines(manifest)
    assert sorted(line["sha256"]) == sorted(SOURCES)
    assert all(_sha256(Path(line["outputs"][s])) == line["sha256"][s] for s in SOURCES)
    assert main([*base, "--manifest", str(manifest)]) == 0
    assert len(_lines(manifest)) == 1  # done already: nothing to add
