"""The group-pooling custom operator: reference, tie and NaN handling, gradients, registration."""
from __future__ import annotations

import pytest
import torch

from gconv_ext import _extension
from gconv_ext.groups import Group
from gconv_ext.ops import group_pool, reference

pytestmark = pytest.mark.skipif(not _extension.available(), reason="compiled extension not built")
ops = torch.ops.gconv_ext
MODES = ["max", "mean"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-14), (torch.float32, 1e-6), (torch.bfloat16, 1e-2),
                                       (torch.float16, 1e-3)])
@pytest.mark.parametrize("shape", [(2, 3, 8, 5, 7), (1, 1, 1, 1, 1), (3, 2, 6, 4, 4)])
def test_matches_reference(mode, dtype, tol, shape):
    x = torch.randn(shape).to(dtype)
    out = group_pool(x, mode)
    assert out.dtype == dtype and out.shape == shape[:2] + shape[3:]
    torch.testing.assert_close(out, reference.group_pool(x, mode), atol=tol, rtol=tol)


@pytest.mark.parametrize("mode", MODES)
def test_gradients_match_reference_and_gradgradcheck(mode):
    x = torch.randn(2, 3, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(2, 3, 3, 3, dtype=torch.float64)
    (got,) = torch.autograd.grad(group_pool(x, mode), x, grad)
    (want,) = torch.autograd.grad(reference.group_pool(x, mode), x, grad)
    torch.testing.assert_close(got, want, atol=1e-14, rtol=0)
    assert torch.autograd.gradcheck(lambda t: group_pool(t, mode), (x,))
    assert torch.autograd.gradgradcheck(lambda t: group_pool(t, mode), (x,))


def test_max_gradient_goes_to_the_first_maximum():
    x = torch.tensor([1.0, 3.0, 3.0, 2.0]).view(1, 1, 4, 1, 1).requires_grad_()
    group_pool(x, "max").sum().backward()
    assert x.grad.flatten().tolist() == [0.0, 1.0, 0.0, 0.0]


def test_max_propagates_nan():
    x = torch.tensor([1.0, float("nan"), 5.0, float("nan")]).view(1, 1, 4, 1, 1).requires_grad_()
    out = group_pool(x, "max")
    assert torch.isnan(out).all() and torch.isnan(reference.group_pool(x, "max")).all()
    out.sum().backward()
    assert x.grad.flatten().tolist() == [0.0, 1.0, 0.0, 0.0]


def test_invariance():
    group = Group(4, True)
    y = torch.randn(2, 3, group.order, 6, 6, dtype=torch.float64)
    for g in range(group.order):
        for mode in MODES:
            torch.testing.assert_close(group_pool(group.act(g, y), mode), group.act_on_plane(g, group_pool(y, mode)),
                                       atol=1e-14, rtol=0)


def test_non_contiguous_and_empty():
    x = torch.randn(2, 3, 4, 5, 5).to(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(group_pool(x), x.amax(2))
    e = torch.randn(0, 3, 4, 5, 5, requires_grad=True)
    group_pool(e, "mean").sum().backward()
    assert e.grad.shape == e.shape


def _opcheck_samples():
    for mode in MODES:
        for rg in (False, True):
            x = torch.randn(2, 3, 4, 3, 3, dtype=torch.float64, requires_grad=rg)
            yield ops.group_pool.default, (x, mode)
            yield ops.group_pool_backward.default, (torch.randn(2, 3, 3, 3, dtype=torch.float64, requires_grad=rg),
                                                    x.detach(), mode)


@pytest.mark.parametrize("sample", list(_opcheck_samples()), ids=lambda s: f"{s[0]}-{s[1][-1]}")
def test_opcheck(sample):
    op, args = sample
    torch.library.opcheck(op, args)


def test_torch_compile_fullgraph():
    x = torch.randn(2, 3, 8, 4, 4, requires_grad=True)

    def f(t):
        return group_pool(t.sin(), "max").sum() + group_pool(t, "mean").square().sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    expected = f(x)
    (want,) = torch.autograd.grad(expected, x)
    got = compiled(x)
    (have,) = torch.autograd.grad(got, x)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(have, want)


@pytest.mark.parametrize("call,exc,match", [
    (lambda: group_pool(torch.zeros(1, 2, 3, 4)), ValueError, "5-D"),
    (lambda: group_pool(torch.zeros(1, 2, 4, 3, 3), "min"), ValueError, "mode"),
    (lambda: group_pool(torch.zeros(1, 2, 4, 3, 3, dtype=torch.int64)), TypeError, "floating"),
    (lambda: ops.group_pool(torch.zeros(1, 2, 4, 3, 3), "sum"), ValueError, "mode"),
    (lambda: ops.group_pool(torch.zeros(1, 2, 0, 3, 3), "max"), ValueError, "non-empty"),
    (lambda: ops.group_pool_backward(torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 4, 3, 3), "max"), ValueError,
     "grad_out"),
])
def test_bad_inputs(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.cuda
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_cuda_matches_cpu(mode, dtype):
    x = torch.randn(2, 3, 8, 5, 5).to(dtype)
    x[0, 0, :, 0, 0] = 1.0  # ties: the first maximum on both devices
    xc = x.cuda().requires_grad_()
    x.requires_grad_()
    out, out_c = group_pool(x, mode), group_pool(xc, mode)
    torch.testing.assert_close(out_c.cpu(), out)
    grad = torch.randn_like(out)
    (g,) = torch.autograd.grad(out, x, grad)
    (gc,) = torch.autograd.grad(out_c, xc, grad.cuda())
    torch.testing.assert_close(gc.cpu(), g)
