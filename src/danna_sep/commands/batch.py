"""Large batches for `danna-sep separate`: the input list from a file, and the share of a
catalog that one process of many separates (a torchrun rank, or a `--shard K/N` job).

Every process lists and sorts the same inputs, then takes every N-th from its own index,
so that each input goes to exactly one process without any of them talking to another.
Under torchrun the ranks meet once, at the end, for rank 0 to print the merged summary;
`--shard` jobs never meet (a job array on a cluster), and one that dies leaves the others
running. Either way a shared `--manifest` records what each finished.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, TypeVar

from ..errors import UsageError

T = TypeVar("T")
# How long rank 0 waits at the end for the slowest rank's share: a catalog share can take days.
_GATHER_TIMEOUT = datetime.timedelta(days=30)


@dataclass(frozen=True)
class Share:
    """Which part of the sorted inputs this process separates: index::count."""

    index: int = 0
    count: int = 1
    torchrun: bool = False

    @property
    def first(self) -> bool:
        """The process that reports inputs that are not audio, and prints the merged summary."""
        return self.index == 0

    def take(self, items: Sequence[T], key) -> List[T]:
        return sorted(items, key=key)[self.index::self.count]

    def describe(self) -> str:
        return f"rank {self.index} of {self.count}" if self.torchrun else f"share {self.index + 1}/{self.count}"


def shard_option(text: str) -> Share:
    """argparse type of --shard K/N: the K-th of N shares, K from 1."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r}: give K/N, the K-th of N shares, like 1/4")
    index, count = int(match[1]), int(match[2])
    if count < 1 or not 1 <= index <= count:
        raise argparse.ArgumentTypeError(f"{text!r}: K/N needs 1 <= K <= N")
    return Share(index - 1, count)


def current_share(shard: Optional[Share]) -> Share:
    """The share of this process: torchrun's rank and world size, or --shard, or all."""
    from ..distributed import Distributed

    place = Distributed.from_environment()
    if place.active:
        if shard is not None:
            raise UsageError("--shard splits a batch between separate jobs; under torchrun the ranks split it: "
                             "give one or the other")
        missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
        if missing:  # the ranks could never meet for the summary
            verb = "is" if len(missing) == 1 else "are"
            raise UsageError(f"WORLD_SIZE is {place.world} but {' and '.join(missing)} {verb} not set: start the "
                             f"processes with torchrun")
        return Share(place.rank, place.world, torchrun=True)
    return shard or Share()


def read_inputs_from(source: str) -> List[str]:
    """The paths listed one per line in a file (`-`: standard input); blank lines are skipped,
    and a path is taken as written, spaces included, relative to the current folder."""
    try:
        if source == "-":
            text = sys.stdin.read()
        else:
            text = Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise UsageError(f"--inputs-from {source}: cannot be read ({reason})") from None
    lines = [line.rstrip("\r") for line in text.split("\n")]
    return [line for line in lines if line.strip()]


def device_for(share: Share, device: str) -> str:
    """One GPU per rank, as torchrun numbers them, where the device is left to us."""
    if share.torchrun and device in ("auto", "cuda"):
        import torch

        from ..distributed import Distributed

        if torch.cuda.is_available():
            return f"cuda:{Distributed.from_environment().local_rank}"
    return device


def gather_at_first(share: Share, payload: object, device: str) -> Optional[list]:
    """Under torchrun, every rank's payload at rank 0 (None on the others); else [payload].

    The process group is joined only here, at the end: nccl where the ranks run on GPUs,
    gloo otherwise."""
    if not share.torchrun:
        return [payload]
    import torch.distributed as dist

    from ..distributed import Distributed, gather_to_main, leave_process_group

    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") and dist.is_nccl_available() else "gloo"
        dist.init_process_group(backend, timeout=_GATHER_TIMEOUT)
    if dist.get_backend() == "nccl":  # nccl gathers objects through the GPU each rank owns
        import torch

        torch.cuda.set_device(torch.device(device))
    gathered = gather_to_main(payload, Distributed.from_environment())
    leave_process_group()
    return gathered
