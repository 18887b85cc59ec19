"""Equivariant normalisation, pooling and dropout on group feature maps ``(B, C, |G|, H, W)``.

Every module here treats the |G| slices of a channel alike (statistics, affine parameters and dropout masks
are shared over the group axis), which is what keeps it equivariant: rotating the input rotates the output
and permutes its group axis in the same way.

:class:`GroupPool`, :class:`GroupMaxPool2d` and :class:`GroupAvgPool2d` run the custom operators of
:mod:`gconv_ext.ops`; their ``export()`` (and :func:`gconv_ext.nn.export` for a whole model) gives
:class:`ExportedGroupPool` / :class:`ExportedGroupSpatialPool`, the same function in standard torch ops
(``amax`` / ``mean``, ``torch.nn.MaxPool2d`` / ``AvgPool2d``), e.g. for ONNX. The other modules here are
standard torch ops already.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..groups import Group
from ..ops import group_avg_pool2d, group_max_pool2d, group_pool
from . import _utils as U
from .exactness import warn_if_inexact

__all__ = ["GroupBatchNorm2d", "GroupLayerNorm", "GroupPool", "GroupMaxPool2d", "GroupAvgPool2d",
           "GroupDropout", "InvariantPool", "ExportedGroupPool", "ExportedGroupSpatialPool"]


def _check_pool_mode(owner: str, mode: object) -> str:
    if not isinstance(mode, str) or mode not in ("max", "mean"):
        raise ValueError(f"{owner}: mode must be 'max' or 'mean', got {mode!r}")
    return mode


def _check_group_map(owner: str, x: torch.Tensor, group: Group | None = None, channels: int | None = None) -> None:
    U.check_tensor(owner, x)
    if x.dim() != 5:
        raise ValueError(f"{owner}: input must be 5-D [B, C, |G|, H, W], got shape {tuple(x.shape)}")
    if group is not None and x.shape[2] != group.order:
        raise ValueError(f"{owner}: input.shape[2] must be |G| = {group.order} for {group.name}, got {x.shape[2]}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{owner}: input must have {channels} channels, got {x.shape[1]}")


class GroupBatchNorm2d(nn.BatchNorm3d):
    """Batch norm for group feature maps: one mean/variance and one affine pair per channel, shared over
    the group axis (BatchNorm3d over ``C`` with ``(|G|, H, W)`` as the spatial dims). State-dict keys are
    those of :class:`torch.nn.BatchNorm3d`. ``eps`` must be finite and > 0, ``momentum`` None (cumulative
    average) or in [0, 1]."""

    def __init__(self, channels: int, group: Group | str, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, device=None, dtype=None) -> None:
        owner = "GroupBatchNorm2d"
        U.positive_int(owner, "channels", channels)
        self.group = U.group_arg(owner, group)
        U.flag(owner, "affine", affine)
        U.flag(owner, "track_running_stats", track_running_stats)
        eps = U.positive_float(owner, "eps", eps)
        momentum = U.momentum_arg(owner, momentum)
        U.float_dtype(owner, dtype)
        super().__init__(channels, eps, momentum, affine, track_running_stats, device=device, dtype=dtype)

    def _check_input_dim(self, input: torch.Tensor) -> None:
        _check_group_map("GroupBatchNorm2d", input, self.group, self.num_features)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, group={self.group.name}"


class GroupLayerNorm(nn.Module):
    """The study's normalisation: affine-free layer norm over ``(C, |G|, H, W)`` of each sample.

    Invariant statistics, so equivariant; no parameters."""

    def __init__(self, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = U.positive_float("GroupLayerNorm", "eps", eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_group_map("GroupLayerNorm", x)
        return F.layer_norm(x, x.shape[1:], eps=self.eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


class GroupPool(nn.Module):
    """Invariant projection over the group axis: ``[B, C, |G|, H, W] -> [B, C, H, W]`` (``'max'`` or
    ``'mean'``). The result transforms like a planar image."""

    def __init__(self, mode: str = "max") -> None:
        super().__init__()
        self.mode = _check_pool_mode("GroupPool", mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_group_map("GroupPool", x)
        return group_pool(x, self.mode)

    def export(self) -> "ExportedGroupPool":
        """The same projection in standard torch ops (:class:`ExportedGroupPool`: ``amax`` / ``mean`` over
        the group axis)."""
        return ExportedGroupPool(self.mode).train(self.training)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"


class InvariantPool(nn.Module):
    """Mean (or max) over ``(|G|, H, W)``: ``[B, C, |G|, H, W] -> [B, C]``, invariant under the group
    (exactly for 90-degree rotations and reflections)."""

    def __init__(self, mode: str = "mean") -> None:
        super().__init__()
        self.mode = _check_pool_mode("InvariantPool", mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_group_map("InvariantPool", x)
        return x.mean(dim=(2, 3, 4)) if self.mode == "mean" else x.amax(dim=(2, 3, 4))

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"


class _GroupSpatialPool(nn.Module):
    _name: str
    _pool_fn: staticmethod  # gconv_ext.ops.group_max_pool2d or group_avg_pool2d

    def __init__(self, kernel_size, stride=None, padding=0) -> None:
        super().__init__()
        owner = self._name
        self.kernel_size = U.int_pair(owner, "kernel_size", kernel_size, 1)
        self.stride = self.kernel_size if stride is None else U.int_pair(owner, "stride", stride, 1)
        self.padding = U.int_pair(owner, "padding", padding, 0)
        if any(2 * p > k for p, k in zip(self.padding, self.kernel_size)):
            raise ValueError(f"{owner}: padding must be at most half the kernel size, got padding={padding!r} "
                             f"for kernel_size={kernel_size!r}")

    def _subsampling_geometry(self):
        return self.kernel_size, self.stride, self.padding, (1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_group_map(self._name, x)
        if self.stride != (1, 1):
            warn_if_inexact(self, x)
        return self._pool_fn(x, self.kernel_size, self.stride, self.padding)

    def export(self) -> "ExportedGroupSpatialPool":
        """The same pool in standard torch ops: :class:`ExportedGroupSpatialPool` around a
        :class:`torch.nn.MaxPool2d` / :class:`torch.nn.AvgPool2d` with this kernel, stride and padding (no
        dilation, ``ceil_mode=False``; the average counts the zero padding, ``count_include_pad=True``,
        like the custom operator)."""
        fn = self._pool_fn  # the staticmethod's function
        if fn is group_max_pool2d:
            pool = nn.MaxPool2d(self.kernel_size, self.stride, self.padding, dilation=1, ceil_mode=False)
        elif fn is group_avg_pool2d:
            pool = nn.AvgPool2d(self.kernel_size, self.stride, self.padding, ceil_mode=False, count_include_pad=True)
        else:
            raise ValueError(f"{self._name}: export() knows the max and average pools only; this class's "
                             f"_pool_fn ({getattr(fn, '__name__', fn)!r}) has no standard torch equivalent")
        return ExportedGroupSpatialPool(pool).train(self.training)

    def extra_repr(self) -> str:
        s = f"kernel_size={U.fmt_pair(self.kernel_size)}, stride={U.fmt_pair(self.stride)}"
        return s + (f", padding={U.fmt_pair(self.padding)}" if self.padding != (0, 0) else "")


class GroupMaxPool2d(_GroupSpatialPool):
    """Spatial max pooling of each group slice: ``[B, C, |G|, H, W] -> [B, C, |G|, H', W']`` (the custom
    operator :func:`gconv_ext.ops.group_max_pool2d`; ties go to the first maximal element of a window).

    ``stride`` defaults to ``kernel_size``. Warns once (:class:`EquivarianceWarning`) when the input size
    makes 90-degree equivariance inexact, e.g. a 2x2/2 pool on an odd size."""

    _name = "GroupMaxPool2d"
    _pool_fn = staticmethod(group_max_pool2d)


class GroupAvgPool2d(_GroupSpatialPool):
    """Spatial average pooling of each group slice (zero padding counted), like :class:`GroupMaxPool2d`
    (:func:`gconv_ext.ops.group_avg_pool2d`)."""

    _name = "GroupAvgPool2d"
    _pool_fn = staticmethod(group_avg_pool2d)


class ExportedGroupPool(nn.Module):
    """:class:`GroupPool` in standard torch ops: ``x.amax(dim=2)`` (``'max'``) or ``x.mean(dim=2)``
    (``'mean'``), ``[B, C, |G|, H, W] -> [B, C, H, W]``. The max is bit-identical to the custom operator
    (a max involves no rounding; NaNs propagate in both); the mean sums the same |G| values, possibly in
    another order, so it agrees to within float rounding (``2 gamma_{|G|+1}`` of the fibre's mean ``|x|``)."""

    def __init__(self, mode: str = "max") -> None:
        super().__init__()
        self.mode = _check_pool_mode("ExportedGroupPool", mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_group_map("ExportedGroupPool", x)
        return x.amax(dim=2) if self.mode == "max" else x.mean(dim=2)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"


class ExportedGroupSpatialPool(nn.Module):
    """:class:`GroupMaxPool2d` / :class:`GroupAvgPool2d` in standard torch ops: ``self.pool`` (a
    :class:`torch.nn.MaxPool2d` or :class:`torch.nn.AvgPool2d`) on ``x.flatten(1, 2)``, the
    ``[B, C * |G|, H, W]`` view of the group map, unflattened back to ``[B, C, |G|, H', W']``.

    Only the options of the group pools are accepted (square or rectangular kernel, stride, padding at
    most half the kernel); dilation other than 1, ``ceil_mode=True``, ``count_include_pad=False``,
    ``divisor_override`` and ``return_indices`` raise a ValueError naming the option. Outputs equal the
    custom operators': the max bit for bit (ties and NaNs pick the same value), the average to within
    float rounding (the same taps summed, possibly in another order, divided by ``k_h * k_w``; on the CPU
    both sum in row-major window order in float and agreed bit for bit wherever we compared them). ``pool``'s
    kernel_size, stride and padding are normalised to pairs in place. Warns like the group pools
    (:class:`~gconv_ext.nn.EquivarianceWarning`) on an inexact input size, and
    :func:`~gconv_ext.nn.check_exact` reads its geometry.
    """

    def __init__(self, pool: nn.MaxPool2d | nn.AvgPool2d) -> None:
        super().__init__()
        owner = "ExportedGroupSpatialPool"
        if not isinstance(pool, (nn.MaxPool2d, nn.AvgPool2d)):
            raise ValueError(f"{owner}: pool must be a torch.nn.MaxPool2d or AvgPool2d, got {type(pool).__name__}")
        pair = nn.modules.utils._pair
        unsupported = []
        if pool.ceil_mode:
            unsupported.append("ceil_mode=True")
        if isinstance(pool, nn.MaxPool2d):
            if pair(pool.dilation) != (1, 1):
                unsupported.append(f"dilation={pool.dilation!r}")
            if pool.return_indices:
                unsupported.append("return_indices=True")
        else:
            if not pool.count_include_pad:
                unsupported.append("count_include_pad=False")
            if pool.divisor_override is not None:
                unsupported.append(f"divisor_override={pool.divisor_override!r}")
        if unsupported:
            raise ValueError(f"{owner}: the group pools have no {', '.join(unsupported)} (got {pool!r})")
        self.kernel_size = U.int_pair(owner, "kernel_size", pair(pool.kernel_size), 1)
        self.stride = U.int_pair(owner, "stride", pair(pool.stride), 1)
        self.padding = U.int_pair(owner, "padding", pair(pool.padding), 0)
        if any(2 * p > k for p, k in zip(self.padding, self.kernel_size)):
            raise ValueError(f"{owner}: padding must be at most half the kernel size, got padding={pool.padding!r} "
                             f"for kernel_size={pool.kernel_size!r}")
        # normalised to pairs, so that repr, ONNX attributes and check_exact see one spelling
        pool.kernel_size, pool.stride, pool.padding = self.kernel_size, self.stride, self.padding
        self.pool = pool

    def _subsampling_geometry(self):
        return self.kernel_size, self.stride, self.padding, (1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_group_map("ExportedGroupSpatialPool", x)
        if self.stride != (1, 1):
            warn_if_inexact(self, x)
        return self.pool(x.flatten(1, 2)).unflatten(1, (x.shape[1], x.shape[2]))

    def extra_repr(self) -> str:  # as the group pools' (also in the EquivarianceWarning), with the kind
        kind = "max" if isinstance(self.pool, nn.MaxPool2d) else "avg"
        s = f"{kind}, kernel_size={U.fmt_pair(self.kernel_size)}, stride={U.fmt_pair(self.stride)}"
        return s + (f", padding={U.fmt_pair(self.padding)}" if self.padding != (0, 0) else "")


class GroupDropout(nn.Module):
    """Dropout of whole fields: one Bernoulli draw per (sample, channel, pixel), shared by the |G| slices
    of that channel, so the dropped pattern is equivariant in distribution (element-wise dropout would
    drop single group slices and break the field structure). ``whole_channel=True`` drops entire channels
    ``(|G|, H, W)`` at once (like :class:`torch.nn.Dropout3d`). Identity in eval mode."""

    def __init__(self, p: float = 0.5, whole_channel: bool = False) -> None:
        super().__init__()
        self.p = U.probability("GroupDropout", "p", p)
        self.whole_channel = U.flag("GroupDropout", "whole_channel", whole_channel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_group_map("GroupDropout", x)
        if not self.training or self.p == 0.0:
            return x
        if self.p == 1.0:
            return x * 0.0
        b, c, _, h, w = x.shape
        shape = (b, c, 1, 1, 1) if self.whole_channel else (b, c, 1, h, w)
        mask = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(1.0 - self.p)
        return x * mask / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}" + (", whole_channel=True" if self.whole_channel else "")
