"""Spatial pooling that keeps the group axis (group_max_pool2d / group_avg_pool2d custom operators):
reference, ties and NaN, gradients, double backward, registration, bad inputs, CUDA against CPU."""
from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from gconv_ext import _extension
from gconv_ext import nn as gnn
from gconv_ext.ops import group_avg_pool2d, group_max_pool2d, reference

from tolerances import F64, chain_rtol, sum_atol, unit_roundoff

pytestmark = pytest.mark.skipif(not _extension.available(), reason="compiled extension not built")
ops = torch.ops.gconv_ext
POOLS = {"max": (group_max_pool2d, reference.group_max_pool2d), "avg": (group_avg_pool2d, reference.group_avg_pool2d)}


def _random_cases(n, seed):
    rng = random.Random(seed)
    cases = []
    while len(cases) < n:
        k = (rng.randint(1, 3), rng.randint(1, 3))
        s = (rng.randint(1, 3), rng.randint(1, 3))
        p = (rng.randint(0, k[0] // 2), rng.randint(0, k[1] // 2))
        h, w = rng.randint(max(1, k[0] - 2 * p[0]), 9), rng.randint(max(1, k[1] - 2 * p[1]), 9)
        lead = (rng.randint(1, 3), rng.randint(1, 3)) + ((rng.randint(1, 4),) if rng.random() < 0.6 else ())
        cases.append((lead + (h, w), k, s, p))
    return cases


CASES = _random_cases(40, 0)


def _taps(k):
    kh, kw = (k, k) if isinstance(k, int) else k
    return kh * kw


def _forward_atol(kind, x, k, acc=F64, sides=2):
    """max: exact (the output is one of the inputs). avg: a sum of <= k_h k_w values divided by k_h k_w,
    in any order: gamma_{taps+1} times the largest |x|, per evaluation."""
    if kind == "max" or x.numel() == 0:
        return 0.0
    return sum_atol(_taps(k) + 1, x.detach().abs().max().double(), acc, sides)


def _backward_atol(x_grad_out, k, acc=F64, sides=2):
    """Each input gathers the gradient of <= k_h k_w covering windows (max: routed; avg: / k_h k_w), in any
    order: gamma_{taps+1} times taps * max |grad_out|, per evaluation."""
    taps = _taps(k)
    return sum_atol(taps + 1, taps * x_grad_out.detach().abs().max().double(), acc, sides)


def _no_ties(shape, dtype=torch.float64):
    """Distinct values (a random permutation), so every window has a unique maximum."""
    n = 1
    for d in shape:
        n *= d
    return (torch.randperm(n, dtype=torch.float64) / n - 0.5).reshape(shape).to(dtype)


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-k{c[1]}-s{c[2]}-p{c[3]}")
def test_matches_reference_float64(kind, case):
    shape, k, s, p = case
    ours, ref = POOLS[kind]
    x = torch.randn(shape, dtype=torch.float64)
    out = ours(x, k, s, p)
    want = ref(x, k, s, p)
    assert out.shape == want.shape and out.dtype == x.dtype
    torch.testing.assert_close(out, want, atol=_forward_atol(kind, x, k), rtol=0)  # max exact, avg: order


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("case", CASES[:20], ids=lambda c: f"{c[0]}-k{c[1]}-s{c[2]}-p{c[3]}")
def test_gradients_match_reference_without_ties(kind, case):
    shape, k, s, p = case
    ours, ref = POOLS[kind]
    x = _no_ties(shape).requires_grad_()
    grad = torch.randn(ref(x, k, s, p).shape, dtype=torch.float64)
    (got,) = torch.autograd.grad(ours(x, k, s, p), x, grad)
    (want,) = torch.autograd.grad(ref(x, k, s, p), x, grad)
    torch.testing.assert_close(got, want, atol=_backward_atol(grad, k), rtol=0)  # overlapping windows, any order


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", CASES[:8], ids=lambda c: f"{c[0]}-k{c[1]}-s{c[2]}-p{c[3]}")
def test_low_precision_dtypes(kind, dtype, case):
    shape, k, s, p = case
    ours, ref = POOLS[kind]
    x = _no_ties(shape, dtype).requires_grad_()
    out = ours(x, k, s, p)
    assert out.dtype == dtype
    # the oracle in float64 on the same (rounded) values
    x64 = x.detach().double().requires_grad_()
    want = ref(x64, k, s, p)
    # ours sums in float32 (opmath), then rounds to dtype once: u(dtype) relative, 2x margin, plus the
    # float32 sum against the float64 oracle (one side); max is exact
    rtol = 0.0 if kind == "max" else 2 * unit_roundoff(dtype)
    torch.testing.assert_close(out.double(), want, atol=_forward_atol(kind, x, k, torch.float32, sides=1), rtol=rtol)
    grad = torch.randn(out.shape).to(dtype)
    (got,) = torch.autograd.grad(out, x, grad)
    (want_g,) = torch.autograd.grad(want, x64, grad.double())
    assert got.dtype == dtype
    torch.testing.assert_close(got.double(), want_g, atol=_backward_atol(grad, k, torch.float32, sides=1),
                               rtol=2 * unit_roundoff(dtype))


def test_constant_input_gradient_goes_to_the_first_maximum():
    # every window ties: the gradient goes to the first element (row-major) of each window
    x = torch.ones(1, 1, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    group_max_pool2d(x, 2, 1).sum().backward()
    expected = torch.zeros(4, 4, dtype=torch.float64)
    expected[:3, :3] = 1.0
    assert torch.equal(x.grad[0, 0, 0], expected)
    # torch's CPU max_pool2d breaks ties the same way
    y = torch.ones(1, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    F.max_pool2d(y, 2, 1).sum().backward()
    assert torch.equal(y.grad[0, 0], expected)


def test_ties_with_padding_and_minus_inf():
    # all -inf: like torch, the argmax is the first in-plane element, never a padding position
    x = torch.full((1, 1, 3, 3), float("-inf"), dtype=torch.float64, requires_grad=True)
    out = group_max_pool2d(x, 3, 1, 1)
    assert torch.isneginf(out).all()
    out.sum().backward()
    y = x.detach().clone().requires_grad_()
    F.max_pool2d(y, 3, 1, 1).sum().backward()
    assert torch.equal(x.grad, y.grad)


def test_nan_propagates_and_the_first_nan_takes_the_gradient():
    x = torch.tensor([[1.0, float("nan")], [float("nan"), 5.0]]).view(1, 1, 1, 2, 2).requires_grad_()
    out = group_max_pool2d(x, 2)
    assert torch.isnan(out).all()
    out.sum().backward()
    assert x.grad.flatten().tolist() == [0.0, 1.0, 0.0, 0.0]
    assert torch.isnan(group_avg_pool2d(x.detach(), 2)).all()


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("k,s,p", [(2, 1, 0), (3, 2, 1), (2, 2, 1), ((3, 2), (1, 2), (1, 0))])
def test_gradcheck_and_gradgradcheck(kind, k, s, p):
    ours, _ = POOLS[kind]
    x = _no_ties((2, 2, 3, 5, 6)).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: ours(t, k, s, p), (x,))
    assert torch.autograd.gradgradcheck(lambda t: ours(t, k, s, p), (x,))


def test_double_backward_routes_like_the_first_backward():
    x = _no_ties((2, 3, 4, 6, 6)).requires_grad_()
    (g,) = torch.autograd.grad(group_max_pool2d(x, 2, 1).square().sum(), x, create_graph=True)
    xr = x.detach().requires_grad_()
    (gr,) = torch.autograd.grad(reference.group_max_pool2d(xr, 2, 1).square().sum(), xr, create_graph=True)
    v = torch.randn_like(g)
    (hv,) = torch.autograd.grad((g * v).sum(), x)
    (hvr,) = torch.autograd.grad((gr * v).sum(), xr)
    # hv routes 2 v (gathered at the argmax) back through the same windows: the backward bound for 2 |v|
    torch.testing.assert_close(hv, hvr, atol=_backward_atol(2 * v, 2), rtol=0)


def test_backward_ops_are_adjoint_to_gather_and_avg():
    x = _no_ties((2, 3, 7, 8))
    k, s, p = [3, 3], [2, 1], [1, 1]
    out = ops.group_max_pool2d(x, k, s, p)
    go, v = torch.randn_like(out), torch.randn_like(x)
    # <B go, v> and <go, A v> are the same products summed in two orders: 2 gamma_n sum |go| A|v|
    # (A >= 0), n = every product once plus the <= 9 window terms
    n = go.numel() * 9 + 10
    out_i, idx = ops.group_max_pool2d_with_indices(x, k, s, p)
    assert torch.equal(out_i, out) and idx.dtype == torch.uint8 and idx.shape == out.shape
    lhs = (ops.group_max_pool2d_backward(go, idx, list(x.shape), k, s, p) * v).sum()
    rhs = (go * ops.group_max_pool2d_gather(v, idx, k, s, p)).sum()
    magnitude = (go.abs() * ops.group_max_pool2d_gather(v.abs(), idx, k, s, p)).sum()
    torch.testing.assert_close(lhs, rhs, atol=sum_atol(n, magnitude, F64), rtol=0)
    # exact: gathering x at its own argmax returns the maximum itself
    torch.testing.assert_close(ops.group_max_pool2d_gather(x, idx, k, s, p), out, atol=0, rtol=0)
    lhs = (ops.group_avg_pool2d_backward(go, list(x.shape), k, s, p) * v).sum()
    rhs = (go * ops.group_avg_pool2d(v, k, s, p)).sum()
    magnitude = (go.abs() * ops.group_avg_pool2d(v.abs(), k, s, p)).sum()
    torch.testing.assert_close(lhs, rhs, atol=sum_atol(n, magnitude, F64), rtol=0)


def _torch_taps(x, k, s, p):
    """The argmax tap (i * k_w + j) of every window, from torch's max_pool2d (flat input indices)."""
    k, s, p = (list(int_pair) for int_pair in ((k, k) if isinstance(k, int) else k, s, p))
    planes = x.reshape(-1, 1, *x.shape[-2:])
    _, flat = F.max_pool2d(planes, k, s, p, return_indices=True)
    oy = torch.arange(flat.shape[-2]).view(-1, 1)
    ox = torch.arange(flat.shape[-1]).view(1, -1)
    iy, ix = flat // x.shape[-1], flat % x.shape[-1]
    return ((iy - (oy * s[0] - p[0])) * k[1] + (ix - (ox * s[1] - p[1]))).reshape(*x.shape[:-2], *flat.shape[-2:])


@pytest.mark.parametrize("k,s,p", [((2, 2), (1, 1), (0, 0)), ((3, 3), (2, 2), (1, 1)), ((3, 2), (1, 2), (1, 0)),
                                   ((17, 17), (1, 1), (8, 8))])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_stored_taps_match_torch(k, s, p, dtype):
    """The forward stores each window's argmax tap (the first maximum, as torch's CPU max_pool2d finds it, ties
    and padding included): uint8 for windows up to 256 taps, int32 beyond (17x17 = 289)."""
    x = torch.randn(2, 3, 4, 19, 18).to(dtype)
    x[0, 0, 0, :6, :6] = 1.0  # ties
    x[1, 1, 1] = float("-inf")  # nothing beats -inf: the first in-plane tap, never padding
    out, idx = ops.group_max_pool2d_with_indices(x, list(k), list(s), list(p))
    assert idx.dtype == (torch.uint8 if k[0] * k[1] <= 256 else torch.int32)
    assert torch.equal(out, ops.group_max_pool2d(x, list(k), list(s), list(p)))
    assert torch.equal(idx.long(), _torch_taps(x.double(), k, s, p))


def test_training_forward_stores_the_taps_and_backward_reads_them():
    """With autograd on, group_max_pool2d runs the _with_indices op once; the backward reads its taps (no
    second search); without autograd it runs the value-only op."""
    x = _no_ties((2, 3, 4, 6, 6)).requires_grad_()
    with torch.profiler.profile() as prof:
        group_max_pool2d(x, 2, 1).sum().backward()
    names = [e.name for e in prof.events()]
    assert names.count("gconv_ext::group_max_pool2d_with_indices") == 1, names
    assert "gconv_ext::group_max_pool2d" not in names and "gconv_ext::group_max_pool2d_backward" in names
    with torch.no_grad(), torch.profiler.profile() as prof:
        group_max_pool2d(x, 2, 1)
    names = [e.name for e in prof.events()]
    assert "gconv_ext::group_max_pool2d" in names and "gconv_ext::group_max_pool2d_with_indices" not in names


def test_value_only_op_is_differentiable_too():
    """The value-only op (what inference runs) keeps its autograd: its backward finds the taps once."""
    x = _no_ties((2, 2, 3, 5, 6)).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: ops.group_max_pool2d(t, [3, 2], [1, 2], [1, 0]), (x,))
    assert torch.autograd.gradgradcheck(lambda t: ops.group_max_pool2d(t, [3, 2], [1, 2], [1, 0]), (x,))


def test_foreign_indices_are_safe():
    """Indices not made by the forward (out-of-window or padding taps) route nothing and gather 0: never an
    out-of-bounds read or write."""
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    k, s, p = [3, 3], [2, 2], [1, 1]
    _, idx = ops.group_max_pool2d_with_indices(x, k, s, p)
    bad = torch.full_like(idx, 255)  # no 3x3 window has tap 255
    bad[0, 0, 0, 0] = 0  # tap 0 of window (0, 0) is the padding corner
    assert torch.equal(ops.group_max_pool2d_gather(x, bad, k, s, p), torch.zeros(1, 2, 3, 3, dtype=torch.float64))
    go = torch.ones(1, 2, 3, 3, dtype=torch.float64)
    assert torch.equal(ops.group_max_pool2d_backward(go, bad, list(x.shape), k, s, p), torch.zeros_like(x))
    big = torch.randn(1, 1, 20, 20)
    _, idx32 = ops.group_max_pool2d_with_indices(big, [17, 17], [1, 1], [0, 0])
    assert idx32.dtype == torch.int32
    for value in (-5, 289, 2**31 - 1):
        bad32 = torch.full_like(idx32, value)
        assert torch.equal(ops.group_max_pool2d_gather(big, bad32, [17, 17], [1, 1], [0, 0]),
                           torch.zeros(1, 1, 4, 4))


@pytest.mark.parametrize("call, exc, match", [
    (lambda x, i: ops.group_max_pool2d_backward(torch.ones(1, 2, 2, 2), i.int(), [1, 2, 4, 4], [2, 2], [2, 2],
                                                [0, 0]), TypeError, "indices must be the torch.uint8 argmax taps"),
    (lambda x, i: ops.group_max_pool2d_backward(torch.ones(1, 2, 2, 2), i[..., :1], [1, 2, 4, 4], [2, 2], [2, 2],
                                                [0, 0]), ValueError, "indices must have the output shape"),
    (lambda x, i: ops.group_max_pool2d_gather(x, i.float(), [2, 2], [2, 2], [0, 0]), TypeError, "indices must be"),
    (lambda x, i: ops.group_max_pool2d_gather(x, i, [3, 3], [1, 1], [1, 1]), ValueError, "output shape"),
    (lambda x, i: ops.group_max_pool2d_backward(torch.ones(1, 2, 3, 2), i, [1, 2, 4, 4], [2, 2], [2, 2], [0, 0]),
     ValueError, "grad_out must have the output shape"),
])
def test_bad_indices(call, exc, match):
    x = torch.randn(1, 2, 4, 4)
    _, i = ops.group_max_pool2d_with_indices(x, [2, 2], [2, 2], [0, 0])
    with pytest.raises(exc, match=match):
        call(x, i)


def test_channels_last_and_non_contiguous():
    x = torch.randn(2, 6, 9, 7).to(memory_format=torch.channels_last).requires_grad_()
    f32 = torch.float32
    for kind, (ours, ref) in POOLS.items():
        out = ours(x, 3, 2, 1)
        torch.testing.assert_close(out, ref(x, 3, 2, 1), atol=_forward_atol(kind, x, 3, f32), rtol=0)
        (g,) = torch.autograd.grad(out.sum(), x)
        (gr,) = torch.autograd.grad(ref(x, 3, 2, 1).sum(), x)
        torch.testing.assert_close(g, gr, atol=_backward_atol(torch.ones_like(out), 3, f32), rtol=0)
    y = torch.randn(2, 3, 4, 8, 8).to(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(group_max_pool2d(y, 2), reference.group_max_pool2d(y, 2), atol=0, rtol=0)  # a max
    z = torch.randn(2, 3, 4, 8, 10)[..., ::2]
    torch.testing.assert_close(group_avg_pool2d(z, 2, 1), reference.group_avg_pool2d(z, 2, 1),
                               atol=_forward_atol("avg", z, 2, f32), rtol=0)


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_empty_batch(kind):
    ours, _ = POOLS[kind]
    x = torch.randn(0, 3, 4, 6, 6, requires_grad=True)
    out = ours(x, 2)
    assert out.shape == (0, 3, 4, 3, 3)
    out.sum().backward()
    assert x.grad.shape == x.shape


def _opcheck_samples():
    for rg in (False, True):
        for shape, k, s, p in [((2, 3, 4, 5, 6), [2, 2], [1, 1], [0, 0]), ((2, 3, 7, 6), [3, 2], [2, 1], [1, 1])]:
            x = _no_ties(shape).requires_grad_(rg)
            out_shape = reference.group_max_pool2d(x, k, s, p).shape
            go = torch.randn(out_shape, dtype=torch.float64, requires_grad=rg)
            idx = ops.group_max_pool2d_with_indices(x.detach(), k, s, p)[1]
            yield ops.group_max_pool2d.default, (x, k, s, p)
            yield ops.group_max_pool2d_with_indices.default, (x, k, s, p)
            yield ops.group_avg_pool2d.default, (x, k, s, p)
            yield ops.group_max_pool2d_backward.default, (go, idx, list(shape), k, s, p)
            yield ops.group_avg_pool2d_backward.default, (go, list(shape), k, s, p)
            yield ops.group_max_pool2d_gather.default, (torch.randn(shape, dtype=torch.float64, requires_grad=rg),
                                                        idx, k, s, p)


def test_bfloat16_rounding_is_torchs_bit_for_bit():
    """The CPU loops round their float results to bfloat16 with their own branch-free code (convert_cpu.h):
    it must give torch's bits. The 2x2/2 average pool sums its taps in scan order in float and divides by 4,
    so the same float computed here and rounded by torch must match exactly. A NaN becomes 0x7FC0, as in
    c10::BFloat16(float) (torch's vectorised tensor cast keeps the sign and payload instead)."""
    g = torch.Generator().manual_seed(5)
    x = (torch.randn(3, 4, 2, 16, 16, generator=g) * 100).bfloat16()
    x[0, 0, 0, 0, 0] = float("nan")
    x[1, 0, 0, 2, 2] = float("inf")
    x[1, 1, 0, 2, 2], x[1, 1, 0, 2, 3] = float("inf"), float("-inf")  # inf - inf = NaN
    f = x.float()
    taps = [f[..., i::2, j::2] for i in range(2) for j in range(2)]
    expected = ((((taps[0] + taps[1]) + taps[2]) + taps[3]) / 4).bfloat16()
    got = group_avg_pool2d(x, 2, 2)
    nan = expected.isnan()
    assert 0 < nan.sum() < nan.numel() and torch.equal(got.isnan(), nan)
    assert torch.equal(got.view(torch.int16)[~nan], expected.view(torch.int16)[~nan])
    assert (got.view(torch.int16)[nan] == 0x7FC0).all()


@pytest.mark.parametrize("sample", list(_opcheck_samples()), ids=lambda s: f"{s[0]}-{len(s[1][0].shape)}d")
def test_opcheck(sample):
    op, args = sample
    torch.library.opcheck(op, args)


def test_torch_compile_fullgraph():
    # float64: the point is the registration (fake kernels, autograd), not float32 arithmetic
    x = torch.randn(2, 3, 4, 8, 8, dtype=F64, requires_grad=True)

    def f(t):
        return group_max_pool2d(t.sin(), 2, 1).square().sum() + group_avg_pool2d(t, 3, 2, 1).square().sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    expected = f(x)
    (want,) = torch.autograd.grad(expected, x)
    got = compiled(x)
    (have,) = torch.autograd.grad(got, x)
    # the same ops, possibly in other orders: window sums (<= 9 + 1 terms), the two sums over the outputs
    # and the <= 9 windows each input gathers in the backward; sin, cos within an ulp or two
    rtol = chain_rtol(F64, [10, 2 * 3 * 4 * 7 * 7, 2 * 3 * 4 * 4 * 4, 10, 10])
    torch.testing.assert_close(got, expected, atol=rtol * expected.abs().item(), rtol=0)
    torch.testing.assert_close(have, want, atol=rtol * want.abs().max().item(), rtol=0)


def test_modules_use_the_ops_and_keep_their_api():
    x = torch.randn(2, 3, 4, 9, 9, dtype=torch.float64)
    mp, ap = gnn.GroupMaxPool2d(2, stride=1), gnn.GroupAvgPool2d(3, stride=1, padding=1)
    torch.testing.assert_close(mp(x), reference.group_max_pool2d(x, 2, 1), atol=0, rtol=0)  # a max: exact
    torch.testing.assert_close(ap(x), reference.group_avg_pool2d(x, 3, 1, 1), atol=_forward_atol("avg", x, 3), rtol=0)
    assert repr(gnn.GroupMaxPool2d(2)) == "GroupMaxPool2d(kernel_size=2, stride=2)"
    with pytest.raises(ValueError, match="5-D"):
        mp(torch.randn(2, 3, 9, 9))


@pytest.mark.parametrize("call,exc,match", [
    (lambda: group_max_pool2d(torch.zeros(2, 3, 4), 2), ValueError, "5-D group map"),
    (lambda: group_max_pool2d(torch.zeros(1, 2, 4, 4, dtype=torch.int64), 2), TypeError, "floating"),
    (lambda: group_max_pool2d([1.0], 2), TypeError, "torch.Tensor"),
    (lambda: group_max_pool2d(torch.zeros(1, 2, 4, 4), 0), ValueError, "kernel_size"),
    (lambda: group_max_pool2d(torch.zeros(1, 2, 4, 4), (2, 2, 2)), ValueError, "kernel_size"),
    (lambda: group_avg_pool2d(torch.zeros(1, 2, 4, 4), 2, stride=0), ValueError, "stride"),
    (lambda: group_avg_pool2d(torch.zeros(1, 2, 4, 4), 2, padding=-1), ValueError, "padding"),
    (lambda: group_max_pool2d(torch.zeros(1, 2, 4, 4), 2, padding=2), ValueError, "padding"),
    (lambda: group_max_pool2d(torch.zeros(1, 2, 2, 4, 4), True), ValueError, "kernel_size"),
    (lambda: group_max_pool2d(torch.zeros(1, 2, 2, 4), 3), ValueError, "too small"),
    (lambda: ops.group_max_pool2d(torch.zeros(1, 2, 4, 4), [2, 2], [0, 1], [0, 0]), ValueError, "stride"),
    (lambda: ops.group_max_pool2d(torch.zeros(1, 2, 4, 4), [2, 2], [1, 1], [2, 0]), ValueError, "padding"),
    (lambda: ops.group_avg_pool2d(torch.zeros(1, 2, 1, 1), [3, 3], [1, 1], [0, 0]), ValueError, "too small"),
    (lambda: ops.group_max_pool2d(torch.zeros(1, 2, 0, 4), [1, 1], [1, 1], [0, 0]), ValueError, "non-empty"),
    (lambda: ops.group_max_pool2d(torch.zeros(2, 4, 4), [2, 2], [1, 1], [0, 0]), ValueError, "4-D"),
    (lambda: ops.group_max_pool2d_backward(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 3, 3, dtype=torch.uint8),
                                           [1, 2, 4, 4], [2, 2], [1, 1], [0, 0]), ValueError, "grad_out"),
    (lambda: ops.group_max_pool2d_backward(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 3, dtype=torch.int64),
                                           [1, 2, 4, 4], [2, 2], [1, 1], [0, 0]), TypeError, "torch.uint8"),
    (lambda: ops.group_max_pool2d_backward(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 3, dtype=torch.uint8),
                                           [2, 4, 4], [2, 2], [1, 1], [0, 0]), ValueError, "input_size"),
    (lambda: ops.group_avg_pool2d_backward(torch.zeros(1, 2, 2, 2), [1, 2, 4, 4], [2, 2], [1, 1], [0, 0]),
     ValueError, "grad_out"),
    (lambda: ops.group_max_pool2d_gather(torch.zeros(1, 2, 4, 5), torch.zeros(1, 2, 3, 3, dtype=torch.uint8),
                                         [2, 2], [1, 1], [0, 0]), ValueError, "indices must have the output shape"),
    (lambda: ops.group_max_pool2d_gather(torch.zeros(2, 4, 5, dtype=torch.int32),
                                         torch.zeros(1, 2, 3, 3, dtype=torch.uint8), [2, 2], [1, 1], [0, 0]),
     ValueError, "values must be a 5-D"),
])
def test_bad_inputs(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.cuda
@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("case", CASES[:10], ids=lambda c: f"{c[0]}-k{c[1]}-s{c[2]}-p{c[3]}")
def test_cuda_matches_cpu(kind, dtype, case):
    shape, k, s, p = case
    ours, _ = POOLS[kind]
    x = torch.randn(shape).to(dtype)
    x.view(-1)[: x.numel() // 3] = 1.0  # ties: the first maximum on both devices
    xc = x.cuda().requires_grad_()
    x.requires_grad_()
    out, out_c = ours(x, k, s, p), ours(xc, k, s, p)
    # exact by construction: one per-element source for both devices (csrc/include/gconv_ext/spatial_pool.h),
    # the same window sums in the same order, a division and no multiply-add the compilers could contract
    torch.testing.assert_close(out_c.cpu(), out, atol=0, rtol=0)
    grad = torch.randn_like(out)
    (g,) = torch.autograd.grad(out, x, grad)
    (gc,) = torch.autograd.grad(out_c, xc, grad.cuda())
    torch.testing.assert_close(gc.cpu(), g, atol=0, rtol=0)  # same sums in the same order


@pytest.mark.cuda
def test_cuda_double_backward_and_gather():
    x = _no_ties((2, 3, 4, 7, 7))
    xc = x.cuda().requires_grad_()
    assert torch.autograd.gradgradcheck(lambda t: group_max_pool2d(t, 3, 2, 1), (xc,))
    v = torch.randn_like(x)
    # exact: a gather at the same (recomputed) argmax
    torch.testing.assert_close(ops.group_max_pool2d_gather(v.cuda(), xc.detach(), [3, 3], [2, 2], [1, 1]).cpu(),
                               ops.group_max_pool2d_gather(v, x, [3, 3], [2, 2], [1, 1]), atol=0, rtol=0)
