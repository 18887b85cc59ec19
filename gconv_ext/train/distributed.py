"""Where a training process runs: the device, and its rank under ``torchrun`` (DDP).

Under ``torchrun`` (``WORLD_SIZE > 1``) :func:`setup_distributed` initialises the process group (gloo on
CPU, nccl on GPU, ``env://`` rendezvous) with a timeout (:func:`process_group_timeout`: 600 s, or
``GCONV_EXT_DIST_TIMEOUT`` seconds), so a rank that dies or stops answering ends the job with an error
instead of a hang: a killed peer's closed connection is seen at once, a hung peer after the timeout.
:func:`lost_peer_error` turns the communication error the survivors get into a :class:`DistributedError`
that says what happened and how to go on (``--resume`` from the last checkpoint).
"""
from __future__ import annotations

import datetime
import math
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistContext", "DistributedError", "resolve_device", "setup_distributed", "process_group_timeout",
           "is_communication_error", "lost_peer_error", "PROCESS_GROUP_TIMEOUT_S", "TIMEOUT_ENV"]

#: Default seconds a collective waits for the other ranks before the job fails: long enough for rank 0 to
#: write a checkpoint or evaluate while the others wait at the next collective.
PROCESS_GROUP_TIMEOUT_S = 600.0
#: The environment variable that overrides :data:`PROCESS_GROUP_TIMEOUT_S` (seconds, > 0).
TIMEOUT_ENV = "GCONV_EXT_DIST_TIMEOUT"

# Markers of the errors a collective raises when a peer is gone: gloo's (a plain RuntimeError naming its
# transport source file: "Connection reset by peer", "Connection closed by peer", "Timed out waiting ...ms
# for recv operation") and NCCL's; torch's own DistError subclasses are recognised by type.
_COMM_ERROR_MARKERS = ("/gloo/", "ProcessGroupGloo", "ProcessGroupNCCL", "NCCL error", "Connection reset by peer",
                       "Connection closed by peer", "Timed out waiting")


class DistributedError(RuntimeError):
    """A collective failed because another rank died or did not answer within the process-group timeout."""


def process_group_timeout() -> float:
    """Seconds of the process-group timeout: ``GCONV_EXT_DIST_TIMEOUT`` if set, else
    :data:`PROCESS_GROUP_TIMEOUT_S`.

    Raises:
        ValueError: the variable is not a positive number.
    """
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return PROCESS_GROUP_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{TIMEOUT_ENV} must be a positive number of seconds, got {raw!r}")
    return value


@dataclass
class DistContext:
    """Where this process runs: its rank among ``world_size`` processes and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    initialized_here: bool = False
    #: the process group's timeout in seconds (None: single process, or a group set up by the caller)
    timeout_s: float | None = None

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


def setup_distributed(device: str = "auto", timeout_s: float | None = None) -> DistContext:
    """Initialise the process group when launched by ``torchrun`` with ``WORLD_SIZE > 1``.

    Uses gloo on CPU and nccl on CUDA (``env://`` rendezvous: ``MASTER_ADDR``/``MASTER_PORT``), with a
    timeout of ``timeout_s`` seconds (default :func:`process_group_timeout`): a collective that waits longer
    for another rank fails instead of hanging. Without ``WORLD_SIZE`` (or with 1) it returns a
    single-process context.

    Raises:
        ValueError: ``timeout_s`` (or ``GCONV_EXT_DIST_TIMEOUT``) is not a positive number.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world <= 1:
        return DistContext(0, 1, 0, dev)
    if timeout_s is None:
        timeout_s = process_group_timeout()
    elif not (math.isfinite(timeout_s) and timeout_s > 0):
        raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    created = False
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend, init_method="env://", world_size=world, rank=rank,
                                timeout=datetime.timedelta(seconds=timeout_s))
        created = True
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, dev, created,
                       timeout_s if created else None)


def is_communication_error(exc: BaseException) -> bool:
    """True for the errors a collective raises when a peer is gone (killed, crashed, hung past the timeout)."""
    if isinstance(exc, DistributedError):
        return False  # already explained
    if isinstance(exc, dist.DistError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(marker in text for marker in _COMM_ERROR_MARKERS)


def lost_peer_error(exc: BaseException, ctx: DistContext, checkpoint: str | os.PathLike[str] | None = None
                    ) -> DistributedError:
    """The :class:`DistributedError` that explains a communication error ``exc`` of rank ``ctx.rank``: which
    rank saw it, why it happens (a peer died, or did not answer within the timeout), the backend's own first
    line (it names the peer's address), and how to continue (``--resume`` from ``checkpoint`` if it exists)."""
    # the timeout of a group the caller set up is not known here
    timeout = "" if ctx.timeout_s is None else f" of {ctx.timeout_s:g} s ({TIMEOUT_ENV})"
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    if checkpoint is not None and os.path.isfile(checkpoint):
        hint = f"the last checkpoint is {checkpoint}: run the same command with --resume to continue from it"
    else:
        hint = "no checkpoint was written yet: start the run again"
    return DistributedError(
        f"rank {ctx.rank} of {ctx.world_size} lost contact with the other ranks: one of them died, or did not "
        f"answer within the process-group timeout{timeout} [{type(exc).__name__}: {first}]; {hint}")
