"""Where a training process runs: the device, and its rank under ``torchrun`` (DDP).

Under ``torchrun`` (``WORLD_SIZE > 1``) :func:`setup_distributed` initialises the process group (gloo on
CPU, nccl on GPU, ``env://`` rendezvous) with a timeout, so a rank that dies ends the job with an error
instead of a hang.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistContext", "resolve_device", "setup_distributed", "PROCESS_GROUP_TIMEOUT_S"]

#: Seconds a collective waits for the other ranks before the job fails (``GCONV_EXT_DIST_TIMEOUT``).
PROCESS_GROUP_TIMEOUT_S = float(os.environ.get("GCONV_EXT_DIST_TIMEOUT", "600"))


@dataclass
class DistContext:
    """Where this process runs: its rank among ``world_size`` processes and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        """True on rank 0, the only rank that writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1

    def close(self) -> None:
        """Destroy the process group if :func:`setup_distributed` created it."""
        if self.initialized_here and dist.is_initialized():
            dist.destroy_process_group()
            self.initialized_here = False


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``"auto"`` -> CUDA if available else CPU; a bare ``"cuda"`` -> ``cuda:<local_rank>``.

    Raises:
        ValueError: CUDA requested but not available.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available")
        if dev.index is None:
            dev = torch.device("cuda", local_rank % torch.cuda.device_count())
    return dev


def setup_distributed(device: str = "auto") -> DistContext:
    """Initialise the process group when launched by ``torchrun`` with ``WORLD_SIZE > 1``.

    Uses gloo on CPU and nccl on CUDA (``env://`` rendezvous: ``MASTER_ADDR``/``MASTER_PORT``).
    Without ``WORLD_SIZE`` (or with 1) it returns a single-process context.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world <= 1:
        return DistContext(0, 1, 0, dev)
    created = False
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend, init_method="env://", world_size=world, rank=rank,
                                timeout=datetime.timedelta(seconds=PROCESS_GROUP_TIMEOUT_S))
        created = True
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, dev, created)
