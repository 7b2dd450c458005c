"""Where a process stands in a torchrun job, and the few collectives training and the commands use.

torchrun starts one process per rank and describes the job in the environment (`RANK`,
`WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`...). `Distributed.from_environment()` reads it
without joining anything (rank 0 of 1 when run alone); `join` joins the process group (gloo
on the CPU, nccl on CUDA). Every helper here does nothing for a job of one process, so the
callers read the same whether torchrun started them or not.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Optional

if TYPE_CHECKING:  # torch is imported where it is used: the command line imports this module
    import torch
    from torch import nn


@dataclass(frozen=True)
class Distributed:
    """This process's place in a torchrun job (rank 0 of 1 when run alone)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @staticmethod
    def from_environment() -> "Distributed":
        """The place torchrun's environment describes; nothing is joined."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return Distributed()
        return Distributed(rank=int(os.environ.get("RANK", "0")), world=world,
                           local_rank=int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def main(self) -> bool:
        """Whether this process writes what the job writes once (logs, checkpoints, reports)."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """Whether there are other processes to talk to."""
        return self.world > 1

    def local_device(self, device: torch.device) -> torch.device:
        """`device`, or under torchrun on CUDA this rank's own GPU (made the current one)."""
        if self.active and device.type == "cuda":
            import torch

            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        return device

    def collective_device(self, device: torch.device) -> torch.device:
        """Where tensors for a collective live: gloo works on CPU tensors, nccl on CUDA ones."""
        import torch

        return device if device.type == "cuda" else torch.device("cpu")


def join(device: torch.device | str = "cpu") -> Distributed:
    """Join the process group torchrun describes, for collectives on `device` (gloo on the
    CPU, nccl on CUDA); this process's place in it. Alone (no torchrun), nothing is joined."""
    place = Distributed.from_environment()
    if not place.active:
        return place
    import torch.distributed as dist

    kind = device if isinstance(device, str) else device.type
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if kind.startswith("cuda") else "gloo")
    return Distributed(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=place.local_rank)


def barrier(place: Distributed) -> None:
    """Wait until every process gets here."""
    if place.active:
        import torch.distributed as dist

        dist.barrier()


def sum_across(tensor: torch.Tensor, place: Distributed, device: torch.device) -> torch.Tensor:
    """The sum of `tensor` over every process (a new tensor on `tensor`'s device)."""
    if not place.active:
        return tensor
    import torch.distributed as dist

    reduced = tensor.to(place.collective_device(device))
    dist.all_reduce(reduced)
    return reduced.to(tensor.device)


def mean_across(values: Dict[str, float], place: Distributed, device: torch.device) -> Dict[str, float]:
    """Each value averaged over the processes (every process passes the same keys)."""
    if not place.active:
        return values
    import torch

    keys = sorted(values)
    total = sum_across(torch.tensor([values[k] for k in keys], dtype=torch.float64), place, device)
    return {k: float(v) / place.world for k, v in zip(keys, total.tolist())}


def broadcast_buffers(module: nn.Module, place: Distributed) -> None:
    """Copy rank 0's buffers (batch-norm statistics) into every process's `module`."""
    if not place.active:
        return
    import torch.distributed as dist

    for buffer in module.buffers():
        dist.broadcast(buffer.data, src=0)


def all_gather(value: Any, place: Distributed) -> List[Any]:
    """Every process's `value` (picklable), in rank order, on every process."""
    if not place.active:
        return [value]
    import torch.distributed as dist

    gathered: List[Any] = [None] * place.world
    dist.all_gather_object(gathered, value)
    return gathered


def gather_to_main(value: Any, place: Distributed) -> Optional[List[Any]]:
    """Every process's `value` (picklable) in rank order on rank 0; None on the others."""
    if not place.active:
        return [value]
    import torch.distributed as dist

    gathered: Optional[List[Any]] = [None] * place.world if place.main else None
    dist.gather_object(value, gathered, dst=0)
    return gathered


def leave_process_group(wait: bool = True) -> None:
    """Wait for every process, then destroy the default process group (if one is joined).

    Gloo runs collectives on its own threads, and the thread that ran the last one drops
    that collective's tensors after the caller has already been told it finished. When
    the interpreter is shutting down by then, dropping a tensor Python created needs the
    GIL it can no longer have, and the process aborts ("terminate called without an
    active exception"; about 1 run in 15 of a 4-step two-process training here, and
    pytorch/pytorch#190489). The barrier releases the GIL and waits for the other
    processes, which gives those threads time to finish (1 run in 200 still aborted), and
    destroying the group does not join them: a DDP wrapper keeps the group alive past
    this call. So the command line (`cli.run`) also skips interpreter teardown under
    torchrun.

    `wait=False` skips the barrier, for a process that failed: the others may be stuck in
    a collective it will never reach, and torchrun stops them only once one has exited.
    """
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        return
    if wait:
        dist.barrier()
    dist.destroy_process_group()
