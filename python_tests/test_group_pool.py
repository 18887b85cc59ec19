"""The group-pooling custom operator: reference, tie and NaN handling, gradients, registration."""
from __future__ import annotations

import pytest
import torch

from gconv_ext import _extension
from gconv_ext.groups import Group
from gconv_ext.ops import group_pool, reference

from tolerances import F64, chain_rtol, sum_atol, unit_roundoff

pytestmark = pytest.mark.skipif(not _extension.available(), reason="compiled extension not built")
ops = torch.ops.gconv_ext
MODES = ["max", "mean"]


def _pool_tols(mode, x, dtype, ours_roundings=1, ref_roundings=2):
    """(atol, rtol) between two evaluations of group_pool(x, mode). max: exact (it returns one of the
    inputs). mean: each sums |G| values in opmath (float32 below float64), in any order (2 gamma_{|G|+1}
    times the fibre's mean |x|), then rounds to dtype: once in ours, up to twice in torch's mean (the sum,
    then the division)."""
    if mode == "max":
        return 0.0, 0.0
    acc = F64 if dtype == F64 else torch.float32
    magnitude = x.detach().abs().double().mean(dim=2).max() if x.numel() else 0.0
    atol = sum_atol(x.shape[2] + 1, magnitude, acc)
    rtol = (ours_roundings + ref_roundings) * unit_roundoff(dtype) if dtype != acc else 0.0
    return atol, rtol


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape", [(2, 3, 8, 5, 7), (1, 1, 1, 1, 1), (3, 2, 6, 4, 4)])
def test_matches_reference(mode, dtype, shape):
    x = torch.randn(shape).to(dtype)
    out = group_pool(x, mode)
    assert out.dtype == dtype and out.shape == shape[:2] + shape[3:]
    atol, rtol = _pool_tols(mode, x, dtype)  # exact for max; summation order and roundings for mean
    torch.testing.assert_close(out, reference.group_pool(x, mode), atol=atol, rtol=rtol)


@pytest.mark.parametrize("mode", MODES)
def test_gradients_match_reference_and_gradgradcheck(mode):
    x = torch.randn(2, 3, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(2, 3, 3, 3, dtype=torch.float64)
    (got,) = torch.autograd.grad(group_pool(x, mode), x, grad)
    (want,) = torch.autograd.grad(reference.group_pool(x, mode), x, grad)
    # max: grad_out copied to the argmax, exact; mean: grad_out / |G|, one or two roundings on each side
    torch.testing.assert_close(got, want, atol=0, rtol=0 if mode == "max" else 4 * unit_roundoff(F64))
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
            # D4 permutes the fibre: max exact, mean the same |G| values summed in another order
            atol, _ = _pool_tols(mode, y, F64)
            torch.testing.assert_close(group_pool(group.act(g, y), mode), group.act_on_plane(g, group_pool(y, mode)),
                                       atol=atol, rtol=0)


def test_non_contiguous_and_empty():
    x = torch.randn(2, 3, 4, 5, 5).to(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(group_pool(x), x.amax(2), atol=0, rtol=0)  # a max: exact
    e = torch.randn(0, 3, 4, 5, 5, requires_grad=True)
    group_pool(e, "mean").sum().backward()
    assert e.grad.shape == e.shape


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_expanded_group_axis_is_read_not_copied(mode, dtype):
    # A group axis broadcast with expand() (stride 0) is pooled from its one plane: the same bits as the
    # materialised copy (same reads, same summation order), forward and backward.
    x = torch.randn(2, 3, 1, 4, 5, dtype=dtype)
    expanded = x.expand(2, 3, 8, 4, 5)
    assert expanded.stride(2) == 0
    assert torch.equal(group_pool(expanded, mode), group_pool(expanded.contiguous(), mode))
    grads = []
    for materialise in (False, True):
        leaf = x.clone().requires_grad_()
        view = leaf.expand(2, 3, 8, 4, 5)
        grads.append(torch.autograd.grad(group_pool(view.contiguous() if materialise else view, mode).sum(), leaf)[0])
    assert torch.equal(*grads)
    if mode == "max":  # (a float32 running sum of 2^31 terms is not a test of the copy)
        # was: an 8 GiB copy of [1, 1, 2^31, 1, 1] (fuzz case); now one element is read 2^31 times
        big = torch.full((1, 1, 1, 1, 1), 0.5, dtype=dtype).expand(1, 1, 2**31, 1, 1)
        assert group_pool(big, mode).item() == 0.5


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
    # float64: the point is the registration (fake kernels, autograd), not float32 arithmetic
    x = torch.randn(2, 3, 8, 4, 4, dtype=F64, requires_grad=True)

    def f(t):
        return group_pool(t.sin(), "max").sum() + group_pool(t, "mean").square().sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    expected = f(x)
    (want,) = torch.autograd.grad(expected, x)
    got = compiled(x)
    (have,) = torch.autograd.grad(got, x)
    # the same ops, possibly in other orders: the fibre means (|G| + 1 terms) and the two sums over the
    # 2 x 3 x 4 x 4 outputs; sin and cos are within an ulp or two (a few more terms' worth)
    rtol = chain_rtol(F64, [8 + 1, 2 * 3 * 4 * 4, 2 * 3 * 4 * 4, 8])
    torch.testing.assert_close(got, expected, atol=rtol * expected.abs().item(), rtol=0)
    torch.testing.assert_close(have, want, atol=rtol * want.abs().max().item(), rtol=0)


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
    # one per-element source for both devices (csrc/include/gconv_ext/group_pool.h): max exact, mean at
    # most the summation-order bound and one rounding to dtype on each side
    atol, rtol = _pool_tols(mode, x, dtype, ref_roundings=1)
    torch.testing.assert_close(out_c.cpu(), out, atol=atol, rtol=rtol)
    grad = torch.randn_like(out)
    (g,) = torch.autograd.grad(out, x, grad)
    (gc,) = torch.autograd.grad(out_c, xc, grad.cuda())
    # max: grad_out copied to the first maximum (exact); mean: grad_out / |G|, one rounding on each side
    torch.testing.assert_close(gc.cpu(), g, atol=0, rtol=0 if mode == "max" else 2 * unit_roundoff(dtype))
