"""Lifting and group convolutions (functional API).

Layout of group feature maps: ``(B, C, |G|, H, W)``.

* ``lifting_conv2d(x[B, C_in, H, W], weight[C_out, C_in, k, k]) -> [B, C_out, |G|, H', W']``
* ``group_conv2d(x[B, C_in, |G|, H, W], weight[C_out, C_in, |G|, k, k]) -> [B, C_out, |G|, H', W']``

The output at group slice ``g`` is the correlation with the filter transformed by ``g``; rotating
(reflecting) the input by ``g`` rotates the output and moves group slice ``h`` to ``g h``.

Memory: for the backward, a training forward saves the input and the weight, and also the expanded filter
(``[C_out * |G|, C_in (* |G|), k, k]``) when the input needs a gradient and that filter is no larger than the
input or than 2^21 elements (8 MB in float32); the backward then does not expand the weight again. A larger
filter is expanded again in the backward instead of kept.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .. import _extension
from .._args import SUPPORTED_DTYPES, fake_floating, fake_group_order, fake_pair, fake_same_device, int_pair
from ..groups import Group, group_from_name
from . import reference

__all__ = ["lifting_conv2d", "group_conv2d"]

IntOr2 = int | Sequence[int]


def _conv_params(k: int, stride: IntOr2, padding: IntOr2 | str, dilation: IntOr2):
    stride, dilation = int_pair("gconv_ext", "stride", stride, 1), int_pair("gconv_ext", "dilation", dilation, 1)
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
    return stride, int_pair("gconv_ext", "padding", padding, 0), dilation


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
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"gconv_ext: input must be a floating-point tensor (float32, float64, float16 or bfloat16), "
                        f"got {x.dtype}")
    # Under torch.autocast the op casts input, weight and bias itself (csrc/autocast.cpp).
    autocast = x.device.type in ("cpu", "cuda") and torch.is_autocast_enabled(x.device.type)
    if x.dtype != weight.dtype and not autocast:
        raise TypeError(f"gconv_ext: input and weight must have the same dtype, got {x.dtype} and {weight.dtype}")
    if x.device != weight.device:
        raise RuntimeError(f"gconv_ext: input and weight must be on the same device, got {x.device} and {weight.device}")
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
            raise RuntimeError(f"gconv_ext: bias must be on the device of weight ({weight.device}), got {bias.device}")


def _check_spatial(x: torch.Tensor, k: int, stride, padding, dilation) -> None:
    """The C++ check that the output is non-empty (csrc/conv.cpp ``check_conv``), for paths that bypass the op
    (the modules' eval cache): ``H + 2p - d(k-1) - 1 >= 0`` along both axes."""
    for size, p, d in zip(x.shape[-2:], padding, dilation):
        if size + 2 * p - d * (k - 1) - 1 < 0:
            raise ValueError(f"gconv_ext: input spatial size {size} is too small for kernel {k} with padding {p} "
                             f"and dilation {d}")


def _conv(lifting: bool, x, weight, bias, group, stride, padding, dilation, disk_mask) -> torch.Tensor:
    # Checked once per layer: the compiled op's own checks (csrc/conv.cpp ``check_conv``; the fake kernel's
    # under torch.compile) cover the tensors, with the same messages; only the reference fallback, which has
    # none of its own, runs the Python twin. Here: what the op cannot see (the group's name, 'same'/'valid'
    # padding, the argument kinds).
    group = group_from_name(group)
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"gconv_ext: weight must be a torch.Tensor, got {type(weight).__name__}")
    stride, padding, dilation = _conv_params(weight.shape[-1], stride, padding, dilation)
    op = _extension.compiled_op("lifting_conv2d" if lifting else "group_conv2d")
    if op is None:
        _check_conv(lifting, x, weight, bias, group)
        ref = reference.lifting_conv2d if lifting else reference.group_conv2d
        return ref(x, weight, bias, group, stride, padding, dilation, disk_mask)
    for t, name in ((x, "input"), (bias, "bias")):
        if not isinstance(t, torch.Tensor) and (t is not None or name == "input"):
            raise TypeError(f"gconv_ext: {name} must be a torch.Tensor{' or None' if name == 'bias' else ''}, "
                            f"got {type(t).__name__}")
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

# -- registration, only when the compiled ops exist --------------------------------------------------
# ``torch.ops.gconv_ext.{lifting_conv2d, group_conv2d}`` and their explicit backward ops
# ``*_backward(grad_out, input, weight, ..., output_mask) -> (grad_input, grad_weight, grad_bias)`` are
# defined in C++ (``csrc/conv.cpp``). Registered here:
#
# * fake (meta) kernels, so the ops trace under ``torch.compile``; they check shapes with ``torch._check``
#   and take output strides from ATen's own convolution meta functions, so they match the real kernels
#   (channels_last included);
# * (the autograd of the forward op is C++, csrc/conv_autograd.cpp: one call of the backward op, one
#   ``at::convolution_backward`` for all requested gradients, the expanded filter recomputed, not saved);
# * the autograd of the backward op, written with the two ops themselves, so double (and higher) backward
#   works: the backward op is linear in ``grad_out`` and bilinear in (``grad_out``, ``input``) and
#   (``grad_out``, ``weight``), and each of its adjoints is again a forward or backward op.

_NO_OUTPUT_PADDING = [0, 0]


def _check_shapes(lifting: bool, input, weight, rotations, reflections, stride, padding, dilation) -> int:
    """The checks of csrc/conv.cpp ``check_conv``, for the fake kernels (same conditions, same wording)."""
    n = fake_group_order(rotations, reflections)
    dim = 4 if lifting else 5
    x_layout = "[B, C_in, H, W]" if lifting else "[B, C_in, |G|, H, W]"
    w_layout = "[C_out, C_in, k, k]" if lifting else "[C_out, C_in, |G|, k, k]"
    torch._check(input.dim() == dim,
                 lambda: f"gconv_ext: input must be a {dim}-D tensor {x_layout}, got shape {list(input.shape)}")
    torch._check(weight.dim() == dim,
                 lambda: f"gconv_ext: weight must be a {dim}-D tensor {w_layout}, got shape {list(weight.shape)}")
    fake_floating(input, "input")
    torch._check(weight.shape[-1] == weight.shape[-2] and weight.shape[-1] >= 1,
                 lambda: f"gconv_ext: weight must have a square kernel of size >= 1, got {list(weight.shape[-2:])}")
    torch._check(input.shape[1] == weight.shape[1],
                 lambda: f"gconv_ext: input has {input.shape[1]} channels but weight expects C_in = {weight.shape[1]}")
    if not lifting:
        name = f"{'D' if reflections else 'C'}{rotations}"
        for t, what in ((input, "input"), (weight, "weight")):
            torch._check(t.shape[2] == n, lambda: f"gconv_ext: {what}.shape[2] must be the group order |G| = {n} "
                                                  f"for {name}, got {t.shape[2]}")
    torch._check(input.dtype == weight.dtype, lambda: f"gconv_ext: input and weight must have the same dtype, got "
                                                      f"{input.dtype} and {weight.dtype}")
    fake_pair(stride, "stride", 1)
    fake_pair(padding, "padding", 0)
    fake_pair(dilation, "dilation", 1)
    k = weight.shape[-1]
    for i in range(2):
        size = input.shape[-2 + i]
        # H' = (H + 2p - d(k-1) - 1) // s + 1
        torch._check(size + 2 * padding[i] - dilation[i] * (k - 1) - 1 >= 0,
                     lambda: f"gconv_ext: input spatial size {size} is too small for kernel {k} with "
                             f"padding {padding[i]} and dilation {dilation[i]}")
    return n


def _planar(lifting: bool, x: torch.Tensor) -> torch.Tensor:
    return x if lifting else x.reshape(x.shape[0], x.shape[1] * x.shape[2], x.shape[3], x.shape[4])


def _expanded_like(lifting: bool, weight: torch.Tensor, n: int) -> torch.Tensor:
    co, ci, k = weight.shape[0], weight.shape[1], weight.shape[-1]
    return weight.new_empty((co * n, ci if lifting else ci * n, k, k))


def _fake_forward(lifting, input, weight, bias, rotations, reflections, disk_mask, stride, padding, dilation):
    fake_same_device(input=input, weight=weight, bias=bias)
    n = _check_shapes(lifting, input, weight, rotations, reflections, stride, padding, dilation)
    co = weight.shape[0]
    if bias is not None:
        torch._check(bias.dim() == 1 and bias.shape[0] == co, lambda: f"gconv_ext: bias must have shape [{co}]")
        torch._check(bias.dtype == weight.dtype, lambda: f"gconv_ext: bias must have the dtype of weight "
                                                         f"({weight.dtype}), got {bias.dtype}")
    folded = None if bias is None else bias.new_empty((co * n,))
    out = torch.ops.aten.convolution(_planar(lifting, input), _expanded_like(lifting, weight, n), folded,
                                     stride, padding, dilation, False, _NO_OUTPUT_PADDING, 1)
    return out.reshape(out.shape[0], co, n, out.shape[2], out.shape[3])


def _fake_backward(lifting, grad_out, input, weight, rotations, reflections, disk_mask, stride, padding, dilation,
                   output_mask):
    fake_same_device(grad_out=grad_out, input=input, weight=weight)
    n = _check_shapes(lifting, input, weight, rotations, reflections, stride, padding, dilation)
    co, k = weight.shape[0], weight.shape[-1]
    oh, ow = ((input.shape[-2 + i] + 2 * padding[i] - dilation[i] * (k - 1) - 1) // stride[i] + 1 for i in range(2))
    torch._check(grad_out.dim() == 5 and tuple(grad_out.shape) == (input.shape[0], co, n, oh, ow),
                 lambda: f"gconv_ext: grad_out must have the output shape [B, C_out, |G|, H', W'] = "
                         f"{[input.shape[0], co, n, oh, ow]}, got {list(grad_out.shape)}")
    torch._check(grad_out.dtype == input.dtype,
                 lambda: f"gconv_ext: grad_out must have the dtype of input ({input.dtype}), got {grad_out.dtype}")
    grad_input = None
    if output_mask[0]:
        go = grad_out.reshape(grad_out.shape[0], co * n, grad_out.shape[3], grad_out.shape[4])
        grad_input, _, _ = torch.ops.aten.convolution_backward(
            go, _planar(lifting, input), _expanded_like(lifting, weight, n), None, stride, padding, dilation, False,
            _NO_OUTPUT_PADDING, 1, [True, False, False])
        grad_input = grad_input.reshape(input.shape)
    grad_weight = weight.new_empty(weight.shape) if output_mask[1] else None
    grad_bias = weight.new_empty((co,)) if output_mask[2] else None
    return grad_input, grad_weight, grad_bias


def _register() -> None:
    ops = torch.ops.gconv_ext

    for lifting, fwd, bwd in ((True, ops.lifting_conv2d, ops.lifting_conv2d_backward),
                              (False, ops.group_conv2d, ops.group_conv2d_backward)):
        torch.library.register_fake(fwd._qualified_op_name,
                                    lambda *args, _lifting=lifting: _fake_forward(_lifting, *args))
        torch.library.register_fake(bwd._qualified_op_name,
                                    lambda *args, _lifting=lifting: _fake_backward(_lifting, *args))

        def setup_backward(ctx, inputs, output):
            grad_out, input, weight, *args = inputs
            ctx.save_for_backward(grad_out, input, weight)
            ctx.args = args[:-1]  # without output_mask

        def backward_of_backward(ctx, gg_input, gg_weight, gg_bias, _fwd=fwd, _bwd=bwd):
            # Outputs: grad_input = D_x^T go (linear in go, weight), grad_weight = T^* D_w^T(go, x)
            # (bilinear in go, input), grad_bias = sum(go). Their adjoints are the ops themselves.
            grad_out, input, weight = ctx.saved_tensors
            need = ctx.needs_input_grad
            g_grad_out = g_input = g_weight = None
            if need[0]:
                terms = []
                if gg_input is not None:
                    terms.append(_fwd(gg_input, weight, None, *ctx.args))
                if gg_weight is not None:
                    terms.append(_fwd(input, gg_weight, gg_bias, *ctx.args))
                elif gg_bias is not None:
                    terms.append(gg_bias.view(1, -1, 1, 1, 1).expand(grad_out.shape))
                g_grad_out = sum(terms[1:], terms[0]) if terms else None
            if need[1] and gg_weight is not None:
                g_input = _bwd(grad_out, input, gg_weight, *ctx.args, [True, False, False])[0]
            if need[2] and gg_input is not None:
                g_weight = _bwd(grad_out, gg_input, weight, *ctx.args, [False, True, False])[1]
            return (g_grad_out, g_input, g_weight) + (None,) * 7

        torch.library.register_autograd(bwd._qualified_op_name, backward_of_backward, setup_context=setup_backward)


if _extension.available():
    _register()
