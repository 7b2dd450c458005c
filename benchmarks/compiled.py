"""torch.compile against eager mode, per network of the default bundle: does it pay?

    python benchmarks/compiled.py                     # every member, 2 threads
    python benchmarks/compiled.py --members unet_attn
    python benchmarks/compiled.py --full              # the full-size blend (random weights)

Each member of the default bundle (or of the full-size blend) runs as separation prepares it (`ModelRunner`: the bundle's precision, batch
norms folded, channels-last), on one 10 s segment's input. The table gives the eager median
of a few forward passes, the time of torch.compile's first call (tracing and inductor's code
generation: much shorter the second time in a machine, from inductor's cache on disk, whose
state the table cannot know, so run it twice), the compiled median, and the audio after
which the compile has paid for itself. In process; the Wiener filter and the STFTs are not
compiled (they are not networks).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, List, Optional, Sequence

import torch

try:  # run as a module: python -m benchmarks.compiled
    from . import _common as common
except ImportError:  # run as a script: python benchmarks/compiled.py (its folder is on sys.path)
    import _common as common  # type: ignore[no-redef]

SEGMENT_SECONDS = 10.0


def _median_seconds(fn: Callable[[], object], repeat: int) -> float:
    times: List[float] = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", nargs="*", default=None, help="member names (default: all)")
    parser.add_argument("--full", action="store_true", help="the full-size blend (random weights)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--repeat", type=int, default=5, help="forward passes per median (default 5)")
    parser.add_argument("--precision", choices=("auto", "float32", "bfloat16"), default="auto",
                        help="the networks' arithmetic (default: auto, as `separate`)")
    args = parser.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace) -> int:
    from danna_sep import SAMPLERATE, spectral
    from danna_sep.runner import EngineOptions, ModelRunner, resolve_precision
    from danna_sep.separator import resolve_bundle

    device = torch.device("cpu")
    precision = resolve_precision(args.precision, device)
    if args.full:
        from danna_sep.bundle import PAPER_BLEND

        bundle = common.random_bundle(PAPER_BLEND, seed=0)
    else:
        bundle = resolve_bundle("default")
    chunk = torch.randn(1, 2, int(SAMPLERATE * SEGMENT_SECONDS), generator=torch.Generator().manual_seed(0)) * 0.1
    rows = []
    for member in bundle.members:
        if args.members and member.name not in args.members:
            continue
        wanted = [source for source in bundle.sources if member.blend.get(source, 0) > 0]  # as Separator prunes
        runner = ModelRunner(member.model, device, EngineOptions(precision=precision), sources=wanted)
        x = chunk if runner.input_domain == "waveform" else spectral.stft(chunk).abs()

        def forward() -> None:
            with torch.no_grad():
                runner._forward(x)

        forward()  # warm-up: oneDNN's kernels picked, memory allocated
        eager = _median_seconds(forward, args.repeat)
        runner.model = torch.compile(runner.model, dynamic=False)
        start = time.perf_counter()
        forward()
        first = time.perf_counter() - start
        compiled = _median_seconds(forward, args.repeat)
        saved = eager - compiled
        paid = f"{first / saved * SEGMENT_SECONDS / 60:.1f} min" if saved > 0 else "never"
        rows.append([member.name, f"{eager:.3f}", f"{first:.1f}", f"{compiled:.3f}", f"{eager / compiled:.2f}", paid])
    print(common.machine_line(common.machine_info(args.threads)))
    print(common.markdown_table(
        [f"network ({'full blend' if args.full else 'default bundle'}, {precision})", "eager s / 10 s", "compile + first call s",
         "compiled s / 10 s", "speed-up", "pays after (audio)"], rows, align="lrrrrr"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
