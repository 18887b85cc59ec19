"""Fuzzing the operators: seeded random valid cases against the float64 reference, and the invalid cases an
outside fuzz run found (each must raise an error that names the argument: no crash, no uninitialised memory,
no silent wrong answer).

The random sweep runs ``GCONV_EXT_FUZZ_CASES`` cases per op family (default 40: seconds; raise it for a
longer local run, the seed stays fixed so a failure names its case).
"""
from __future__ import annotations

import os
import random

import pytest
import torch

from gconv_ext import _extension
from gconv_ext.ops import (group_avg_pool2d, group_conv2d, group_filter, group_max_pool2d, group_pool, lift_filter,
                           lifting_conv2d, reference)
from gconv_ext.groups import Group

from tolerances import F64

pytestmark = pytest.mark.skipif(not _extension.available(), reason="compiled extension not built")
ops = torch.ops.gconv_ext
CASES = int(os.environ.get("GCONV_EXT_FUZZ_CASES", "40"))
# float64 against the float64 reference: the same products summed in another order, |x|, |w| <= ~4, sums of at
# most ~10^3 terms: 1e-10 is > 10^3 * 2^-52 * 16 * (a few) with margin, and far below any indexing error (O(1)).
ATOL = 1e-10


def _group(rng: random.Random) -> Group:
    return Group(rng.choice([1, 2, 3, 4, 5, 8]), rng.random() < 0.4)


@pytest.mark.parametrize("seed", range(CASES))
def test_random_valid_convs_match_the_reference(seed):
    rng = random.Random(seed)
    g, k = _group(rng), rng.choice([1, 2, 3, 4, 5])
    lifting = rng.random() < 0.5
    ci, co, b = rng.randint(1, 3), rng.randint(0, 3), rng.randint(1, 2)
    stride, dil = (rng.randint(1, 2), rng.randint(1, 2)), (rng.randint(1, 2), rng.randint(1, 2))
    pad = (rng.randint(0, 2), rng.randint(0, 2))
    size = rng.randint(max(1, dil[0] * (k - 1) + 1 - 2 * pad[0]), 9)
    size = max(size, dil[1] * (k - 1) + 1 - 2 * pad[1], 1)
    x = torch.randn((b, ci, size, size) if lifting else (b, ci, g.order, size, size), dtype=F64)
    w = torch.randn((co, ci, k, k) if lifting else (co, ci, g.order, k, k), dtype=F64)
    bias = torch.randn(co, dtype=F64) if rng.random() < 0.5 else None
    disk = rng.random() < 0.3
    fn, ref = (lifting_conv2d, reference.lifting_conv2d) if lifting else (group_conv2d, reference.group_conv2d)
    got = fn(x, w, bias, g, stride, pad, dil, disk)
    if co == 0:  # empty filters give an empty output (torch's conv2d refuses them, so the reference does)
        nonempty = torch.ones(1, *w.shape[1:], dtype=F64)
        assert got.shape == (b, 0) + fn(x, nonempty, None, g, stride, pad, dil, disk).shape[2:]
        return
    torch.testing.assert_close(got, ref(x, w, bias, g, stride, pad, dil, disk), atol=ATOL, rtol=0)


@pytest.mark.parametrize("seed", range(CASES))
def test_random_valid_pools_match_the_reference(seed):
    rng = random.Random(1000 + seed)
    k = (rng.randint(1, 4), rng.randint(1, 4))
    p = (rng.randint(0, k[0] // 2), rng.randint(0, k[1] // 2))
    s = None if rng.random() < 0.3 else (rng.randint(1, 3), rng.choice([1, 2, 3, 2**20]))
    h, w = rng.randint(max(1, k[0] - 2 * p[0]), 8), rng.randint(max(1, k[1] - 2 * p[1]), 8)
    x = torch.randn(2, 2, rng.choice([1, 4]), h, w, dtype=F64)
    for fn, ref in ((group_max_pool2d, reference.group_max_pool2d), (group_avg_pool2d, reference.group_avg_pool2d)):
        # a stride larger than the plane leaves one window: torch's pools take any stride, so does the reference
        torch.testing.assert_close(fn(x, k, s, p), ref(x, list(k), list(k if s is None else s), list(p)),
                                   atol=ATOL, rtol=0)
    torch.testing.assert_close(group_pool(x, "mean"), reference.group_pool(x, "mean"), atol=ATOL, rtol=0)


# ---- the outside fuzz run's defects: each case a clear error (or, where the input is valid, the right answer) ---

def test_huge_pool_kernels_and_strides_are_errors_or_right():
    x = torch.randn(1, 1, 1, 1, 1)
    with pytest.raises(ValueError, match="kernel_size|padding"):  # was SIGSEGV (tile size overflow)
        group_avg_pool2d(x, 2**32, 2, 2**31)
    with pytest.raises(ValueError, match="padded input plane"):  # was std::bad_alloc (an O(k^2) tile)
        group_max_pool2d(x, 2**20, 1, 2**19)
    y = torch.randn(1, 1, 1, 2, 2)
    for pool in (group_avg_pool2d, group_max_pool2d):  # were SIGSEGV, or -9.6e-27 / -5.2e33 from outside the tile
        with pytest.raises(ValueError, match=r"stride must be in \[1, 2\^31\)"):
            pool(y, 2, (1, 2**63 - 1))
    # a stride past the plane (but below the bound) leaves one window along W, and is never used
    torch.testing.assert_close(group_avg_pool2d(y, 2, (1, 2**30)), y.mean(dim=(-2, -1), keepdim=True))
    torch.testing.assert_close(group_max_pool2d(y, 2, (1, 2**30)), y.amax(dim=(-2, -1), keepdim=True))
    z = torch.randn(1, 1, 1, 9, 9)
    torch.testing.assert_close(group_max_pool2d(z, 5, (1, 2**30)), reference.group_max_pool2d(z, [5, 5], [1, 2**30],
                                                                                              [0, 0]))


@pytest.mark.parametrize("call", [
    lambda m: ops.lifting_conv2d(torch.ones(1, 1, 6, 6), torch.ones(1, 1, 3, 3), torch.zeros(1, device=m), 4, False,
                                 False, [1, 1], [0, 0], [1, 1]),
    lambda m: ops.lifting_conv2d_backward(torch.ones(1, 1, 4, 4, 4, device=m), torch.ones(1, 1, 6, 6),
                                          torch.ones(1, 1, 3, 3), 4, False, False, [1, 1], [0, 0], [1, 1],
                                          [True, True, True]),
    lambda m: ops.group_conv2d_backward(torch.ones(1, 1, 4, 4, 4, device=m), torch.ones(1, 1, 4, 6, 6),
                                        torch.ones(1, 1, 4, 3, 3), 4, False, False, [1, 1], [0, 0], [1, 1],
                                        [True, True, True]),
    lambda m: ops.group_pool_backward(torch.ones(1, 1, 3, 3, device=m), torch.ones(1, 1, 4, 3, 3), "max"),
    lambda m: ops.group_max_pool2d_backward(torch.ones(1, 1, 2, 2, device=m),
                                            torch.zeros(1, 1, 2, 2, dtype=torch.uint8), [1, 1, 4, 4], [2, 2],
                                            [2, 2], [0, 0]),
    lambda m: ops.group_max_pool2d_gather(torch.ones(1, 1, 4, 4, device=m),
                                          torch.zeros(1, 1, 2, 2, dtype=torch.uint8), [2, 2], [2, 2], [0, 0]),
    lambda m: ops.group_layer_norm_relu_max_pool2d_backward(
        torch.ones(1, 1, 2, 2, device=m), torch.ones(1, 1, 4, 4), torch.ones(1, 1, 2, 2),
        torch.zeros(1, 1, 2, 2, dtype=torch.uint8), torch.zeros(1), torch.ones(1), [2, 2], [2, 2], [0, 0]),
])
def test_mixed_meta_and_cpu_tensors_raise(call):
    # was: the fake kernel ran on the real CPU tensors and returned uninitialised memory
    with pytest.raises(RuntimeError, match="same device"):
        call("meta")


@pytest.mark.parametrize("call,match", [
    # the fake kernels now make the CPU kernels' checks (torch.compile tracing used to succeed, the run fail later)
    (lambda t: ops.lift_filter(t(1, 1, 3, 3, dtype=torch.int64), 4, False, False), "floating"),
    (lambda t: ops.lift_filter(t(1, 1, 0, 0), 4, False, False), "square kernel of size >= 1"),
    (lambda t: ops.group_filter(t(1, 1, 4, 3, 2), 4, False, False), "square kernel"),
    (lambda t: ops.group_pool(t(1, 1, 0, 3, 3), "max"), "non-empty"),
    (lambda t: ops.group_pool(t(1, 1, 4, 3, 3, dtype=torch.complex64), "max"), "floating"),
    (lambda t: ops.lifting_conv2d(t(1, 1, 6, 6), t(1, 1, 3, 3), t(1, dtype=torch.float64), 4, False, False,
                                  [1, 1], [0, 0], [1, 1]), "bias must have the dtype"),
    (lambda t: ops.lifting_conv2d(t(1, 1, 6, 6), t(1, 1, 3, 3), None, 4, False, False, [1, 1], [0, 0], [0, 1]),
     "dilation"),
    (lambda t: ops.lifting_conv2d(t(1, 1, 6, 6), t(1, 1, 3, 3), None, 4, False, False, [-1, 1], [0, 0], [1, 1]),
     "stride"),
    (lambda t: ops.group_max_pool2d(t(1, 1, 4, 4, dtype=torch.int32), [2, 2], [2, 2], [0, 0]), "floating"),
    # float8 is a floating type but no kernel is built for it (was "not implemented for 'Float8_e4m3fn'")
    (lambda t: ops.lift_filter(t(1, 1, 3, 3, dtype=torch.float8_e4m3fn), 4, False, False), "floating"),
    (lambda t: ops.group_pool(t(1, 1, 4, 3, 3, dtype=torch.float8_e5m2), "max"), "floating"),
    (lambda t: ops.group_max_pool2d(t(1, 1, 4, 4, dtype=torch.float8_e5m2), [2, 2], [2, 2], [0, 0]), "floating"),
    (lambda t: ops.group_conv2d(t(1, 1, 4, 6, 6, dtype=torch.float8_e4m3fn), t(1, 1, 4, 3, 3,
                                dtype=torch.float8_e4m3fn), None, 4, False, False, [1, 1], [0, 0], [1, 1]),
     "floating"),
    (lambda t: ops.lift_filter(t(1, 1, 3, 3), 2**62, True, False), r"rotations .* \[1, 1024\]"),
    (lambda t: ops.group_layer_norm_relu_max_pool2d(t(1, 1, 4, 4, dtype=torch.int32), [2, 2], [2, 2], [0, 0], 1e-5),
     "floating"),
    (lambda t: ops.group_layer_norm_relu_max_pool2d(t(1, 1, 4, 4), [2, 2], [2, 2], [0, 0], 0.0), "eps"),
    (lambda t: ops.group_layer_norm_relu_max_pool2d(t(1, 1, 4, 4), [5, 5], [1, 1], [0, 0], 1e-5), "too small"),
    (lambda t: ops.group_layer_norm_relu_max_pool2d_backward(
        t(1, 1, 2, 2), t(1, 1, 4, 4), t(1, 1, 2, 2), t(1, 1, 2, 2, dtype=torch.uint8), t(1), t(1, dtype=torch.float64),
        [2, 2], [2, 2], [0, 0]), "rstd must be torch.float32"),
])
@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_fake_and_real_kernels_make_the_same_checks(call, match, device):
    def t(*shape, dtype=torch.float32):
        return torch.zeros(shape, dtype=dtype, device=device)

    with pytest.raises((ValueError, TypeError, RuntimeError), match=match):
        call(t)


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2], ids=str)
def test_float8_is_a_type_error_in_the_wrappers(dtype):
    x = torch.zeros(1, 1, 6, 6).to(dtype)
    with pytest.raises(TypeError, match=r"input must be a floating-point tensor \(float32, float64, float16"):
        lifting_conv2d(x, torch.zeros(1, 1, 3, 3).to(dtype), None, "C4")
    with pytest.raises(TypeError, match="floating-point"):
        lift_filter(torch.zeros(1, 1, 3, 3).to(dtype), Group(4))


def test_bounds_before_big_allocations():
    with pytest.raises(ValueError, match="rotations"):  # was 2 GB of Cayley tables
        lift_filter(torch.randn(1, 1, 1, 1), Group(10_000))
    with pytest.raises(ValueError, match="rotations"):  # was signed overflow of |G|
        ops.group_filter(torch.randn(1, 1, 2, 1, 1), 2**62, True, False)


def test_unclear_errors_are_clear():
    x, w = torch.randn(2, 1, 6, 6), torch.randn(3, 1, 3, 3)
    # C_out = 0: an empty output (was "cannot reshape tensor of 0 elements"), and empty gradients
    w0 = torch.randn(0, 1, 3, 3, requires_grad=True)
    xg = x.clone().requires_grad_()
    out = lifting_conv2d(xg, w0, torch.zeros(0, requires_grad=True), "C4")
    assert out.shape == (2, 0, 4, 4, 4)
    out.sum().backward()
    assert torch.equal(xg.grad, torch.zeros_like(x)) and w0.grad.shape == w0.shape
    assert group_filter(torch.randn(0, 2, 4, 3, 3), "C4").shape == (0, 4, 2, 4, 3, 3)
    # a wrong grad_out H'/W' in the raw backward (was a oneDNN error, or silently accepted with only the bias)
    for mask in ([True, True, True], [False, False, True]):
        with pytest.raises(ValueError, match="grad_out must have the output shape"):
            ops.lifting_conv2d_backward(torch.randn(2, 3, 4, 5, 5), x, w, 4, False, False, [1, 1], [0, 0], [1, 1],
                                        mask)
    # huge padding or dilation (was "could not construct a memory descriptor")
    with pytest.raises(ValueError, match="padding"):
        ops.lifting_conv2d(x, w, None, 4, False, False, [1, 1], [2**40, 0], [1, 1])
    with pytest.raises(ValueError, match="dilation|too small"):
        ops.lifting_conv2d(x, w, None, 4, False, False, [1, 1], [0, 0], [2**40, 1])
    for bad in (None, 1.5):  # the wrappers name the argument (was "'NoneType' object is not iterable")
        with pytest.raises(ValueError, match="stride"):
            lifting_conv2d(x, w, None, "C4", stride=bad)
