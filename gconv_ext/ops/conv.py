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

from .. import _extension
from ..groups import Group, group_from_name
from . import reference

__all__ = ["lifting_conv2d", "group_conv2d", "group_pool"]

IntOr2 = int | Sequence[int]


def _pair(v: IntOr2, name: str) -> tuple[int, int]:
    t = (v, v) if isinstance(v, int) else tuple(v)
    if len(t) != 2 or not all(isinstance(i, int) and not isinstance(i, bool) for i in t):
        raise ValueError(f"gconv_ext: {name} must be an int or a pair of ints, got {v!r}")
    return t  # type: ignore[return-value]


def _conv_params(k: int, stride: IntOr2, padding: IntOr2 | str, dilation: IntOr2):
    stride, dilation = _pair(stride, "stride"), _pair(dilation, "dilation")
    if min(stride) < 1:
        raise ValueError(f"gconv_ext: stride must be >= 1, got {stride}")
    if min(dilation) < 1:
        raise ValueError(f"gconv_ext: dilation must be >= 1, got {dilation}")
    if padding == "valid":
        return stride, (0, 0), dilation
    if padding == "same":
        if stride != (1, 1):
            raise ValueError(f"gconv_ext: padding='same' needs stride 1, got stride {stride}")
        span = tuple(d * (k - 1) for d in dilation)
        if any(s % 2 for s in span):
            raise ValueError(f"gconv_ext: padding='same' needs an odd effective kernel size dilation * (k - 1) + 1, "
                             f"got {tuple(s + 1 for s in span)}")
        return stride, tuple(s // 2 for s in span), dilation
    if isinstance(padding, str):
        raise ValueError(f"gconv_ext: padding must be an int, a pair of ints, 'same' or 'valid', got {padding!r}")
    padding = _pair(padding, "padding")
    if min(padding) < 0:
        raise ValueError(f"gconv_ext: padding must be >= 0, got {padding}")
    return stride, padding, dilation


def _check_conv(lifting: bool, x, weight, bias, group: Group) -> None:
    dim = 4 if lifting else 5
    x_layout = "[B, C_in, H, W]" if lifting else "[B, C_in, |G|, H, W]"
    w_layout = "[C_out, C_in, k, k]" if lifting else "[C_out, C_in, |G|, k, k]"
    for t, name in ((x, "input"), (weight, "weight")):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"gconv_ext: {name} must be a torch.Tensor, got {type(t).__name__}")
    if x.dim() != dim:
        raise ValueError(f"gconv_ext: input must be a {dim}-D tensor {x_layout}, got shape {tuple(x.shape)}")
    if weight.dim() != dim:
        raise ValueError(f"gconv_ext: weight must be a {dim}-D tensor {w_layout}, got shape {tuple(weight.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"gconv_ext: input must be a floating-point tensor, got {x.dtype}")
    # Under torch.autocast the op casts input, weight and bias itself (csrc/autocast.cpp).
    autocast = x.device.type in ("cpu", "cuda") and torch.is_autocast_enabled(x.device.type)
    if x.dtype != weight.dtype and not autocast:
        raise TypeError(f"gconv_ext: input and weight must have the same dtype, got {x.dtype} and {weight.dtype}")
    if x.device != weight.device:
        raise ValueError(f"gconv_ext: input and weight must be on the same device, got {x.device} and {weight.device}")
    if weight.shape[-1] != weight.shape[-2] or weight.shape[-1] < 1:
        raise ValueError(f"gconv_ext: weight must have a square kernel of size >= 1, got "
                         f"{weight.shape[-2]}x{weight.shape[-1]}")
    if x.shape[1] != weight.shape[1]:
        raise ValueError(f"gconv_ext: input has {x.shape[1]} channels but weight expects C_in = {weight.shape[1]}")
    if not lifting:
        for t, name in ((x, "input"), (weight, "weight")):
            if t.shape[2] != group.order:
                raise ValueError(f"gconv_ext: {name}.shape[2] must be the group order |G| = {group.order} for "
                                 f"{group.name}, got {t.shape[2]}")
    if bias is not None:
        if not isinstance(bias, torch.Tensor):
            raise TypeError(f"gconv_ext: bias must be a torch.Tensor or None, got {type(bias).__name__}")
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"gconv_ext: bias must have shape [C_out] = [{weight.shape[0]}], got {tuple(bias.shape)}")
        if bias.dtype != weight.dtype and not autocast:
            raise TypeError(f"gconv_ext: bias must have the dtype of weight ({weight.dtype}), got {bias.dtype}")
        if bias.device != weight.device:
            raise ValueError(f"gconv_ext: bias must be on the device of weight ({weight.device}), got {bias.device}")


def _conv(lifting: bool, x, weight, bias, group, stride, padding, dilation, disk_mask) -> torch.Tensor:
    group = group_from_name(group)
    _check_conv(lifting, x, weight, bias, group)
    stride, padding, dilation = _conv_params(weight.shape[-1], stride, padding, dilation)
    if not _extension.available():
        _extension.warn_if_unavailable()
        ref = reference.lifting_conv2d if lifting else reference.group_conv2d
        return ref(x, weight, bias, group, stride, padding, dilation, disk_mask)
    op = torch.ops.gconv_ext.lifting_conv2d if lifting else torch.ops.gconv_ext.group_conv2d
    return op(x, weight, bias, group.rotations, group.reflections, bool(disk_mask), stride, padding, dilation)


def lifting_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, group: Group | str,
                   stride: IntOr2 = 1, padding: IntOr2 | str = 0, dilation: IntOr2 = 1,
                   disk_mask: bool = False) -> torch.Tensor:
    """Lifting convolution: planar input to a group feature map (bias shared across the group axis).

    ``x[B, C_in, H, W]``, ``weight[C_out, C_in, k, k]``, ``bias[C_out]`` or None ->
    ``[B, C_out, |G|, H', W']`` with ``H' = (H + 2p - d(k-1) - 1) // s + 1``. ``padding`` may be
    ``'same'`` (stride 1, odd effective kernel) or ``'valid'``. One fused operator and one autograd node
    (C++/CUDA: filter transform + ATen convolution); differentiable twice.
    """
    return _conv(True, x, weight, bias, group, stride, padding, dilation, disk_mask)


def group_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, group: Group | str,
                 stride: IntOr2 = 1, padding: IntOr2 | str = 0, dilation: IntOr2 = 1,
                 disk_mask: bool = False) -> torch.Tensor:
    """Group convolution: group feature map to group feature map (bias shared across the group axis).

    ``x[B, C_in, |G|, H, W]``, ``weight[C_out, C_in, |G|, k, k]``, ``bias[C_out]`` or None ->
    ``[B, C_out, |G|, H', W']``. Same options and guarantees as :func:`lifting_conv2d`.
    """
    return _conv(False, x, weight, bias, group, stride, padding, dilation, disk_mask)


def group_pool(x: torch.Tensor, mode: str = "max") -> torch.Tensor:
    """Invariant projection over the group axis: ``[B, C, |G|, H, W] -> [B, C, H, W]``.

    ``mode='max'`` (the gradient goes to the first maximal element of each group fibre: deterministic)
    or ``'mean'``. A custom C++/CUDA operator, differentiable twice.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"gconv_ext: input must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 5:
        raise ValueError(f"gconv_ext: input must be 5-D [B, C, |G|, H, W], got shape {tuple(x.shape)}")
    if mode not in ("max", "mean"):
        raise ValueError(f"gconv_ext: mode must be 'max' or 'mean', got {mode!r}")
    if not x.is_floating_point():
        raise TypeError(f"gconv_ext: input must be a floating-point tensor, got {x.dtype}")
    if x.shape[2] < 1:
        raise ValueError("gconv_ext: the group axis (input.shape[2]) must be non-empty")
    if not _extension.available():
        _extension.warn_if_unavailable()
        return reference.group_pool(x, mode)
    return torch.ops.gconv_ext.group_pool(x, mode)

if _extension.available():
    from .conv_ops import _register

    _register()
