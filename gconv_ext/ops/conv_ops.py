"""Fake kernels and autograd for the fused convolution operators and group pooling.

``torch.ops.gconv_ext.{lifting_conv2d, group_conv2d}`` and their explicit backward ops
``*_backward(grad_out, input, weight, ..., output_mask) -> (grad_input, grad_weight, grad_bias)`` are
defined in C++ (``csrc/conv.cpp``). Here:

* fake (meta) kernels, so the ops trace under ``torch.compile``; they check shapes with ``torch._check``
  and take output strides from ATen's own convolution meta functions, so they match the real kernels
  (channels_last included);
* the autograd of the forward op: one call of the backward op (one ``at::convolution_backward`` for
  all requested gradients, the expanded filter recomputed, not saved);
* the autograd of the backward op, written with the two ops themselves, so double (and higher)
  backward works: the backward op is linear in ``grad_out`` and bilinear in (``grad_out``, ``input``)
  and (``grad_out``, ``weight``), and each of its adjoints is again a forward or backward op.

``torch.ops.gconv_ext.group_pool(input, mode)`` and ``group_pool_backward(grad_out, input, mode)``: the
backward is linear in ``grad_out`` and piecewise constant in ``input``; its adjoint is the mean pool
(mean) or the gather at the first argmax (max).

Spatial pooling that keeps the group axis, ``torch.ops.gconv_ext.group_{max,avg}_pool2d(input,
kernel_size, stride, padding)``, with ``group_max_pool2d_backward(grad_out, input, ...)`` (argmax
recomputed, no stored indices), ``group_avg_pool2d_backward(grad_out, input_size, ...)`` and
``group_max_pool2d_gather(values, input, ...)`` (``values`` at each window's argmax of ``input``: the
adjoint of the max backward), so every derivative is again one of these ops.
"""
from __future__ import annotations

import torch

__all__: list[str] = []

_NO_OUTPUT_PADDING = [0, 0]


def _order(rotations: int, reflections: bool) -> int:
    torch._check(rotations >= 1, lambda: f"gconv_ext: rotations must be >= 1, got {rotations}")
    return rotations * (2 if reflections else 1)


def _check_shapes(lifting: bool, input, weight, rotations, reflections, stride, padding, dilation) -> int:
    n = _order(rotations, reflections)
    dim = 4 if lifting else 5
    torch._check(input.dim() == dim, lambda: f"gconv_ext: input must be {dim}-D, got {input.dim()}-D")
    torch._check(weight.dim() == dim, lambda: f"gconv_ext: weight must be {dim}-D, got {weight.dim()}-D")
    torch._check(weight.shape[-1] == weight.shape[-2], lambda: "gconv_ext: weight must have a square kernel")
    torch._check(input.shape[1] == weight.shape[1],
                 lambda: f"gconv_ext: input has {input.shape[1]} channels but weight expects {weight.shape[1]}")
    if not lifting:
        torch._check(input.shape[2] == n, lambda: f"gconv_ext: input.shape[2] must be |G| = {n}")
        torch._check(weight.shape[2] == n, lambda: f"gconv_ext: weight.shape[2] must be |G| = {n}")
    torch._check(input.dtype == weight.dtype, lambda: "gconv_ext: input and weight must have the same dtype")
    torch._check(len(stride) == 2 and len(padding) == 2 and len(dilation) == 2,
                 lambda: "gconv_ext: stride, padding and dilation must have 2 elements")
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
    n = _check_shapes(lifting, input, weight, rotations, reflections, stride, padding, dilation)
    co = weight.shape[0]
    if bias is not None:
        torch._check(bias.dim() == 1 and bias.shape[0] == co, lambda: f"gconv_ext: bias must have shape [{co}]")
    folded = None if bias is None else bias.new_empty((co * n,))
    out = torch.ops.aten.convolution(_planar(lifting, input), _expanded_like(lifting, weight, n), folded,
                                     stride, padding, dilation, False, _NO_OUTPUT_PADDING, 1)
    return out.reshape(out.shape[0], co, n, out.shape[2], out.shape[3])


def _fake_backward(lifting, grad_out, input, weight, rotations, reflections, disk_mask, stride, padding, dilation,
                   output_mask):
    n = _check_shapes(lifting, input, weight, rotations, reflections, stride, padding, dilation)
    co = weight.shape[0]
    torch._check(grad_out.dim() == 5 and grad_out.shape[1] == co and grad_out.shape[2] == n,
                 lambda: f"gconv_ext: grad_out must have shape [B, {co}, {n}, H', W']")
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


def _register_group_pool() -> None:
    ops = torch.ops.gconv_ext

    def check(input, mode):
        torch._check(mode in ("max", "mean"), lambda: f"gconv_ext: mode must be 'max' or 'mean', got {mode!r}")
        torch._check(input.dim() == 5, lambda: f"gconv_ext: input must be 5-D, got {input.dim()}-D")

    @torch.library.register_fake("gconv_ext::group_pool")
    def _(input, mode):
        check(input, mode)
        return input.new_empty((input.shape[0], input.shape[1], input.shape[3], input.shape[4]))

    @torch.library.register_fake("gconv_ext::group_pool_backward")
    def _(grad_out, input, mode):
        check(input, mode)
        torch._check(grad_out.shape == (input.shape[0], input.shape[1], input.shape[3], input.shape[4]),
                     lambda: "gconv_ext: grad_out must have shape [B, C, H, W] of input")
        return input.new_empty(input.shape)

    def setup_pool(ctx, inputs, output):
        input, mode = inputs
        ctx.mode = mode
        ctx.save_for_backward(input)

    def backward_pool(ctx, grad):
        (input,) = ctx.saved_tensors
        return ops.group_pool_backward(grad, input, ctx.mode), None

    def setup_pool_backward(ctx, inputs, output):
        grad_out, input, mode = inputs
        ctx.mode = mode
        ctx.save_for_backward(input if mode == "max" else None)

    def backward_pool_backward(ctx, gg):
        # d/d grad_out only: the backward is piecewise constant in input (zero derivative).
        if not ctx.needs_input_grad[0]:
            return None, None, None
        if ctx.mode == "mean":
            return ops.group_pool(gg, "mean"), None, None
        (input,) = ctx.saved_tensors
        first_max = input.argmax(dim=2, keepdim=True)  # first maximal element, as in the kernel
        return gg.gather(2, first_max).squeeze(2), None, None

    torch.library.register_autograd("gconv_ext::group_pool", backward_pool, setup_context=setup_pool)
    torch.library.register_autograd("gconv_ext::group_pool_backward", backward_pool_backward,
                                    setup_context=setup_pool_backward)


def _register_spatial_pool() -> None:
    ops = torch.ops.gconv_ext

    def out_shape(input_shape, kernel_size, stride, padding):
        shape = list(input_shape)
        torch._check(len(shape) in (4, 5), lambda: f"gconv_ext: input must be 4-D or 5-D, got {len(shape)}-D")
        torch._check(len(kernel_size) == 2 and len(stride) == 2 and len(padding) == 2,
                     lambda: "gconv_ext: kernel_size, stride and padding must have 2 elements")
        torch._check(min(kernel_size) >= 1 and min(stride) >= 1 and min(padding) >= 0,
                     lambda: "gconv_ext: kernel_size and stride must be >= 1, padding >= 0")
        for d in range(2):
            size, k, s, p = shape[-2 + d], kernel_size[d], stride[d], padding[d]
            torch._check(2 * p <= k, lambda: "gconv_ext: padding must be at most half the kernel size")
            torch._check(size >= 1 and size + 2 * p >= k,
                         lambda: f"gconv_ext: input spatial size {size} is too small for kernel {k}, padding {p}")
            shape[-2 + d] = (size + 2 * p - k) // s + 1
        return shape

    @torch.library.register_fake("gconv_ext::group_max_pool2d")
    def _(input, kernel_size, stride, padding):
        return input.new_empty(out_shape(input.shape, kernel_size, stride, padding))

    @torch.library.register_fake("gconv_ext::group_avg_pool2d")
    def _(input, kernel_size, stride, padding):
        return input.new_empty(out_shape(input.shape, kernel_size, stride, padding))

    @torch.library.register_fake("gconv_ext::group_max_pool2d_gather")
    def _(values, input, kernel_size, stride, padding):
        torch._check(values.shape == input.shape, lambda: "gconv_ext: values must have the shape of input")
        torch._check(values.dtype == input.dtype, lambda: "gconv_ext: values must have the dtype of input")
        return input.new_empty(out_shape(input.shape, kernel_size, stride, padding))

    @torch.library.register_fake("gconv_ext::group_max_pool2d_backward")
    def _(grad_out, input, kernel_size, stride, padding):
        expected = out_shape(input.shape, kernel_size, stride, padding)
        torch._check(list(grad_out.shape) == expected,
                     lambda: f"gconv_ext: grad_out must have the output shape {expected}, got {list(grad_out.shape)}")
        torch._check(grad_out.dtype == input.dtype, lambda: "gconv_ext: grad_out must have the dtype of input")
        return input.new_empty(input.shape)

    @torch.library.register_fake("gconv_ext::group_avg_pool2d_backward")
    def _(grad_out, input_size, kernel_size, stride, padding):
        expected = out_shape(input_size, kernel_size, stride, padding)
        torch._check(list(grad_out.shape) == expected,
                     lambda: f"gconv_ext: grad_out must have the output shape {expected}, got {list(grad_out.shape)}")
        return grad_out.new_empty(input_size)

    # Autograd. The max backward and the gather are linear in grad_out / values and adjoint to each
    # other; both depend on input only through the argmax (piecewise constant: zero derivative almost
    # everywhere). The avg forward and backward are linear and adjoint to each other.
    def setup_max(ctx, inputs, output):
        input, *ctx.params = inputs
        ctx.save_for_backward(input)

    def backward_max(ctx, grad):
        (input,) = ctx.saved_tensors
        return ops.group_max_pool2d_backward(grad, input, *ctx.params), None, None, None

    def setup_max_linear(ctx, inputs, output):  # max backward (grad_out, input, ..) and gather (values, input, ..)
        _, input, *ctx.params = inputs
        ctx.save_for_backward(input)

    def backward_max_backward(ctx, gg):
        (input,) = ctx.saved_tensors
        g = ops.group_max_pool2d_gather(gg, input, *ctx.params) if ctx.needs_input_grad[0] else None
        return g, None, None, None, None

    def backward_gather(ctx, grad):
        (input,) = ctx.saved_tensors
        g = ops.group_max_pool2d_backward(grad, input, *ctx.params) if ctx.needs_input_grad[0] else None
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

    torch.library.register_autograd("gconv_ext::group_max_pool2d", backward_max, setup_context=setup_max)
    torch.library.register_autograd("gconv_ext::group_max_pool2d_backward", backward_max_backward,
                                    setup_context=setup_max_linear)
    torch.library.register_autograd("gconv_ext::group_max_pool2d_gather", backward_gather,
                                    setup_context=setup_max_linear)
    torch.library.register_autograd("gconv_ext::group_avg_pool2d", backward_avg, setup_context=setup_avg)
    torch.library.register_autograd("gconv_ext::group_avg_pool2d_backward", backward_avg_backward,
                                    setup_context=setup_avg_backward)


def _register() -> None:
    _register_group_pool()
    _register_spatial_pool()
    ops = torch.ops.gconv_ext

    for lifting, fwd, bwd in ((True, ops.lifting_conv2d, ops.lifting_conv2d_backward),
                              (False, ops.group_conv2d, ops.group_conv2d_backward)):
        torch.library.register_fake(fwd._qualified_op_name,
                                    lambda *args, _lifting=lifting: _fake_forward(_lifting, *args))
        torch.library.register_fake(bwd._qualified_op_name,
                                    lambda *args, _lifting=lifting: _fake_backward(_lifting, *args))

        def setup_forward(ctx, inputs, output):
            input, weight, bias, *args = inputs
            ctx.save_for_backward(input, weight)
            ctx.args = args  # rotations, reflections, disk_mask, stride, padding, dilation
            ctx.has_bias = bias is not None

        def backward_of_forward(ctx, grad, _bwd=bwd):
            input, weight = ctx.saved_tensors
            need = ctx.needs_input_grad
            mask = [need[0], need[1], ctx.has_bias and need[2]]
            if not any(mask):
                return (None,) * 9
            grad_input, grad_weight, grad_bias = _bwd(grad, input, weight, *ctx.args, mask)
            return (grad_input, grad_weight, grad_bias) + (None,) * 6

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

        torch.library.register_autograd(fwd._qualified_op_name, backward_of_forward, setup_context=setup_forward)
        torch.library.register_autograd(bwd._qualified_op_name, backward_of_backward, setup_context=setup_backward)
