"""Process-wide tuning of glibc's malloc for CPU training: :func:`tune_malloc`.

PyTorch's CPU tensors come from the C library's ``malloc``. With glibc's defaults a block larger than the mmap
threshold (dynamic, at most 32 MiB) gets fresh pages from the kernel. A freed block at the top of the heap goes
back to the kernel once the free space there passes the trim threshold. A training step allocates and frees the
same large activations over and over, so it keeps faulting fresh, zeroed pages in. Measured on this project's
2-core AMD EPYC VM (2 threads), glibc's defaults -> tuned:

* a ``[64, 1, 28, 28] -> 128``-channel ``conv2d`` (a 25 MB output), no grad: 15-20 ms -> 2.2 ms;
* the GCNN C4/4/16 evaluated at batch 2048 (the evaluation batch size): 944-963 -> 1726-1740 images/s;
* its training step at batch 128: 251 -> 218 ms in fp32, 130 -> 128 ms in bf16; at batch 32 (activations of a
  few MB, which glibc's dynamic threshold already keeps) 64-68 -> 60-61 ms in fp32, no change in bf16.

:func:`tune_malloc` sets both thresholds with ``mallopt`` (which also turns off glibc's dynamic threshold), so
freed blocks stay in the process and are reused, as jemalloc or tcmalloc would keep them (PyTorch's CPU
performance guide suggests those allocators; this needs no new library). The cost: the process keeps up to
``trim_threshold`` bytes of freed memory, and its resident size stays near its peak.

It changes the whole process and cannot be undone (glibc has no way back to the dynamic threshold). So the
library never calls it on import, and ``fit()`` does not call it either. This project's own entry points do:
the ``gconv_ext`` command line, the example scripts and the benchmarks. ``GCONV_EXT_TUNE_MALLOC=0`` turns it
off there, and so does ``--no-tune-malloc`` on the command line. Elsewhere (macOS, Windows, musl) it does
nothing.
"""
from __future__ import annotations

import ctypes
import os
import platform
import sys

__all__ = ["tune_malloc"]

# mallopt parameter numbers (glibc <malloc.h>)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

# Blocks up to 1 GiB come from the heap, not from fresh mappings (the GCNN's activations at the evaluation
# batch of 2048 are 350 MB; a 256 MiB threshold gave 1503 images/s there, against 1726-1740 with 1 GiB).
MMAP_THRESHOLD = 1 << 30
TRIM_THRESHOLD = (1 << 31) - 1  # keep up to 2 GiB of freed memory at the top of the heap (the most mallopt takes)


def _int_arg(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2 ** 31:
        raise ValueError(f"tune_malloc: {name} must be an int in [1, 2^31 - 1] bytes (mallopt takes a C int), "
                         f"got {value!r}")
    return value


def tune_malloc(mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Make glibc keep and reuse freed memory (see the module docstring). Returns True when both settings
    took effect. Returns False, and changes nothing, when ``GCONV_EXT_TUNE_MALLOC=0`` or when the C library
    is not glibc. Calling it again is harmless."""
    mmap_threshold = _int_arg("mmap_threshold", mmap_threshold)
    trim_threshold = _int_arg("trim_threshold", trim_threshold)
    if os.environ.get("GCONV_EXT_TUNE_MALLOC", "1").strip() == "0":
        return False
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, mmap_threshold) == 1
    ok = mallopt(_M_TRIM_THRESHOLD, trim_threshold) == 1 and ok
    return ok
