"""Smoke tests of benchmarks/speed.py and its helpers on tiny models and a 1 s clip (no timings checked)."""

import importlib
import json
from pathlib import Path

import pytest
import torch

from danna_sep import models
from danna_sep.engine import resolve_precision
from danna_sep.bundle import FAST_BLEND, PAPER_BLEND

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "xumx": dict(hidden_channels=8, max_bins=64, nb_layers=1),
    "unet_attn": dict(max_bins=128, k=2),
    "demucs_split": dict(channels=4, depth=4),
}


@pytest.fixture(scope="module")
def bench():
    """The benchmarks package, imported from the repository root (spawned workers inherit the path)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(ROOT))
        speed = importlib.import_module("benchmarks.speed")
        common = importlib.import_module("benchmarks._common")
        yield speed, common


def test_clip_is_deterministic_stereo_and_scaled(bench):
    _, common = bench
    clip = common.make_clip(1.5, seed=3)
    assert clip.shape == (2, 66150) and clip.dtype == torch.float32
    assert torch.isfinite(clip).all()
    assert clip.abs().max().item() == pytest.approx(0.5, abs=1e-6)
    assert torch.equal(clip, common.make_clip(1.5, seed=3))
    assert not torch.equal(clip, common.make_clip(1.5, seed=4))
    assert not torch.allclose(clip[0], clip[1])  # panned sources: really stereo
    with pytest.raises(common.BenchmarkError):
        common.make_clip(0)


def test_random_bundle_is_seeded_and_blended(bench):
    _, common = bench
    a = common.random_bundle(PAPER_BLEND, seed=5, kwargs=TINY)
    b = common.random_bundle(PAPER_BLEND, seed=5, kwargs=TINY)
    assert [m.name for m in a.members] == list(PAPER_BLEND)
    for ma, mb in zip(a.members, b.members):
        assert ma.blend == PAPER_BLEND[ma.name]
        for (ka, va), (kb, vb) in zip(ma.model.state_dict().items(), mb.model.state_dict().items()):
            assert ka == kb and torch.equal(va, vb)
    assert not a.members[0].model.training


def test_machine_line_names_cpu_torch_and_threads(bench):
    _, common = bench
    info = common.machine_info(3)
    line = common.machine_line(info)
    assert info["cpu"] in line and f"torch {torch.__version__}" in line and "3 torch threads" in line


def test_measure_tiny_blend_in_process(bench):
    speed, common = bench
    clip = common.make_clip(1.0)
    system = speed.System("tiny_fast", "tiny fast blend", "bundle", blend=FAST_BLEND, kwargs=TINY)
    before = torch.get_num_threads()
    row = speed.measure(system, clip, speed.RunOptions(threads=1, repeat=2, warmup_seconds=0.5))
    assert torch.get_num_threads() == before  # restored
    expected = sum(models.parameter_count(models.build(n, **TINY[n])) for n in FAST_BLEND)
    assert row.error is None and row.parameters == expected
    assert len(row.seconds) == 2 and all(s > 0 for s in row.seconds)
    assert row.audio_seconds == 1.0 and row.rtf == pytest.approx(row.median)
    assert "segment 10 s" in row.settings and "shifts 0" in row.settings
    assert row.peak_rss_increase is not None and row.peak_rss_increase >= 0
    # torch's flop counter over one more separation: at least the blend's linear layers and convolutions
    assert row.precision == resolve_precision("auto", torch.device("cpu"))
    assert row.flops is not None and row.flops > 0 and row.gflops_per_second == pytest.approx(row.flops / row.median / 1e9)
    with torch.no_grad():
        counted = speed.count_flops(lambda c: torch.nn.functional.linear(c, torch.ones(3, c.shape[-1])), clip)
    assert counted == 2 * 2 * 3 * clip.shape[-1]  # (2, n) @ (n, 3): two flops per multiply-add
    waveform_only = speed.System("tiny_demucs", "tiny demucs", "bundle",
                                 blend={"demucs_split": FAST_BLEND["demucs_split"]}, kwargs=TINY)
    row = speed.measure(waveform_only, clip, speed.RunOptions(threads=1, warmup_seconds=0, shifts=1))
    precision = resolve_precision("auto", torch.device("cpu"))
    assert row.settings == f"segment 10 s, overlap 0.1, shifts 1, {precision}"  # no Wiener filter for Demucs


def test_measure_tiny_openunmix(bench):
    speed, common = bench
    kwargs = dict(speed.UMXHQ_KWARGS, hidden_size=8, nb_layers=1)
    system = speed.System("tiny_umx", "tiny umx", "openunmix", kwargs=kwargs)
    row = speed.measure(system, common.make_clip(1.0), speed.RunOptions(threads=1, warmup_seconds=0))
    # four targets: fc1 (2*1487 -> 8), LSTM, fc2, fc3 (8 -> 2*2049) and their norms
    assert row.error is None and row.parameters % 4 == 0 and row.parameters > 4 * 2 * 1487 * 8
    assert len(row.seconds) == 1


def test_measure_tiny_htdemucs(bench):
    pytest.importorskip("demucs.htdemucs", reason="demucs is a benchmark-only package (requirements-bench.txt)")
    speed, common = bench
    kwargs = dict(channels=8, depth=4, t_layers=1, segment=1)
    system = speed.System("tiny_ht", "tiny htdemucs", "htdemucs", kwargs=kwargs)
    row = speed.measure(system, common.make_clip(1.0), speed.RunOptions(threads=1, warmup_seconds=0))
    assert row.error is None and row.parameters > 0
    assert "segment 1 s" in row.settings and "shifts 1" in row.settings


def test_measure_isolated_runs_in_a_spawned_process(bench):
    speed, common = bench
    system = speed.System("tiny_xumx", "tiny xumx", "bundle", blend={"xumx": {"vocals": 1.0}},
                          kwargs={"xumx": TINY["xumx"]})
    row = speed.measure_isolated(system, common.make_clip(0.5), speed.RunOptions(threads=1, warmup_seconds=0))
    assert row.error is None and len(row.seconds) == 1
    broken = speed.System("broken", "broken", "bundle", path=str(ROOT / "no-such-bundle"))
    failed = speed.measure_isolated(broken, common.make_clip(0.5), speed.RunOptions(threads=1, warmup_seconds=0))
    assert failed.error is not None and "no-such-bundle" in failed.error and not failed.seconds


def test_render_and_the_blend_requirement(bench):
    speed, common = bench
    rows = [
        speed.Row("danna_sep", "full blend", parameters=243_180_000, seconds=[30.0, 20.0, 25.0],
                  audio_seconds=50.0, peak_rss_increase=3 * 2**20, settings="s"),
        speed.Row("htdemucs", "HT-Demucs", parameters=41_984_456, seconds=[20.0], audio_seconds=50.0),
        speed.Row("umxhq", "UMX-HQ", error="openunmix is not installed"),
        speed.Row("slow", "slow one", parameters=1_000_000, seconds=[100.0], audio_seconds=50.0),
    ]
    text = speed.render(rows, common.machine_info(2), 50.0, 3)
    assert "| full blend | 243.18 M | 25.0 | 0.500 | 2.0x | 3 MiB | s |" in text
    assert "| HT-Demucs | 41.98 M | 20.0 | 0.400 | 2.5x |" in text
    assert "| slow one | 1.00 M | 100.0 | 2.000 | 0.50x |" in text
    assert "| UMX-HQ |" in text and "not run: openunmix is not installed" in text
    rows[0].flops, rows[0].precision = 50 * 40e9, "bfloat16"  # 40 GFLOP per audio second, in 25 s: 80 GFLOP/s
    rows[1].flops = 50 * 12e9  # float32: 30 GFLOP/s
    text = speed.render(rows, common.machine_info(2), 50.0, 3, roofs={"float32": 150.0, "bfloat16": 320.0})
    assert "Roofs: 4096^3 matrix products reach 150 GFLOP/s in float32 and 320 in bfloat16." in text
    assert "| full blend | 243.18 M | 25.0 | 0.500 | 2.0x | 3 MiB | s | 40.0 | 80 | 25% |" in text
    assert "| HT-Demucs | 41.98 M | 20.0 | 0.400 | 2.5x |  |  | 12.0 | 30 | 20% |" in text
    assert "1.25" in speed.blend_check(rows) and "NOT met" in speed.blend_check(rows)
    rows[0].seconds = [10.0]
    assert "0.50" in speed.blend_check(rows) and "NOT" not in speed.blend_check(rows)
    assert "From 1 timed run(s) of each" in speed.blend_check(rows)
    rows[0].seconds, rows[1].seconds = [10.0, 11.0, 12.0], [20.0, 21.0, 22.0]
    assert speed.blend_check(rows) == "Full blend / HT-Demucs time: 0.52 (requirement: at most 1, met)."
    assert speed.blend_check(rows[1:]) is None


def test_default_systems_are_data_driven(bench, tmp_path):
    speed, _ = bench
    names = [s.name for s in speed.default_systems()]
    assert names[:8] == ["xumx", "unet_attn", "demucs_split", "danna_sep_fast", "danna_sep", "danna_sep_fp32",
                         "umxhq", "htdemucs"]
    assert ("default" in names) == (speed.PRETRAINED_DEFAULT / "bundle.json").is_file()
    extra = speed.default_systems([str(tmp_path / "a"), str(tmp_path / "b")])
    assert [s.path for s in extra[-2:]] == [str(tmp_path / "a"), str(tmp_path / "b")]
    assert len({s.name for s in extra}) == len(extra)


def test_cli_errors_and_json(bench, tmp_path, capsys):
    speed, _ = bench
    assert speed.main(["--only", "xumx,nope"]) == 2
    assert "unknown row(s) nope" in capsys.readouterr().err
    assert speed.main(["--bundle", str(tmp_path / "missing")]) == 1
    assert capsys.readouterr().err.strip().endswith("not a danna-sep bundle (no bundle.json)")
    existing = tmp_path / "out.json"
    existing.write_text("{}")
    assert speed.main(["--json", str(existing)]) == 1
    assert "already exists" in capsys.readouterr().err and existing.read_text() == "{}"
    roof = speed.matmul_roof(torch.float32, size=256, repeat=1)
    assert 0.01 < roof < 1e5  # GFLOP/s
    assert speed.main(["--list"]) == 0
    assert "htdemucs\tHT-Demucs" in capsys.readouterr().out


def test_cli_runs_a_full_size_row_and_saves_json(bench, tmp_path, capsys):
    speed, _ = bench
    out = tmp_path / "speed.json"
    code = speed.main(["--seconds", "1", "--warmup", "0", "--only", "xumx", "--in-process", "--threads", "1",
                       "--json", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert text.startswith("Machine: ") and "| X-UMX (danna-sep) | 35.57 M |" in text
    data = json.loads(out.read_text())
    (row,) = data["rows"]
    assert row["name"] == "xumx" and row["parameters"] == models.parameter_count(models.build("xumx"))
    assert row["rtf"] == pytest.approx(row["median_seconds"] / 1.0)
    assert data["rtf_convention"] == "processing seconds / audio seconds"


def test_quality_table_on_a_generated_split(bench, tmp_path, capsys):
    """benchmarks/quality.py on tiny random models and one generated 4 s track: a row per
    member, the blend and the two oracles; the floor checked against the stems directly."""
    import numpy as np
    import soundfile as sf

    from danna_sep.bundle import save_bundle

    pytest.importorskip("fluidsynth")
    quality = importlib.import_module("benchmarks.quality")
    _, common = bench
    bundle = save_bundle(tmp_path / "bundle", common.random_bundle(PAPER_BLEND, seed=2, kwargs=TINY).members)
    data, out = tmp_path / "split", tmp_path / "quality.json"
    args = ["--bundle", str(bundle), "--data", str(data), "--tracks", "1", "--seconds", "4", "--seed", "5",
            "--workers", "1", "--threads", "1", "--json", str(out), "--realval", "none"]
    assert quality.main(args) == 0
    table = capsys.readouterr().out
    rows = json.loads(out.read_text())["sdr"]
    assert list(rows) == ["xumx", "unet_attn", "demucs_split", "blend", "oracle IRM2 (ceiling)", "mixture (floor)"]
    assert all(name in table for name in rows) and "corpus seed 5" in table
    (track,) = (data / "test").iterdir()
    mixture = sf.read(track / "mixture.wav", dtype="float64")[0]
    floor = {}
    for source in ("drums", "bass", "other", "vocals"):
        stem = sf.read(track / f"{source}.wav", dtype="float64")[0]
        floor[source] = 10 * np.log10((np.sum(stem**2) + 1e-7) / (np.sum((stem - mixture) ** 2) + 1e-7))
        assert rows["mixture (floor)"][source] == pytest.approx(floor[source], abs=1e-3)
        assert rows["oracle IRM2 (ceiling)"][source] > floor[source] + 3
    assert rows["mixture (floor)"]["mean"] == pytest.approx(np.mean(list(floor.values())), abs=1e-3)
    # the blend row, summed from the members' estimates, is what Separator on the bundle gives
    from danna_sep.evaluate import sdr_mdx
    from danna_sep.separator import Separator

    separated = Separator(bundle, device="cpu", precision="float32").separate_tensor(
        torch.from_numpy(mixture.T.astype(np.float32)), 44100)
    for source in ("drums", "bass", "other", "vocals"):
        stem = sf.read(track / f"{source}.wav", dtype="float32")[0].T
        direct = sdr_mdx(stem[None], separated[source].numpy()[None])[0]
        assert rows["blend"][source] == pytest.approx(direct, abs=1e-3)
    # --wiener-blend joint: the blend row is the bundle's own Separator with one Wiener filter
    assert quality.main(args + ["--force", "--wiener-blend", "joint"]) == 0
    joint_rows = json.loads(out.read_text())["sdr"]
    joint = Separator(bundle, device="cpu", precision="float32", wiener_blend="joint").separate_tensor(
        torch.from_numpy(mixture.T.astype(np.float32)), 44100)
    for source in ("drums", "bass", "other", "vocals"):
        stem = sf.read(track / f"{source}.wav", dtype="float32")[0].T
        assert joint_rows["blend"][source] == pytest.approx(sdr_mdx(stem[None], joint[source].numpy()[None])[0], abs=1e-3)
    assert joint_rows["xumx"] == rows["xumx"] and joint_rows["blend"] != rows["blend"]
    capsys.readouterr()
    assert quality.main(args) == 1  # the JSON exists: needs --force
    assert "already exists" in capsys.readouterr().err
    assert quality.main(args + ["--force"]) == 0
    # --as-is scores the tracks found, whatever made them: a track the generator would now
    # refuse (its meta.json says another version) gives the same rows, and nothing is generated
    meta = json.loads((track / "meta.json").read_text())
    (track / "meta.json").write_text(json.dumps({**meta, "request": {**meta["request"], "version": -1}}))
    capsys.readouterr()
    assert quality.main(args + ["--force"]) == 1  # generating: refuses the differing track
    assert "differs" in capsys.readouterr().err
    assert quality.main(args + ["--force", "--as-is", "--tracks", "5"]) == 0
    assert "1 tracks as found" in capsys.readouterr().out
    assert json.loads(out.read_text())["sdr"] == rows
    assert sorted(p.name for p in (data / "test").iterdir()) == [track.name]
    assert quality.main(args + ["--force", "--as-is", "--data", str(tmp_path / "nothing")]) == 1
    assert "nothing" in capsys.readouterr().err


def test_quality_real_table_on_clips_in_the_realval_layout(bench, tmp_path, capsys):
    """The second table: mono 16 kHz clips separated at 44.1 kHz, vocals against the sum of
    the other stems; the blend row equals Separator on the whole bundle, the floor equals
    the mixture's SDR computed here."""
    import numpy as np
    import soundfile as sf

    from danna_sep.bundle import save_bundle
    from danna_sep.evaluate import sdr_mdx
    from danna_sep.separator import Separator

    quality = importlib.import_module("benchmarks.quality")
    _, common = bench
    bundle = save_bundle(tmp_path / "bundle", common.random_bundle(PAPER_BLEND, seed=3, kwargs=TINY).members)
    root = tmp_path / "realval"
    rng = np.random.default_rng(1)
    truth = {}
    for name in ("b_clip", "a_clip"):
        (root / name).mkdir(parents=True)
        t = np.arange(16000 * 2) / 16000
        voice = 0.2 * np.sin(2 * np.pi * 330 * t) * (rng.random() + 0.5)
        band = 0.1 * rng.standard_normal(t.size)
        for stem, audio in (("vocals", voice), ("accompaniment", band), ("mixture", voice + band)):
            sf.write(str(root / name / f"{stem}.wav"), audio, 16000, subtype="FLOAT")
        truth[name] = (voice, band)
    (root / "README.md").write_text("not a clip")
    (root / "incomplete").mkdir()
    clips = quality.load_realval(root)
    assert [c.name for c in clips] == ["a_clip", "b_clip"] and clips[0].samplerate == 16000
    from danna_sep.separator import resolve_bundle

    rows = quality.real_rows(resolve_bundle(str(bundle)), clips)
    assert list(rows) == ["xumx", "unet_attn", "demucs_split", "blend", "oracle IRM2 (ceiling)", "mixture (floor)"]
    separator = Separator(bundle, device="cpu", precision="float32")
    blend, floor = [], []
    for clip in clips:
        voice, band = truth[clip.name]
        refs = np.stack([voice, band])[:, None, :].astype(np.float32)
        stems = separator.separate_tensor(clip.mixture, 16000)
        vocals = stems["vocals"].mean(dim=0).numpy()
        rest = sum(stems[s].mean(dim=0) for s in ("drums", "bass", "other")).numpy()
        blend.append(sdr_mdx(refs, np.stack([vocals, rest])[:, None, :]))
        floor.append(sdr_mdx(refs, np.stack([voice + band] * 2)[:, None, :].astype(np.float32)))
    blend, floor = np.mean(blend, axis=0), np.mean(floor, axis=0)
    assert rows["blend"]["vocals"] == pytest.approx(blend[0], abs=1e-3)
    assert rows["blend"]["accompaniment"] == pytest.approx(blend[1], abs=1e-3)
    assert rows["mixture (floor)"]["vocals"] == pytest.approx(floor[0], abs=1e-3)
    assert rows["oracle IRM2 (ceiling)"]["vocals"] > rows["mixture (floor)"]["vocals"] + 3
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(common.BenchmarkError, match="no clip folders"):
        quality.load_realval(empty)
    capsys.readouterr()
    assert quality.main(["--bundle", str(bundle), "--realval", str(tmp_path / "missing")]) == 1
    assert capsys.readouterr().err.strip() == (f"quality: {tmp_path / 'missing'}: no such folder of real clips "
                                               "(pass --realval none to skip them)")


def test_unet_levels_partition_the_networks_flops(bench):
    """benchmarks/unet_levels.py: its levels cover the whole U-Net, so their flops add up to the network's."""
    levels = importlib.import_module("benchmarks.unet_levels")
    torch.manual_seed(0)
    model = models.build("unet_attn", max_bins=128, k=2, attn_channels=8, attn_d_model=8, attn_heads=2).eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = levels.profile(model, "float32", frames=64)
    finally:
        torch.set_num_threads(threads)
    names = [row["level"] for row in rows]
    assert names[:6] == [f"down_convs.{i}" for i in range(6)] and names[-1] == "whole network"
    assert "end.0" in names and "attn.0" in names and "up_convs.4" in names
    whole = rows[-1]
    assert whole["flops"] > 0 and whole["seconds"] > 0
    assert sum(row["flops"] for row in rows[:-1]) == whole["flops"]


def test_components_account_for_the_default_bundles_time(bench, capsys):
    """benchmarks/components.py: a row per network of the default bundle, the filters and
    transforms, and a total that the rows add up to."""
    components = importlib.import_module("benchmarks.components")
    assert components.main(["--seconds", "3", "--threads", "1"]) == 0
    rows = {}
    for line in capsys.readouterr().out.splitlines()[2:]:
        name, value = [cell.strip() for cell in line.strip("|").split("|")]
        rows[name] = float(value)
    assert {"network XUMX", "network UNetAttn", "network DemucsSplit", "Wiener filter", "inverse STFT",
            "STFT", "the rest", "total"} <= set(rows)
    assert all(value >= 0 for value in rows.values())
    assert abs(sum(value for name, value in rows.items() if name != "total") - rows["total"]) < 0.02


@pytest.mark.slow  # inductor generates and builds C++ for the network: tens of seconds on 2 cores
def test_compiled_gives_a_row_per_member_with_its_compile_time(bench, capsys):
    """benchmarks/compiled.py on the default's X-UMX: eager, compile and compiled times."""
    compiled = importlib.import_module("benchmarks.compiled")
    assert compiled.main(["--members", "xumx", "--threads", "1", "--repeat", "1", "--precision", "float32"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "torch" in lines[0]  # the machine
    cells = [cell.strip() for cell in lines[-1].strip("|").split("|")]
    assert cells[0] == "xumx" and len(cells) == 6
    eager, first, fast = (float(cells[i]) for i in (1, 2, 3))
    assert eager > 0 and fast > 0 and first > fast  # the first call includes the compile
