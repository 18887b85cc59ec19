"""Readable pure-PyTorch reference implementations.

These are the test oracle for the C++/CUDA kernels, the fallback when the compiled extension is
not available, and a benchmark baseline. They are written for clarity, not speed.

Filter-transform semantics (see :mod:`gconv_ext.groups` for the group conventions):

* A ``k x k`` filter has taps at plane coordinates ``p = (j - c, c - i)`` for row ``i``, column ``j``,
  ``c = (k - 1) / 2`` (x right, y up, origin at the filter centre).
* The filter transformed by ``g`` is ``W_g(p) = W(g^-1 p)``, sampled by bilinear interpolation of the
  taps, zero outside the filter. Source positions within 1e-9 of a tap snap to it, so rotations by
  multiples of 90 degrees and reflections are exact permutations of the taps.
* ``disk_mask=True`` keeps only taps whose centre lies within the disk of radius ``k / 2`` (the disk
  inscribed in the filter's square support), both as sources and as outputs.
* Lifting: ``[C_out, C_in, k, k] -> [C_out, |G|, C_in, k, k]``, slice ``g`` is ``W_g``.
* Group: ``[C_out, C_in, |G|, k, k] -> [C_out, |G|, C_in, |G|, k, k]`` with
  ``out[:, g, :, h] = (W[:, :, g^-1 h])_g``: the spatial transform by ``g`` and the regular
  representation on the input group axis (integer indexing through the Cayley table).
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from ..groups import Group, rotate_bilinear  # noqa: F401  (rotate_bilinear: re-exported, it lives with the group)

__all__ = [
    "transform_matrix",
    "disk_mask",
    "lift_filter",
    "group_filter",
    "lifting_conv2d",
    "group_conv2d",
    "group_pool",
    "group_max_pool2d",
    "group_avg_pool2d",
    "rotate_bilinear",
    "lift_filter_grid_sample",
    "group_filter_grid_sample",
]

_SNAP = 1e-9


def disk_mask(k: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``[k, k]`` mask of the taps whose centre lies within radius ``k/2`` of the filter centre.

    Always a CPU tensor, even inside a ``torch.device(...)`` context (e.g. building a model on the meta
    device): it is a constant that callers count or move to their weight's device."""
    c = (k - 1) / 2.0
    with torch.device("cpu"):
        ii, jj = torch.meshgrid(torch.arange(k, dtype=torch.float64), torch.arange(k, dtype=torch.float64),
                                indexing="ij")
    return (((ii - c) ** 2 + (jj - c) ** 2) <= (k / 2.0) ** 2 + _SNAP).to(dtype)


def transform_matrix(group: Group, k: int, disk: bool = False) -> torch.Tensor:
    """The filter transform as a dense float64 matrix ``M[g, out_tap, in_tap]`` (taps row-major).

    ``W_g.flatten() = M[g] @ W.flatten()``.
    """
    return _transform_matrix(group, k, disk).clone()


def _transform_matrix(group: Group, k: int, disk: bool) -> torch.Tensor:
    # Built on the CPU whatever ``torch.device(...)`` context the caller is in (a model built on the meta
    # device asks for it in reset_parameters): the cache must never hold a meta or CUDA tensor.
    with torch.device("cpu"):
        return _cpu_transform_matrix(group, k, disk)


@functools.lru_cache(maxsize=256)
def _cpu_transform_matrix(group: Group, k: int, disk: bool) -> torch.Tensor:
    if k < 1:
        raise ValueError(f"kernel size must be >= 1, got {k}")
    c = (k - 1) / 2.0
    keep = disk_mask(k).flatten() > 0 if disk else torch.ones(k * k, dtype=torch.bool)
    mats = torch.zeros(group.order, k * k, k * k, dtype=torch.float64)
    for g in range(group.order):
        inv = group.matrix(group.inverse(g))  # maps output position p to source position g^-1 p
        for i in range(k):
            for j in range(k):
                o = i * k + j
                if not keep[o]:
                    continue
                x, y = j - c, c - i
                sx = inv[0, 0].item() * x + inv[0, 1].item() * y
                sy = inv[1, 0].item() * x + inv[1, 1].item() * y
                col, row = c + sx, c - sy
                col = round(col) if abs(col - round(col)) < _SNAP else col
                row = round(row) if abs(row - round(row)) < _SNAP else row
                r0, c0 = math.floor(row), math.floor(col)
                fr, fc = row - r0, col - c0
                for rr, cc, w in ((r0, c0, (1 - fr) * (1 - fc)), (r0, c0 + 1, (1 - fr) * fc),
                                  (r0 + 1, c0, fr * (1 - fc)), (r0 + 1, c0 + 1, fr * fc)):
                    if w != 0.0 and 0 <= rr < k and 0 <= cc < k and keep[rr * k + cc]:
                        mats[g, o, rr * k + cc] += w
    return mats


def lift_filter(weight: torch.Tensor, group: Group, disk: bool = False) -> torch.Tensor:
    """Reference lifting filter transform ``[C_out, C_in, k, k] -> [C_out, |G|, C_in, k, k]``."""
    co, ci, k, _ = weight.shape
    m = _transform_matrix(group, k, disk).to(weight)
    out = torch.einsum("gop,cdp->cgdo", m, weight.reshape(co, ci, k * k))
    return out.reshape(co, group.order, ci, k, k)


def group_filter(weight: torch.Tensor, group: Group, disk: bool = False) -> torch.Tensor:
    """Reference group filter transform ``[C_out, C_in, |G|, k, k] -> [C_out, |G|, C_in, |G|, k, k]``."""
    co, ci, n, k, _ = weight.shape
    m = _transform_matrix(group, k, disk).to(weight)
    w = weight.reshape(co, ci, n, k * k)
    # src[g, h] = g^-1 h: the input group slice that feeds output slice (g, h)
    src = group.cayley_table[group.inverses]  # [g, h] -> (g^-1) h
    permuted = w[:, :, src]  # [C_out, C_in, g, h, k*k]
    out = torch.einsum("gop,cdghp->cgdho", m, permuted)
    return out.reshape(co, n, ci, n, k, k)


def lifting_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, group: Group, stride=1,
                   padding=0, dilation=1, disk_mask: bool = False) -> torch.Tensor:
    """Reference lifting convolution, unfused: lift the filter, one planar ``F.conv2d``, shared bias.

    ``x[B, C_in, H, W]``, ``weight[C_out, C_in, k, k]`` -> ``[B, C_out, |G|, H', W']``; output slice ``g``
    is the correlation with the filter transformed by ``g``.
    """
    w = lift_filter(weight, group, disk_mask)  # [C_out, G, C_in, k, k]
    co, n, ci, k, _ = w.shape
    out = F.conv2d(x, w.reshape(co * n, ci, k, k), None, stride, padding, dilation)
    out = out.view(out.shape[0], co, n, out.shape[-2], out.shape[-1])
    return out if bias is None else out + bias.view(1, co, 1, 1, 1)


def group_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, group: Group, stride=1,
                 padding=0, dilation=1, disk_mask: bool = False) -> torch.Tensor:
    """Reference group convolution, unfused: expand the filter, one planar ``F.conv2d``, shared bias.

    ``x[B, C_in, |G|, H, W]``, ``weight[C_out, C_in, |G|, k, k]`` -> ``[B, C_out, |G|, H', W']``.
    """
    w = group_filter(weight, group, disk_mask)  # [C_out, G, C_in, G, k, k]
    co, n, ci, _, k, _ = w.shape
    out = F.conv2d(x.reshape(x.shape[0], ci * n, x.shape[-2], x.shape[-1]), w.reshape(co * n, ci * n, k, k), None,
                   stride, padding, dilation)
    out = out.view(out.shape[0], co, n, out.shape[-2], out.shape[-1])
    return out if bias is None else out + bias.view(1, co, 1, 1, 1)


def group_pool(x: torch.Tensor, mode: str = "max") -> torch.Tensor:
    """Reference group pooling ``[B, C, |G|, H, W] -> [B, C, H, W]`` (max or mean over the group axis)."""
    return x.amax(dim=2) if mode == "max" else x.mean(dim=2)


def _spatial_pool(fn, x: torch.Tensor, kernel_size, stride, padding) -> torch.Tensor:
    if x.dim() == 4:
        return fn(x, kernel_size, stride, padding)
    out = fn(x.flatten(1, 2), kernel_size, stride, padding)
    return out.unflatten(1, (x.shape[1], x.shape[2]))


def group_max_pool2d(x: torch.Tensor, kernel_size, stride=None, padding=0) -> torch.Tensor:
    """Reference spatial max pooling of every group slice: ``F.max_pool2d`` on ``x.flatten(1, 2)``
    (``[B, C, |G|, H, W] -> [B, C, |G|, H', W']``; 4-D input as is)."""
    return _spatial_pool(F.max_pool2d, x, kernel_size, kernel_size if stride is None else stride, padding)


def group_avg_pool2d(x: torch.Tensor, kernel_size, stride=None, padding=0) -> torch.Tensor:
    """Reference spatial average pooling of every group slice (``F.avg_pool2d``, zero padding counted)."""
    return _spatial_pool(F.avg_pool2d, x, kernel_size, kernel_size if stride is None else stride, padding)


# -- the study's way (benchmark baselines only) ------------------------------------------------

def _study_grids(group: Group, k: int, dtype, device) -> torch.Tensor:
    thetas = []
    for g in range(group.order):
        m = group.matrix(g)
        flip = torch.diag(torch.tensor([1.0, -1.0], dtype=torch.float64))
        a = flip @ m.inverse() @ flip  # source position in grid (x right, y down) coordinates
        thetas.append(torch.cat([a, torch.zeros(2, 1, dtype=torch.float64)], dim=1))
    theta = torch.stack(thetas).to(dtype=dtype, device=device)
    return F.affine_grid(theta, [group.order, 1, k, k], align_corners=True)


def lift_filter_grid_sample(weight: torch.Tensor, group: Group) -> torch.Tensor:
    """The study's lifting transform: ``affine_grid`` + ``grid_sample`` rebuilt on every call."""
    co, ci, k, _ = weight.shape
    grid = _study_grids(group, k, weight.dtype, weight.device)
    x = weight.reshape(1, co * ci, k, k).expand(group.order, -1, -1, -1)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out.reshape(group.order, co, ci, k, k).transpose(0, 1)


def group_filter_grid_sample(weight: torch.Tensor, group: Group) -> torch.Tensor:
    """The study's group transform: spatial ``grid_sample`` per element on every call, then the
    group-axis shift (done with integer indexing here: the study's float version has a bug)."""
    co, ci, n, k, _ = weight.shape
    grid = _study_grids(group, k, weight.dtype, weight.device)
    src = group.cayley_table[group.inverses].to(weight.device)
    outs = []
    for g in range(n):
        w = weight[:, :, src[g]].reshape(1, co * ci * n, k, k)
        outs.append(F.grid_sample(w, grid[g:g + 1], mode="bilinear", padding_mode="zeros", align_corners=True))
    return torch.stack(outs, 0).reshape(n, co, ci, n, k, k).transpose(0, 1)


def group_layer_norm_relu_max_pool2d(x: torch.Tensor, kernel_size, stride=None, padding=0,
                                     eps: float = 1e-5) -> torch.Tensor:
    """Reference of the GCNN block's glue: the affine-free layer norm over every dimension but the batch, ReLU,
    then :func:`group_max_pool2d` (three torch ops, one after another)."""
    return group_max_pool2d(F.relu(F.layer_norm(x, x.shape[1:], eps=eps)), kernel_size, stride, padding)
