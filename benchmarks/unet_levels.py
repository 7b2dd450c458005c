"""Where the U-Net's time goes: CPU time, flops and GFLOP/s of each of its levels.

    python benchmarks/unet_levels.py                      # full size, bfloat16, one thread
    python benchmarks/unet_levels.py --bundle default      # the shipped default's U-Net
    python benchmarks/unet_levels.py --precision float32 --threads 2

One 10 s segment (431 frames) of random magnitudes goes through the U-Net as `separate`
runs it (`ModelRunner`: channels-last, batch norms folded, a bfloat16 copy under
"bfloat16"), once to warm up and once timed with a forward hook on each level: the six
encoder levels (a D3 block and its pooling), the attention's modules, the five decoder levels
(a D3 block and its transposed convolution) and the end's modules. Flops come from torch's
flop counter on the same input (matrix products and convolutions, two per multiply-add).
Times are CPU seconds of this process (`time.process_time`), steadier than wall time on a
shared machine; with one thread they are the wall time of a quiet one.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from typing import Dict, List

import torch

try:  # run as a module: python -m benchmarks.unet_levels
    from . import _common as common
except ImportError:  # run as a script: python benchmarks/unet_levels.py
    import _common as common  # type: ignore[no-redef]


def levels(model: torch.nn.Module) -> Dict[str, torch.nn.Module]:
    """The U-Net's levels by name: `down_convs.0`, ..., `attn.0`, ..., `up_convs.0`, ..., `end.3`."""
    found = {}
    for name in ("down_convs", "attn", "up_convs", "end"):
        for index, part in enumerate(getattr(model, name)):
            found[f"{name}.{index}"] = part
    return found


def profile(model: torch.nn.Module, precision: str, frames: int = 431) -> List[dict]:
    from torch.utils.flop_counter import FlopCounterMode

    from danna_sep.runner import EngineOptions, ModelRunner

    mag = torch.rand(1, 2, 2049, frames, generator=torch.Generator().manual_seed(0)) * 3
    runner = ModelRunner(model, torch.device("cpu"), EngineOptions(precision=precision))
    parts = levels(runner.model)
    with torch.no_grad(), FlopCounterMode(display=False, depth=None) as counter:
        runner._forward(mag)
    counts = counter.get_flop_counts()
    prefix = type(runner.model).__name__
    spent: Dict[str, float] = collections.defaultdict(float)
    started: Dict[str, float] = {}
    hooks = []
    for name, part in parts.items():
        hooks.append(part.register_forward_pre_hook(
            lambda module, args, name=name: started.__setitem__(name, time.process_time())))
        hooks.append(part.register_forward_hook(
            lambda module, args, out, name=name: spent.__setitem__(name, spent[name] + time.process_time() - started[name])))
    with torch.no_grad():
        runner._forward(mag)  # warm-up
        spent.clear()
        start = time.process_time()
        runner._forward(mag)
        total = time.process_time() - start
    for hook in hooks:
        hook.remove()
    rows = [{"level": name, "seconds": spent[name], "flops": sum(counts.get(f"{prefix}.{name}", {}).values())}
            for name in parts]
    rows.append({"level": "whole network", "seconds": total, "flops": sum(counts.get("Global", {}).values())})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", help="take the U-Net of this bundle (a folder or a shipped name) "
                                         "instead of a full-size one with random weights")
    parser.add_argument("--precision", choices=["float32", "bfloat16"], default="bfloat16")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    from danna_sep import models
    from danna_sep.bundle import BundleError
    from danna_sep.catalog import find_bundle

    torch.set_num_threads(args.threads)
    if args.bundle:
        try:
            from danna_sep.bundle import load_bundle

            bundle = load_bundle(find_bundle(args.bundle) or args.bundle)
        except BundleError as exc:
            print(f"unet_levels: {exc}", file=sys.stderr)
            return 1
        found = [member.model for member in bundle.members if member.name == "unet_attn"]
        if not found:
            print(f"unet_levels: {args.bundle}: no unet_attn member", file=sys.stderr)
            return 1
        model, what = found[0], f"the U-Net of {args.bundle} {found[0].config}"
    else:
        torch.manual_seed(0)
        model, what = models.build("unet_attn"), "the full-size U-Net (random weights)"
    model.eval()
    rows = profile(model, args.precision)
    print(common.machine_line(common.machine_info(args.threads)))
    print(f"{what}, {args.precision}, one 10 s segment (431 frames); CPU time of this process")
    print()
    table = []
    for row in rows:
        if row["seconds"] < 0.0005 and not row["flops"]:
            continue
        rate = row["flops"] / row["seconds"] / 1e9 if row["seconds"] else 0.0
        table.append([row["level"], f"{row['seconds'] * 1000:.0f}", f"{row['flops'] / 1e9:.1f}", f"{rate:.0f}"])
    print(common.markdown_table(["level", "ms", "GFLOP", "GFLOP/s"], table, align="lrrr"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
