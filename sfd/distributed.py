"""The one distributed layer: torch.distributed from torchrun's environment, or a single process without it.

Launch several processes with ``torchrun --nproc_per_node N script.py``; the backend is the device layer's
(``sfd/device.py``: gloo on CPU, NCCL on CUDA, HCCL on Ascend NPUs, XCCL on XPUs). With no launcher every helper
degrades to one process. Only the global main process (rank 0, not a node's local rank 0)
writes shared files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.distributed as dist

from sfd.device import Accelerator, resolve


@dataclass(frozen=True)
class Topology:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    accelerator: Accelerator = field(default_factory=resolve)  # $SFD_DEVICE, else the machine's accelerator, else CPU

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        return self.accelerator.device(self.local_rank)


def init(device: Optional[str] = None) -> Topology:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK); one process when absent.
    ``device`` (a ``--device`` value) overrides the accelerator type :func:`sfd.device.resolve` would pick."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    topology = Topology(int(os.environ.get("RANK", "0")), world_size, int(os.environ.get("LOCAL_RANK", "0")),
                        resolve(device))
    if world_size > 1 and not dist.is_initialized():
        topology.accelerator.set_device_index(topology.local_rank)
        dist.init_process_group(topology.accelerator.backend)
    return topology


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def shutdown(completed: bool = False) -> None:
    """Leave the process group. After a run that ``completed`` on every process, first wait for all of them: the
    main process hosts the store (sfd/torchrun.py gives every restart its own), and a main process that exits while
    another still talks to the store can make that one abort in its teardown. Never after a failure, where the
    others may be inside another collective."""
    if dist.is_initialized():
        if completed:
            dist.barrier()
        dist.destroy_process_group()


def broadcast_from_main(value):
    """The main process's ``value`` on every process (any picklable object: a decision, a message, or a state dict
    of CPU tensors for processes that cannot read a checkpoint file), so that a check only the main process makes —
    taking a lock, choosing a checkpoint — ends the same way everywhere."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_true(flag: bool) -> bool:
    """Whether ``flag`` holds on every process (each process passes its own)."""
    return all(all_gather(bool(flag)))


def all_gather(value) -> list:
    """Every process's ``value`` (any picklable object), in rank order, on every process."""
    if not dist.is_initialized():
        return [value]
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered
