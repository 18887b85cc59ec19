"""The filter-transform custom operators against the reference, exactness, gradients, registration."""
from __future__ import annotations

import pytest
import torch

import gconv_ext
from gconv_ext import _extension
from gconv_ext.groups import Group
from gconv_ext.ops import reference

from samples import EXACT_GROUPS, group_weight, lift_weight, random_filter_cases

pytestmark = pytest.mark.skipif(not _extension.available(), reason="compiled extension not built")
ops = torch.ops.gconv_ext


def _smooth_filter(c_out, c_in, k, dtype=torch.float64):
    """A smooth, rotation-friendly filter bank: Gaussian-windowed low-order polynomials."""
    c = (k - 1) / 2
    ii, jj = torch.meshgrid(torch.arange(k, dtype=dtype), torch.arange(k, dtype=dtype), indexing="ij")
    x, y = (jj - c) * 2 / k, (c - ii) * 2 / k
    env = torch.exp(-2 * (x**2 + y**2))
    a = torch.randn(c_out, c_in, 3, 1, 1, dtype=dtype)
    return env * (a[:, :, 0] + a[:, :, 1] * x + a[:, :, 2] * y)


# -- against the reference ----------------------------------------------------------------------

@pytest.mark.parametrize("case", list(random_filter_cases(60)), ids=lambda c: f"{c[0].name}-k{c[3]}-disk{int(c[4])}")
def test_matches_reference_float64(case):
    group, co, ci, k, disk = case
    w = lift_weight(co, ci, k)
    torch.testing.assert_close(gconv_ext.lift_filter(w, group, disk), reference.lift_filter(w, group, disk),
                               atol=1e-13, rtol=0)
    wg = group_weight(co, ci, group, k)
    torch.testing.assert_close(gconv_ext.group_filter(wg, group, disk), reference.group_filter(wg, group, disk),
                               atol=1e-13, rtol=0)


@pytest.mark.parametrize("group", [Group(n, r) for r in (False, True) for n in range(1, 17)], ids=str)
def test_every_group_order_matches_reference(group):
    # every N in 1..16: the group axis is a permutation, never an interpolation (the study's float
    # wrap-around zeroed whole slices for N = 6, 10, 12, 16)
    wg = group_weight(2, 2, group, 3)
    out = gconv_ext.group_filter(wg, group)
    torch.testing.assert_close(out, reference.group_filter(wg, group), atol=1e-13, rtol=0)
    assert (out.flatten(3).abs().sum(-1) > 0).all(), "no filter slice may be zeroed"


def test_reference_matches_study_grid_sample():
    w = lift_weight(3, 2, 5)
    for group in (Group(4), Group(8), Group(6, True)):
        torch.testing.assert_close(reference.lift_filter_grid_sample(w, group), reference.lift_filter(w, group),
                                   atol=1e-12, rtol=0)
        wg = group_weight(2, 2, group, 5)
        torch.testing.assert_close(reference.group_filter_grid_sample(wg, group), reference.group_filter(wg, group),
                                   atol=1e-12, rtol=0)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2), (torch.float16, 2e-3)])
def test_low_precision_dtypes(dtype, tol):
    group = Group(8, True)
    w = lift_weight(4, 3, 5)
    out = gconv_ext.lift_filter(w.to(dtype), group)
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), reference.lift_filter(w.to(dtype).double(), group), atol=tol, rtol=tol)
    wg = group_weight(3, 2, group, 5)
    out = gconv_ext.group_filter(wg.to(dtype), group)
    torch.testing.assert_close(out.double(), reference.group_filter(wg.to(dtype).double(), group), atol=tol, rtol=tol)


# -- exactness --------------------------------------------------------------------------------

def _expected_slice(group: Group, g: int, w: torch.Tensor) -> torch.Tensor:
    m, r = group.element(g)
    if m:
        w = torch.flip(w, dims=(-1,))
    return torch.rot90(w, 4 * r // group.rotations, dims=(-2, -1))


@pytest.mark.parametrize("group", EXACT_GROUPS + [Group(8), Group(16, True)], ids=str)
@pytest.mark.parametrize("k", range(1, 8))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_quarter_turns_and_flips_are_bit_exact(group, k, dtype):
    w = lift_weight(3, 2, k, dtype=dtype)
    wg = group_weight(2, 3, group, k, dtype=dtype)
    lifted = gconv_ext.lift_filter(w, group)
    expanded = gconv_ext.group_filter(wg, group)
    for g in range(group.order):
        if (4 * group.element(g)[1]) % group.rotations:
            continue  # not a multiple of 90 degrees
        assert torch.equal(lifted[:, g], _expected_slice(group, g, w))
        for h in range(group.order):
            src = group.compose(group.inverse(g), h)
            assert torch.equal(expanded[:, g, :, h], _expected_slice(group, g, wg[:, :, src]))


def test_c4_slices_are_rot90():
    w = lift_weight(5, 4, 4, dtype=torch.float32)
    out = gconv_ext.lift_filter(w, "C4")
    for r in range(4):
        assert torch.equal(out[:, r], torch.rot90(w, r, dims=(-2, -1)))


def test_disk_mask_zeroes_outside():
    k = 5
    out = gconv_ext.lift_filter(torch.ones(1, 1, k, k), "C8", disk_mask=True)
    mask = reference.disk_mask(k, torch.float32)
    assert torch.equal(out * (1 - mask), torch.zeros_like(out))
    assert mask.sum() == 21  # the 4 corners go for k = 5
    assert torch.equal(out[0, 0, 0], mask)  # identity element: the masked filter itself


# -- representation property -------------------------------------------------------------------

def _composition_error(group: Group, w: torch.Tensor, disk: bool) -> float:
    lifted = gconv_ext.lift_filter(w, group, disk)
    worst = 0.0
    for a in range(group.order):
        twice = gconv_ext.lift_filter(lifted[:, a].contiguous(), group, disk)
        for b in range(group.order):
            target = lifted[:, group.compose(b, a)]
            worst = max(worst, ((twice[:, b] - target).norm() / target.norm()).item())
    return worst


@pytest.mark.parametrize("group", [Group(4), Group(4, True)], ids=str)
def test_transform_is_a_representation_exactly_for_c4_d4(group):
    assert _composition_error(group, lift_weight(4, 4, 5), disk=False) == 0.0


@pytest.mark.parametrize("group", [Group(8), Group(16, True), Group(6)], ids=str)
@pytest.mark.parametrize("k,bound", [(5, 0.2), (7, 0.15)])
def test_transform_is_a_representation_within_interpolation_error(group, k, bound):
    # Measured (float64, relative L2 over the bank, worst pair g, h): smooth disk-masked filters
    # 0.11-0.16 for k = 5 and 0.11-0.12 for k = 7; white-noise filters 0.59-0.68.
    err = _composition_error(group, _smooth_filter(6, 6, k), disk=True)
    assert 0.0 < err < bound
    assert _composition_error(group, lift_weight(6, 6, k), disk=True) < 0.75


# -- autograd ---------------------------------------------------------------------------------

@pytest.mark.parametrize("group", [Group(4), Group(3, True), Group(8)], ids=str)
@pytest.mark.parametrize("k", [1, 4, 5])
def test_gradcheck_and_gradgradcheck(group, k):
    w = lift_weight(2, 3, k, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: gconv_ext.lift_filter(t, group, True), (w,))
    assert torch.autograd.gradgradcheck(lambda t: gconv_ext.lift_filter(t, group, True), (w,))
    wg = group_weight(2, 2, group, k, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: gconv_ext.group_filter(t, group), (wg,))
    assert torch.autograd.gradgradcheck(lambda t: gconv_ext.group_filter(t, group), (wg,))


def test_backward_is_the_adjoint():
    group = Group(5, True)
    w, wg = lift_weight(3, 2, 5), group_weight(2, 3, group, 4)
    y, yg = torch.randn(3, 10, 2, 5, 5, dtype=torch.float64), torch.randn(2, 10, 3, 10, 4, 4, dtype=torch.float64)
    lhs = (ops.lift_filter(w, 5, True, False) * y).sum()
    rhs = (w * ops.lift_filter_backward(y, 5, True, False)).sum()
    torch.testing.assert_close(lhs, rhs, atol=1e-12, rtol=1e-12)
    lhs = (ops.group_filter(wg, 5, True, False) * yg).sum()
    rhs = (wg * ops.group_filter_backward(yg, 5, True, False)).sum()
    torch.testing.assert_close(lhs, rhs, atol=1e-12, rtol=1e-12)


def test_backward_is_deterministic():
    wg = group_weight(8, 8, Group(8), 5, dtype=torch.float32)
    grad = torch.randn(8, 8, 8, 8, 5, 5)
    first = ops.group_filter_backward(grad, 8, False, False)
    for _ in range(3):
        assert torch.equal(ops.group_filter_backward(grad, 8, False, False), first)


# -- registration: opcheck, compile, fake ------------------------------------------------------

def _opcheck_samples():
    for group in (Group(4), Group(3, True)):
        for rg in (False, True):
            yield ops.lift_filter.default, (lift_weight(2, 3, 5, requires_grad=rg), group.rotations, group.reflections, rg)
            yield ops.group_filter.default, (group_weight(2, 2, group, 3, requires_grad=rg), group.rotations,
                                             group.reflections, False)
        yield ops.lift_filter_backward.default, (torch.randn(2, group.order, 3, 5, 5, dtype=torch.float64),
                                                 group.rotations, group.reflections, False)
        yield ops.group_filter_backward.default, (torch.randn(2, group.order, 2, group.order, 3, 3,
                                                              dtype=torch.float64), group.rotations, group.reflections, True)


@pytest.mark.parametrize("sample", list(_opcheck_samples()), ids=lambda s: str(s[0]))
def test_opcheck(sample):
    op, args = sample
    torch.library.opcheck(op, args)


def test_fake_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        w = torch.empty(6, 5, 7, 7)
        assert gconv_ext.lift_filter(w, "D4").shape == (6, 8, 5, 7, 7)
        wg = torch.empty(6, 5, 8, 3, 3)
        assert gconv_ext.group_filter(wg, "D4").shape == (6, 8, 5, 8, 3, 3)


def test_torch_compile_fullgraph():
    group = Group(4, True)
    w = lift_weight(3, 2, 5, dtype=torch.float32, requires_grad=True)
    wg = group_weight(2, 3, group, 3, dtype=torch.float32, requires_grad=True)

    def f(a, b):
        return gconv_ext.lift_filter(a, group).square().sum() + gconv_ext.group_filter(b, group).sin().sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    expected = f(w, wg)
    ga, gb = torch.autograd.grad(expected, (w, wg))
    got = compiled(w, wg)
    ca, cb = torch.autograd.grad(got, (w, wg))
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(ca, ga)
    torch.testing.assert_close(cb, gb)


# -- inputs -----------------------------------------------------------------------------------

def test_non_contiguous_input_works():
    w = lift_weight(4, 3, 5).transpose(0, 1)  # [3, 4, 5, 5], non-contiguous
    assert not w.is_contiguous()
    torch.testing.assert_close(gconv_ext.lift_filter(w, "C8"), reference.lift_filter(w, Group(8)), atol=1e-13, rtol=0)
    wg = group_weight(3, 2, Group(4), 5).permute(0, 1, 2, 4, 3)
    torch.testing.assert_close(gconv_ext.group_filter(wg, "C4"), reference.group_filter(wg, Group(4)), atol=1e-13, rtol=0)


def test_empty_tensors():
    assert gconv_ext.lift_filter(torch.empty(0, 3, 5, 5), "C4").shape == (0, 4, 3, 5, 5)
    assert gconv_ext.group_filter(torch.empty(2, 0, 4, 5, 5), "C4").shape == (2, 4, 0, 4, 5, 5)
    w = torch.empty(0, 3, 5, 5, requires_grad=True)
    gconv_ext.lift_filter(w, "C4").sum().backward()
    assert w.grad.shape == w.shape


@pytest.mark.parametrize("fn,arg,match,exc", [
    (gconv_ext.lift_filter, torch.zeros(3, 5, 5), "4-D", ValueError),
    (gconv_ext.lift_filter, torch.zeros(1, 1, 3, 4), "square", ValueError),
    (gconv_ext.lift_filter, torch.zeros(1, 1, 0, 0), ">= 1", ValueError),
    (gconv_ext.lift_filter, torch.zeros(1, 1, 3, 3, dtype=torch.int64), "floating", TypeError),
    (gconv_ext.group_filter, torch.zeros(1, 1, 3, 3, 3), "group order", ValueError),
    (gconv_ext.group_filter, torch.zeros(1, 1, 3, 3), "5-D", ValueError),
])
def test_bad_inputs_python(fn, arg, match, exc):
    with pytest.raises(exc, match=match):
        fn(arg, "C4")


@pytest.mark.parametrize("call,match", [
    (lambda: ops.lift_filter(torch.zeros(3, 5, 5), 4, False, False), "4-D"),
    (lambda: ops.lift_filter(torch.zeros(1, 1, 3, 3), 0, False, False), "rotations"),
    (lambda: ops.lift_filter(torch.zeros(1, 1, 3, 3, dtype=torch.int32), 4, False, False), "floating"),
    (lambda: ops.group_filter(torch.zeros(1, 1, 4, 3, 3), 4, True, False), r"\|G\| = 8 for D4"),
    (lambda: ops.lift_filter_backward(torch.zeros(1, 3, 1, 3, 3), 4, False, False), r"\|G\| = 4"),
    (lambda: ops.group_filter_backward(torch.zeros(1, 4, 1, 3, 3, 3), 4, False, False), r"\|G\| = 4"),
])
def test_bad_inputs_cpp(call, match):
    with pytest.raises((ValueError, TypeError, RuntimeError), match=match):
        call()


def test_bad_group_argument():
    with pytest.raises(ValueError, match="group"):
        gconv_ext.lift_filter(torch.zeros(1, 1, 3, 3), "Q4")


# -- build information and the fallback --------------------------------------------------------

def test_build_info():
    info = gconv_ext.build_info()
    assert info["compiled"] and info["error"] is None
    assert info["torch_version_built"] == torch.__version__
    if info["with_cuda"]:
        assert info["cuda_version"] and info["cuda_archs"]


def test_fallback_to_reference_when_not_built(monkeypatch):
    monkeypatch.setattr(_extension, "_C", None)
    monkeypatch.setattr(_extension, "_LOAD_ERROR", "not built (test)")
    monkeypatch.setattr(_extension, "_warned", False)
    w = lift_weight(2, 2, 5, requires_grad=True)
    with pytest.warns(RuntimeWarning, match="not built"):
        out = gconv_ext.lift_filter(w, "C8")
    torch.testing.assert_close(out, reference.lift_filter(w, Group(8)))
    out.sum().backward()
    assert w.grad is not None
    assert gconv_ext.build_info()["compiled"] is False


# -- CUDA -------------------------------------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("group", [Group(4, True), Group(8), Group(5, True)], ids=str)
def test_cuda_matches_cpu(dtype, group):
    w = lift_weight(4, 3, 5, dtype=dtype, requires_grad=True)
    wg = group_weight(3, 4, group, 5, dtype=dtype, requires_grad=True)
    wc, wgc = w.detach().cuda().requires_grad_(), wg.detach().cuda().requires_grad_()
    tol = {torch.float64: 1e-12, torch.float32: 1e-5}.get(dtype, 1e-2)
    for cpu_in, cuda_in, fn in ((w, wc, gconv_ext.lift_filter), (wg, wgc, gconv_ext.group_filter)):
        out_cpu, out_cuda = fn(cpu_in, group), fn(cuda_in, group)
        torch.testing.assert_close(out_cuda.cpu(), out_cpu, atol=tol, rtol=tol)
        grad = torch.randn_like(out_cpu)
        (g_cpu,) = torch.autograd.grad(out_cpu, cpu_in, grad)
        (g_cuda,) = torch.autograd.grad(out_cuda, cuda_in, grad.cuda())
        torch.testing.assert_close(g_cuda.cpu(), g_cpu, atol=tol * 10, rtol=tol * 10)


@pytest.mark.cuda
def test_cuda_opcheck_and_gradcheck():
    w = lift_weight(2, 3, 5, device="cuda", requires_grad=True)
    torch.library.opcheck(ops.lift_filter.default, (w, 4, True, False))
    assert torch.autograd.gradgradcheck(lambda t: gconv_ext.lift_filter(t, "C8"), (w,))
