"""Where a separation's time goes: wall seconds per component on a 30 s clip, after a warm-up.

    python benchmarks/components.py                 # the default bundle
    python benchmarks/components.py --full          # the full blend, random weights
    DANNA_SEP_WIENER=numba python benchmarks/components.py

Prints one table: each network's forward passes, the Wiener filters, the STFT and the
inverse STFTs, and what is left (overlap-add, blending, copies). In process, so numba's
import and the models' loading are not counted.
"""

from __future__ import annotations

import argparse
import collections
import time
from typing import Callable, Dict, Optional, Sequence

import torch

try:  # run as a module: python -m benchmarks.components
    from . import _common as common
except ImportError:  # run as a script: python benchmarks/components.py (its folder is on sys.path)
    import _common as common  # type: ignore[no-redef]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the full-size blend (random weights)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--seconds", type=float, default=30.0, help="clip length (default 30)")
    args = parser.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)

    from danna_sep import engine, runner, spectral

    seconds: Dict[str, float] = collections.defaultdict(float)

    def timed(name: str, fn: Callable) -> Callable:
        def wrapper(*a, **k):
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                seconds[name] += time.perf_counter() - start
        return wrapper

    forward = runner.ModelRunner._forward

    def network(self, x):
        start = time.perf_counter()
        try:
            return forward(self, x)
        finally:
            seconds["network " + type(self.model).__name__] += time.perf_counter() - start

    patched = [(runner.ModelRunner, "_forward", network),
               (runner, "apply_wiener", timed("Wiener filter", runner.apply_wiener)),
               (engine.spectral, "istft", timed("inverse STFT", spectral.istft)),
               (engine, "mixture_stft", timed("STFT", engine.mixture_stft))]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patched]
    for owner, name, value in patched:
        setattr(owner, name, value)
    try:
        return _run(args, seconds)
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace, seconds: Dict[str, float]) -> int:
    from danna_sep.bundle import PAPER_BLEND
    from danna_sep.separator import Separator

    separator = Separator(common.random_bundle(PAPER_BLEND, seed=0) if args.full else None)
    clip = torch.randn(2, int(44100 * args.seconds), generator=torch.Generator().manual_seed(0)) * 0.1
    separator.separate_tensor(clip[:, :441000])  # warm-up: one segment or the clip
    seconds.clear()
    start = time.perf_counter()
    separator.separate_tensor(clip)
    total = time.perf_counter() - start
    print(f"| component ({'full blend' if args.full else 'default bundle'}, {separator.options.precision}, "
          f"{args.threads} threads, {args.seconds:g} s clip) | seconds |")
    print("|---|---:|")
    for name, value in sorted(seconds.items(), key=lambda item: -item[1]):
        print(f"| {name} | {value:.2f} |")
    print(f"| the rest | {total - sum(seconds.values()):.2f} |")
    print(f"| total | {total:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
