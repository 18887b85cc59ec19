"""Where a result came from: the machine, the software and the code.

:func:`provenance` is recorded in every ``metrics.csv`` row, ``summary.json`` and ``result.json``, so a
run that resumed on another machine, and every figure made from it, says where each part was computed.
"""
from __future__ import annotations

import functools
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

__all__ = ["cpu_model", "device_name", "git_commit", "provenance"]

_REPO = Path(__file__).resolve().parents[1]


@functools.lru_cache(maxsize=None)
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else :func:`platform.processor`."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def device_name(device: torch.device | str) -> str:
    """The GPU's name for a CUDA device, else the CPU model."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    return cpu_model()


@functools.lru_cache(maxsize=None)
def git_commit() -> str:
    """The commit of the source tree gconv_ext was imported from (``+dirty`` with local changes), or
    ``"unknown"`` outside a git checkout (e.g. an installed wheel)."""
    if not (_REPO / ".git").exists():
        return "unknown"
    try:
        env = dict(os.environ, GIT_OPTIONAL_LOCKS="0")
        head = subprocess.run(["git", "-C", str(_REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, env=env, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(_REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, env=env).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def provenance(device: torch.device | str = "cpu", precision: str | None = None) -> dict[str, Any]:
    """``{"device_name", "threads", "torch", "git_commit", "precision"}`` for the current process."""
    return {
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
        "torch": str(torch.__version__),
        "git_commit": git_commit(),
        "precision": precision,
    }
