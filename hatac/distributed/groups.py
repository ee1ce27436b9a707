"""Process groups for several GPUs: one process a device, launched by ``torchrun``.

``setup(device)`` joins (or starts, from torchrun's environment) the default process group and returns a
:class:`Group` and this process's device (``cuda:<LOCAL_RANK>`` on GPUs, NCCL; the CPU with gloo).
``current()`` is the group when one of more than one process is running, else ``None``: conversion uses
it to calibrate layers in parallel (layer i on rank i % N, see ``calibration/learned.py``), and
``hatac.load(..., tp=True)`` to shard the model (``hatac/distributed/tp.py``).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from hatac.errors import HatacError

@dataclass(frozen=True)
class Group:
    """The processes working together: this one's ``rank`` of ``world``, over ``pg``."""

    rank: int
    world: int
    pg: object = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_gather_object(self, obj) -> list:
        out = [None] * self.world
        dist.all_gather_object(out, obj, group=self.pg)
        return out

    def barrier(self) -> None:
        dist.barrier(group=self.pg)


def current() -> Group | None:
    """The default process group when it has more than one process, else None."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    return Group(dist.get_rank(), dist.get_world_size(), dist.group.WORLD)


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher) as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: str | torch.device | None = None, timeout_minutes: float = 60) -> tuple[Group, torch.device]:
    """Join the default process group (initialized from torchrun's environment if need be).

    ``device``: ``cuda`` (each process takes the GPU of its ``LOCAL_RANK``, NCCL) or ``cpu`` (gloo); None
    picks cuda when available. Returns the group (world 1 when run alone) and this process's device.
    """
    want = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if want.type == "cuda":
        if not torch.cuda.is_available():
            raise HatacError("--device cuda asked for, but torch sees no CUDA device")
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise HatacError(f"process of local rank {local} has no GPU: torch sees {torch.cuda.device_count()}")
        want = torch.device("cuda", local)
        torch.cuda.set_device(want)
    if not dist.is_initialized():
        if not launched():
            return Group(0, 1, None), want
        backend = "nccl" if want.type == "cuda" else "gloo"
        kwargs = {"device_id": want} if want.type == "cuda" else {}
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_minutes), **kwargs)
    group = current() or Group(dist.get_rank(), dist.get_world_size(), dist.group.WORLD)
    return group, want


def rank_of_layer(layer: int, world: int) -> int:
    """Which process calibrates ``layer``: round robin over layer indices."""
    return layer % world
