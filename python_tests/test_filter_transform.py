"""The filter-transform custom operators against the reference, exactness, gradients, registration."""
from __future__ import annotations

import pytest
import torch

import gconv_ext
from gconv_ext import _extension
from gconv_ext.groups import Group
from gconv_ext.ops import reference

from samples import EXACT_GROUPS, group_weight, lift_weight, random_filter_cases
from tolerances import F64, gamma, interp_atol, sum_atol, unit_roundoff

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
    # C++ plan vs Python matrix: source positions a few ulps apart, <= 4 terms (tolerances.interp_atol)
    torch.testing.assert_close(gconv_ext.lift_filter(w, group, disk), reference.lift_filter(w, group, disk),
                               atol=interp_atol(k, w.abs().max()), rtol=0)
    wg = group_weight(co, ci, group, k)
    torch.testing.assert_close(gconv_ext.group_filter(wg, group, disk), reference.group_filter(wg, group, disk),
                               atol=interp_atol(k, wg.abs().max()), rtol=0)


@pytest.mark.parametrize("group", [Group(n, r) for r in (False, True) for n in range(1, 17)], ids=str)
def test_every_group_order_matches_reference(group):
    # every N in 1..16: the group axis is a permutation, never an interpolation (the study's float
    # wrap-around zeroed whole slices for N = 6, 10, 12, 16)
    wg = group_weight(2, 2, group, 3)
    out = gconv_ext.group_filter(wg, group)
    # the group axis is an exact permutation; the spatial part as in test_matches_reference_float64
    torch.testing.assert_close(out, reference.group_filter(wg, group), atol=interp_atol(3, wg.abs().max()), rtol=0)
    assert (out.flatten(3).abs().sum(-1) > 0).all(), "no filter slice may be zeroed"


def test_reference_matches_study_grid_sample():
    w = lift_weight(3, 2, 5)
    for group in (Group(4), Group(8), Group(6, True)):
        # affine_grid + unnormalise: a few roundings of a coordinate of size <= k, as in interp_atol
        torch.testing.assert_close(reference.lift_filter_grid_sample(w, group), reference.lift_filter(w, group),
                                   atol=interp_atol(5, w.abs().max()), rtol=0)
        wg = group_weight(2, 2, group, 5)
        torch.testing.assert_close(reference.group_filter_grid_sample(wg, group), reference.group_filter(wg, group),
                                   atol=interp_atol(5, wg.abs().max()), rtol=0)


def _low_precision_tols(dtype, magnitude, k):
    """The kernel sums <= 4 terms in float32 (opmath) with float32 weights, then rounds to ``dtype``; the
    oracle is float64 on the same rounded inputs. Error <= u(dtype) |exact| (the final rounding) +
    gamma_5(float32) max|w| (weights rounded + 4-term sum), + the position difference of interp_atol;
    a factor 2 of margin on each."""
    rtol = 2 * unit_roundoff(dtype)
    atol = 2 * gamma(5, torch.float32) * float(magnitude) + interp_atol(k, magnitude, F64)
    return rtol, atol


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_low_precision_dtypes(dtype):
    group = Group(8, True)
    w = lift_weight(4, 3, 5).to(dtype)
    out = gconv_ext.lift_filter(w, group)
    assert out.dtype == dtype
    rtol, atol = _low_precision_tols(dtype, w.abs().max().double(), 5)
    torch.testing.assert_close(out.double(), reference.lift_filter(w.double(), group), atol=atol, rtol=rtol)
    wg = group_weight(3, 2, group, 5).to(dtype)
    out = gconv_ext.group_filter(wg, group)
    rtol, atol = _low_precision_tols(dtype, wg.abs().max().double(), 5)
    torch.testing.assert_close(out.double(), reference.group_filter(wg.double(), group), atol=atol, rtol=rtol)


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
    # exact by construction: the plan snaps these source positions to taps (one term, weight 1.0), so the
    # transform is a permutation of the taps in every dtype
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
        assert torch.equal(out[:, r], torch.rot90(w, r, dims=(-2, -1)))  # a permutation: exact


def test_disk_mask_zeroes_outside():
    k = 5
    out = gconv_ext.lift_filter(torch.ones(1, 1, k, k), "C8", disk_mask=True)
    mask = reference.disk_mask(k, torch.float32)
    # exact: masked taps are never written; the identity element copies the (masked) taps
    assert torch.equal(out * (1 - mask), torch.zeros_like(out))
    assert mask.sum() == 21  # the 4 corners go for k = 5
    assert torch.equal(out[0, 0, 0], mask)  # identity element: the masked filter itself


# -- representation property -------------------------------------------------------------------

def _composition_errors(group: Group, w: torch.Tensor, disk: bool, lift=gconv_ext.lift_filter) -> torch.Tensor:
    """``err[a, b]``: relative L2 error (over the bank) of transforming by a then by b against by ``b a``."""
    lifted = lift(w, group, disk)
    err = torch.zeros(group.order, group.order, dtype=F64)
    for a in range(group.order):
        twice = lift(lifted[:, a].contiguous(), group, disk)
        for b in range(group.order):
            target = lifted[:, group.compose(b, a)]
            err[a, b] = (twice[:, b] - target).norm() / target.norm()
    return err


def _expected_composition_errors(group: Group, k: int, disk: bool, cov: torch.Tensor, bank: int):
    """The same error from the transform matrices alone, no sampling: for filters w with covariance
    ``cov``, ``E||(M_b M_a - M_ba) w||^2 / E||M_ba w||^2 = tr(A) / tr(B)`` with ``A = D^T D cov``,
    ``D = M_b M_a - M_ba``, ``B = M_ba^T M_ba cov``. Also the standard deviation of ``log(err^2 / that)``
    for a bank of ``bank`` independent Gaussian filters (delta method: a Gaussian quadratic form has
    variance 2 tr((A)^2), two of them covariance 2 tr(A B))."""
    m = reference.transform_matrix(group, k, disk)
    err = torch.zeros(group.order, group.order, dtype=F64)
    spread = torch.zeros(group.order, group.order, dtype=F64)
    for a in range(group.order):
        for b in range(group.order):
            target = m[group.compose(b, a)]
            d = m[b] @ m[a] - target
            qa, qb = d.T @ d @ cov, target.T @ target @ cov
            ta, tb = torch.trace(qa), torch.trace(qb)
            err[a, b] = (ta / tb).sqrt()
            if ta > 0:
                var = 2 / bank * (torch.trace(qa @ qa) / ta**2 + torch.trace(qb @ qb) / tb**2
                                  - 2 * torch.trace(qa @ qb) / (ta * tb))
                spread[a, b] = var.clamp_min(0).sqrt()
    return err, spread


def _smooth_covariance(k: int) -> torch.Tensor:
    """Covariance of _smooth_filter's taps: env * (a0 + a1 x + a2 y) with a ~ N(0, I)."""
    c = (k - 1) / 2
    ii, jj = torch.meshgrid(torch.arange(k, dtype=F64), torch.arange(k, dtype=F64), indexing="ij")
    x, y = (jj - c) * 2 / k, (c - ii) * 2 / k
    env = torch.exp(-2 * (x**2 + y**2))
    basis = torch.stack([env, env * x, env * y], -1).reshape(k * k, 3)
    return basis @ basis.T


@pytest.mark.parametrize("group", [Group(4), Group(4, True)], ids=str)
def test_transform_is_a_representation_exactly_for_c4_d4(group):
    # exact by construction: every element permutes the taps, so composing permutations is exact
    assert _composition_errors(group, lift_weight(4, 4, 5), disk=False).max() == 0.0


@pytest.mark.parametrize("group", [Group(8), Group(16, True), Group(6)], ids=str)
@pytest.mark.parametrize("k", [5, 7])
def test_transform_is_a_representation_within_interpolation_error(group, k):
    # float64 throughout: the errors are properties of bilinear interpolation, the same on every machine.
    # The bound is the error the transform matrices predict for the filters' distribution (no sampling),
    # not a measured number.
    smooth, white = _smooth_filter(6, 6, k), lift_weight(6, 6, k)
    expected_white, spread_white = _expected_composition_errors(group, k, True, torch.eye(k * k, dtype=F64), 36)
    expected_smooth, spread_smooth = _expected_composition_errors(group, k, True, _smooth_covariance(k), 36)
    # smooth filters keep their energy at low frequencies, where interpolation errs least (~|w|^2):
    # analytically, a smooth filter bank composes better than white noise
    assert 0 < expected_smooth.max() < expected_white.max() < 1
    for w, expected, spread in ((smooth, expected_smooth, spread_smooth), (white, expected_white, spread_white)):
        err = _composition_errors(group, w, disk=True)
        # ours computes the reference's math: each transform differs by <= interp_atol per tap (the
        # second one also carries the first's difference, the rows of M summing to <= 1); relative to the
        # smallest target slice, over the whole bank, for both terms of the difference and the ratio: 3x
        atol = 2 * interp_atol(k, w.abs().max())
        target_norm = reference.lift_filter(w, group, True).flatten(2).norm(dim=(0, 2)).min()
        rounding = 3 * atol * w.numel() ** 0.5 / target_norm
        ref = _composition_errors(group, w, disk=True, lift=reference.lift_filter)
        assert (err - ref).abs().max() <= rounding
        # pairs the matrices compose exactly (identity, 90-degree steps) err by rounding only
        real = expected > 1e3 * rounding
        assert (err[~real] <= 1e3 * rounding).all()
        # the 6 x 6 bank is a sample: its error is within 6 standard deviations of the expectation
        # (log(err^2 / expected^2); the spread is computed from the matrices, at most ~0.16 here)
        deviation = (err[real] ** 2 / expected[real] ** 2).log().abs()
        assert (deviation <= 6 * spread[real]).all(), (deviation / spread[real]).max()


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
    # <M w, y> and <w, M^T y> are the same sum of products in two orders: 2 gamma_n sum |y| M |w| with
    # M >= 0, n = the outputs plus the <= 4 terms inside each transformed tap (the adjoint's <= 9 |G| fold
    # into the same count: every product appears once)
    for fwd, bwd, wt, yt in ((ops.lift_filter, ops.lift_filter_backward, w, y),
                             (ops.group_filter, ops.group_filter_backward, wg, yg)):
        lhs = (fwd(wt, 5, True, False) * yt).sum()
        rhs = (wt * bwd(yt, 5, True, False)).sum()
        magnitude = (fwd(wt.abs(), 5, True, False) * yt.abs()).sum()
        n = yt.numel() * 4 + wt.numel()
        torch.testing.assert_close(lhs, rhs, atol=sum_atol(n, magnitude, F64), rtol=0)


def test_backward_is_deterministic():
    wg = group_weight(8, 8, Group(8), 5, dtype=torch.float32)
    grad = torch.randn(8, 8, 8, 8, 5, 5)
    first = ops.group_filter_backward(grad, 8, False, False)
    for _ in range(3):  # exact: the same op on the same data must sum in the same order (the claim tested)
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
    # two float32 evaluations of the same formula (any order): 2 gamma_n sum |terms|. The value sums
    # lifted^2 (+ <= 4 terms inside each tap) and |sin| <= 1; each gradient entry is the adjoint of 2 lifted
    # or cos(.) (<= 9 taps of each of the |G| slices, of terms <= 4 long) times a few roundings
    with torch.no_grad():
        lifted, n_g = gconv_ext.lift_filter(w, group), group.order
        value_mag = lifted.double().square().sum() + gconv_ext.group_filter(wg, group).numel()
        n_value = max(lifted.numel(), gconv_ext.group_filter(wg, group).numel()) + 4 + 1
        mag_a = ops.lift_filter_backward(2 * lifted.abs(), 4, True, False).abs().max()
        mag_b = ops.group_filter_backward(torch.ones_like(gconv_ext.group_filter(wg, group)), 4, True, False).max()
    n_grad = 9 * n_g + 4 + 2  # adjoint terms, the terms inside lifted, the scaling by 2 / cos
    torch.testing.assert_close(got, expected, atol=sum_atol(n_value, value_mag, torch.float32), rtol=0)
    torch.testing.assert_close(ca, ga, atol=sum_atol(n_grad, mag_a, torch.float32), rtol=0)
    torch.testing.assert_close(cb, gb, atol=sum_atol(n_grad, mag_b, torch.float32), rtol=0)


# -- inputs -----------------------------------------------------------------------------------

def test_non_contiguous_input_works():
    w = lift_weight(4, 3, 5).transpose(0, 1)  # [3, 4, 5, 5], non-contiguous
    assert not w.is_contiguous()
    # as in test_matches_reference_float64: source positions a few ulps apart, <= 4 terms
    torch.testing.assert_close(gconv_ext.lift_filter(w, "C8"), reference.lift_filter(w, Group(8)),
                               atol=interp_atol(5, w.abs().max()), rtol=0)
    wg = group_weight(3, 2, Group(4), 5).permute(0, 1, 2, 4, 3)
    torch.testing.assert_close(gconv_ext.group_filter(wg, "C4"), reference.group_filter(wg, Group(4)),
                               atol=0, rtol=0)  # C4: a permutation, exact


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
    # exact: without the extension lift_filter *is* reference.lift_filter, on the same input
    torch.testing.assert_close(out, reference.lift_filter(w, Group(8)), atol=0, rtol=0)
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
    # both devices run the same plan (float32 weights below float64) in opmath, <= 4 terms per tap and
    # <= 9 |G| per adjoint entry, then round to dtype: each may round its accumulator to an adjacent value
    # (2 u(dtype) relative) and the accumulators differ by 2 gamma_n (opmath) sum |terms|
    acc = F64 if dtype == F64 else torch.float32
    rtol = 2 * unit_roundoff(dtype)
    for cpu_in, cuda_in, fn in ((w, wc, gconv_ext.lift_filter), (wg, wgc, gconv_ext.group_filter)):
        out_cpu, out_cuda = fn(cpu_in, group), fn(cuda_in, group)
        atol = sum_atol(5, cpu_in.detach().abs().max().double(), acc)
        torch.testing.assert_close(out_cuda.cpu(), out_cpu, atol=atol, rtol=rtol)
        grad = torch.randn_like(out_cpu)
        (g_cpu,) = torch.autograd.grad(out_cpu, cpu_in, grad)
        (g_cuda,) = torch.autograd.grad(out_cuda, cuda_in, grad.cuda())
        g_atol = sum_atol(9 * group.order, grad.abs().max().double() * 9 * group.order, acc)
        torch.testing.assert_close(g_cuda.cpu(), g_cpu, atol=g_atol, rtol=rtol)


@pytest.mark.cuda
def test_cuda_opcheck_and_gradcheck():
    w = lift_weight(2, 3, 5, device="cuda", requires_grad=True)
    torch.library.opcheck(ops.lift_filter.default, (w, 4, True, False))
    assert torch.autograd.gradgradcheck(lambda t: gconv_ext.lift_filter(t, "C8"), (w,))
