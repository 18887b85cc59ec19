"""The fused lifting / group convolution operators: reference, gradients, registration, inputs, equivariance."""
from __future__ import annotations

import random

import pytest
import torch

import gconv_ext
from gconv_ext import _extension
from gconv_ext.groups import Group
from gconv_ext.ops import group_conv2d, lifting_conv2d, reference

from tolerances import (F64, chain_rtol, conv_atol, conv_grad_atols, conv_grad_magnitudes, conv_magnitude, gamma,
                        sum_atol, unit_roundoff)

pytestmark = pytest.mark.skipif(not _extension.available(), reason="compiled extension not built")
ops = torch.ops.gconv_ext

GROUPS = [Group(4), Group(4, True), Group(8), Group(3, True)]


def _conv_cases(count: int, seed: int = 0):
    """(lifting, group, B, C_in, C_out, H, k, stride, padding, dilation, bias, disk) over random shapes."""
    rng = random.Random(seed)
    for i in range(count):
        k = rng.choice([1, 2, 3, 5])
        d = rng.choice([1, 2])
        size = d * (k - 1) + 1 + rng.randint(0, 5)
        yield (bool(i % 2), GROUPS[(i // 2) % len(GROUPS)], rng.randint(1, 2), rng.randint(1, 3), rng.randint(1, 3),
               size, k, rng.choice([1, 2]), rng.randint(0, 2), d, rng.random() < 0.5, rng.random() < 0.3)


def _inputs(lifting, group, b, ci, co, h, k, bias, dtype=F64, requires_grad=False, w=None):
    w = h if w is None else w
    x = torch.randn((b, ci, h, w) if lifting else (b, ci, group.order, h, w), dtype=dtype)
    wt = torch.randn((co, ci, k, k) if lifting else (co, ci, group.order, k, k), dtype=dtype)
    bs = torch.randn(co, dtype=dtype) if bias else None
    if requires_grad:
        for t in (x, wt, bs):
            if t is not None:
                t.requires_grad_()
    return x, wt, bs


def _fns(lifting):
    return (lifting_conv2d, reference.lifting_conv2d) if lifting else (group_conv2d, reference.group_conv2d)


def _case_id(c):
    return f"{'lift' if c[0] else 'group'}-{c[1].name}-k{c[6]}-s{c[7]}p{c[8]}d{c[9]}-b{int(c[10])}"


# -- against the reference ------------------------------------------------------------------------

@pytest.mark.parametrize("case", list(_conv_cases(24)), ids=_case_id)
def test_matches_reference_float64(case):
    lifting, group, b, ci, co, h, k, s, p, d, bias, disk = case
    x, w, bs = _inputs(lifting, group, b, ci, co, h, k, bias, w=h + 1, requires_grad=True)
    fused, ref = _fns(lifting)
    out = fused(x, w, bs, group, s, p, d, disk)
    expected = ref(x, w, bs, group, s, p, d, disk)
    assert out.shape == expected.shape
    # the same sums in other orders, by another plan: 2 gamma_n sum |x| |W_g| + positions (conv_atol)
    torch.testing.assert_close(out, expected, atol=conv_atol(lifting, x, w, bs, group, s, p, d, disk), rtol=0)
    grad = torch.randn_like(out)
    leaves = [t for t in (x, w, bs) if t is not None]
    got = torch.autograd.grad(out, leaves, grad)
    want = torch.autograd.grad(expected, leaves, grad)
    for a, e, atol in zip(got, want, conv_grad_atols(lifting, x, w, bs, group, grad, s, p, d, disk)):
        torch.testing.assert_close(a, e, atol=atol, rtol=0)  # the same bound through the backward sums


def test_float32_matches_reference():
    group = Group(8, True)
    x, w, bs = _inputs(True, group, 2, 3, 4, 11, 5, True, dtype=torch.float32)
    # float32 through oneDNN / MKL in whatever order the ISA's kernel sums: 2 gamma_n(float32) sum |x| |W_g|
    torch.testing.assert_close(lifting_conv2d(x, w, bs, group, padding=2),
                               reference.lifting_conv2d(x, w, bs, group, padding=2),
                               atol=conv_atol(True, x, w, bs, group, padding=2), rtol=0)


@pytest.mark.parametrize("lifting", [True, False])
def test_padding_same(lifting):
    group = Group(4)
    x, w, bs = _inputs(lifting, group, 1, 2, 3, 9, 3, True)
    fused, ref = _fns(lifting)
    out = fused(x, w, bs, group, padding="same", dilation=2)
    assert out.shape[-2:] == x.shape[-2:]
    torch.testing.assert_close(out, ref(x, w, bs, group, padding=2, dilation=2), rtol=0,
                               atol=conv_atol(lifting, x, w, bs, group, 1, 2, 2))  # two orders of the same sums
    with pytest.raises(ValueError, match="stride"):
        fused(x, w, bs, group, stride=2, padding="same")
    x4, w4, _ = _inputs(lifting, group, 1, 2, 3, 9, 4, False)
    with pytest.raises(ValueError, match="odd"):
        fused(x4, w4, None, group, padding="same")


# -- autograd -------------------------------------------------------------------------------------

@pytest.mark.parametrize("lifting", [True, False], ids=["lift", "group"])
@pytest.mark.parametrize("group,stride,padding,dilation", [(Group(4), 1, 1, 1), (Group(2, True), 2, 0, 2),
                                                            (Group(3), 1, 2, 1)], ids=["C4", "D2", "C3"])
def test_gradcheck_and_gradgradcheck(lifting, group, stride, padding, dilation):
    x, w, bs = _inputs(lifting, group, 1, 2, 2, 4, 2, True, requires_grad=True)
    fused, _ = _fns(lifting)

    def f(a, b, c):
        return fused(a, b, c, group, stride, padding, dilation)

    assert torch.autograd.gradcheck(f, (x, w, bs))
    assert torch.autograd.gradgradcheck(f, (x, w, bs))


def test_one_autograd_node():
    x, w, bs = _inputs(True, Group(4), 1, 2, 3, 6, 3, True, requires_grad=True)
    out = lifting_conv2d(x, w, bs, "C4")
    assert "gconv_ext::LiftingConv2dBackward" in out.grad_fn.name()  # the C++ autograd node (conv_autograd.cpp)
    assert group_conv2d(torch.randn(1, 2, 4, 6, 6, dtype=F64), torch.randn(3, 2, 4, 3, 3, dtype=F64,
                                                                           requires_grad=True), None,
                        "C4").grad_fn.name().endswith("<gconv_ext::GroupConv2dBackward>")
    assert {type(fn).__name__ for fn, _ in out.grad_fn.next_functions if fn is not None} == {"AccumulateGrad"}


def test_backward_op_respects_output_mask():
    group = Group(4, True)
    x, w, _ = _inputs(False, group, 2, 2, 3, 6, 3, False)
    go = torch.randn(2, 3, group.order, 4, 4, dtype=F64)
    full = ops.group_conv2d_backward(go, x, w, 4, True, False, [1, 1], [0, 0], [1, 1], [True, True, True])
    part = ops.group_conv2d_backward(go, x, w, 4, True, False, [1, 1], [0, 0], [1, 1], [False, True, False])
    assert part[0] is None and part[2] is None
    # the weight gradient may be computed by another kernel when the others are not requested: 2 gamma_n
    w_atol = conv_grad_atols(False, x, w, None, group, go)[1]
    torch.testing.assert_close(part[1], full[1], atol=w_atol, rtol=0)
    # the bias gradient sums B |G| H' W' values of grad_out, in any order
    torch.testing.assert_close(full[2], go.sum((0, 2, 3, 4)), rtol=0,
                               atol=sum_atol(go[:, 0].numel(), go.abs().sum((0, 2, 3, 4)).max(), F64))


# -- registration: opcheck, compile --------------------------------------------------------------

def _opcheck_samples():
    for lifting in (True, False):
        fwd = ops.lifting_conv2d.default if lifting else ops.group_conv2d.default
        bwd = ops.lifting_conv2d_backward.default if lifting else ops.group_conv2d_backward.default
        for group, rg, bias, sp in ((Group(4), False, True, ([1, 1], [1, 1], [1, 1])),
                                    (Group(2, True), True, True, ([2, 1], [0, 1], [1, 2])),
                                    (Group(3), True, False, ([1, 1], [0, 0], [1, 1]))):
            x, w, bs = _inputs(lifting, group, 2, 2, 3, 6, 3, bias, requires_grad=rg)
            args = (group.rotations, group.reflections, False, *sp)
            yield fwd, (x, w, bs, *args)
            with torch.no_grad():
                out = fwd(x, w, bs, *args)
            go = torch.randn_like(out).requires_grad_(rg)
            yield bwd, (go, x, w, *args, [True, True, bias])
            yield bwd, (go, x, w, *args, [False, True, False])


@pytest.mark.parametrize("sample", list(_opcheck_samples()), ids=lambda s: str(s[0]))
def test_opcheck(sample):
    op, args = sample
    torch.library.opcheck(op, args)


def test_opcheck_channels_last():
    x, w, bs = _inputs(True, Group(4), 2, 3, 2, 6, 3, True, requires_grad=True)
    torch.library.opcheck(ops.lifting_conv2d.default,
                          (x.to(memory_format=torch.channels_last), w, bs, 4, False, False, [1, 1], [1, 1], [1, 1]))


@pytest.mark.parametrize("dynamic", [False, True])
def test_torch_compile_fullgraph(dynamic):
    # float64: the point is the registration (fake kernels, autograd), not float32 arithmetic
    group = Group(4, True)
    x, w, bs = _inputs(True, group, 2, 2, 3, 8, 3, True, requires_grad=True)
    _, w2, _ = _inputs(False, group, 1, 3, 2, 1, 3, False, requires_grad=True)

    def f(x, w, bs, w2):
        y = lifting_conv2d(x, w, bs, group, padding=1).relu()
        return group_conv2d(y, w2, None, group, stride=2).square().sum()

    compiled = torch.compile(f, fullgraph=True, dynamic=dynamic, backend="aot_eager")
    expected = f(x, w, bs, w2)
    want = torch.autograd.grad(expected, (x, w, bs, w2))
    got = compiled(x, w, bs, w2)
    have = torch.autograd.grad(got, (x, w, bs, w2))
    # the same ops, possibly in other orders: chain_rtol over the forward and backward reductions (the two
    # convolutions, the final sum over 2 x 2 x 8 x 3 x 3 values; the weight gradients sum over B H' W' per tap
    # and 9 |G| taps in the adjoint)
    lengths = [2 * 9 + 5, 3 * 8 * 9 + 5, 2 * 2 * 8 * 3 * 3, 2 * 8 * 8 * 9 * 8, 2 * 3 * 3 * 9 * 8]
    rtol = chain_rtol(F64, lengths)
    torch.testing.assert_close(got, expected, atol=rtol * expected.abs().item(), rtol=0)
    for a, e in zip(have, want):
        torch.testing.assert_close(a, e, atol=rtol * e.abs().max().item(), rtol=0)


# -- inputs ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("lifting", [True, False])
def test_channels_last_and_non_contiguous(lifting):
    group = Group(4, True)
    x, w, bs = _inputs(lifting, group, 2, 3, 2, 7, 3, True)
    fused, _ = _fns(lifting)
    expected = fused(x, w, bs, group, 1, 1)
    atol = conv_atol(lifting, x, w, bs, group, 1, 1)  # another memory format: another kernel, another order
    if lifting:
        variants = [x.to(memory_format=torch.channels_last), x.transpose(-1, -2).contiguous().transpose(-1, -2)]
    else:
        variants = [x.to(memory_format=torch.channels_last_3d), x.permute(0, 2, 1, 3, 4).contiguous().permute(0, 2, 1, 3, 4)]
    for v in variants:
        assert not v.is_contiguous()
        xv = v.detach().requires_grad_()
        wv = w.detach().requires_grad_()
        out = fused(xv, wv, bs, group, 1, 1)
        torch.testing.assert_close(out, expected, atol=atol, rtol=0)
        out.sum().backward()
        assert xv.grad.shape == x.shape and wv.grad.shape == w.shape
    xc = x.detach().requires_grad_()
    fused(xc, w, bs, group, 1, 1).sum().backward()
    x_atol = conv_grad_atols(lifting, x, w, bs, group, torch.ones_like(expected), 1, 1)[0]
    torch.testing.assert_close(xv.grad, xc.grad, atol=x_atol, rtol=0)


@pytest.mark.parametrize("lifting", [True, False])
def test_empty_batch(lifting):
    group = Group(4)
    x, w, bs = _inputs(lifting, group, 0, 2, 3, 6, 3, True, requires_grad=True)
    fused, _ = _fns(lifting)
    out = fused(x, w, bs, group, 1, 1)
    assert out.shape == (0, 3, 4, 6, 6)
    out.sum().backward()
    assert x.grad.shape == x.shape
    # exact: an empty batch contributes empty sums, which are exactly zero
    assert torch.equal(w.grad, torch.zeros_like(w)) and torch.equal(bs.grad, torch.zeros_like(bs))


def _bad_cases():
    g = "C4"
    x4, w4 = torch.zeros(1, 2, 6, 6), torch.zeros(3, 2, 3, 3)
    x5, w5 = torch.zeros(1, 2, 4, 6, 6), torch.zeros(3, 2, 4, 3, 3)
    return [
        (lifting_conv2d, (x5, w4, None, g), ValueError, "input must be a 4-D"),
        (lifting_conv2d, (x4, w5, None, g), ValueError, "weight must be a 4-D"),
        (lifting_conv2d, (torch.zeros(1, 3, 6, 6), w4, None, g), ValueError, "channels"),
        (lifting_conv2d, (x4, w4, torch.zeros(2), g), ValueError, "bias"),
        (lifting_conv2d, (x4.double(), w4, None, g), TypeError, "dtype"),
        (lifting_conv2d, (x4.long(), w4.long(), None, g), TypeError, "floating"),
        # a device mismatch is a RuntimeError, as in torch (F.conv2d) and the C++ check
        (lifting_conv2d, (x4.to("meta"), w4, None, g), RuntimeError, "device"),
        (lifting_conv2d, (x4, torch.zeros(3, 2, 3, 4), None, g), ValueError, "square"),
        (group_conv2d, (x4, w5, None, g), ValueError, "input must be a 5-D"),
        (group_conv2d, (torch.zeros(1, 2, 8, 6, 6), w5, None, g), ValueError, r"input.shape\[2\].*\|G\| = 4"),
        (group_conv2d, (x5, torch.zeros(3, 2, 8, 3, 3), None, g), ValueError, r"weight.shape\[2\].*\|G\| = 4"),
        (group_conv2d, (x5, torch.zeros(3, 1, 4, 3, 3), None, g), ValueError, "channels"),
        (group_conv2d, (x5, w5, None, "D4"), ValueError, r"\|G\| = 8"),
        (group_conv2d, (x5, w5, torch.zeros(3, 1), g), ValueError, "bias"),
        (group_conv2d, (x5, w5, None, g, 0), ValueError, "stride"),
        (group_conv2d, (x5, w5, None, g, 1, -1), ValueError, "padding"),
        (group_conv2d, (x5, w5, None, g, 1, "full"), ValueError, "padding"),
    ]


@pytest.mark.parametrize("case", _bad_cases(), ids=lambda c: c[3])
def test_bad_inputs_python(case):
    fn, args, exc, match = case
    with pytest.raises(exc, match=match):
        fn(*args)


@pytest.mark.parametrize("call,match", [
    (lambda: ops.lifting_conv2d(torch.zeros(1, 2, 4, 6, 6), torch.zeros(3, 2, 3, 3), None, 4, False, False,
                                [1, 1], [0, 0], [1, 1]), "4-D"),
    (lambda: ops.group_conv2d(torch.zeros(1, 2, 4, 6, 6), torch.zeros(3, 2, 4, 3, 3), None, 4, True, False,
                              [1, 1], [0, 0], [1, 1]), r"\|G\| = 8 for D4"),
    (lambda: ops.lifting_conv2d(torch.zeros(1, 2, 6, 6), torch.zeros(3, 1, 3, 3), None, 4, False, False,
                                [1, 1], [0, 0], [1, 1]), "channels"),
    (lambda: ops.lifting_conv2d(torch.zeros(1, 2, 6, 6), torch.zeros(3, 2, 3, 3), torch.zeros(2), 4, False, False,
                                [1, 1], [0, 0], [1, 1]), "bias"),
    (lambda: ops.lifting_conv2d(torch.zeros(1, 2, 6, 6), torch.zeros(3, 2, 3, 3).double(), None, 4, False, False,
                                [1, 1], [0, 0], [1, 1]), "dtype"),
    (lambda: ops.lifting_conv2d(torch.zeros(1, 2, 6, 6), torch.zeros(3, 2, 3, 3), None, 4, False, False,
                                [0, 1], [0, 0], [1, 1]), "stride"),
])
def test_bad_inputs_cpp(call, match):
    with pytest.raises((ValueError, TypeError, RuntimeError), match=match):
        call()


# -- equivariance -------------------------------------------------------------------------------

@pytest.mark.parametrize("group", [Group(4), Group(4, True)], ids=str)
@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=str)
@pytest.mark.parametrize("k,size,padding", [(3, 9, 1), (4, 9, 0), (5, 11, 2)])
def test_equivariance_exact(group, dtype, k, size, padding):
    # stride 1: the output grid is centred on the input grid, so quarter turns and flips act exactly
    # weights scaled by 1/sqrt(fan_in) so that the features stay O(1) and an absolute tolerance is fair
    x = torch.randn(2, 3, size, size, dtype=dtype)
    w = torch.randn(4, 3, k, k, dtype=dtype) / (3 * k * k) ** 0.5
    b = torch.randn(4, dtype=dtype)
    wg = torch.randn(2, 4, group.order, k, k, dtype=dtype) / (4 * group.order * k * k) ** 0.5
    y = lifting_conv2d(x, w, b, group, padding=padding)
    z = group_conv2d(y, wg, None, group, padding=padding)
    # a rotated input permutes the products of every sum: they differ by rounding only, 2 gamma_n sum |terms|
    # for y; for z, plus y's difference carried through the group conv (sum |W| over its receptive field)
    y_atol = conv_atol(True, x, w, b, group, padding=padding)
    z_atol = conv_atol(False, y, wg, None, group, padding=padding)
    z_atol += y_atol * conv_magnitude(False, torch.ones_like(y), wg, None, group, padding=padding).max().item()
    for g in range(group.order):
        xg = group.act_on_plane(g, x)
        yg = lifting_conv2d(xg, w, b, group, padding=padding)
        torch.testing.assert_close(yg, group.act(g, y), atol=y_atol, rtol=0)
        torch.testing.assert_close(group_conv2d(yg, wg, None, group, padding=padding), group.act(g, z), atol=z_atol,
                                   rtol=0)


# -- the fallback and CUDA ------------------------------------------------------------------------

def test_fallback_to_reference_when_not_built(monkeypatch):
    monkeypatch.setattr(_extension, "_C", None)
    monkeypatch.setattr(_extension, "_LOAD_ERROR", "not built (test)")
    monkeypatch.setattr(_extension, "_warned", False)
    group = Group(4)
    x, w, bs = _inputs(False, group, 1, 2, 3, 6, 3, True, requires_grad=True)
    with pytest.warns(RuntimeWarning, match="not built"):
        out = gconv_ext.ops.group_conv2d(x, w, bs, group, padding="same")
    # exact: without the extension group_conv2d *is* reference.group_conv2d, on the same input
    torch.testing.assert_close(out, reference.group_conv2d(x, w, bs, group, padding=1), atol=0, rtol=0)
    out.sum().backward()
    assert w.grad is not None


def _tf32_unit(dtype: torch.dtype) -> float:
    """cuDNN may round float32 convolution operands to TF32 (10-bit mantissa) when allowed: each product
    then errs by up to 2 u(tf32) = 2^-10 relative, on top of the float32 accumulation."""
    if dtype == torch.float32 and torch.backends.cudnn.allow_tf32:
        return 2 * 2.0**-11
    return 0.0


@pytest.mark.cuda
@pytest.mark.parametrize("lifting", [True, False])
@pytest.mark.parametrize("dtype,tf32", [(F64, False), (torch.float32, False), (torch.float32, True)],
                         ids=["float64", "float32", "float32-tf32"])
def test_cuda_matches_cpu(lifting, dtype, tf32):
    # cuDNN rounds float32 operands to TF32 on sm_80+ when allowed (the default): each case sets the flag
    # itself, so the float32 case is checked at float32 tolerances and the TF32 case at TF32's.
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=tf32):
        _check_cuda_matches_cpu(lifting, dtype)


def _check_cuda_matches_cpu(lifting, dtype):
    group = Group(4, True)
    x, w, bs = _inputs(lifting, group, 2, 3, 4, 9, 3, True, dtype=dtype, requires_grad=True)
    fused, _ = _fns(lifting)
    xc, wc, bc = (t.detach().cuda().requires_grad_() for t in (x, w, bs))
    out, out_c = fused(x, w, bs, group, 2, 1, 1), fused(xc, wc, bc, group, 2, 1, 1)
    # two devices, two summation orders: 2 gamma_n sum |x| |W_g| (+ TF32 operand rounding when enabled)
    tf32 = _tf32_unit(dtype) * conv_magnitude(lifting, x, w, bs, group, 2, 1, 1).max().item()
    torch.testing.assert_close(out_c.cpu(), out, atol=conv_atol(lifting, x, w, bs, group, 2, 1, 1) + tf32, rtol=0)
    grad = torch.randn_like(out)
    want = torch.autograd.grad(out, (x, w, bs), grad)
    got = torch.autograd.grad(out_c, (xc, wc, bc), grad.cuda())
    atols = conv_grad_atols(lifting, x, w, bs, group, grad, 2, 1, 1)
    mags = [m for _, m, _ in conv_grad_magnitudes(lifting, x, w, bs, group, grad, 2, 1, 1)]
    for a, e, atol, mag in zip(got, want, atols, mags):
        torch.testing.assert_close(a.cpu(), e, atol=atol + _tf32_unit(dtype) * mag, rtol=0)


@pytest.mark.cuda
def test_cuda_opcheck_and_gradgradcheck():
    group = Group(4)
    x, w, bs = _inputs(False, group, 1, 2, 2, 5, 3, True, requires_grad=True)
    x, w, bs = (t.detach().cuda().requires_grad_() for t in (x, w, bs))
    # Deterministic cuDNN algorithms: gradcheck's reentrancy check compares two backward passes bit for bit,
    # which non-deterministic algorithms (atomics) can fail (PyTorch's own conv tests do the same).
    with torch.backends.cudnn.flags(enabled=True, deterministic=True, allow_tf32=False):
        torch.library.opcheck(ops.group_conv2d.default, (x, w, bs, 4, False, False, [1, 1], [1, 1], [1, 1]))
        assert torch.autograd.gradgradcheck(lambda a, b, c: group_conv2d(a, b, c, group, 1, 1), (x, w, bs))


# -- autocast -----------------------------------------------------------------------------------

@pytest.mark.parametrize("lifting", [True, False])
def test_autocast_cpu_bfloat16(lifting):
    g = Group(4)
    torch.manual_seed(0)
    if lifting:
        x, w, fn = torch.randn(2, 3, 12, 12), torch.randn(4, 3, 5, 5, requires_grad=True), gconv_ext.ops.lifting_conv2d
    else:
        x, w, fn = torch.randn(2, 3, 4, 12, 12), torch.randn(4, 3, 4, 5, 5, requires_grad=True), gconv_ext.ops.group_conv2d
    b = torch.randn(4, requires_grad=True)
    expected = fn(x, w, b, g, padding=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fn(x.bfloat16(), w, b, g, padding=2)  # a bf16 activation meets fp32 parameters
    assert out.dtype == torch.bfloat16
    # x, w, b and each transformed tap are rounded to bfloat16 (3 roundings per product, 4 with margin),
    # the sums run in float32 (2 gamma_n, ours and the expected), and the output is rounded once or twice
    # (bias add): atol (4 u(bf16) + 2 gamma_n(f32)) sum |x| |W_g| + |b|, rtol 2 u(bf16)
    u = unit_roundoff(torch.bfloat16)
    mag = conv_magnitude(lifting, x, w, b, g, padding=2).max().item()
    n = 3 * (1 if lifting else 4) * 25 + 5
    torch.testing.assert_close(out.float(), expected, atol=(4 * u + 2 * gamma(n, torch.float32)) * mag, rtol=2 * u)
    out.float().sum().backward()
    assert w.grad.dtype == torch.float32 and b.grad.dtype == torch.float32
    assert torch.isfinite(w.grad).all()


@pytest.mark.parametrize("input_grad", [False, True])
def test_backward_expands_the_filter_only_for_the_input_gradient(input_grad):
    # The weight and bias gradients need only the expanded filter's shape: a lifting layer (whose images need
    # no gradient) runs the transform once per step, in the forward. With an input gradient, a small filter
    # expanded by the forward is kept for the backward: again one transform per step.
    from collections import Counter  # noqa: PLC0415

    from torch.profiler import profile  # noqa: PLC0415

    x = torch.randn(1, 1, 12, 12, dtype=F64, requires_grad=input_grad)
    w, b = torch.randn(3, 1, 5, 5, dtype=F64, requires_grad=True), torch.zeros(3, dtype=F64, requires_grad=True)
    with profile() as prof:
        lifting_conv2d(x, w, b, "C8").sum().backward()
    calls = Counter(e.name for e in prof.events())
    assert calls["gconv_ext::lift_filter"] == 1
    assert calls["gconv_ext::lift_filter_backward"] == 1
    # the same gradients as the reference (float64: sums of <= 12*12*8 terms of size ~10 round far below 1e-9)
    xr, wr, br = (t.detach().clone().requires_grad_(t.requires_grad) for t in (x, w, b))
    reference.lifting_conv2d(xr, wr, br, Group(8)).sum().backward()
    torch.testing.assert_close(w.grad, wr.grad, rtol=0, atol=1e-9)
    if input_grad:
        torch.testing.assert_close(x.grad, xr.grad, rtol=0, atol=1e-9)


@pytest.mark.parametrize("lifting", [True, False])
def test_large_filters_are_expanded_again_not_kept(lifting):
    """The forward keeps its expanded filter only when it is at most the input's size or 2^21 elements
    (csrc/conv_autograd.cpp keep_expanded): a larger one is expanded again by the backward, and the gradients
    are the same either way."""
    from collections import Counter  # noqa: PLC0415

    from torch.profiler import profile  # noqa: PLC0415

    torch.manual_seed(0)
    transform = "gconv_ext::lift_filter" if lifting else "gconv_ext::group_filter"
    # expanded: lifting [128*8, 32, 9, 9] = 2.65M elements, group [32*8, 16*8, 9, 9] = 2.65M, both > 2^21
    # and > the input's 32*14*14 = 6,272 / 16*8*14*14 = 25,088 elements
    for c_out, small in ((128 if lifting else 32, False), (2, True)):
        x = (torch.randn(1, 32, 14, 14) if lifting else torch.randn(1, 16, 8, 14, 14)).requires_grad_()
        w = torch.randn((c_out, 32, 9, 9) if lifting else (c_out, 16, 8, 9, 9), requires_grad=True)
        op = lifting_conv2d if lifting else group_conv2d
        with profile() as prof:
            y = op(x, w, None, "C8")
            y.backward(torch.ones_like(y))
        assert Counter(e.name for e in prof.events())[transform] == (1 if small else 2), (c_out, small)
        gx, gw = x.grad.clone(), w.grad.clone()
        x.grad = w.grad = None
        (gx2, gw2) = torch.autograd.grad(op(x, w, None, "C8"), (x, w), torch.ones_like(y), create_graph=True)
        torch.testing.assert_close(gx, gx2, rtol=0, atol=0)  # the op path (create_graph) expands again: same bits
        torch.testing.assert_close(gw, gw2, rtol=0, atol=0)


@pytest.mark.parametrize("lifting", [True, False])
def test_plain_backward_stays_in_cpp(lifting):
    """A plain backward (grad mode off) calls the backward op below autograd, straight from the C++ node: no
    Python runs (the backward op's Python autograd layer would only redispatch, at a Python call's cost on
    every step); with create_graph it goes through that layer, which records the double backward."""
    import sys  # noqa: PLC0415

    x = torch.randn(2, 3, 6, 6) if lifting else torch.randn(2, 3, 4, 6, 6, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, requires_grad=True) if lifting else torch.randn(4, 3, 4, 3, 3, requires_grad=True)
    op = ops.lifting_conv2d if lifting else ops.group_conv2d
    calls = []

    def profile(frame, event, arg):
        if event == "call" and "torch" in frame.f_code.co_filename and "_library" in frame.f_code.co_filename:
            calls.append(frame.f_code.co_name)

    for create_graph in (False, True):
        calls.clear()
        out = op(x, w, None, 4, False, False, [1, 1], [1, 1], [1, 1])
        sys.setprofile(profile)
        try:
            grads = torch.autograd.grad(out.square().sum(), [w] if lifting else [x, w], create_graph=create_graph)
        finally:
            sys.setprofile(None)
        assert bool(calls) == create_graph, calls[:5]
        assert all(g.requires_grad == create_graph for g in grads)
