"""The GCNN block's glue as one operator: layer norm, ReLU and spatial max pool of a group map.

* ``group_layer_norm_relu_max_pool2d(x, kernel_size, stride=None, padding=0, eps=1e-5)``

``= group_max_pool2d(relu(layer_norm(x, x.shape[1:], eps=eps)), kernel_size, stride, padding)``: the affine-free
layer norm over every dimension but the batch (``(C, |G|, H, W)``, the study's normalisation), then ReLU, then the
max pool of every ``[H, W]`` plane. ``kernel_size=1`` gives layer norm + ReLU alone.

Because ``v -> relu((v - mean) * rstd)`` is non-decreasing, it commutes with the max: the C++/CUDA operator pools
the raw input (storing the argmax taps, as :func:`~gconv_ext.ops.group_max_pool2d` does for autograd) and
normalises only the pooled values as it stores them. Its backward is the layer norm's backward of the pooled
gradient routed to the taps, masked by the ReLU as it is read. Neither direction writes a full-size intermediate
(the three ops write two each way); csrc/include/gconv_ext/norm_pool.h has the arithmetic.

The C++ ops: ``torch.ops.gconv_ext.group_layer_norm_relu_max_pool2d(input, kernel_size, stride, padding, eps) ->
(out, indices, mean, rstd)`` (``mean`` and ``rstd`` per sample, float32, or float64 for a float64 input; the
``indices`` of the pool) and ``group_layer_norm_relu_max_pool2d_backward(grad_out, input, out, indices, mean,
rstd, kernel_size, stride, padding) -> grad_input``. Their fake kernels are at the bottom of this file; the
autograd is C++ (csrc/norm_pool_autograd.cpp). A first-order backward calls the backward op; under
``create_graph`` the gradient is built from differentiable ops instead (the spatial pool's backward and gather,
and torch's own), so it can be differentiated again.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from .. import _extension
from .._args import fake_floating, fake_same_device
from . import reference
from .spatial_pool import _check_pool_input, _pool_params, check_indices, index_dtype, out_shape

__all__ = ["group_layer_norm_relu_max_pool2d"]

IntOr2 = int | Sequence[int]

_OP = "group_layer_norm_relu_max_pool2d"


def _check_eps(eps) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"gconv_ext: eps must be a positive finite number, got {eps!r}")
    return float(eps)


def group_layer_norm_relu_max_pool2d(x: torch.Tensor, kernel_size: IntOr2, stride: IntOr2 | None = None,
                                     padding: IntOr2 = 0, eps: float = 1e-5) -> torch.Tensor:
    """``group_max_pool2d(relu(layer_norm(x, x.shape[1:], eps=eps)), kernel_size, stride, padding)`` in one
    operator: ``[B, C, |G|, H, W] -> [B, C, |G|, H', W']`` (also ``[B, C, H, W]``).

    The layer norm has no affine parameters and uses the biased variance, as ``F.layer_norm``; ``stride``
    defaults to ``kernel_size``; ``padding`` (at most half the kernel) counts as -inf for the max. The gradient
    of each window goes to its first maximal element (row-major order), as :func:`group_max_pool2d`;
    differentiable twice. Equivariant like its three parts: the statistics are invariant, and the pool commutes
    with 90-degree rotations at exact sizes.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"gconv_ext: input must be a torch.Tensor, got {type(x).__name__}")
    k, s, p = _pool_params(kernel_size, stride, padding)
    eps = _check_eps(eps)
    op = _extension.compiled_op(_OP)
    if op is None:
        _check_pool_input(x, k, p)
        return reference.group_layer_norm_relu_max_pool2d(x, k, s, p, eps)
    return op(x, k, s, p, eps)[0]


# -- registration (fake kernels and autograd), only when the compiled ops exist --------------------

def _stats_dtype(dtype: torch.dtype) -> torch.dtype:  # csrc/norm_pool.cpp stats_dtype()
    return torch.float64 if dtype == torch.float64 else torch.float32


def _register() -> None:
    ops = torch.ops.gconv_ext

    @torch.library.register_fake(f"gconv_ext::{_OP}")
    def _(input, kernel_size, stride, padding, eps):
        fake_floating(input, "input")
        torch._check(math.isfinite(eps) and eps > 0,
                     lambda: f"gconv_ext: eps must be a positive finite number, got {eps}")
        shape = out_shape(input.shape, kernel_size, stride, padding)
        stats = input.new_empty([input.shape[0]], dtype=_stats_dtype(input.dtype))
        return (input.new_empty(shape), input.new_empty(shape, dtype=index_dtype(kernel_size)), stats,
                torch.empty_like(stats))

    @torch.library.register_fake(f"gconv_ext::{_OP}_backward")
    def _(grad_out, input, out, indices, mean, rstd, kernel_size, stride, padding):
        fake_floating(input, "input")
        fake_same_device(input=input, grad_out=grad_out, out=out, mean=mean, rstd=rstd)
        expected = out_shape(input.shape, kernel_size, stride, padding)
        for name, t in (("grad_out", grad_out), ("out", out)):
            if t.dtype != input.dtype:
                raise TypeError(f"gconv_ext: {name} must have the dtype of input ({input.dtype}), got {t.dtype}")
            torch._check(list(t.shape) == expected,
                         lambda: f"gconv_ext: {name} must have the output shape {expected}, got {list(t.shape)}")
        check_indices(indices, expected, kernel_size, input.device)
        for name, t in (("mean", mean), ("rstd", rstd)):
            torch._check(list(t.shape) == [input.shape[0]],
                         lambda: f"gconv_ext: {name} must have shape [{input.shape[0]}] (one value per sample of "
                                 f"input), got {list(t.shape)}")
            if t.dtype != _stats_dtype(input.dtype):
                raise TypeError(f"gconv_ext: {name} must be {_stats_dtype(input.dtype)} for a {input.dtype} input, "
                                f"got {t.dtype}")
        return input.new_empty(input.shape)

    # Autograd: the forward op's is C++ (csrc/norm_pool_autograd.cpp, the Autograd key: the Python layer cost
    # more than the op on small maps); its double backward is built there from differentiable ops. The backward
    # op is not differentiable:
    def setup_backward(ctx, inputs, output):
        pass

    def backward_backward(ctx, *grads):
        raise RuntimeError(
            "gconv_ext: group_layer_norm_relu_max_pool2d_backward is not differentiable; differentiate "
            "group_layer_norm_relu_max_pool2d with create_graph=True instead (its double backward is built from "
            "differentiable ops)")

    torch.library.register_autograd(f"gconv_ext::{_OP}_backward", backward_backward, setup_context=setup_backward)


if _extension.available():
    _register()
