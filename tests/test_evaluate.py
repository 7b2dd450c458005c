"""danna_sep.evaluate and `danna-sep evaluate`: metrics against direct computations and
museval, oracles, reports, the command end to end."""

import json
import math
import re
import os
import shutil
import socket
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from danna_sep import SOURCES, spectral
from danna_sep.cli import main
from danna_sep.data import find_tracks
from danna_sep.evaluate import (
    Report,
    evaluate_tracks,
    museval_scores,
    oracle_estimates,
    oracle_estimator,
    score_track,
    sdr_mdx,
)
from fakemusdb import make_musdb_hq

SR = 44100


def import_museval():
    """The museval package as users import it. Its `__init__` imports musdb, whose stempeg
    raises at import without ffmpeg/ffprobe executables, though `museval.evaluate` uses
    neither: without them, an empty stand-in takes musdb's name (as conftest does for
    torchaudio)."""
    if "museval" not in sys.modules and not (shutil.which("ffmpeg") and shutil.which("ffprobe")):
        sys.modules.setdefault("musdb", types.ModuleType("musdb"))
    import museval

    return museval


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_musdb_hq(tmp_path_factory.mktemp("musdb"), tracks=2, seconds=1.5, subsets=("test",), seed=3)


# --------------------------------------------------------------------------- metrics


def test_sdr_mdx_matches_a_direct_computation_and_known_answers():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((4, 2, 3000))
    est = ref + rng.standard_normal((4, 2, 3000)) * np.array([0.1, 0.5, 1.0, 2.0])[:, None, None]
    direct = [10 * np.log10((np.sum(r ** 2) + 1e-7) / (np.sum((r - e) ** 2) + 1e-7)) for r, e in zip(ref, est)]
    assert np.allclose(sdr_mdx(ref, est), direct, rtol=0, atol=1e-10)
    assert np.allclose(sdr_mdx(torch.from_numpy(ref).float(), torch.from_numpy(est).float()), direct, atol=1e-4)
    assert np.allclose(sdr_mdx(ref, 0.5 * ref), 10 * np.log10(4), atol=1e-9)  # 6.02 dB
    assert np.allclose(sdr_mdx(ref, np.zeros_like(ref)), 0.0, atol=1e-9)
    assert np.allclose(sdr_mdx(ref, ref), 10 * np.log10((np.sum(ref ** 2, axis=(1, 2)) + 1e-7) / 1e-7))
    silent = np.zeros((1, 2, 100))
    assert sdr_mdx(silent, silent)[0] == 0.0  # eps keeps 0/0 at 0 dB
    # estimates longer or shorter than the references are cut or zero-padded
    assert np.allclose(sdr_mdx(ref, np.concatenate([est, est], -1)), direct)
    assert np.allclose(sdr_mdx(ref, est[..., :2000]), sdr_mdx(ref, np.concatenate([est[..., :2000], np.zeros((4, 2, 1000))], -1)))


def test_the_mdx_sdr_is_one_function_for_numpy_and_torch_and_torch_keeps_its_gradient():
    """danna_sep.metrics serves the metric (numpy), the blend fit and the loss (torch): the same
    numbers from both, checked against the formula on Python floats, and a gradient that is
    the formula's derivative."""
    from danna_sep.metrics import mdx_sdr

    rng = np.random.default_rng(3)
    ref, est = rng.standard_normal((3, 2, 50)), rng.standard_normal((3, 2, 50))
    by_hand = [10 * math.log10((sum(float(x) ** 2 for x in r.ravel()) + 1e-7)
                               / (sum((float(x) - float(y)) ** 2 for x, y in zip(r.ravel(), e.ravel())) + 1e-7))
               for r, e in zip(ref, est)]
    as_numpy = mdx_sdr(ref, est)
    assert isinstance(as_numpy, np.ndarray) and np.allclose(as_numpy, by_hand, rtol=0, atol=1e-9)
    estimates = torch.from_numpy(est).requires_grad_(True)
    as_torch = mdx_sdr(torch.from_numpy(ref), estimates)
    assert isinstance(as_torch, torch.Tensor) and np.allclose(as_torch.detach().numpy(), by_hand, rtol=0, atol=1e-9)
    as_torch.sum().backward()
    error = ((ref - est) ** 2).sum(axis=(1, 2), keepdims=True) + 1e-7
    # d/d est of -10 log10(sum (r - e)^2 + eps) is 10 / ln 10 * 2 (r - e) / (sum (r - e)^2 + eps)
    assert np.allclose(estimates.grad.numpy(), 10 / math.log(10) * 2 * (ref - est) / error, rtol=1e-9, atol=0)


def _musical(seed: int, sources: int, seconds: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    out = []
    for j in range(sources):
        tone = np.sin(2 * np.pi * rng.uniform(100, 2000) * t) * (0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * t))
        out.append(np.stack([tone * 0.8, tone * 0.6]) + 0.05 * rng.standard_normal((2, len(t))))
    return np.stack(out)


def test_museval_scores_agree_with_museval_evaluate():
    museval = import_museval()
    ref = _musical(1, 2, 2.5)
    rng = np.random.default_rng(2)
    est = ref + 0.3 * ref[::-1] + 0.1 * rng.standard_normal(ref.shape)  # leakage and noise
    expected = museval.evaluate(ref.transpose(0, 2, 1), est.transpose(0, 2, 1))  # SDR, ISR, SIR, SAR
    # a third source whose reference is silent throughout: museval refuses it; we score it NaN
    ref3 = np.stack([ref[0], np.zeros_like(ref[0]), ref[1]])
    est3 = np.stack([est[0], 0.01 * rng.standard_normal(ref[0].shape), est[1]])
    ours = museval_scores(ref3, est3)
    assert ours["SDR"].shape == (3, 2)
    for name, values in zip(("SDR", "ISR", "SIR", "SAR"), expected):
        assert np.all(np.isnan(ours[name][1]))
        assert np.allclose(ours[name][[0, 2]], values, rtol=0, atol=1e-6), name


def test_score_track_reduces_frames_by_nan_aware_median(monkeypatch):
    import danna_sep.evaluate as evaluation

    frames = {
        "SDR": np.array([[1.0, np.nan, 3.0, 10.0], [np.nan] * 4]),
        "SIR": np.ones((2, 4)), "ISR": np.zeros((2, 4)), "SAR": np.full((2, 4), 2.0),
    }
    monkeypatch.setattr(evaluation, "museval_scores", lambda *args, **kwargs: frames)
    scores = score_track(None, None, "museval", sources=("a", "b"))
    assert scores["a"] == {"SDR": 3.0, "SIR": 1.0, "ISR": 0.0, "SAR": 2.0}
    assert math.isnan(scores["b"]["SDR"])


# --------------------------------------------------------------------------- oracles


def test_oracles_beat_the_mixture_floor(root):
    track = find_tracks(root, "test")[0]
    stems = track.read()
    truth = torch.stack([stems[s] for s in SOURCES])
    scores = {kind: sdr_mdx(truth, oracle_estimates(kind, truth, stems["mixture"]))
              for kind in ("mixture", "irm1", "irm2", "mwf")}
    assert torch.equal(oracle_estimates("mixture", truth)[2], truth.sum(0))
    for kind in ("irm1", "irm2", "mwf"):
        assert np.all(scores[kind] > scores["mixture"] + 10), (kind, scores)
    # ratio masks sum to one, so the estimates sum to the mixture
    for kind in ("irm1", "irm2"):
        total = oracle_estimates(kind, truth).sum(0)
        assert torch.allclose(total, truth.sum(0), atol=1e-4)


def test_oracles_on_sources_that_never_overlap_are_near_perfect():
    # noise bursts, one source at a time, with gaps longer than the STFT window: no frame
    # holds two sources, so ideal masks are exactly 0 or 1 and the oracles reconstruct
    t = torch.arange(2 * SR) / SR
    noise = torch.randn(4, 2 * SR, generator=torch.Generator().manual_seed(0))
    gates = torch.stack([((t >= j * 0.5) & (t < j * 0.5 + 0.3)).float() for j in range(4)])
    truth = torch.stack([0.3 * noise * gates, 0.15 * noise * gates], dim=1)  # (4, 2, n)
    for kind in ("irm1", "irm2", "mwf"):
        scores = sdr_mdx(truth, oracle_estimates(kind, truth))
        assert np.all(scores > 80), (kind, scores)


def test_mwf_oracle_matches_norbert():
    norbert = pytest.importorskip("norbert")
    truth = torch.from_numpy(_musical(4, 4, 1.0)).float()
    mix = truth.sum(0)
    x = spectral.stft(mix.double()).permute(2, 1, 0).numpy()  # (frames, bins, channels)
    v = spectral.stft(truth.double()).abs().permute(3, 2, 1, 0).numpy()  # (frames, bins, channels, sources)
    y = norbert.wiener(v, x.copy(), iterations=1, use_softmask=False, eps=1e-10)
    reference = spectral.istft(torch.from_numpy(y).permute(3, 2, 1, 0), truth.shape[-1])
    ours = oracle_estimates("mwf", truth)
    assert torch.allclose(ours.double(), reference, atol=1e-4)
    assert np.all(sdr_mdx(truth, ours) > sdr_mdx(truth, oracle_estimates("mixture", truth)))


# --------------------------------------------------------------------------- runs and reports


def test_evaluate_tracks_in_worker_processes_equals_in_process(root):
    tracks = find_tracks(root, "test")
    calls = []
    alone = evaluate_tracks(tracks, oracle_estimator("irm1"), jobs=1, progress=lambda d, t: calls.append((d, t)))
    pooled = evaluate_tracks(tracks, oracle_estimator("irm1"), jobs=2)
    assert calls == [(1, 2), (2, 2)]
    assert alone.tracks == pooled.tracks and list(alone.tracks) == [t.name for t in tracks]


def test_estimates_of_the_wrong_shape_name_the_track(root):
    from danna_sep.evaluate import EvaluationError

    track = find_tracks(root, "test")[0]
    with pytest.raises(EvaluationError, match="^" + re.escape(f"{track.path}: estimates of shape")):
        evaluate_tracks([track], lambda stems, rate: torch.zeros(3, 2, 10))


def test_report_summary_json_and_merge(tmp_path):
    report = Report("museval", tracks={
        "a": {s: {"SDR": 1.0, "SIR": 2.0, "ISR": 3.0, "SAR": 4.0} for s in SOURCES},
        "b": {s: {"SDR": 3.0, "SIR": float("nan"), "ISR": 3.0, "SAR": 4.0} for s in SOURCES},
    })
    report = report.merge(Report("museval", tracks={"c": {s: {"SDR": 10.0, "SIR": 4.0, "ISR": 3.0, "SAR": 4.0} for s in SOURCES}}))
    summary = report.summary()
    assert summary["vocals"] == {"SDR": 3.0, "SIR": 3.0, "ISR": 3.0, "SAR": 4.0}  # medians, NaN skipped
    assert summary["mean"]["SDR"] == 3.0
    data = report.to_json()
    assert data["tracks"]["b"]["bass"]["SIR"] is None  # NaN is not JSON
    sdr = Report("sdr", tracks={"a": {s: {"SDR": float(i)} for i, s in enumerate(SOURCES)},
                                "b": {s: {"SDR": float(i + 2)} for i, s in enumerate(SOURCES)}})
    assert sdr.summary()["bass"] == {"SDR": 2.0} and sdr.summary()["mean"] == {"SDR": 2.5}


def _run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.err


def _check_report(folder: Path, metric: str, names, keys):
    data = json.loads((folder / "report.json").read_text())
    assert data["metric"] == metric
    assert list(data["tracks"]) == sorted(names)
    for scores in data["tracks"].values():
        assert list(scores) == list(SOURCES)
        assert all(list(v) == list(keys) and all(isinstance(x, float) for x in v.values()) for v in scores.values())
    assert list(data["summary"]) == list(SOURCES) + ["mean"]
    assert list(data["summary"]["mean"]) == list(keys)
    markdown = (folder / "report.md").read_text()
    assert "| | drums | bass | other | vocals | mean |" in markdown
    for source in SOURCES:
        assert (folder / f"{source}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temporary files left
    return data


def test_cli_oracle_report_and_no_overwrite(root, tmp_path, capsys):
    out = tmp_path / "report"
    code, err = _run(["evaluate", "--root", str(root), "--oracle", "irm2", "-o", str(out), "-q"], capsys)
    assert code == 0, err
    names = [t.name for t in find_tracks(root, "test")]
    data = _check_report(out, "sdr", names, ["SDR"])
    assert data["estimator"] == "oracle irm2"
    assert all(data["summary"][s]["SDR"] > 10 for s in SOURCES)
    before = (out / "report.json").stat().st_mtime_ns

    code, err = _run(["evaluate", "--root", str(root), "--oracle", "mixture", "-o", str(out), "-q"], capsys)
    assert code == 1
    assert err.strip() == f"danna-sep: {out / 'report.json'}: already exists (use --force to overwrite)"
    assert (out / "report.json").stat().st_mtime_ns == before

    code, err = _run(["evaluate", "--root", str(root), "--oracle", "mixture", "-o", str(out), "-q", "--force", "--limit", "1"], capsys)
    assert code == 0, err
    data = json.loads((out / "report.json").read_text())
    assert list(data["tracks"]) == names[:1] and data["summary"]["mean"]["SDR"] < 5


def test_cli_bundle_scores_match_the_separator(root, tmp_path, capsys):
    from conftest import randomize
    from danna_sep import models
    from danna_sep.bundle import Member, save_bundle
    from danna_sep.separator import Separator
    from test_bundle import TINY

    # one tiny random X-UMX (the cheapest member to run) as the whole bundle
    model = randomize(models.build("xumx", **TINY["xumx"]), seed=0, scale=0.05).eval()
    member = Member(model, {s: 1.0 for s in SOURCES})
    bundle = save_bundle(tmp_path / "tiny", [member])
    out = tmp_path / "report"
    code, err = _run(["evaluate", "--root", str(root), "--bundle", str(bundle), "-o", str(out),
                      "--device", "cpu", "--segment", "1.0", "--limit", "1"], capsys)
    assert code == 0, err
    assert "evaluate" in err and "mean" in err  # progress bar and summary on stderr
    track = find_tracks(root, "test")[0]
    data = _check_report(out, "sdr", [track.name], ["SDR"])
    assert data["estimator"] == f"bundle {bundle}"
    stems = track.read()
    separated = Separator(bundle, device="cpu", segment=1.0, precision="float32").separate_tensor(stems["mixture"], SR)
    expected = sdr_mdx(torch.stack([stems[s] for s in SOURCES]), torch.stack([separated[s] for s in SOURCES]))
    got = [data["tracks"][track.name][s]["SDR"] for s in SOURCES]
    assert np.allclose(got, expected, atol=1e-4)


def test_cli_bad_inputs_give_one_line(root, tmp_path, capsys):
    code, err = _run(["evaluate", "--root", str(tmp_path / "none"), "--oracle", "irm1", "-o", str(tmp_path / "r")], capsys)
    assert code == 1 and err == f"danna-sep: {tmp_path / 'none'}: no such folder\n"
    broken = make_musdb_hq(tmp_path / "broken", tracks=1, seconds=0.5, subsets=("test",))
    track = next((broken / "test").iterdir())
    (track / "vocals.wav").unlink()
    code, err = _run(["evaluate", "--root", str(broken), "--oracle", "irm1", "-o", str(tmp_path / "r")], capsys)
    assert code == 1 and err.startswith(f"danna-sep: {track}: missing stem vocals.wav") and err.count("\n") == 1
    code, err = _run(["evaluate", "--root", str(root), "--bundle", str(tmp_path / "nobundle"), "-o", str(tmp_path / "r")], capsys)
    assert code == 1 and "nobundle" in err and err.count("\n") == 1
    code, err = _run(["evaluate", "--root", str(root), "--oracle", "irm1", "--jobs", "0", "-o", str(tmp_path / "r")], capsys)
    assert code == 2
    code, err = _run(["evaluate", "--root", str(root), "--oracle", "irm1", "--split", "valid", "-o", str(tmp_path / "r")], capsys)
    assert code == 2 and "--split" in err  # MUSDB18's validation tracks are in train, not test
    code, err = _run(["evaluate", "--root", str(root), "-o", str(tmp_path / "r")], capsys)  # no estimator
    assert code == 2 and "one of the arguments --bundle --checkpoints --umx --oracle is required" in err
    assert err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_cli_museval_report(root, tmp_path, capsys):
    out = tmp_path / "museval"
    code, err = _run(["evaluate", "--root", str(root), "--oracle", "irm1", "--metric", "museval",
                      "--jobs", "2", "-o", str(out), "-q"], capsys)
    assert code == 0, err
    data = _check_report(out, "museval", [t.name for t in find_tracks(root, "test")], ["SDR", "SIR", "ISR", "SAR"])
    museval = import_museval()
    track = find_tracks(root, "test")[0]
    stems = track.read()
    truth = torch.stack([stems[s] for s in SOURCES])
    estimates = oracle_estimates("irm1", truth, stems["mixture"])
    sdr, isr, sir, sar = museval.evaluate(truth.numpy().transpose(0, 2, 1), estimates.numpy().transpose(0, 2, 1))
    for name, values in (("SDR", sdr), ("ISR", isr), ("SIR", sir), ("SAR", sar)):
        expected = np.nanmedian(values, axis=1)
        got = [data["tracks"][track.name][s][name] for s in SOURCES]
        assert np.allclose(got, expected, atol=1e-6), name


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_torchrun_ranks_share_tracks_and_rank0_merges(tmp_path):
    root = make_musdb_hq(tmp_path / "data", tracks=3, seconds=1.0, subsets=("test",), seed=5)
    out = tmp_path / "report"
    port = _free_port()
    processes = []
    for rank in range(2):
        env = dict(os.environ, WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "danna_sep.cli", "evaluate", "--root", str(root), "--oracle", "irm1",
             "-o", str(out), "-q"], env=env, stderr=subprocess.PIPE, text=True))
    for process in processes:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
    data = json.loads((out / "report.json").read_text())
    alone = evaluate_tracks(find_tracks(root, "test"), oracle_estimator("irm1"))
    assert list(data["tracks"]) == list(alone.tracks)
    for name, scores in alone.tracks.items():
        for source in SOURCES:
            assert data["tracks"][name][source]["SDR"] == pytest.approx(scores[source]["SDR"], abs=1e-9)
