"""Equivariant convolution modules: :class:`LiftingConv2d` and :class:`GroupConv2d`, and their export
to a plain :class:`torch.nn.Conv2d` (:class:`ExportedGroupConv`); :func:`export` turns a whole model into
standard torch ops (convolutions and the group pools of :mod:`gconv_ext.nn.layers`), e.g. for ONNX.

Layout of group feature maps: ``(B, C, |G|, H, W)``, plain tensors (channel-major, group-minor, so
``x.flatten(1, 2)`` is the ``C * |G|`` channel axis of the equivalent planar convolution).

Training runs the functional ops of :mod:`gconv_ext.ops` (filter expansion + convolution, differentiable).
In eval mode, when no gradient is needed, the expanded filter is cached and the forward is a single
``F.conv2d`` with the bias folded in (as in the op). The cache is a plain attribute (never in ``state_dict``),
built under ``no_grad`` and keyed on the weight's and bias's identity, storage, device, dtype and version
counter and on the autocast dtype (under autocast it holds the filter already cast, and the output has the
training path's dtype), so any in-place update (optimiser step,
``load_state_dict``, ``.to()``) invalidates it (writes through ``weight.data`` bypass the version counter:
call ``clear_cache()`` after those). It is bypassed under ``torch.compile`` / ``torch.export``.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import _extension
from ..groups import Group
from ..ops import group_conv2d, group_filter, lift_filter, lifting_conv2d
from ..ops.conv import _check_conv, _check_spatial, _conv_params
from ..ops.reference import disk_mask as _disk_mask
from ..ops.reference import transform_matrix as _transform_matrix
from . import _utils as U
from .exactness import warn_if_inexact
from .layers import GroupPool, _GroupSpatialPool

__all__ = ["LiftingConv2d", "GroupConv2d", "ExportedGroupConv", "export"]


class _EquivariantConv(nn.Module):
    """Shared machinery of the lifting and group convolutions."""

    _lifting: bool

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, group: Group | str,
                 stride=1, padding=0, dilation=1, bias: bool = True, disk_mask: bool = False,
                 device=None, dtype=None) -> None:
        super().__init__()
        owner = type(self).__name__
        self.in_channels = U.positive_int(owner, "in_channels", in_channels)
        self.out_channels = U.positive_int(owner, "out_channels", out_channels)
        if isinstance(kernel_size, (tuple, list)):
            kp = U.int_pair(owner, "kernel_size", kernel_size, 1)
            if kp[0] != kp[1]:
                raise ValueError(f"{owner}: kernel_size must be square (the group rotates the filter), "
                                 f"got {kernel_size!r}")
            kernel_size = kp[0]
        self.kernel_size = U.positive_int(owner, "kernel_size", kernel_size)
        self.group = U.group_arg(owner, group)
        self.stride = U.int_pair(owner, "stride", stride, 1)
        self.dilation = U.int_pair(owner, "dilation", dilation, 1)
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"{owner}: padding must be an int, a pair of ints, 'same' or 'valid', "
                                 f"got {padding!r}")
            if padding == "valid":  # as in the functional ops and nn.Conv2d: no padding
                padding = 0
        if isinstance(padding, str):  # 'same'
            if self.stride != (1, 1):
                raise ValueError(f"{owner}: padding='same' needs stride 1, got stride={stride!r}")
            span = [d * (self.kernel_size - 1) for d in self.dilation]
            if any(s % 2 for s in span):
                raise ValueError(f"{owner}: padding='same' needs an odd effective kernel size "
                                 f"dilation * (kernel_size - 1) + 1 (symmetric padding keeps equivariance), "
                                 f"got kernel_size={kernel_size}, dilation={dilation!r}")
            self.padding_mode_same = True
            self.padding = (span[0] // 2, span[1] // 2)
        else:
            self.padding_mode_same = False
            self.padding = U.int_pair(owner, "padding", padding, 0)
        U.flag(owner, "bias", bias)
        self.disk_mask = U.flag(owner, "disk_mask", disk_mask)
        U.float_dtype(owner, dtype)

        k, n = self.kernel_size, self.group.order
        shape = (out_channels, in_channels, k, k) if self._lifting else (out_channels, in_channels, n, k, k)
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(shape, **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self._cache: tuple[torch.Tensor, torch.Tensor | None] | None = None  # plain attribute: never in state_dict
        self._cache_key: tuple | None = None  # also the last input signature the eval path validated
        self.reset_parameters()

    # -- initialisation -----------------------------------------------------------------------------
    @property
    def taps(self) -> int:
        """Filter taps that are used: k^2, or the taps inside the disk when ``disk_mask``."""
        k = self.kernel_size
        return int(_disk_mask(k).sum().item()) if self.disk_mask else k * k

    @property
    def fan_in(self) -> int:
        """The true fan-in of one output value: C_in * taps (lifting) or C_in * |G| * taps (group conv)."""
        return self.in_channels * self.taps * (1 if self._lifting else self.group.order)

    @property
    def transform_gain(self) -> float:
        """Mean over g of ``E||W_g||^2 / E||W||^2`` for i.i.d. taps: 1 when every element maps taps to taps
        (C4, D4 and their subgroups), below 1 when bilinear resampling (e.g. 45 degrees) averages taps."""
        m = _transform_matrix(self.group, self.kernel_size, self.disk_mask)  # [|G|, k^2, k^2], float64
        return float(m.square().sum() / (self.group.order * self.taps))

    def reset_parameters(self) -> None:
        """He (Kaiming) normal init on the true fan-in, ``std = sqrt(2 / (fan_in * transform_gain))``,
        zero bias. The gain corrects for the energy that bilinear filter rotation loses (it is exactly 1 for
        C4 and D4). Taps outside the disk (``disk_mask``) are set to zero, as the filter transform ignores
        them."""
        with torch.no_grad():
            self.weight.normal_(0.0, math.sqrt(2.0 / (self.fan_in * self.transform_gain)))
            if self.disk_mask:
                self.weight.mul_(_disk_mask(self.kernel_size).to(self.weight))
            if self.bias is not None:
                self.bias.zero_()
        self.clear_cache()

    # -- filter expansion and the eval cache ---------------------------------------------------------
    def expanded_weight(self) -> torch.Tensor:
        """The equivalent planar filter ``[C_out * |G|, C_in (* |G|), k, k]`` (differentiable)."""
        k = self.kernel_size
        if self._lifting:
            w = lift_filter(self.weight, self.group, self.disk_mask)
        else:
            w = group_filter(self.weight, self.group, self.disk_mask)
        return w.reshape(self.out_channels * self.group.order, -1, k, k)

    def clear_cache(self) -> None:
        """Drop the eval-mode filter cache. Only needed after writing through ``weight.data``, which
        bypasses the version counter the cache is keyed on (optimiser steps, ``load_state_dict``,
        ``.to()`` and in-place ops under ``no_grad`` are all detected)."""
        self._cache = None
        self._cache_key = None

    def _cached_filter(self, x: torch.Tensor, w: torch.Tensor,
                       b: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The expanded filter and the bias repeated over the group axis (folded into the conv, as the op does),
        in the autocast dtype when autocast is on: cast once per cache entry, not on every call. ``w`` and ``b``
        are ``self.weight`` and ``self.bias``, read once by the caller (a parameter read through
        ``nn.Module.__getattr__`` costs about 1.7 us, several times a batch-1 eval step's budget).

        One key, compared on every call, stands for both the validated input signature and the cache entry:
        the input's shape, dtype and device, the weight's and bias's identity, storage, device, dtype and
        version counter, and the autocast dtype. On a hit nothing else runs; on a miss the input is checked
        (the training path's checks and messages) and the filter is expanded again."""
        device = x.device
        try:
            cast = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None
        except RuntimeError:  # a device type autocast does not know (meta): the input checks below say what is wrong
            cast = None
        key = (x.shape, x.dtype, device, id(w), w.data_ptr(), w.device, w.dtype, w._version,
               None if b is None else (id(b), b.data_ptr(), b.device, b.dtype, b._version), cast)
        cache = self._cache
        if cache is not None and getattr(self, "_cache_key", None) == key:
            return cache
        self._check_input(x)
        _check_conv(self._lifting, x, w, b, self.group)
        _check_spatial(x, self.kernel_size, *_conv_params(self.kernel_size, self.stride, self.padding,
                                                          self.dilation))
        with torch.no_grad():
            filt = self.expanded_weight().detach()
            bias = None if b is None else b.detach().repeat_interleave(self.group.order)
            if cast is not None and filt.dtype != cast:
                filt, bias = filt.to(cast), None if bias is None else bias.to(cast)
        self._cache, self._cache_key = (filt, bias), key
        return self._cache

    def _use_cache(self, w: torch.Tensor) -> bool:
        if self.training or torch.compiler.is_compiling() or torch.jit.is_tracing():
            return False
        return not (torch.is_grad_enabled() and w.requires_grad)

    def train(self, mode: bool = True):
        if mode:
            self.clear_cache()
        return super().train(mode)

    def __getstate__(self):
        state = self.__dict__.copy()  # pickling and deepcopy never carry the cache
        state["_cache"] = state["_cache_key"] = None
        return state

    def _apply(self, fn, recurse=True):
        self.clear_cache()
        if self._lifting:
            return super()._apply(fn, recurse)
        # A group filter [C_out, C_in, |G|, k, k] is 5-D, and `Module.to(memory_format=torch.channels_last)` asks
        # every 4-D and 5-D tensor for channels_last, which torch defines for 4-D tensors only (it raises, as
        # for a Conv3d). Convert the filter (and its grad) as the planar 4-D filter [C_out, C_in * |G|, k, k] it
        # is, and view the result as 5-D again: the usual channels_last recipe then works on a whole GCNN, and a
        # plain device / dtype conversion gives the same tensor as before. The stored layout (state_dict) is
        # the parameter's own, so checkpoints load either way.
        shape = self.weight.shape

        def planar_fn(t):
            if t.dim() == 5 and t.shape == shape:
                return fn(t.flatten(1, 2)).unflatten(1, shape[1:3])
            return fn(t)
        return super()._apply(planar_fn, recurse)

    # -- forward ----------------------------------------------------------------------------------------
    def _subsampling_geometry(self):
        k = self.kernel_size
        return (k, k), self.stride, self.padding, self.dilation

    def _check_input(self, x: torch.Tensor) -> None:
        U.check_tensor(type(self).__name__, x)
        if self._lifting:
            if x.dim() != 4 or x.shape[1] != self.in_channels:
                raise ValueError(f"LiftingConv2d: input must be [B, {self.in_channels}, H, W], got {tuple(x.shape)}")
        elif x.dim() != 5 or x.shape[1] != self.in_channels or x.shape[2] != self.group.order:
            raise ValueError(f"GroupConv2d: input must be [B, {self.in_channels}, |G| = {self.group.order}, H, W] "
                             f"for {self.group.name}, got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Read once, from the parameter dict: `self.weight` goes through nn.Module.__getattr__ (0.4 us a read,
        # against a batch-1 eval step's overhead budget of about 3 us).
        # (Not there under torch.nn.utils.parametrize, which makes `weight` a property: then the attribute.)
        params = self._parameters
        w = params["weight"] if "weight" in params else self.weight
        b = params["bias"] if "bias" in params else self.bias
        if self.stride != (1, 1):
            U.check_tensor(type(self).__name__, x)
            warn_if_inexact(self, x)
        if not self._use_cache(w):
            self._check_input(x)
            op = _extension.compiled_op("lifting_conv2d" if self._lifting else "group_conv2d")
            if op is not None:  # the arguments were validated by the constructor: straight to the op
                return op(x, w, b, self.group.rotations, self.group.reflections, self.disk_mask, self.stride,
                          self.padding, self.dilation)
            fn = lifting_conv2d if self._lifting else group_conv2d
            return fn(x, w, b, self.group, self.stride, self.padding, self.dilation, self.disk_mask)
        # Eval without grad: one conv with the cached filter. The input is checked (as the functional op
        # checks it) whenever the cache key, which includes the input's shape, dtype and device, changes.
        U.check_tensor(type(self).__name__, x)
        filt, bias = self._cached_filter(x, w, b)
        out = F.conv2d(x if self._lifting else x.flatten(1, 2), filt, bias, self.stride, self.padding,
                       self.dilation)
        # view, not unflatten (a Python-level method, ~3 us): splitting one axis is always a view
        return out.view(out.shape[0], self.out_channels, self.group.order, out.shape[2], out.shape[3])

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, group={self.group.name}")
        if self.stride != (1, 1):
            s += f", stride={U.fmt_pair(self.stride)}"
        if self.padding_mode_same:
            s += ", padding='same'"
        elif self.padding != (0, 0):
            s += f", padding={U.fmt_pair(self.padding)}"
        if self.dilation != (1, 1):
            s += f", dilation={U.fmt_pair(self.dilation)}"
        if self.bias is None:
            s += ", bias=False"
        if self.disk_mask:
            s += ", disk_mask=True"
        return s

    # -- export -------------------------------------------------------------------------------------------
    def export(self) -> "ExportedGroupConv":
        """An equivalent module built on a plain :class:`torch.nn.Conv2d` (same input and output shapes)."""
        n = self.group.order
        with torch.no_grad():
            w = self.expanded_weight().detach().clone()
            conv = nn.Conv2d(w.shape[1], w.shape[0], self.kernel_size, self.stride, self.padding, self.dilation,
                             bias=self.bias is not None, device=w.device, dtype=w.dtype)
            conv.weight.copy_(w)
            if self.bias is not None:
                conv.bias.copy_(self.bias.detach().repeat_interleave(n))
        conv.train(self.training)
        return ExportedGroupConv(conv, self.group, self.out_channels, lifting=self._lifting)


class LiftingConv2d(_EquivariantConv):
    """Lifting convolution: ``[B, C_in, H, W] -> [B, C_out, |G|, H', W']``.

    Weight ``[C_out, C_in, k, k]``; output slice ``g`` correlates the input with the filter transformed by
    ``g``. Rotating (reflecting) the input by ``g`` rotates the output and moves group slice ``h`` to ``g h``
    (exactly for multiples of 90 degrees and reflections at valid sizes: see :func:`check_exact`).

    Args:
        in_channels, out_channels: channel counts (fields: each output channel has |G| slices).
        kernel_size: k (square filters).
        group: a :class:`~gconv_ext.groups.Group` or a name such as ``'C4'`` or ``'D8'``.
        stride, padding, dilation: as in :class:`torch.nn.Conv2d` and the functional ops; ``padding='same'``
            needs stride 1 and an odd effective kernel ``dilation * (k - 1) + 1``, ``padding='valid'`` is 0.
        bias: one bias per output channel, shared over the group axis.
        disk_mask: use only the taps inside the inscribed disk (better for N other than 1, 2, 4).
    """

    _lifting = True


class GroupConv2d(_EquivariantConv):
    """Group convolution: ``[B, C_in, |G|, H, W] -> [B, C_out, |G|, H', W']``.

    Weight ``[C_out, C_in, |G|, k, k]``; the group axis of the filter is permuted exactly (Cayley table),
    the spatial axes are transformed as in :class:`LiftingConv2d`. Same arguments as :class:`LiftingConv2d`;
    the fan-in for the init is ``C_in * |G| * k^2``.
    """

    _lifting = False


class ExportedGroupConv(nn.Module):
    """A lifting or group convolution frozen into a plain :class:`torch.nn.Conv2d` (``self.conv``):
    ``[B, C_in(, |G|), H, W] -> [B, C_out, |G|, H', W']`` with the same outputs as the original module.

    Its parameters are ordinary Conv2d parameters: training it further does not keep equivariance.
    """

    def __init__(self, conv: nn.Conv2d, group: Group | str, out_channels: int, lifting: bool) -> None:
        super().__init__()
        if not isinstance(conv, nn.Conv2d):
            raise ValueError(f"ExportedGroupConv: conv must be a torch.nn.Conv2d, got {type(conv).__name__}")
        self.conv = conv
        self.group = U.group_arg("ExportedGroupConv", group)
        self.out_channels = U.positive_int("ExportedGroupConv", "out_channels", out_channels)
        self.lifting = U.flag("ExportedGroupConv", "lifting", lifting)
        if conv.out_channels != out_channels * self.group.order:
            raise ValueError(f"ExportedGroupConv: conv.out_channels must be out_channels * |G| = "
                             f"{out_channels * self.group.order}, got {conv.out_channels}")

    def _subsampling_geometry(self):
        c = self.conv
        return c.kernel_size, c.stride, c.padding, c.dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        U.check_tensor("ExportedGroupConv", x)
        dim = 4 if self.lifting else 5
        if x.dim() != dim:
            layout = "[B, C_in, H, W]" if self.lifting else "[B, C_in, |G|, H, W]"
            raise ValueError(f"ExportedGroupConv: input must be a {dim}-D tensor {layout}, got shape {tuple(x.shape)}")
        if self.conv.stride != (1, 1):
            warn_if_inexact(self, x)
        y = self.conv(x if self.lifting else x.flatten(1, 2))
        return y.unflatten(1, (self.out_channels, self.group.order))

    def extra_repr(self) -> str:
        return f"group={self.group.name}, out_channels={self.out_channels}, lifting={self.lifting}"


def _exportable(module: nn.Module) -> bool:
    """A module whose forward runs custom operators and that has an ``export()`` to standard torch ops."""
    return isinstance(module, (_EquivariantConv, GroupPool, _GroupSpatialPool))


def export(model: nn.Module, inplace: bool = False) -> nn.Module:
    """The same model in standard torch ops only, e.g. for ``torch.onnx.export`` or other deployment.

    Every module of ``model`` (recursively, or ``model`` itself) whose forward runs a custom operator
    ``torch.ops.gconv_ext.*`` is replaced by its ``export()``:

    * :class:`LiftingConv2d` / :class:`GroupConv2d` -> :class:`ExportedGroupConv` (one
      :class:`torch.nn.Conv2d` with the expanded filter and the bias repeated over the group axis);
    * :class:`~gconv_ext.nn.GroupMaxPool2d` / :class:`~gconv_ext.nn.GroupAvgPool2d` ->
      :class:`~gconv_ext.nn.ExportedGroupSpatialPool` (:class:`torch.nn.MaxPool2d` / ``AvgPool2d`` with the
      same kernel, stride and padding on the ``[B, C * |G|, H, W]`` view);
    * :class:`~gconv_ext.nn.GroupPool` -> :class:`~gconv_ext.nn.ExportedGroupPool` (``amax`` / ``mean``
      over the group axis).

    The other modules of :mod:`gconv_ext.nn` (``GroupBatchNorm2d``, ``GroupLayerNorm``, ``GroupDropout``,
    ``InvariantPool``) and of :mod:`gconv_ext.models` (GCNN, STN, the LeNets) are standard torch ops already
    and stay. Code that calls the functional :mod:`gconv_ext.ops` in a model's *own* ``forward`` is not a
    module and cannot be replaced: check the result with ``torch.export.export`` (no node target in the
    ``gconv_ext`` namespace) before deploying a custom model.

    Outputs: the same function as ``model`` in eval mode. The max pools (spatial and group) are bit-identical;
    the convolutions use the bit-identical expanded filter, but with the bias folded into the Conv2d (and,
    without a bias, on the same ``F.conv2d`` call as the eval-mode cache), so they agree to within float
    rounding where there is a bias; the average and mean pools agree to within float rounding (the same
    values summed, possibly in another order), and so does a GCNN's LayerNorm where the original fuses it with
    its ReLU and max pool (``GCNN.fuse_glue``). Training the exported convolutions further does not keep
    equivariance. ``model`` is deep-copied and left unchanged unless ``inplace`` (a ``model`` that is itself
    one of the modules above is never changed: its replacement is returned); the training flag of every
    module is kept.
    """
    if _exportable(model):
        return model.export()
    if not inplace:
        model = copy.deepcopy(model)
    for name, child in list(model.named_children()):
        if _exportable(child):
            setattr(model, name, child.export())
        else:
            export(child, inplace=True)
    return model
