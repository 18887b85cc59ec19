"""Filter transforms as PyTorch custom operators: lifting and group filters for C_N and D_N.

``torch.ops.gconv_ext.{lift_filter, group_filter}`` and their adjoints ``*_backward`` are defined in C++
(one ``TORCH_LIBRARY`` block, CPU and CUDA kernels over shared per-element code). This module registers
their fake (meta) kernels for ``torch.compile`` and their autograd formulas: the backward of a transform
is its adjoint op, and the backward of the adjoint is the transform, so double backward works.
"""
from __future__ import annotations

import torch

from .. import _extension
from .._args import fake_floating, fake_group_order
from ..groups import Group, group_from_name
from . import reference

__all__ = ["lift_filter", "group_filter"]


def _check_filter(t: torch.Tensor, name: str, dim: int, layout: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"gconv_ext: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != dim:
        raise ValueError(f"gconv_ext: {name} must be a {dim}-D tensor {layout}, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise TypeError(f"gconv_ext: {name} must be a floating-point tensor, got {t.dtype}")
    if t.shape[-1] != t.shape[-2]:
        raise ValueError(f"gconv_ext: {name} must have a square kernel, got {t.shape[-2]}x{t.shape[-1]}")
    if t.shape[-1] < 1:
        raise ValueError(f"gconv_ext: {name} kernel size must be >= 1, got {t.shape[-1]}")


def _check_order(t: torch.Tensor, name: str, dim: int, group: Group) -> None:
    if t.shape[dim] != group.order:
        raise ValueError(f"gconv_ext: {name}.shape[{dim}] must be the group order |G| = {group.order} for "
                         f"{group.name}, got {t.shape[dim]}")


def lift_filter(weight: torch.Tensor, group: Group | str, disk_mask: bool = False) -> torch.Tensor:
    """Lift a planar filter bank to the group: ``[C_out, C_in, k, k] -> [C_out, |G|, C_in, k, k]``.

    Slice ``g`` is ``W_g(p) = W(g^-1 p)`` (bilinear, zero outside; exact for multiples of 90 degrees and
    reflections: for C4, slice r equals ``torch.rot90(weight, r, dims=(-2, -1))``). ``disk_mask`` zeroes
    the taps outside the disk of radius k/2. Differentiable (twice) with respect to ``weight``.
    """
    group = group_from_name(group)
    _check_filter(weight, "weight", 4, "[C_out, C_in, k, k]")
    op = _extension.compiled_op("lift_filter")
    if op is None:
        return reference.lift_filter(weight, group, disk_mask)
    return op(weight, group.rotations, group.reflections, bool(disk_mask))


def group_filter(weight: torch.Tensor, group: Group | str, disk_mask: bool = False) -> torch.Tensor:
    """Expand a group filter bank: ``[C_out, C_in, |G|, k, k] -> [C_out, |G|, C_in, |G|, k, k]``.

    ``out[:, g, :, h] = (W[:, :, g^-1 h])_g``: each slice transformed spatially by ``g`` and the input
    group axis permuted exactly by the Cayley table (never interpolated).
    """
    group = group_from_name(group)
    _check_filter(weight, "weight", 5, "[C_out, C_in, |G|, k, k]")
    _check_order(weight, "weight", 2, group)
    op = _extension.compiled_op("group_filter")
    if op is None:
        return reference.group_filter(weight, group, disk_mask)
    return op(weight, group.rotations, group.reflections, bool(disk_mask))


# -- registration (fake kernels and autograd), only when the compiled ops exist --------------------

def _register() -> None:
    ops = torch.ops.gconv_ext

    order = fake_group_order

    def check(t: torch.Tensor, name: str, dim: int) -> None:  # csrc/filter_transform.cpp check_filter
        torch._check(t.dim() == dim, lambda: f"gconv_ext: {name} must be {dim}-D, got {t.dim()}-D")
        fake_floating(t, name)
        torch._check(t.shape[-1] == t.shape[-2] and t.shape[-1] >= 1,
                     lambda: f"gconv_ext: {name} must have a square kernel of size >= 1, got {list(t.shape[-2:])}")

    @torch.library.register_fake("gconv_ext::lift_filter")
    def _(weight, rotations, reflections, disk_mask):
        check(weight, "weight", 4)
        co, ci, k, _ = weight.shape
        return weight.new_empty((co, order(rotations, reflections), ci, k, k))

    @torch.library.register_fake("gconv_ext::lift_filter_backward")
    def _(grad, rotations, reflections, disk_mask):
        check(grad, "grad", 5)
        torch._check(grad.shape[1] == order(rotations, reflections), lambda: "gconv_ext: grad.shape[1] must be |G|")
        co, _, ci, k, _ = grad.shape
        return grad.new_empty((co, ci, k, k))

    @torch.library.register_fake("gconv_ext::group_filter")
    def _(weight, rotations, reflections, disk_mask):
        check(weight, "weight", 5)
        n = order(rotations, reflections)
        torch._check(weight.shape[2] == n, lambda: "gconv_ext: weight.shape[2] must be |G|")
        co, ci, _, k, _ = weight.shape
        return weight.new_empty((co, n, ci, n, k, k))

    @torch.library.register_fake("gconv_ext::group_filter_backward")
    def _(grad, rotations, reflections, disk_mask):
        check(grad, "grad", 6)
        n = order(rotations, reflections)
        torch._check(grad.shape[1] == n and grad.shape[3] == n, lambda: "gconv_ext: grad.shape[1] and [3] must be |G|")
        co, _, ci, _, k, _ = grad.shape
        return grad.new_empty((co, ci, n, k, k))

    def setup_context(ctx, inputs, output):
        ctx.group_args = inputs[1:]

    # Each transform is linear; its adjoint is the other op of the pair, in both directions.
    for fwd, bwd in ((ops.lift_filter, ops.lift_filter_backward), (ops.group_filter, ops.group_filter_backward)):
        def backward(ctx, grad, _adjoint=bwd):
            return _adjoint(grad, *ctx.group_args), None, None, None

        def backward_of_adjoint(ctx, grad, _transform=fwd):
            return _transform(grad, *ctx.group_args), None, None, None

        torch.library.register_autograd(fwd._qualified_op_name, backward, setup_context=setup_context)
        torch.library.register_autograd(bwd._qualified_op_name, backward_of_adjoint, setup_context=setup_context)


if _extension.available():
    _register()
