"""Spatial pooling that keeps the group axis (functional API).

* ``group_max_pool2d(x, kernel_size, stride=None, padding=0)``
* ``group_avg_pool2d(x, kernel_size, stride=None, padding=0)``

``x[B, C, |G|, H, W] -> [B, C, |G|, H', W']`` with ``H' = (H + 2p - k) // s + 1`` (also ``[B, C, H, W]``:
every ``[H, W]`` plane is pooled on its own). Pooling each group slice alike commutes with rotating the
input when the size is exact (see :func:`gconv_ext.nn.check_exact`). Custom C++/CUDA operators; the max
gradient goes to the first maximal element of each window in row-major order (deterministic).
"""
from __future__ import annotations

from typing import Sequence

import torch

from .. import _extension
from . import reference

__all__ = ["group_max_pool2d", "group_avg_pool2d"]

IntOr2 = int | Sequence[int]


def _pair(v, name: str, minimum: int) -> tuple[int, int]:
    t = (v, v) if isinstance(v, int) and not isinstance(v, bool) else v
    ok = isinstance(t, (tuple, list)) and len(t) == 2 and all(
        isinstance(i, int) and not isinstance(i, bool) and i >= minimum for i in t)
    if not ok:
        raise ValueError(f"gconv_ext: {name} must be an int >= {minimum} or a pair of them, got {v!r}")
    return int(t[0]), int(t[1])


def _pool_params(x, kernel_size, stride, padding):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"gconv_ext: input must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() not in (4, 5):
        raise ValueError(f"gconv_ext: input must be a 5-D group map [B, C, |G|, H, W] or a 4-D tensor [B, C, H, W], "
                         f"got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"gconv_ext: input must be a floating-point tensor, got {x.dtype}")
    k = _pair(kernel_size, "kernel_size", 1)
    s = k if stride is None else _pair(stride, "stride", 1)
    p = _pair(padding, "padding", 0)
    if any(2 * pi > ki for pi, ki in zip(p, k)):
        raise ValueError(f"gconv_ext: padding must be at most half the kernel size, got padding={padding!r} for "
                         f"kernel_size={kernel_size!r}")
    h, w = x.shape[-2], x.shape[-1]
    if h < 1 or w < 1 or h + 2 * p[0] < k[0] or w + 2 * p[1] < k[1]:
        raise ValueError(f"gconv_ext: input spatial size {h}x{w} is too small for kernel_size={kernel_size!r} "
                         f"with padding={padding!r}")
    return list(k), list(s), list(p)


def group_max_pool2d(x: torch.Tensor, kernel_size: IntOr2, stride: IntOr2 | None = None,
                     padding: IntOr2 = 0) -> torch.Tensor:
    """Spatial max pooling of every group slice: ``[B, C, |G|, H, W] -> [B, C, |G|, H', W']``.

    ``stride`` defaults to ``kernel_size``; ``padding`` (at most half the kernel) counts as -inf. NaNs
    propagate. The gradient goes to the first maximal element of each window (row-major order), found
    again in the backward (no stored indices); differentiable twice.
    """
    k, s, p = _pool_params(x, kernel_size, stride, padding)
    if not _extension.available():
        _extension.warn_if_unavailable()
        return reference.group_max_pool2d(x, k, s, p)
    return torch.ops.gconv_ext.group_max_pool2d(x, k, s, p)


def group_avg_pool2d(x: torch.Tensor, kernel_size: IntOr2, stride: IntOr2 | None = None,
                     padding: IntOr2 = 0) -> torch.Tensor:
    """Spatial average pooling of every group slice, like :func:`group_max_pool2d`; zero padding is
    counted (``count_include_pad=True``: every window divides by ``k_h * k_w``)."""
    k, s, p = _pool_params(x, kernel_size, stride, padding)
    if not _extension.available():
        _extension.warn_if_unavailable()
        return reference.group_avg_pool2d(x, k, s, p)
    return torch.ops.gconv_ext.group_avg_pool2d(x, k, s, p)
