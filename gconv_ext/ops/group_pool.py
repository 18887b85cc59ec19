"""Group pooling: the invariant projection over the group axis (functional API).

* ``group_pool(x[B, C, |G|, H, W], mode) -> [B, C, H, W]`` (max or mean over the group axis)

``torch.ops.gconv_ext.group_pool(input, mode)`` and ``group_pool_backward(grad_out, input, mode)`` are
defined in C++ (CPU and CUDA kernels over shared per-element code). Registered here: their fake kernels
and autograd. The backward is linear in ``grad_out`` and piecewise constant in ``input``; its adjoint is
the mean pool (mean) or the gather at the first argmax (max), so double backward works.
"""
from __future__ import annotations

import torch

from .. import _extension
from .._args import SUPPORTED_DTYPES, fake_floating, fake_same_device
from . import reference

__all__ = ["group_pool"]


def group_pool(x: torch.Tensor, mode: str = "max") -> torch.Tensor:
    """Invariant projection over the group axis: ``[B, C, |G|, H, W] -> [B, C, H, W]``.

    ``mode='max'`` (the gradient goes to the first maximal element of each group fibre: deterministic)
    or ``'mean'``. A custom C++/CUDA operator, differentiable twice.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"gconv_ext: input must be a torch.Tensor, got {type(x).__name__}")
    if mode not in ("max", "mean"):  # (also catches a non-string mode, which the op's schema would refuse)
        raise ValueError(f"gconv_ext: mode must be 'max' or 'mean', got {mode!r}")
    op = _extension.compiled_op("group_pool")
    if op is not None:  # the tensor checks run once, in C++ (csrc/group_pool.cpp) or the fake kernel
        return op(x, mode)
    # the reference fallback: the compiled op's checks, same wording
    if x.dim() != 5:
        raise ValueError(f"gconv_ext: input must be a 5-D tensor [B, C, |G|, H, W], got shape {list(x.shape)}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"gconv_ext: input must be a floating-point tensor (float32, float64, float16 or bfloat16), "
                        f"got {x.dtype}")
    if x.shape[2] < 1:
        raise ValueError("gconv_ext: the group axis (input.shape[2]) must be non-empty")
    return reference.group_pool(x, mode)


# -- registration (fake kernels and autograd), only when the compiled ops exist --------------------

def _register() -> None:
    ops = torch.ops.gconv_ext

    def check(input, mode):  # csrc/group_pool.cpp
        torch._check(mode in ("max", "mean"), lambda: f"gconv_ext: mode must be 'max' or 'mean', got {mode!r}")
        torch._check(input.dim() == 5, lambda: f"gconv_ext: input must be 5-D, got {input.dim()}-D")
        fake_floating(input, "input")
        torch._check(input.shape[2] >= 1, lambda: "gconv_ext: the group axis (input.shape[2]) must be non-empty")

    @torch.library.register_fake("gconv_ext::group_pool")
    def _(input, mode):
        check(input, mode)
        return input.new_empty((input.shape[0], input.shape[1], input.shape[3], input.shape[4]))

    @torch.library.register_fake("gconv_ext::group_pool_backward")
    def _(grad_out, input, mode):
        fake_same_device(grad_out=grad_out, input=input)
        check(input, mode)
        torch._check(grad_out.shape == (input.shape[0], input.shape[1], input.shape[3], input.shape[4]),
                     lambda: "gconv_ext: grad_out must have shape [B, C, H, W] of input")
        torch._check(grad_out.dtype == input.dtype, lambda: "gconv_ext: grad_out must have the dtype of input")
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


if _extension.available():
    _register()
