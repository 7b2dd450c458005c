"""What float16 spools cost and save: temporary disk per hour of audio, and how far the stems move.

    python benchmarks/spooling.py                      # the shipped bundle on examples/synth-song.mp3
    python benchmarks/spooling.py --bundle my-bundle --input song.flac

`Separator.write_stems` keeps the input (44.1 kHz stereo) and every stem on disk between its
two passes. The script separates one input twice, with float32 and with float16 spools
(`OutputOptions(spool=...)`), into 32-bit float wav with `--clip none`, so that only the
spools differ, and prints per stem the SNR of the float16 stems against the float32 ones,
beside the SNR a 16-bit output's own rounding leaves. The need per hour comes from
`danna_sep.space` (the peak: the input's spool and every stem's at the end of pass 1; pass 2
frees each stem's spool once it is written, which lowers what follows the peak, not the peak).
The peak size of the spool files during each run is measured too (through /proc, on Linux).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

import numpy as np
import soundfile as sf

try:  # run as a module: python -m benchmarks.spooling
    from . import _common as common
except ImportError:  # run as a script: python benchmarks/spooling.py
    import _common as common  # type: ignore[no-redef]


def _spool_bytes_now() -> int:
    """Bytes in this process's open files in $TMPDIR that have no name (the spools: unlinked at
    once, or made nameless with O_TMPFILE), from /proc."""
    total, folder = 0, tempfile.gettempdir().rstrip("/") + "/"
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
            if link.startswith(folder) and link.endswith("(deleted)"):
                total += os.stat(f"/proc/self/fd/{fd}").st_size
        except OSError:
            continue
    return total


def _peak_use(stop: threading.Event, into: list) -> None:
    """The largest total size of the spools (bytes) while `stop` is not set, polled every 5 ms."""
    peak = 0
    while not stop.is_set():
        peak = max(peak, _spool_bytes_now())
        time.sleep(0.005)
    into.append(peak)


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default=None, help="bundle folder or name (default: the shipped one)")
    parser.add_argument("--input", type=Path, default=Path(__file__).resolve().parents[1] / "examples" / "synth-song.mp3")
    args = parser.parse_args(argv)

    import torch

    from danna_sep.separator import OutputOptions, Separator
    from danna_sep.space import spool_bytes

    torch.set_num_threads(max(1, (os.cpu_count() or 1)))
    separator = Separator(args.bundle, device="cpu", precision="float32")
    measure = os.path.isdir("/proc/self/fd")
    stems, peaks = {}, {}
    with tempfile.TemporaryDirectory(prefix="danna-spooling-") as scratch:
        for dtype in ("float32", "float16"):
            targets = {s: Path(scratch) / dtype / f"{s}.wav" for s in separator.sources}
            stop, found = threading.Event(), []
            watcher = threading.Thread(target=_peak_use, args=(stop, found)) if measure else None
            if watcher:
                watcher.start()
            started = time.monotonic()
            written = separator.write_stems(args.input, targets, OutputOptions(bit_depth=32, clip="none", spool=dtype))
            took = time.monotonic() - started
            if watcher:
                stop.set()
                watcher.join()
                peaks[dtype] = found[0]
            stems[dtype] = {s: sf.read(str(p), dtype="float64")[0] for s, p in targets.items()}
            print(f"{dtype}: {written.seconds:.1f} s of audio in {took:.1f} s", file=sys.stderr)
    count = len(separator.sources)
    print(common.machine_line(common.machine_info()))
    print()
    rows = []
    for dtype in ("float32", "float16"):
        hour = (1 + count) * spool_bytes(3600, dtype)
        measured = f"{peaks[dtype] / 1e6:.1f} MB" if dtype in peaks else "(no /proc here)"
        expected = (1 + count) * spool_bytes(written.seconds, dtype)
        rows.append([dtype, f"{hour / 1e9:.2f} GB", f"{12 * hour / 1e9:.1f} GB", f"{expected / 1e6:.1f} MB", measured])
    print(common.markdown_table(["spools", "per hour of audio", "12 hours", "this track (computed)",
                                 "this track (measured peak)"], rows, align="lrrrr"))
    print()
    rows = []
    for stem in separator.sources:
        want, got = stems["float32"][stem], stems["float16"][stem]
        snr = 10 * np.log10(np.sum(want**2) / np.sum((got - want) ** 2))
        rounded = np.round(want * 32768) / 32768
        snr16 = 10 * np.log10(np.sum(want**2) / np.sum((rounded - want) ** 2))
        rows.append([stem, f"{snr:.1f} dB", f"{np.abs(got - want).max():.1e}", f"{snr16:.1f} dB"])
    print(common.markdown_table(["stem", "float16 against float32 spools", "largest difference",
                                 "16-bit rounding alone"], rows, align="lrrr"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
