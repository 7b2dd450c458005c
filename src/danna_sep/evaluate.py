"""Scores of a separator (or an oracle) on a multitrack test set, and the report they make.

Two metrics:

- `sdr` (MDX challenge style): per track and source, 10 log10((sum s^2 + eps) /
  (sum (s - s_hat)^2 + eps)) over all channels and samples, eps 1e-7; a source's score is
  the mean over tracks.
- `museval` (SiSEC 2018, BSSEval v4): SDR, SIR, ISR and SAR over one-second frames, by
  the `museval` package; a track's score is the median over its frames (frames where the
  reference is silent give NaN and are skipped), a source's score the median over
  tracks.

Only `museval.metrics` (numpy and scipy) is used. The museval package's `__init__` imports
musdb, whose stempeg refuses to load without `ffmpeg` and `ffprobe` executables on PATH,
although BSSEval needs neither; so the metrics module is loaded from its file by itself
(`museval_metrics()`), and no ffmpeg executable is needed.

Oracles, the bounds a separator is measured against, use the true sources: `irm1`
(magnitude ratio mask |S_j| / sum |S|), `irm2` (power ratio |S_j|^2 / sum |S|^2), both
applied to the mixture STFT of `danna_sep.spectral`; `mwf` (the multichannel Wiener
filter of `danna_sep.wiener` on the true magnitudes, one EM iteration); and `mixture`
(the mixture as every estimate: the floor).

`evaluate_tracks` runs an estimator over tracks in this process and scores them in
`jobs` worker processes (museval takes ~25 s per 30 s of audio on one core), while
the next track is being separated.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Literal, Mapping, Optional, Sequence, Union

import numpy as np

from . import MDX_EPS, SAMPLERATE, SOURCES, atomic
from .errors import DannaSepError
from .metrics import mdx_sdr

log = logging.getLogger(__name__)

Metric = Literal["sdr", "museval"]
OracleKind = Literal["irm1", "irm2", "mwf", "mixture"]
METRICS = ("sdr", "museval")
ORACLES = ("irm1", "irm2", "mwf", "mixture")
#: The scores each metric gives per track and source.
METRIC_NAMES: Dict[str, tuple] = {"sdr": ("SDR",), "museval": ("SDR", "SIR", "ISR", "SAR")}
MASK_EPS = 1e-10

# (track's stems {"drums": (C, n), ..., "mixture": (C, n)}, sample rate) -> (sources, C, n)
Estimator = Callable[[Mapping[str, "object"], int], "object"]
ProgressFn = Callable[[int, int], None]


class EvaluationError(DannaSepError):
    """A problem with an evaluation's input or output: one line that starts with the path."""


# --------------------------------------------------------------------------- metrics


def _as_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().to("cpu").double().numpy()
    return np.asarray(x, dtype=np.float64)


def _match_length(references: np.ndarray, estimates: np.ndarray) -> np.ndarray:
    """Estimates cut or zero-padded at the end to the references' length (as museval does)."""
    n = references.shape[-1]
    if estimates.shape[-1] >= n:
        return estimates[..., :n]
    pad = [(0, 0)] * (estimates.ndim - 1) + [(0, n - estimates.shape[-1])]
    return np.pad(estimates, pad)


def _check_shapes(references: np.ndarray, estimates: np.ndarray) -> None:
    if references.ndim != 3 or estimates.ndim != 3 or references.shape[:2] != estimates.shape[:2]:
        raise ValueError(
            f"expected references and estimates of shape (sources, channels, samples), "
            f"got {references.shape} and {estimates.shape}"
        )


def sdr_mdx(references, estimates, eps: float = MDX_EPS) -> np.ndarray:
    """MDX-challenge SDR of each source: `(sources, channels, samples)` twice -> `(sources,)` dB.

    10 log10((sum s^2 + eps) / (sum (s - s_hat)^2 + eps)), sums over channels and samples,
    in double precision. Estimates are cut or zero-padded to the references' length.
    """
    ref = _as_numpy(references)
    est = _as_numpy(estimates)
    _check_shapes(ref, est)
    return mdx_sdr(ref, _match_length(ref, est), eps)


_MUSEVAL_METRICS = None


def museval_metrics():
    """museval's `metrics` module (BSSEval v4), without the package's musdb/ffmpeg imports.

    Uses the already imported `museval.metrics` if there is one; otherwise loads
    `museval/metrics.py` from the installed package by itself (it needs numpy and scipy).
    """
    global _MUSEVAL_METRICS
    if _MUSEVAL_METRICS is not None:
        return _MUSEVAL_METRICS
    module = sys.modules.get("museval.metrics")
    if module is None:
        spec = importlib.util.find_spec("museval")  # finds the package without running it
        if spec is None or not spec.submodule_search_locations:
            raise EvaluationError(
                "museval: not installed; the museval metric needs it: pip install 'danna-sep[eval]'"
            )
        path = Path(list(spec.submodule_search_locations)[0]) / "metrics.py"
        file_spec = importlib.util.spec_from_file_location("danna_sep._museval_metrics", path)
        if file_spec is None or file_spec.loader is None or not path.is_file():
            raise EvaluationError(f"{path}: museval's metrics module is missing")
        module = importlib.util.module_from_spec(file_spec)
        file_spec.loader.exec_module(module)
    _MUSEVAL_METRICS = module
    return module


def museval_scores(references, estimates, samplerate: int = SAMPLERATE, window: float = 1.0,
                   hop: float = 1.0) -> Dict[str, np.ndarray]:
    """BSSEval v4 framewise scores, as `museval.evaluate` computes them for SiSEC/MUSDB18.

    `(sources, channels, samples)` twice -> {"SDR", "SIR", "ISR", "SAR"}: `(sources, frames)`
    over frames of `window` seconds every `hop` seconds (distortion filters fitted on the
    whole track, images version, no permutation). Estimates are cut or zero-padded to the
    references' length. A source whose reference is silent throughout (which museval
    refuses) is left out of the computation and scored NaN; the others' scores are those
    museval gives with it, since a zero reference adds nothing to the projections.
    """
    ref = _as_numpy(references)
    est = _as_numpy(estimates)
    _check_shapes(ref, est)
    est = _match_length(ref, est)
    sources = ref.shape[0]
    frames = max(1, 1 + (ref.shape[-1] - int(window * samplerate)) // int(hop * samplerate))
    out = {name: np.full((sources, frames), np.nan) for name in METRIC_NAMES["museval"]}
    audible = [j for j in range(sources) if np.any(ref[j] != 0)]
    if not audible:
        return out
    metrics = museval_metrics()
    sdr, isr, sir, sar, _ = metrics.bss_eval(
        ref[audible].transpose(0, 2, 1),
        est[audible].transpose(0, 2, 1),
        window=int(window * samplerate),
        hop=int(hop * samplerate),
        compute_permutation=False,
        framewise_filters=False,
        bsseval_sources_version=False,
    )
    frames = sdr.shape[1]
    out = {name: np.full((sources, frames), np.nan) for name in METRIC_NAMES["museval"]}
    for name, values in (("SDR", sdr), ("SIR", sir), ("ISR", isr), ("SAR", sar)):
        out[name][audible] = values
    return out


def _nanmedian(values: np.ndarray, axis: int = -1) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows give NaN, as intended
        return np.nanmedian(values, axis=axis)


def score_track(references, estimates, metric: Metric = "sdr", samplerate: int = SAMPLERATE,
                sources: Sequence[str] = SOURCES) -> Dict[str, Dict[str, float]]:
    """One track's scores, `{source: {"SDR": x, ...}}`; museval's frame scores reduced by
    the NaN-aware median. Picklable, so that it runs in worker processes."""
    if metric == "sdr":
        values = sdr_mdx(references, estimates)
        return {name: {"SDR": float(values[j])} for j, name in enumerate(sources)}
    if metric == "museval":
        frames = museval_scores(references, estimates, samplerate)
        return {
            name: {key: float(_nanmedian(frames[key][j])) for key in METRIC_NAMES["museval"]}
            for j, name in enumerate(sources)
        }
    raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")


# --------------------------------------------------------------------------- oracles


def oracle_estimates(kind: OracleKind, sources, mixture=None, wiener_window: int = 300):
    """Oracle separation from the true sources `(sources, channels, samples)` (torch or numpy).

    `mixture` `(channels, samples)` defaults to the sum of the sources. Returns a float32
    torch tensor `(sources, channels, samples)`:
    irm1 / irm2: the mixture STFT times |S_j|^p / sum_k |S_k|^p (p = 1, 2);
    mwf: `danna_sep.wiener` on the true magnitudes, one iteration, over windows of
    `wiener_window` frames (as inference filters); mixture: the mixture for every source.
    """
    import torch

    from . import spectral
    from .wiener import apply_wiener

    if kind not in ORACLES:
        raise ValueError(f"oracle must be one of {ORACLES}, got {kind!r}")
    truth = torch.as_tensor(sources, dtype=torch.float32)
    if truth.dim() != 3:
        raise ValueError(f"expected sources (sources, channels, samples), got {tuple(truth.shape)}")
    mix = truth.sum(dim=0) if mixture is None else torch.as_tensor(mixture, dtype=torch.float32)
    length = truth.shape[-1]
    if kind == "mixture":
        return mix.unsqueeze(0).expand_as(truth).clone()
    mix_stft = spectral.stft(mix)  # (channels, bins, frames)
    magnitude = spectral.stft(truth).abs()  # (sources, channels, bins, frames)
    if kind == "mwf":
        filtered = apply_wiener(magnitude.unsqueeze(0), mix_stft.unsqueeze(0), iterations=1,
                                window=wiener_window)[0]
    else:
        power = magnitude if kind == "irm1" else magnitude.square()
        mask = power / (power.sum(dim=0, keepdim=True) + MASK_EPS)
        filtered = mask * mix_stft.unsqueeze(0)
    return spectral.istft(filtered, length).to(torch.float32)


def oracle_estimator(kind: OracleKind, sources: Sequence[str] = SOURCES) -> Estimator:
    """An estimator that returns `oracle_estimates(kind, ...)` from a track's true stems."""
    if kind not in ORACLES:
        raise ValueError(f"oracle must be one of {ORACLES}, got {kind!r}")

    def estimate(stems, samplerate: int):
        import torch

        truth = torch.stack([stems[name] for name in sources])
        return oracle_estimates(kind, truth, stems.get("mixture"))

    estimate.description = f"oracle {kind}"  # type: ignore[attr-defined]
    return estimate


def separator_estimator(separator, sources: Sequence[str] = SOURCES) -> Estimator:
    """An estimator that runs `separator.separate_tensor` on a track's mixture."""
    missing = [name for name in sources if name not in separator.sources]
    if missing:
        raise ValueError(f"the separator does not produce {', '.join(missing)}")

    def estimate(stems, samplerate: int):
        import torch

        mixture = stems["mixture"]
        separated = separator.separate_tensor(mixture, samplerate)
        out = torch.stack([separated[name] for name in sources])
        if mixture.shape[0] == 1 and out.shape[1] != 1:  # mono track: score mono estimates
            out = out.mean(dim=1, keepdim=True)
        return out

    return estimate


# --------------------------------------------------------------------------- report


def _finite_or_none(value: float) -> Optional[float]:
    return None if value is None or not math.isfinite(value) else float(value)


@dataclass
class Report:
    """Per-track, per-source scores and their summary (see the module docstring)."""

    metric: Metric
    tracks: Dict[str, Dict[str, Dict[str, float]]] = field(default_factory=dict)
    sources: Sequence[str] = tuple(SOURCES)
    info: Dict[str, object] = field(default_factory=dict)

    @property
    def names(self) -> tuple:
        return METRIC_NAMES[self.metric]

    def merge(self, other: "Report") -> "Report":
        if other.metric != self.metric:
            raise ValueError(f"cannot merge a {other.metric} report into a {self.metric} one")
        tracks = dict(self.tracks)
        tracks.update(other.tracks)
        return Report(self.metric, dict(sorted(tracks.items())), self.sources, dict(self.info))

    def summary(self) -> Dict[str, Dict[str, Optional[float]]]:
        """Per source: the mean over tracks (sdr) or the NaN-aware median (museval); and
        "mean": the mean over sources of those."""
        out: Dict[str, Dict[str, Optional[float]]] = {}
        for source in self.sources:
            out[source] = {}
            for key in self.names:
                values = np.array([t[source][key] for t in self.tracks.values()], dtype=np.float64)
                if values.size == 0:
                    value = float("nan")
                elif self.metric == "sdr":
                    value = float(np.mean(values))
                else:
                    value = float(_nanmedian(values, axis=0))
                out[source][key] = value
        out["mean"] = {
            key: float(np.mean([out[s][key] for s in self.sources])) for key in self.names
        }
        return {
            group: {key: _finite_or_none(value) for key, value in scores.items()}
            for group, scores in out.items()
        }

    def to_json(self) -> Dict[str, object]:
        return {
            "metric": self.metric,
            **self.info,
            "tracks": {
                name: {s: {k: _finite_or_none(v) for k, v in scores[s].items()} for s in self.sources}
                for name, scores in self.tracks.items()
            },
            "summary": self.summary(),
        }

    def to_markdown(self) -> str:
        def cell(value: Optional[float]) -> str:
            return "n/a" if value is None or not math.isfinite(value) else f"{value:.2f}"

        summary = self.summary()
        how = "mean over tracks" if self.metric == "sdr" else "median over frames, then over tracks"
        head = "| | " + " | ".join(self.sources) + " | mean |"
        rule = "|---" * (len(self.sources) + 2) + "|"
        lines = [f"# Evaluation: {self.metric} ({len(self.tracks)} tracks)", ""]
        for key in ("estimator", "root", "subset"):
            if key in self.info:
                lines.append(f"- {key}: {self.info[key]}")
        lines += ["", f"## Summary (dB, {how})", "", head, rule]
        for key in self.names:
            row = [cell(summary[s][key]) for s in self.sources] + [cell(summary["mean"][key])]
            lines.append(f"| {key} | " + " | ".join(row) + " |")
        for key in self.names:
            lines += ["", f"## {key} per track (dB)", "", "| track | " + " | ".join(self.sources) + " | mean |", rule]
            for name, scores in self.tracks.items():
                values = [scores[s][key] for s in self.sources]
                mean = float(np.mean(values)) if all(math.isfinite(v) for v in values) else float("nan")
                lines.append(f"| {name} | " + " | ".join(cell(v) for v in values) + f" | {cell(mean)} |")
        return "\n".join(lines) + "\n"

    # ------------------------------------------------------------------ files

    def output_paths(self, folder: Union[str, os.PathLike]) -> List[Path]:
        folder = Path(folder)
        return [folder / "report.json", folder / "report.md"] + [folder / f"{s}.png" for s in self.sources]

    def save(self, folder: Union[str, os.PathLike], force: bool = False) -> List[Path]:
        """Write report.json, report.md and one box plot per source (`{source}.png`), each
        under a temporary name, renamed when complete. Existing files are kept (and
        EvaluationError raised) unless `force`."""
        folder = Path(folder)
        check_outputs(folder, self.sources, force)
        folder.mkdir(parents=True, exist_ok=True)
        paths = self.output_paths(folder)
        text = json.dumps(self.to_json(), indent=2, ensure_ascii=False, allow_nan=False) + "\n"
        atomic.write_text(paths[0], text)
        atomic.write_text(paths[1], self.to_markdown())
        for source, path in zip(self.sources, paths[2:]):
            atomic.write_with(path, lambda temp, source=source: self._plot(source, temp))
        return paths

    def _plot(self, source: str, path: Path) -> None:
        # The object-oriented API with the Agg canvas: no pyplot, no global backend switch.
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        figure = Figure(figsize=(1.6 + 1.4 * len(self.names), 4.0), dpi=100)
        FigureCanvasAgg(figure)
        axes = figure.add_subplot(1, 1, 1)
        data = []
        for key in self.names:
            values = np.array([t[source][key] for t in self.tracks.values()], dtype=np.float64)
            data.append(values[np.isfinite(values)])
        axes.boxplot(data, showmeans=True, showfliers=False)  # every track is drawn as a point
        axes.set_xticks(range(1, len(self.names) + 1), list(self.names))
        rng = np.random.default_rng(0)
        for position, values in enumerate(data, start=1):
            axes.plot(position + rng.uniform(-0.08, 0.08, len(values)), values, ".", alpha=0.5, color="0.3")
        axes.set_ylabel("dB")
        axes.set_title(f"{source}: {self.metric}, {len(self.tracks)} tracks")
        axes.grid(axis="y", alpha=0.3)
        figure.tight_layout()
        figure.savefig(str(path), format="png")


def check_outputs(folder: Union[str, os.PathLike], sources: Sequence[str] = SOURCES,
                  force: bool = False) -> None:
    """EvaluationError naming the first report file that exists, unless `force`."""
    if force:
        return
    for path in Report("sdr", sources=sources).output_paths(folder):
        if path.exists():
            raise EvaluationError(f"{path}: already exists (use --force to overwrite)")


# --------------------------------------------------------------------------- running


def evaluate_tracks(
    tracks: Iterable,
    estimator: Estimator,
    metric: Metric = "sdr",
    jobs: int = 1,
    progress: Optional[ProgressFn] = None,
    sources: Sequence[str] = SOURCES,
) -> Report:
    """Separate and score each track (`danna_sep.data.Track`).

    The estimator runs here, track after track; scoring runs here too with `jobs=1`, else
    in `jobs` spawned processes, so that museval scores earlier tracks while later ones
    are separated. `progress(done, total)` is called as tracks are scored.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if jobs < 1:
        raise ValueError(f"jobs must be 1 or more, got {jobs}")
    if metric == "museval":
        museval_metrics()  # fail before separating anything when museval is missing
    tracks = list(tracks)
    total = len(tracks)
    report = Report(metric, sources=tuple(sources))
    done = 0

    def finished(name: str, scores: Dict[str, Dict[str, float]]) -> None:
        nonlocal done
        report.tracks[name] = scores
        done += 1
        log.debug("%s: %s", name, ", ".join(f"{s} {v['SDR']:.2f}" for s, v in scores.items()))
        if progress is not None:
            progress(done, total)

    def scored(track, result: Callable[[], Dict[str, Dict[str, float]]]) -> None:
        try:
            scores = result()
        except EvaluationError:
            raise
        except (ValueError, np.linalg.LinAlgError) as error:  # museval on degenerate audio
            raise EvaluationError(f"{track.path}: cannot score ({error})") from None
        finished(track.name, scores)

    def prepare(track):
        stems = track.read()
        references = np.stack([stems[name].numpy() for name in sources])
        estimates = _as_numpy(estimator(stems, track.samplerate)).astype(np.float32)
        if estimates.shape[:2] != references.shape[:2]:
            raise EvaluationError(
                f"{track.path}: estimates of shape {estimates.shape} for references of shape {references.shape}"
            )
        return references, estimates

    if jobs == 1:
        for track in tracks:
            references, estimates = prepare(track)
            scored(track, lambda: score_track(references, estimates, metric, track.samplerate, sources))
    else:
        import multiprocessing

        context = multiprocessing.get_context("spawn")  # no fork of a process holding torch threads
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
            pending: List[tuple] = []
            for track in tracks:
                references, estimates = prepare(track)
                pending.append((track, pool.submit(score_track, references, estimates, metric,
                                                   track.samplerate, tuple(sources))))
                # bound the memory held by queued tracks: wait for the oldest beyond 2 per job
                while len(pending) > 2 * jobs or (pending and pending[0][1].done()):
                    done_track, future = pending.pop(0)
                    scored(done_track, future.result)
            for done_track, future in pending:
                scored(done_track, future.result)
    report.tracks = dict(sorted(report.tracks.items()))
    return report
