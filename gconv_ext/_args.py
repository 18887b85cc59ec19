"""Argument helpers shared by the functional ops (``gconv_ext.ops``) and the modules (``gconv_ext.nn``).

Every error is a ``ValueError`` that names the argument, its owner (``gconv_ext`` for the ops, the module's
class name for the modules) and what was expected.
"""
from __future__ import annotations

from typing import Any

import torch

__all__ = ["int_pair", "MAX_ROTATIONS", "MAX_EXTENT", "fake_group_order", "fake_same_device", "fake_floating",
           "fake_pair"]

#: The largest N of C_N / D_N the operators accept (csrc/include/gconv_ext/checks.h ``kMaxRotations``): the
#: transform plans and Cayley tables grow as |G|^2.
MAX_ROTATIONS = 1024
#: The bound on kernel sizes, strides, paddings, dilations and padded pooling planes (``kMaxExtent``).
MAX_EXTENT = 2**31


def int_pair(owner: str, name: str, v: Any, minimum: int) -> tuple[int, int]:
    """``v`` as a pair of ints ``>= minimum``: an int ``n`` means ``(n, n)``; a tuple or list of two ints is
    taken as it is. Anything else (``None``, a bool, a float, three ints, a value below ``minimum``) raises a
    ``ValueError`` naming ``name`` (torch's ``_pair`` validates nothing)."""
    if type(v) is int and v >= minimum:  # the common case, on every call of every op: keep it cheap
        return v, v
    t = (v, v) if isinstance(v, int) and not isinstance(v, bool) else v
    ok = isinstance(t, (tuple, list)) and len(t) == 2 and all(
        isinstance(i, int) and not isinstance(i, bool) and i >= minimum for i in t)
    if not ok:
        raise ValueError(f"{owner}: {name} must be an int >= {minimum} or a pair of them, got {v!r}")
    return int(t[0]), int(t[1])


# -- the fake kernels' checks: the same conditions as the C++ kernels (checks.h), with torch._check ----------

def fake_group_order(rotations: int, reflections: bool) -> int:
    """|G| of C_N / D_N after the C++ kernels' check of N."""
    torch._check(1 <= rotations <= MAX_ROTATIONS,
                 lambda: f"gconv_ext: rotations (N of C_N/D_N) must be in [1, {MAX_ROTATIONS}], got {rotations}")
    return rotations * (2 if reflections else 1)


def fake_same_device(**tensors: torch.Tensor | None) -> None:
    """Every given tensor on one device. Mixed meta and real tensors would otherwise reach the fake kernel
    with real inputs and return uninitialised memory."""
    named = [(name, t) for name, t in tensors.items() if t is not None]
    first_name, first = named[0]
    for name, t in named[1:]:
        torch._check(t.device == first.device, lambda: f"gconv_ext: {first_name} and {name} must be on the same "
                                                       f"device, got {first.device} and {t.device}")


#: The dtypes every kernel is built for (checks.h ``check_floating``); float8 types are rejected.
SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def fake_floating(t: torch.Tensor, name: str) -> None:
    torch._check(t.dtype in SUPPORTED_DTYPES,
                 lambda: f"gconv_ext: {name} must be a floating-point tensor (float32, float64, float16 or bfloat16), "
                         f"got {t.dtype}")


def fake_pair(v, name: str, minimum: int) -> None:
    """A stride/padding/dilation/kernel_size list: 2 elements in [minimum, 2^31) (checks.h ``check_pair``)."""
    torch._check(len(v) == 2, lambda: f"gconv_ext: {name} must have 2 elements, got {len(v)}")
    for e in v:
        torch._check(minimum <= e < MAX_EXTENT, lambda: f"gconv_ext: {name} must be in [{minimum}, 2^31), got {list(v)}")
