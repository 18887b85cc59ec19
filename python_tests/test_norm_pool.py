"""The fused layer norm + ReLU + spatial max pool (group_layer_norm_relu_max_pool2d): against the three torch ops
it replaces, in float64 and the low-precision dtypes, gradients, double backward, registration (opcheck,
torch.compile), bad inputs, the GCNN's fused forward, CUDA against CPU.

Tolerances (tolerances.py): the statistics are sums of M = C |G| H W terms, so the mean errs by at most
gamma_M mean|x| and the biased variance (a sum of M non-negative squares) by a relative gamma_{M+4}; a normalised
value y = (x - mean) rstd then errs by at most rstd gamma_M mean|x| + |y| gamma_{M+8}. The backward adds the sums
s1, s2 over the pooled outputs (at most M terms each, same bound) and the <= ceil(k/s)^2 routed terms of G.
Two evaluations (ours and the reference): a factor 2. The max and the routing are exact.
"""
from __future__ import annotations

import math

import pytest
import torch

from gconv_ext import _extension
from gconv_ext.models import GCNN
from gconv_ext.ops import group_layer_norm_relu_max_pool2d as fused
from gconv_ext.ops import reference

from tolerances import F64, gamma, unit_roundoff

pytestmark = pytest.mark.skipif(not _extension.available(), reason="compiled extension not built")
ops = torch.ops.gconv_ext

# (input shape, kernel_size, stride, padding): the GCNN's 2x2/1, overlapping and padded windows, strided, 4-D,
# a 1x1 window (layer norm + ReLU alone), windows of more than 256 taps (int32 taps)
CASES = [
    ((3, 4, 4, 9, 9), 2, 1, 0),
    ((2, 3, 4, 8, 7), 3, 2, 1),
    ((2, 5, 8, 6), (2, 3), (2, 1), (1, 0)),
    ((2, 3, 4, 6, 6), 1, 1, 0),
    ((2, 2, 2, 18, 18), 17, 1, 0),
]


def _ref(x, k, s, p, eps=1e-5):
    s = k if s is None else s
    return reference.group_layer_norm_relu_max_pool2d(x, k, s, p, eps)


def _no_ties(shape, dtype=F64, seed=0):
    """Distinct values (a random permutation, shifted and scaled so that the mean is not 0), so every window
    has one maximum, whatever the dtype's rounding."""
    n = math.prod(shape)
    g = torch.Generator().manual_seed(seed)
    return (3.0 * torch.randperm(n, generator=g, dtype=F64) / n + 0.7).reshape(shape).to(dtype)


def _stats64(x):
    dims = tuple(range(1, x.dim()))
    var, mean = torch.var_mean(x.double(), dim=dims, correction=0)
    return mean, torch.rsqrt(var + 1e-5)


def _forward_atol(x, acc_dtype, out_dtype):
    """Two evaluations of relu(y) (see the top), plus the final rounding to out_dtype."""
    m = math.prod(x.shape[1:])
    xd = x.double()
    _, rstd = _stats64(xd)
    mean_abs = xd.abs().flatten(1).mean(1)
    y_max = ((xd - xd.flatten(1).mean(1).view(-1, *[1] * (x.dim() - 1))).abs().flatten(1).amax(1) * rstd)
    stat = (rstd * gamma(m, acc_dtype) * mean_abs + y_max * gamma(m + 8, acc_dtype)).max().item()
    return 2 * stat + unit_roundoff(out_dtype) * y_max.max().item()


def _grad_atol(x, go, acc_dtype, out_dtype, k, s):
    """The backward's bound: rstd (|G| + |s1|/M + |xhat| |s2|/M) with every sum's gamma, and the roundings of G
    and of the result to out_dtype."""
    m = math.prod(x.shape[1:])
    xd, god = x.double(), go.double().abs()
    mean, rstd = _stats64(xd)
    shape = (-1,) + (1,) * (x.dim() - 1)
    xhat_max = ((xd - mean.view(shape)).abs().flatten(1).amax(1) * rstd)
    routes = math.ceil(k[0] / s[0]) * math.ceil(k[1] / s[1])
    g_max = god.flatten(1).amax(1) * routes
    sums = god.flatten(1).sum(1) / m * (1 + 2 * xhat_max)
    magnitude = rstd * (g_max + sums * (1 + xhat_max))
    bound = magnitude * (2 * gamma(2 * m + 16, acc_dtype) + gamma(routes, out_dtype) + 2 * unit_roundoff(out_dtype))
    return 2 * bound.max().item()


def _pairs(k, s):
    k2 = (k, k) if isinstance(k, int) else tuple(k)
    s2 = k2 if s is None else ((s, s) if isinstance(s, int) else tuple(s))
    return k2, s2


@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_the_three_ops_float64(case):
    shape, k, s, p = case
    x = _no_ties(shape).requires_grad_()
    out, want = fused(x, k, s, p), _ref(x, k, s, p)
    assert out.shape == want.shape and out.dtype == F64
    torch.testing.assert_close(out, want, atol=_forward_atol(x.detach(), F64, F64), rtol=0)
    assert (out > 0).any()
    if math.prod(_pairs(k, s)[0]) <= 9:  # small windows: both sides of the ReLU are exercised
        assert (out == 0).any()
    go = torch.randn(out.shape, dtype=F64)
    (g,) = torch.autograd.grad(out, x, go)
    (gw,) = torch.autograd.grad(want, x, go)
    torch.testing.assert_close(g, gw, atol=_grad_atol(x.detach(), go, F64, F64, *_pairs(k, s)), rtol=0)


def test_statistics_and_taps():
    x = _no_ties((3, 4, 4, 7, 7))
    out, idx, mean, rstd = ops.group_layer_norm_relu_max_pool2d(x, [2, 2], [1, 1], [0, 0], 1e-5)
    m64, r64 = _stats64(x)
    torch.testing.assert_close(mean, m64, atol=2 * gamma(196 * 4, F64) * x.abs().max().item(), rtol=0)
    torch.testing.assert_close(rstd, r64, atol=4 * gamma(196 * 4 + 8, F64) * r64.max().item(), rtol=0)
    # the taps are the max pool's: the normalisation is increasing, so it pools the same elements
    _, want_idx = ops.group_max_pool2d_with_indices(x, [2, 2], [1, 1], [0, 0])
    assert idx.dtype == torch.uint8 and torch.equal(idx, want_idx)


# float32 and bfloat16 with stride 1 and no padding run the CPU's vector loops (csrc/cpu/vec.inc): the 2x2 and 3x3
# windows as compile-time constants, others (4x2) at run time, and the 1x1 window as one elementwise loop
LOW_PRECISION_CASES = CASES[:4] + [((2, 3, 4, 10, 9), 3, 1, 0), ((2, 2, 4, 9, 11), (4, 2), 1, 0)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", LOW_PRECISION_CASES, ids=str)
def test_low_precision_against_float64(dtype, case):
    shape, k, s, p = case
    x = _no_ties(shape, dtype).requires_grad_()
    out = fused(x, k, s, p)
    assert out.dtype == dtype
    x64 = x.detach().double().requires_grad_()  # the same values: the same taps
    want = _ref(x64, k, s, p)
    acc = torch.float32
    torch.testing.assert_close(out.double(), want, atol=_forward_atol(x64.detach(), acc, dtype), rtol=0)
    go = torch.randn(out.shape, dtype=F64).to(dtype)
    (g,) = torch.autograd.grad(out, x, go)
    (gw,) = torch.autograd.grad(want, x64, go.double())
    torch.testing.assert_close(g.double(), gw, atol=_grad_atol(x64.detach(), go, acc, dtype, *_pairs(k, s)), rtol=0)


def test_gradcheck_and_gradgradcheck():
    for shape, k, s, p in CASES[:4]:
        x = _no_ties(shape[:2] + shape[2:-2] + (min(shape[-2], 6), min(shape[-1], 6))).requires_grad_()
        f = lambda t: fused(t, k, s, p)  # noqa: E731
        assert torch.autograd.gradcheck(f, (x,))
        assert torch.autograd.gradgradcheck(f, (x,))


def test_double_backward_matches_the_three_ops():
    x = _no_ties((2, 3, 4, 6, 6)).requires_grad_()
    v = torch.randn(2, 3, 4, 5, 5, dtype=F64)
    hv = []
    for f in (lambda t: fused(t, 2, 1), lambda t: _ref(t, 2, 1, 0)):
        (g,) = torch.autograd.grad((f(x) * v).sum(), x, create_graph=True)
        (h,) = torch.autograd.grad((g * g).sum(), x)
        hv.append(h)
    torch.testing.assert_close(hv[0], hv[1], atol=1e-9 * hv[1].abs().max().item(), rtol=0)


def test_the_backward_op_is_not_differentiable_itself():
    x = _no_ties((1, 2, 5, 5))
    out, idx, mean, rstd = ops.group_layer_norm_relu_max_pool2d(x, [2, 2], [1, 1], [0, 0], 1e-5)
    go = torch.randn_like(out).requires_grad_()
    g = ops.group_layer_norm_relu_max_pool2d_backward(go, x, out, idx, mean, rstd, [2, 2], [1, 1], [0, 0])
    with pytest.raises(RuntimeError, match="create_graph=True"):
        g.sum().backward()


def test_same_result_for_any_thread_count():
    from conftest import torch_threads

    x = _no_ties((5, 4, 4, 11, 11), torch.float32).requires_grad_()
    go = torch.randn(5, 4, 4, 10, 10)
    results = []
    for n in (1, 2):
        with torch_threads(n):
            out = fused(x, 2, 1)
            (g,) = torch.autograd.grad(out, x, go)
        results.append((out, g))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


def test_equivariant_to_quarter_turns():
    # the statistics are invariant up to the summation order, the pool commutes with quarter turns at this size
    x = _no_ties((2, 3, 4, 9, 9))
    out = fused(x, 2, 1)
    out_r = fused(torch.rot90(x, 1, (-2, -1)), 2, 1)
    torch.testing.assert_close(out_r, torch.rot90(out, 1, (-2, -1)), atol=_forward_atol(x, F64, F64), rtol=0)


def test_nan_propagates_and_empty_batch():
    x = _no_ties((2, 2, 6, 6))
    x[1, 0, 2, 2] = float("nan")
    out = fused(x, 2, 1)
    assert not out[0].isnan().any() and out[1].isnan().all()  # a NaN poisons its sample's statistics only
    e = torch.zeros(0, 3, 4, 6, 6, requires_grad=True)
    out = fused(e, 2, 1)
    assert out.shape == (0, 3, 4, 5, 5)
    out.sum().backward()
    assert e.grad.shape == e.shape


def _opcheck_samples():
    for rg in (False, True):
        for shape, k, s, p in [((2, 3, 4, 5, 6), [2, 2], [1, 1], [0, 0]), ((2, 3, 7, 6), [3, 2], [2, 1], [1, 1])]:
            x = _no_ties(shape).requires_grad_(rg)
            yield ops.group_layer_norm_relu_max_pool2d.default, (x, k, s, p, 1e-5)
    x = _no_ties((2, 3, 4, 5, 6))
    out, idx, mean, rstd = ops.group_layer_norm_relu_max_pool2d(x, [2, 2], [1, 1], [0, 0], 1e-5)
    yield ops.group_layer_norm_relu_max_pool2d_backward.default, (torch.randn_like(out), x, out, idx, mean, rstd,
                                                                  [2, 2], [1, 1], [0, 0])


@pytest.mark.parametrize("sample", list(_opcheck_samples()), ids=lambda s: f"{s[0]}-{len(s[1][0].shape)}d")
def test_opcheck(sample):
    op, args = sample
    torch.library.opcheck(op, args)


def test_torch_compile_fullgraph():
    x = _no_ties((2, 3, 4, 8, 8)).requires_grad_()

    def f(t):
        return fused(t.sin(), 2, 1).square().sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    expected = f(x)
    (want,) = torch.autograd.grad(expected, x)
    got = compiled(x)
    (have,) = torch.autograd.grad(got, x)
    # the same kernels on the same data
    torch.testing.assert_close(got, expected, atol=0, rtol=0)
    torch.testing.assert_close(have, want, atol=0, rtol=0)


@pytest.mark.parametrize("call,exc,match", [
    (lambda: fused(torch.zeros(2, 3, 4), 2), ValueError, "5-D group map"),
    (lambda: fused(torch.zeros(1, 2, 4, 4, dtype=torch.int64), 2), TypeError, "floating"),
    (lambda: fused([1.0], 2), TypeError, "torch.Tensor"),
    (lambda: fused(torch.zeros(1, 2, 4, 4), 0), ValueError, "kernel_size"),
    (lambda: fused(torch.zeros(1, 2, 4, 4), 2, padding=2), ValueError, "padding"),
    (lambda: fused(torch.zeros(1, 2, 2, 4), 3), ValueError, "too small"),
    (lambda: fused(torch.zeros(1, 2, 4, 4), 2, eps=0.0), ValueError, "eps"),
    (lambda: fused(torch.zeros(1, 2, 4, 4), 2, eps=float("nan")), ValueError, "eps"),
    (lambda: ops.group_layer_norm_relu_max_pool2d(torch.zeros(1, 2, 4, 4), [2, 2], [1, 1], [0, 0], -1.0),
     ValueError, "eps"),
    (lambda: _bad_backward(grad_out=torch.zeros(1, 2, 2, 2)), ValueError, "grad_out must have the output shape"),
    (lambda: _bad_backward(out=torch.zeros(1, 2, 3, 3, dtype=F64)), TypeError, "out must have the dtype"),
    (lambda: _bad_backward(indices=torch.zeros(1, 2, 3, 3, dtype=torch.int64)), TypeError, "torch.uint8"),
    (lambda: _bad_backward(mean=torch.zeros(2)), ValueError, "mean must have shape"),
    (lambda: _bad_backward(rstd=torch.zeros(1, dtype=F64)), TypeError, "rstd must be torch.float32"),
])
def test_bad_inputs(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def _bad_backward(**override):
    x = torch.randn(1, 2, 4, 4)
    out, idx, mean, rstd = ops.group_layer_norm_relu_max_pool2d(x, [2, 2], [1, 1], [0, 0], 1e-5)
    args = dict(grad_out=torch.zeros_like(out), input=x, out=out, indices=idx, mean=mean, rstd=rstd)
    args.update(override)
    return ops.group_layer_norm_relu_max_pool2d_backward(*args.values(), [2, 2], [1, 1], [0, 0])


# -- the GCNN's fused forward ---------------------------------------------------------------------------------

def _gcnn_pair(dtype=F64):
    torch.manual_seed(0)
    model = GCNN("C4", layers=3, channels=4).to(dtype)
    assert model.fuse_glue  # the default
    x = torch.randn(3, 1, 28, 28, dtype=dtype)
    return model, x


def _called_ops(fn) -> set[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages()}


@pytest.mark.parametrize("train", [True, False])
def test_gcnn_fused_forward_equals_module_by_module(train):
    model, x = _gcnn_pair()
    model.train(train)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        model(x)
    counts = {e.key: e.count for e in prof.key_averages()}
    # every block runs fused: the two with a pool, and LayerNorm + ReLU after the lifting and the last conv (a 1x1
    # window)
    assert counts.get("gconv_ext::group_layer_norm_relu_max_pool2d") == 4 and "aten::layer_norm" not in counts
    out = model(x)
    model.fuse_glue = False
    assert "gconv_ext::group_layer_norm_relu_max_pool2d" not in _called_ops(lambda: model(x))
    want = model(x)
    # float64: the same function, the statistics summed in other orders
    torch.testing.assert_close(out, want, atol=1e-10 * want.abs().max().item(), rtol=0)
    if train:
        grads = []
        for fuse in (True, False):
            model.fuse_glue = fuse
            model.zero_grad()
            model(x).square().sum().backward()
            grads.append([p.grad.clone() for p in model.parameters()])
        for a, b in zip(*grads):
            torch.testing.assert_close(a, b, atol=1e-9 * b.abs().max().item(), rtol=0)


def test_gcnn_bf16_autocast_fused_step_matches_module_by_module():
    # bfloat16 autocast fuses too: the fused op rounds the normalised maximum once, the three ops round every
    # normalised value and then take the maximum, which is the same value (rounding is monotone); only the
    # routing of tied maxima may differ. Outputs and gradients agree to bfloat16's precision.
    model, x = _gcnn_pair(torch.float32)
    outs, grads = [], []
    for fuse in (True, False):
        model.fuse_glue = fuse
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
        out.float().square().sum().backward()
        outs.append(out.float())
        grads.append([p.grad.clone() for p in model.parameters()])
    torch.testing.assert_close(outs[0], outs[1], atol=0.02 * outs[1].abs().max().item(), rtol=0)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=0.05 * b.abs().max().item(), rtol=0)


def test_gcnn_hooks_see_every_module():
    model, x = _gcnn_pair()
    seen = []
    handle = model.features[4].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    try:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            out = model(x)
    finally:
        handle.remove()
    assert seen == [torch.Size([3, 4, 4, 22, 22])]  # the LayerNorm's own output: that block ran unfused
    counts = {e.key: e.count for e in prof.key_averages()}
    assert counts.get("gconv_ext::group_layer_norm_relu_max_pool2d") == 3  # the other blocks still fused
    model.fuse_glue = False
    torch.testing.assert_close(out, model(x), atol=1e-10, rtol=0)


def test_gcnn_export_keeps_standard_ops():
    from gconv_ext.nn import export

    model, x = _gcnn_pair()
    model.eval()
    exported = export(model)
    assert exported.fuse_glue  # still asked for, but an exported model has no fusable block
    names = _called_ops(lambda: exported(x))
    assert not any(n.startswith("gconv_ext::") for n in names)
    torch.testing.assert_close(exported(x), model(x), atol=1e-10, rtol=0)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_cuda_matches_cpu(dtype, case):
    shape, k, s, p = case
    x = _no_ties(shape, dtype).requires_grad_()
    xc = x.detach().cuda().requires_grad_()
    out, out_c = fused(x, k, s, p), fused(xc, k, s, p)
    # the same per-element arithmetic (norm_pool.h); the statistics are summed in another order
    atol = 2 * _forward_atol(x.detach(), F64 if dtype == F64 else torch.float32, dtype)
    torch.testing.assert_close(out_c.cpu(), out, atol=atol, rtol=0)
    go = torch.randn(out.shape, dtype=F64).to(dtype)
    (g,) = torch.autograd.grad(out, x, go)
    (gc,) = torch.autograd.grad(out_c, xc, go.cuda())
    acc = F64 if dtype == F64 else torch.float32
    torch.testing.assert_close(gc.cpu(), g, atol=2 * _grad_atol(x.detach(), go, acc, dtype, *_pairs(k, s)), rtol=0)


@pytest.mark.cuda
def test_cuda_gradgradcheck():
    x = _no_ties((2, 3, 4, 6, 6)).cuda().requires_grad_()
    assert torch.autograd.gradgradcheck(lambda t: fused(t, 2, 1), (x,))


def test_gcnn_fuses_only_where_measured_faster():
    # fp32 / fp64 / bfloat16 (autocast) on the CPU; float16 (unmeasured) runs the three ops
    model, x = _gcnn_pair(torch.float32)
    for dtype, want in ((None, 4), (torch.bfloat16, 4), (torch.float16, None)):
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None), \
                torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            model(x)
        counts = {e.key: e.count for e in prof.key_averages()}
        assert counts.get("gconv_ext::group_layer_norm_relu_max_pool2d") == want, dtype
