"""Several training processes with PyTorch's own engine (``torchrun``): gloo on CPU, NCCL on GPU.

``torchrun --nproc_per_node=N -m training train ...`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``; a plain
``python -m training train`` runs as a world of one, with no process group at all.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, logs and pictures; the others only compute."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def setup() -> World:
    """Join the process group that ``torchrun`` describes in the environment, if any."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    world = World(rank=int(os.environ["RANK"]), size=size, local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    if torch.cuda.is_available():
        torch.cuda.set_device(world.local_rank)
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
        # N processes share the machine's cores: oversubscribed OpenMP threads slow every step down.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // size))
    return world


def broadcast(value: T, world: World) -> T:
    """Rank 0's ``value`` on every rank (e.g. the early-stopping decision)."""
    if not world.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(world: World) -> None:
    """Wait for every rank (e.g. while rank 0 generates the synthetic data)."""
    if world.distributed:
        dist.barrier()


def teardown(world: World) -> None:
    """Leave the process group."""
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()
