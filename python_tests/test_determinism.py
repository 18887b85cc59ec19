"""Every operator of gconv_ext runs under ``torch.use_deterministic_algorithms(True)``, forward and backward,
and gives bitwise the same outputs and gradients when run twice on the same inputs.

The operator list is the one the extension registers (``torch.ops.gconv_ext.*``, from csrc/library.cpp): a new
operator without a sample here fails :func:`test_every_registered_op_has_a_sample`. Each op's backward is its
registered autograd (for the ``*_backward`` ops that is the double backward). The CPU kernels and the CUDA
ones (cuDNN convolutions, gather-style pooling backward without atomics) are meant to be deterministic by
construction; the CUDA variant runs where a GPU is present. Two threads on CPU, so the kernels' parallel
paths (and any unordered reduction in them) are exercised.

Two training runs of the same seed giving bitwise the same weights is tested with the engine in
test_train.py (``test_same_seed_and_resume_are_bit_identical``).
"""
from __future__ import annotations

import contextlib

import pytest
import torch
from conftest import torch_threads

import gconv_ext  # noqa: F401  (registers the ops)

ops = torch.ops.gconv_ext

pytestmark = pytest.mark.skipif(not hasattr(ops, "lift_filter"), reason="gconv_ext C++ extension not built")

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


@contextlib.contextmanager
def deterministic_algorithms():
    """``torch.use_deterministic_algorithms(True)`` (not warn-only: a nondeterministic op raises) for the body,
    then the previous setting (conftest's autouse fixture restores it too, should an assertion fire here)."""
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def _samples(device: str) -> dict[str, list[tuple]]:
    """op name -> argument tuples (float32 tensors; the ones that get a gradient have ``requires_grad``)."""
    g = torch.Generator().manual_seed(1234)

    def t(*shape, grad=True):
        return torch.randn(*shape, generator=g).to(device).requires_grad_(grad)

    n, ci, co, h = 4, 3, 5, 12
    conv = []
    for rot, refl in ((4, False), (3, True)):
        order = rot * (2 if refl else 1)
        # (stride, padding, dilation); the second one with a disk mask
        for disk, geo in ((False, ([1, 1], [1, 1], [1, 1])), (True, ([2, 2], [2, 0], [1, 2]))):
            conv.append(("lifting", rot, refl, disk, geo, t(n, ci, h, h), t(co, ci, 3, 3), t(co), order))
            conv.append(("group", rot, refl, disk, geo, t(n, ci, order, h, h), t(co, ci, order, 3, 3), t(co), order))
    samples: dict[str, list[tuple]] = {name: [] for name in (
        "lifting_conv2d", "lifting_conv2d_backward", "group_conv2d", "group_conv2d_backward")}
    for kind, rot, refl, disk, geo, x, w, b, order in conv:
        samples[f"{kind}_conv2d"].append((x, w, b, rot, refl, disk, *geo))
        with torch.no_grad():
            out = getattr(ops, f"{kind}_conv2d")(x, w, b, rot, refl, disk, *geo)
        samples[f"{kind}_conv2d_backward"].append(
            (t(*out.shape), x, w, rot, refl, disk, *geo, [True, True, True]))
    samples["lift_filter"] = [(t(co, ci, 5, 5), 8, False, False), (t(co, ci, 4, 4), 3, True, True)]
    samples["lift_filter_backward"] = [(t(co, 8, ci, 5, 5), 8, False, False), (t(co, 6, ci, 4, 4), 3, True, True)]
    samples["group_filter"] = [(t(co, ci, 8, 5, 5), 8, False, False), (t(co, ci, 6, 4, 4), 3, True, True)]
    samples["group_filter_backward"] = [(t(co, 8, ci, 8, 5, 5), 8, False, False),
                                        (t(co, 6, ci, 6, 4, 4), 3, True, True)]
    x = t(n, co, 8, h, h)
    samples["group_pool"] = [(x, "max"), (x, "mean")]
    samples["group_pool_backward"] = [(t(n, co, h, h), x, "max"), (t(n, co, h, h), x, "mean")]
    # overlapping windows (stride < kernel) and padding: several windows add into one input gradient
    pools = [([2, 2], [2, 2], [0, 0]), ([3, 3], [2, 2], [1, 1])]
    samples["group_max_pool2d"] = [(x, *p) for p in pools]
    samples["group_max_pool2d_with_indices"] = [(x, *p) for p in pools]
    samples["group_avg_pool2d"] = [(x, *p) for p in pools]
    samples["group_max_pool2d_backward"] = []
    samples["group_avg_pool2d_backward"] = []
    samples["group_max_pool2d_gather"] = []
    for k, s, p in pools:
        with torch.no_grad():
            _, indices = ops.group_max_pool2d_with_indices(x, k, s, p)
        size = indices.shape
        samples["group_max_pool2d_backward"].append((t(*size), indices, list(x.shape), k, s, p))
        samples["group_avg_pool2d_backward"].append((t(*size), list(x.shape), k, s, p))
        samples["group_max_pool2d_gather"].append((t(*x.shape), indices, k, s, p))
    samples["group_layer_norm_relu_max_pool2d"] = [(x, *p, 1e-5) for p in pools]
    # its backward op is not differentiable (the forward's double backward is built from other ops): no grad
    samples["group_layer_norm_relu_max_pool2d_backward"] = []
    for k, s, p in pools:
        with torch.no_grad():
            out, indices, mean, rstd = ops.group_layer_norm_relu_max_pool2d(x, k, s, p, 1e-5)
        samples["group_layer_norm_relu_max_pool2d_backward"].append(
            (t(*out.shape, grad=False), x.detach(), out, indices, mean, rstd, k, s, p))
    return samples


def _run(op, args):
    """Forward, then the gradients of every input that requires one (autograd.grad of a fixed random
    cotangent); all from fresh leaf copies of ``args``."""
    args = [a.detach().clone().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) else a
            for a in args]
    out = op(*args)
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    outs = [o for o in outs if o is not None]
    g = torch.Generator().manual_seed(99)
    cotangents = [torch.randn(o.shape, generator=g).to(o.device) for o in outs]
    leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    if not leaves:  # an op sampled without gradients: its forward alone
        return [o.detach() for o in outs], []
    loss = sum((o * c).sum() for o, c in zip(outs, cotangents) if o.requires_grad)
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    assert any(gr is not None for gr in grads), "no gradient reached the inputs"
    return [o.detach() for o in outs], [gr for gr in grads if gr is not None]


def test_every_registered_op_has_a_sample():
    registered = {name.split("::", 1)[1] for name in torch._C._dispatch_get_all_op_names()
                  if name.startswith("gconv_ext::")}
    assert registered == set(_samples("cpu")), "add samples for new ops to _samples"


@pytest.mark.parametrize("device", DEVICES)
def test_every_op_is_deterministic_forward_and_backward(device):
    assert not torch.are_deterministic_algorithms_enabled()
    with torch_threads(2), deterministic_algorithms():
        assert torch.are_deterministic_algorithms_enabled()
        for name, cases in _samples(device).items():
            op = getattr(ops, name)
            for i, args in enumerate(cases):
                first_out, first_grads = _run(op, args)  # raises if the op (or its backward) is nondeterministic
                again_out, again_grads = _run(op, args)
                for a, b in zip(first_out + first_grads, again_out + again_grads, strict=True):
                    # float32 values; the max pool's stored argmax taps are uint8
                    assert a.dtype in (torch.float32, torch.uint8) and a.device.type == device
                    assert torch.equal(a, b), f"{name} case {i}: two runs differ by {(a - b).abs().max():.3g}"
    assert not torch.are_deterministic_algorithms_enabled()  # restored
