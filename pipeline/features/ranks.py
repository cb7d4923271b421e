"""One embed process per device (``torchrun --nproc-per-node=G -m stages.embed ...``): who encodes which shard.

``torchrun`` starts the processes and sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; :func:`embed_session`
joins a gloo process group from them, used only for barriers (no tensors travel: every process writes its shards
to the shared content cache, and rank 0 assembles the outputs from the cache). Without torchrun it yields a single
process and every function is a no-op. Shard ``s`` of the missing inputs is encoded by rank ``s % world``; a CUDA
device without an index (``embed.device: auto`` or ``cuda``) becomes ``cuda:LOCAL_RANK``.

The cache must be on a file system every process sees (one machine, or a shared mount for several nodes).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
BARRIER_TIMEOUT = timedelta(hours=24)  # a barrier waits for the slowest process's shards (torchrun stops the
# whole group when one process fails, so a long timeout never hides a crash)


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """The process that writes the stage's outputs (the only one without torchrun)."""
        return self.rank == 0

    def owns(self, shard: int) -> bool:
        return shard % self.world == self.rank

    def device(self, device: torch.device) -> torch.device:
        """``cuda`` without an index -> this process's GPU (``cuda:LOCAL_RANK``) when there are several processes."""
        if self.world > 1 and device.type == "cuda" and device.index is None:
            return torch.device("cuda", self.local_rank)
        return device

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


SINGLE = Ranks()


def launched() -> bool:
    """True in a process started by ``torchrun`` (its environment variables are set)."""
    return all(name in os.environ for name in TORCHRUN_ENV)


@contextmanager
def embed_session() -> Iterator[Ranks]:
    """Join torchrun's process group (gloo, barriers only) for the embed stage, or yield :data:`SINGLE`."""
    if not launched():
        yield SINGLE
        return
    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
        owned = True
    else:
        owned = False
    ranks = Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ["LOCAL_RANK"]))
    if not ranks.is_main:  # one copy of the stage's log: rank 0's (warnings and errors still show)
        logging.getLogger().setLevel(logging.WARNING)
    log.info("embed: process %d of %d", ranks.rank, ranks.world)
    try:
        yield ranks
    finally:
        if owned:
            dist.destroy_process_group()
