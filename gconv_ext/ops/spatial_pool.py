"""Spatial pooling that keeps the group axis (functional API).

* ``group_max_pool2d(x, kernel_size, stride=None, padding=0)``
* ``group_avg_pool2d(x, kernel_size, stride=None, padding=0)``

``x[B, C, |G|, H, W] -> [B, C, |G|, H', W']`` with ``H' = (H + 2p - k) // s + 1`` (also ``[B, C, H, W]``:
every ``[H, W]`` plane is pooled on its own). Pooling each group slice alike commutes with rotating the
input when the size is exact (see :func:`gconv_ext.nn.check_exact`). Custom C++/CUDA operators; the max
gradient goes to the first maximal element of each window in row-major order (deterministic).

The C++ ops ``torch.ops.gconv_ext.group_{max,avg}_pool2d(input, kernel_size, stride, padding)``, with
``group_max_pool2d_with_indices(input, ...) -> (out, indices)`` (``indices``: the argmax tap ``i * k_w + j`` of
every window, uint8 for windows of at most 256 taps, int32 beyond: what a training forward stores, so the
backward never searches a window again), ``group_max_pool2d_backward(grad_out, indices, input_size, ...)``,
``group_avg_pool2d_backward(grad_out, input_size, ...)`` and ``group_max_pool2d_gather(values, indices, ...)``
(``values`` at each window's stored tap: the adjoint of the max backward), get their fake kernels and autograd
at the bottom of this file, so every derivative is again one of these ops. :func:`group_max_pool2d` calls the
``_with_indices`` op when autograd will need the taps, the value-only op otherwise (inference).
"""
from __future__ import annotations

from typing import Sequence

import torch

from .. import _extension
from .._args import MAX_EXTENT, SUPPORTED_DTYPES, fake_floating, fake_pair, int_pair
from . import reference

__all__ = ["group_max_pool2d", "group_avg_pool2d"]

IntOr2 = int | Sequence[int]


def _pool_params(kernel_size, stride, padding):
    """The pairs the op takes (``stride`` defaults to ``kernel_size``), each validated and named."""
    k = int_pair("gconv_ext", "kernel_size", kernel_size, 1)
    s = k if stride is None else int_pair("gconv_ext", "stride", stride, 1)
    return list(k), list(s), list(int_pair("gconv_ext", "padding", padding, 0))


def _check_pool_input(x, k, p) -> None:
    """The compiled op's input checks (csrc/spatial_pool.cpp ``check_pool_map`` and ``pool_geometry``, same
    wording), for the reference fallback only: with the compiled op they run once, in C++ (or the fake kernel)."""
    if x.dim() not in (4, 5):
        raise ValueError(f"gconv_ext: input must be a 5-D group map [B, C, |G|, H, W] or a 4-D tensor [B, C, H, W], "
                         f"got shape {list(x.shape)}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"gconv_ext: input must be a floating-point tensor (float32, float64, float16 or bfloat16), "
                        f"got {x.dtype}")
    if any(2 * pi > ki for pi, ki in zip(p, k)):
        raise ValueError(f"gconv_ext: padding must be at most half the kernel size, got padding {p} for "
                         f"kernel_size {k}")
    h, w = x.shape[-2], x.shape[-1]
    if h < 1 or w < 1:
        raise ValueError(f"gconv_ext: input spatial size must be non-empty, got {h}x{w}")
    if h + 2 * p[0] < k[0] or w + 2 * p[1] < k[1]:
        raise ValueError(f"gconv_ext: input spatial size {h}x{w} is too small for kernel_size {k} with padding {p}")


def _pool(name: str, x, kernel_size, stride, padding) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"gconv_ext: input must be a torch.Tensor, got {type(x).__name__}")
    k, s, p = _pool_params(kernel_size, stride, padding)
    op = _extension.compiled_op(name)
    if op is None:
        _check_pool_input(x, k, p)
        return getattr(reference, name)(x, k, s, p)
    if name == "group_max_pool2d" and x.requires_grad and torch.is_grad_enabled():
        return torch.ops.gconv_ext.group_max_pool2d_with_indices(x, k, s, p)[0]  # the backward reads the taps
    return op(x, k, s, p)


def group_max_pool2d(x: torch.Tensor, kernel_size: IntOr2, stride: IntOr2 | None = None,
                     padding: IntOr2 = 0) -> torch.Tensor:
    """Spatial max pooling of every group slice: ``[B, C, |G|, H, W] -> [B, C, |G|, H', W']``.

    ``stride`` defaults to ``kernel_size``; ``padding`` (at most half the kernel) counts as -inf. NaNs
    propagate. The gradient goes to the first maximal element of each window (row-major order), whose tap
    the forward stores when autograd will need it (uint8 per output for windows up to 16x16); differentiable
    twice.
    """
    return _pool("group_max_pool2d", x, kernel_size, stride, padding)


def group_avg_pool2d(x: torch.Tensor, kernel_size: IntOr2, stride: IntOr2 | None = None,
                     padding: IntOr2 = 0) -> torch.Tensor:
    """Spatial average pooling of every group slice, like :func:`group_max_pool2d`; zero padding is
    counted (``count_include_pad=True``: every window divides by ``k_h * k_w``)."""
    return _pool("group_avg_pool2d", x, kernel_size, stride, padding)


# -- the fake kernels' shape and index checks (also used by ops/norm_pool.py) --------------------------------

def out_shape(input_shape, kernel_size, stride, padding):  # csrc/spatial_pool.cpp pool_geometry()
    shape = list(input_shape)
    torch._check(len(shape) in (4, 5), lambda: f"gconv_ext: input must be 4-D or 5-D, got {len(shape)}-D")
    fake_pair(kernel_size, "kernel_size", 1)
    fake_pair(stride, "stride", 1)
    fake_pair(padding, "padding", 0)
    padded = 1
    for d in range(2):
        size, k, s, p = shape[-2 + d], kernel_size[d], stride[d], padding[d]
        torch._check(2 * p <= k, lambda: "gconv_ext: padding must be at most half the kernel size")
        torch._check(size >= 1 and size + 2 * p >= k,
                     lambda: f"gconv_ext: input spatial size {size} is too small for kernel {k}, padding {p}")
        padded *= size + 2 * p
        shape[-2 + d] = (size + 2 * p - k) // s + 1
    torch._check(padded <= MAX_EXTENT, lambda: "gconv_ext: the padded input plane must have at most 2^31 "
                                               "elements; use a smaller kernel_size and padding")
    return shape


def index_dtype(kernel_size):  # csrc/spatial_pool.cpp pool_index_dtype()
    return torch.uint8 if kernel_size[0] * kernel_size[1] <= 256 else torch.int32


def check_indices(indices, expected, kernel_size, device):  # csrc/spatial_pool.cpp check_pool_indices()
    torch._check(list(indices.shape) == list(expected),
                 lambda: f"gconv_ext: indices must have the output shape {list(expected)}, got "
                         f"{list(indices.shape)}")
    want = index_dtype(kernel_size)
    if indices.dtype != want:
        raise TypeError(f"gconv_ext: indices must be the {want} argmax taps of group_max_pool2d_with_indices "
                        f"for a {kernel_size[0]}x{kernel_size[1]} window, got {indices.dtype}")
    if indices.device != device:
        raise RuntimeError(f"gconv_ext: indices must be on the same device as the other tensors ({device}), "
                           f"got {indices.device}")


# -- registration (fake kernels and autograd), only when the compiled ops exist --------------------

def _register() -> None:
    ops = torch.ops.gconv_ext

    def check_map(t, name):
        fake_floating(t, name)

    @torch.library.register_fake("gconv_ext::group_max_pool2d")
    def _(input, kernel_size, stride, padding):
        check_map(input, "input")
        return input.new_empty(out_shape(input.shape, kernel_size, stride, padding))

    @torch.library.register_fake("gconv_ext::group_avg_pool2d")
    def _(input, kernel_size, stride, padding):
        check_map(input, "input")
        return input.new_empty(out_shape(input.shape, kernel_size, stride, padding))

    @torch.library.register_fake("gconv_ext::group_max_pool2d_with_indices")
    def _(input, kernel_size, stride, padding):
        check_map(input, "input")
        shape = out_shape(input.shape, kernel_size, stride, padding)
        return input.new_empty(shape), input.new_empty(shape, dtype=index_dtype(kernel_size))

    @torch.library.register_fake("gconv_ext::group_max_pool2d_gather")
    def _(values, indices, kernel_size, stride, padding):
        check_map(values, "values")
        shape = out_shape(values.shape, kernel_size, stride, padding)
        check_indices(indices, shape, kernel_size, values.device)
        return values.new_empty(shape)

    @torch.library.register_fake("gconv_ext::group_max_pool2d_backward")
    def _(grad_out, indices, input_size, kernel_size, stride, padding):
        check_map(grad_out, "grad_out")
        expected = out_shape(input_size, kernel_size, stride, padding)
        torch._check(list(grad_out.shape) == expected,
                     lambda: f"gconv_ext: grad_out must have the output shape {expected}, got {list(grad_out.shape)}")
        check_indices(indices, expected, kernel_size, grad_out.device)
        return grad_out.new_empty(input_size)

    @torch.library.register_fake("gconv_ext::group_avg_pool2d_backward")
    def _(grad_out, input_size, kernel_size, stride, padding):
        check_map(grad_out, "grad_out")
        expected = out_shape(input_size, kernel_size, stride, padding)
        torch._check(list(grad_out.shape) == expected,
                     lambda: f"gconv_ext: grad_out must have the output shape {expected}, got {list(grad_out.shape)}")
        return grad_out.new_empty(input_size)

    # Autograd. The max backward and the gather are linear in grad_out / values and adjoint to each
    # other; both depend on input only through the argmax taps (piecewise constant: zero derivative almost
    # everywhere), which the forward stores. The avg forward and backward are linear and adjoint to each other.
    def setup_max_indices(ctx, inputs, output):
        input, *ctx.params = inputs
        ctx.input_size = list(input.shape)
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(output[1])

    def backward_max_indices(ctx, grad, _grad_indices):
        (indices,) = ctx.saved_tensors
        return ops.group_max_pool2d_backward(grad, indices, ctx.input_size, *ctx.params), None, None, None

    def setup_max(ctx, inputs, output):  # the value-only op (inference): its backward finds the taps once
        input, *ctx.params = inputs
        ctx.save_for_backward(input)

    def backward_max(ctx, grad):
        (input,) = ctx.saved_tensors
        _, indices = ops.group_max_pool2d_with_indices(input.detach(), *ctx.params)
        return ops.group_max_pool2d_backward(grad, indices, list(input.shape), *ctx.params), None, None, None

    def setup_max_backward(ctx, inputs, output):  # (grad_out, indices, input_size, k, s, p)
        _, indices, _, *ctx.params = inputs
        ctx.save_for_backward(indices)

    def backward_max_backward(ctx, gg):
        (indices,) = ctx.saved_tensors
        g = ops.group_max_pool2d_gather(gg, indices, *ctx.params) if ctx.needs_input_grad[0] else None
        return g, None, None, None, None, None

    def setup_gather(ctx, inputs, output):  # (values, indices, k, s, p)
        values, indices, *ctx.params = inputs
        ctx.input_size = list(values.shape)
        ctx.save_for_backward(indices)

    def backward_gather(ctx, grad):
        (indices,) = ctx.saved_tensors
        g = (ops.group_max_pool2d_backward(grad, indices, ctx.input_size, *ctx.params)
             if ctx.needs_input_grad[0] else None)
        return g, None, None, None, None

    def setup_avg(ctx, inputs, output):
        input, *ctx.params = inputs
        ctx.input_size = list(input.shape)

    def backward_avg(ctx, grad):
        return ops.group_avg_pool2d_backward(grad, ctx.input_size, *ctx.params), None, None, None

    def setup_avg_backward(ctx, inputs, output):
        _, _, *ctx.params = inputs

    def backward_avg_backward(ctx, gg):
        return ops.group_avg_pool2d(gg, *ctx.params), None, None, None, None

    torch.library.register_autograd("gconv_ext::group_max_pool2d_with_indices", backward_max_indices,
                                    setup_context=setup_max_indices)
    torch.library.register_autograd("gconv_ext::group_max_pool2d", backward_max, setup_context=setup_max)
    torch.library.register_autograd("gconv_ext::group_max_pool2d_backward", backward_max_backward,
                                    setup_context=setup_max_backward)
    torch.library.register_autograd("gconv_ext::group_max_pool2d_gather", backward_gather,
                                    setup_context=setup_gather)
    torch.library.register_autograd("gconv_ext::group_avg_pool2d", backward_avg, setup_context=setup_avg)
    torch.library.register_autograd("gconv_ext::group_avg_pool2d_backward", backward_avg_backward,
                                    setup_context=setup_avg_backward)


if _extension.available():
    _register()
