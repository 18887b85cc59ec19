"""Lifting and group convolutions and group pooling (functional API).

Layout of group feature maps: ``(B, C, |G|, H, W)``.

* ``lifting_conv2d(x[B, C_in, H, W], weight[C_out, C_in, k, k]) -> [B, C_out, |G|, H', W']``
* ``group_conv2d(x[B, C_in, |G|, H, W], weight[C_out, C_in, |G|, k, k]) -> [B, C_out, |G|, H', W']``
* ``group_pool(x[B, C, |G|, H, W], mode) -> [B, C, H, W]`` (max or mean over the group axis)

The output at group slice ``g`` is the correlation with the filter transformed by ``g``; rotating
(reflecting) the input by ``g`` rotates the output and moves group slice ``h`` to ``g h``.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..groups import Group, group_from_name
from .filter_transform import group_filter, lift_filter

__all__ = ["lifting_conv2d", "group_conv2d", "group_pool"]

IntOr2 = int | Sequence[int]


def _pair(v: IntOr2, name: str) -> tuple[int, int]:
    t = (v, v) if isinstance(v, int) else tuple(v)
    if len(t) != 2 or not all(isinstance(i, int) for i in t):
        raise ValueError(f"gconv_ext: {name} must be an int or a pair of ints, got {v!r}")
    return t  # type: ignore[return-value]


def lifting_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, group: Group | str,
                   stride: IntOr2 = 1, padding: IntOr2 = 0, dilation: IntOr2 = 1,
                   disk_mask: bool = False) -> torch.Tensor:
    """Lifting convolution: planar input to a group feature map (bias shared across the group axis)."""
    group = group_from_name(group)
    if x.dim() != 4:
        raise ValueError(f"gconv_ext: input must be 4-D [B, C_in, H, W], got shape {tuple(x.shape)}")
    w = lift_filter(weight, group, disk_mask)  # [C_out, G, C_in, k, k]
    co, n, ci, k, _ = w.shape
    if x.shape[1] != ci:
        raise ValueError(f"gconv_ext: input has {x.shape[1]} channels but weight expects C_in = {ci}")
    out = F.conv2d(x, w.reshape(co * n, ci, k, k), None, _pair(stride, "stride"), _pair(padding, "padding"),
                   _pair(dilation, "dilation"))
    out = out.view(out.shape[0], co, n, out.shape[-2], out.shape[-1])
    return out if bias is None else out + bias.view(1, co, 1, 1, 1)


def group_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, group: Group | str,
                 stride: IntOr2 = 1, padding: IntOr2 = 0, dilation: IntOr2 = 1,
                 disk_mask: bool = False) -> torch.Tensor:
    """Group convolution: group feature map to group feature map (bias shared across the group axis)."""
    group = group_from_name(group)
    if x.dim() != 5 or x.shape[2] != group.order:
        raise ValueError(f"gconv_ext: input must be 5-D [B, C_in, |G| = {group.order}, H, W], got shape "
                         f"{tuple(x.shape)}")
    w = group_filter(weight, group, disk_mask)  # [C_out, G, C_in, G, k, k]
    co, n, ci, _, k, _ = w.shape
    if x.shape[1] != ci:
        raise ValueError(f"gconv_ext: input has {x.shape[1]} channels but weight expects C_in = {ci}")
    out = F.conv2d(x.reshape(x.shape[0], ci * n, x.shape[-2], x.shape[-1]), w.reshape(co * n, ci * n, k, k), None,
                   _pair(stride, "stride"), _pair(padding, "padding"), _pair(dilation, "dilation"))
    out = out.view(out.shape[0], co, n, out.shape[-2], out.shape[-1])
    return out if bias is None else out + bias.view(1, co, 1, 1, 1)


def group_pool(x: torch.Tensor, mode: str = "max") -> torch.Tensor:
    """Invariant projection over the group axis: ``[B, C, |G|, H, W] -> [B, C, H, W]``."""
    if x.dim() != 5:
        raise ValueError(f"gconv_ext: input must be 5-D [B, C, |G|, H, W], got shape {tuple(x.shape)}")
    if mode == "max":
        return x.amax(dim=2)
    if mode == "mean":
        return x.mean(dim=2)
    raise ValueError(f"gconv_ext: mode must be 'max' or 'mean', got {mode!r}")
