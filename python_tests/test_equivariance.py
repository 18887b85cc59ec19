"""Equivariance of the gconv_ext.nn layers and small networks: exact for C4/D4 at valid sizes, detected and
measurably broken at invalid sizes, and within the bilinear interpolation error for C8/C16 at 45 and 22.5
degrees. Every tolerance is derived in tolerances.py or in the comments here, none measured."""
from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

import gconv_ext.nn as gnn
from gconv_ext.groups import Group
from gconv_ext.nn.equivariance import transform
from gconv_ext.ops import reference

from tolerances import F64, chain_rtol, conv_atol, reduction_lengths

EXACT = [Group(4), Group(4, True)]


def _net(group, c=4, stride_conv=True):
    """lifting conv -> BN -> ReLU -> [strided group conv -> BN -> ReLU] -> 2x2/2 max pool -> group conv
    -> ReLU -> group pool (a planar map) ; valid sizes: 31, 35, ... (3 mod 4) with the strided conv."""
    layers = [gnn.LiftingConv2d(2, c, 3, group, padding=1), gnn.GroupBatchNorm2d(c, group), nn.ReLU()]
    if stride_conv:
        layers += [gnn.GroupConv2d(c, c, 3, group, stride=2, padding=1), gnn.GroupBatchNorm2d(c, group), nn.ReLU()]
    layers += [gnn.GroupMaxPool2d(2), gnn.GroupConv2d(c, c, 3, group), nn.ReLU(), gnn.GroupDropout(0.2),
               gnn.GroupLayerNorm(), gnn.GroupAvgPool2d(3, stride=1, padding=1)]
    return nn.Sequential(*layers)


def _assert_rounding_only(err, dtype, module, inp, what=""):
    """C4 / D4 act by permutations, so f(g x) and g f(x) sum the same terms in different orders: they may
    differ by rounding only, bounded for the reductions of ``module`` on ``inp`` by chain_rtol."""
    rtol = chain_rtol(dtype, reduction_lengths(module, inp))
    assert err.relative <= rtol, f"{what}: {err} (rounding bound {rtol:.2e})"


# -- single layers, every group element -------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("group", EXACT, ids=str)
def test_layers_exact(group, dtype):
    x = torch.randn(2, 3, 9, 9, dtype=dtype)
    xg = torch.randn(2, 3, group.order, 9, 9, dtype=dtype)
    lift = gnn.LiftingConv2d(3, 4, 3, group, padding=1).to(dtype)
    cases = [
        (lift, x, "group"),
        (gnn.LiftingConv2d(3, 4, 5, group, stride=2, dilation=1, disk_mask=True).to(dtype), x, "group"),
        (gnn.GroupConv2d(3, 4, 3, group, padding="same").to(dtype), xg, "group"),
        (gnn.GroupConv2d(3, 4, 3, group, dilation=2, bias=False).to(dtype), xg, "group"),
        (gnn.GroupConv2d(3, 4, 3, group, stride=3).to(dtype), xg, "group"),  # (9 - 3) mod 3 == 0
        (gnn.GroupBatchNorm2d(3, group).to(dtype), xg, "group"),
        (gnn.GroupLayerNorm(), xg, "group"),
        (gnn.GroupMaxPool2d(3, stride=2), xg, "group"),
        (gnn.GroupAvgPool2d(3, stride=3), xg, "group"),
        (gnn.GroupPool("max"), xg, "plane"),
        (gnn.GroupPool("mean"), xg, "plane"),
        (gnn.InvariantPool(), xg, "invariant"),
    ]
    for module, inp, kind in cases:
        for mode in (True, False):  # batch norm in train mode uses batch statistics: still equivariant
            module.train(mode)
            err = gnn.equivariance_error(module, inp, group, None, kind)  # worst non-identity element
            _assert_rounding_only(err, dtype, module, inp, f"{module} (train={mode})")
    # lifting conv, element by element, by hand: f(g x) == g . f(x) with the group axis permuted
    y = lift(x)
    # two summation orders of the same products: 2 gamma_n sum |x| |W_g| (tolerances.conv_atol)
    atol = conv_atol(True, x, lift.weight, lift.bias, group, padding=1)
    for g in range(group.order):
        torch.testing.assert_close(lift(group.act(g, x, None)), group.act(g, y), atol=atol, rtol=0)


@pytest.mark.parametrize("group", EXACT, ids=str)
def test_network_exact_at_valid_size(group):
    # float64: the point is the math. The rounding bound of this net's long reductions (batch norm over
    # 3 x |G| x 31 x 31 values) is ~1e-9 in float64 but would be 0.2-0.6 in float32, i.e. no test at all.
    dtype = F64
    net = _net(group).to(dtype)
    size = 31  # 31 -> strided conv 16 -> pool 8 -> conv 6
    report = gnn.check_exact(net, (1, 2, size, size), group)
    assert report.exact and len(report.layers) == 2, str(report)
    x = torch.randn(3, 2, size, size, dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error", gnn.EquivarianceWarning)  # no warning at a valid size
        for mode in (True, False):
            net.train(mode)
            if mode:  # dropout masks are random: equivariant in distribution only, so switch it off
                net[9].p = 0.0
            for g in range(1, group.order):
                _assert_rounding_only(gnn.equivariance_error(net, x, group, g, "group"), dtype, net, x, f"g={g}")
    # the invariant projection is invariant, the group pool transforms like an image
    inv = nn.Sequential(net, gnn.InvariantPool()).eval()
    planar = nn.Sequential(net, gnn.GroupPool("max")).eval()
    _assert_rounding_only(gnn.equivariance_error(inv, x, group, None, "invariant"), dtype, inv, x, "invariant")
    _assert_rounding_only(gnn.equivariance_error(planar, x, group, None, "plane"), dtype, planar, x, "group pool")


# -- invalid sizes: reported, warned, and really inexact --------------------------------------------

@pytest.mark.parametrize("group", EXACT, ids=str)
@pytest.mark.parametrize("which,size", [("strided conv", 32), ("max pool", 29)])
def test_invalid_size_detected_warned_and_inexact(group, which, size):
    # 32: the 3x3/2 pad-1 conv sees 32 (residue 1); 29: the conv sees 29 (fine), the 2x2/2 pool sees 15
    net = _net(group).double().eval()
    report = gnn.check_exact(net, (1, 2, size, size), group)
    assert not report.exact and len(report.offending) == 1
    bad = report.offending[0]
    expected = {"strided conv": ("3", "GroupConv2d", size), "max pool": ("6", "GroupMaxPool2d", 15)}[which]
    assert (bad.name, bad.kind, bad.input_size[0]) == expected
    text = str(report)
    assert "NOT exact" in text and bad.kind in text and f"{bad.input_size[0]}x{bad.input_size[0]}" in text
    x = torch.randn(2, 2, size, size, dtype=F64)
    with pytest.warns(gnn.EquivarianceWarning, match=f"{bad.kind}.*{bad.input_size[0]}x{bad.input_size[0]}"):
        y = net(x)
    with warnings.catch_warnings():  # once per module
        warnings.simplefilter("error", gnn.EquivarianceWarning)
        net(x)
    err = gnn.equivariance_error(net, x, group, 1, "group")
    # float64 rounding here is < chain_rtol(F64, ...) ~ 1e-9; a grid misaligned by a pixel changes the
    # features by O(1) of their size: any threshold in between separates the two; 1e-3 is far from both
    assert err.relative > max(1e-3, 1e3 * chain_rtol(F64, reduction_lengths(net, x))), err
    assert y.shape[2] == group.order


def test_check_exact_stride_only_and_plain_torch_layers():
    g = Group(4)
    net = nn.Sequential(gnn.LiftingConv2d(1, 2, 3, g), gnn.GroupConv2d(2, 2, 3, g, padding=1))
    assert gnn.check_exact(net, (1, 1, 20, 20), g).exact and not gnn.check_exact(net, (1, 1, 20, 20)).layers
    planar = nn.Sequential(nn.Conv2d(1, 2, 3, stride=2), nn.MaxPool2d(2))
    assert gnn.check_exact(planar, (1, 1, 29, 29)).exact  # 29 -> 14 -> 7
    assert [c.kind for c in gnn.check_exact(planar, (1, 1, 28, 28)).offending] == ["Conv2d", "MaxPool2d"]  # 28 -> 13
    assert "not square" in str(gnn.check_exact(planar, (1, 1, 29, 31), g))
    assert gnn.check_exact(planar, (1, 1, 29, 29), "C2").exact


# -- C8 and C16: 45 and 22.5 degrees -----------------------------------------------------------------

def _blobs(batch, size, dtype=F64, angle=0.0):
    """Smooth images: Gaussian blobs (sigma 2..4 px) well inside the inscribed disk, zero outside it.
    ``angle`` rotates the blob centres counter-clockwise: the exact rotation of the same images."""
    gen = torch.Generator().manual_seed(1)
    c = (size - 1) / 2
    ii, jj = torch.meshgrid(torch.arange(size, dtype=dtype), torch.arange(size, dtype=dtype), indexing="ij")
    x, y = jj - c, c - ii
    out = torch.zeros(batch, 1, size, size, dtype=dtype)
    for b in range(batch):
        for _ in range(5):
            r, t, s, a = torch.rand(4, generator=gen, dtype=torch.float64).tolist()
            r, t, s, a = 0.4 * r * size / 2, 2 * math.pi * t + angle, 2 + 2 * s, 2 * a - 1
            out[b, 0] += a * torch.exp(-((x - r * math.cos(t)) ** 2 + (y - r * math.sin(t)) ** 2) / (2 * s * s))
    return out * ((x**2 + y**2) <= (0.45 * size) ** 2)


def _smooth_filters(*lead, k, dtype=F64):
    """Rotation-friendly filters: Gaussian-windowed linear functions of (x, y)."""
    c = (k - 1) / 2
    ii, jj = torch.meshgrid(torch.arange(k, dtype=dtype), torch.arange(k, dtype=dtype), indexing="ij")
    x, y = (jj - c) * 2 / k, (c - ii) * 2 / k
    a = torch.randn(*lead, 3, 1, 1, dtype=dtype)
    return torch.exp(-3 * (x**2 + y**2)) * (a[..., 0, :, :] + a[..., 1, :, :] * x + a[..., 2, :, :] * y)


# The error bound, from the analysis of bilinear interpolation (not from a measurement). Resampling a
# Fourier mode exp(i w.p) at sub-pixel offsets (a, b) errs, to leading order, by a(1-a) wx^2 / 2 +
# b(1-b) wy^2 / 2 of the mode. A rotated grid samples the offsets uniformly (E a(1-a) = 1/6, E a^2(1-a)^2
# = 1/30), and a Gaussian blob of width sigma has power ~ exp(-sigma^2 |w|^2) (wx, wy ~ N(0, 1/(2 sigma^2))),
# so one bilinear resampling has relative L2 error EPS1(sigma) = sqrt(1/80 + 1/288) / sigma^2 = 0.126 /
# sigma^2. The blobs have sigma >= 2 px: EPS1(2) = 0.032 bounds each resampling of the images (checked below
# against the exact rotation of the blobs). f(g x) and g f(x) differ by the resamplings in the chain: the
# input, each filter bank (smooth at the pixel scale, seen through the input's band) and the output:
# 3 x EPS1(2) for one lifting conv, 4 x EPS1(2) for lifting + group conv (and for its invariant mean, which
# resamples nothing more). The rounding in float64 is ~1e-12 of that: the errors below are properties of
# the interpolation and of these inputs, the same on every machine.
# (White-noise filters are not smooth at the pixel scale: the analysis does not bound them.)
EPS1_SIGMA2 = math.sqrt(1 / 80 + 1 / 288) / 2**2


@pytest.mark.parametrize("n", [8, 16])
def test_c8_c16_bounded_error(n):
    torch.manual_seed(0)
    group = Group(n)
    lift = gnn.LiftingConv2d(1, 6, 5, group, padding="same", disk_mask=True).double()
    gconv = gnn.GroupConv2d(6, 6, 5, group, padding="same", disk_mask=True).double()
    with torch.no_grad():
        lift.weight.copy_(_smooth_filters(6, 1, k=5))
        gconv.weight.copy_(_smooth_filters(6, 6, n, k=5) / 10)
    net = nn.Sequential(lift, nn.ReLU(), gconv)
    inv = nn.Sequential(net, nn.ReLU(), gnn.InvariantPool())
    x = _blobs(4, 41)

    # the same maps through the readable reference (filter matrix + one F.conv2d)
    def ref_lift(t):
        return reference.lifting_conv2d(t, lift.weight, lift.bias, group, padding=2, disk_mask=True)

    def ref_net(t):
        return reference.group_conv2d(ref_lift(t).relu(), gconv.weight, gconv.bias, group, padding=2, disk_mask=True)

    def ref_inv(t):
        return ref_net(t).relu().mean(dim=(2, 3, 4))

    # one resampling of the input: the exact error against the exactly rotated blobs, within EPS1(2)
    rx = group.act_on_plane(1, x)
    exact = _blobs(4, 41, angle=group.angle(1))
    assert 0 < (rx - exact).norm() / exact.norm() < EPS1_SIGMA2
    for ours, ref, kind, resamplings in ((lift, ref_lift, "group", 3), (net, ref_net, "group", 4),
                                         (inv, ref_inv, "invariant", 4)):
        e = gnn.equivariance_error(ours, x, group, 1, kind).relative
        e_ref = gnn.equivariance_error(ref, x, group, 1, kind).relative
        rounding = chain_rtol(F64, reduction_lengths(ours, x))  # float64 rounding of either evaluation
        # ours and the reference compute the same error up to rounding (4x: both sides of both evaluations)
        assert abs(e - e_ref) <= 4 * rounding * (1 + e), (kind, e, e_ref)
        # a real interpolation error (far above rounding), within the interpolation budget
        assert 100 * rounding < e_ref < resamplings * EPS1_SIGMA2, (kind, e_ref)
    # the 90-degree elements of C8 / C16 remain exact: permutations, so rounding only
    _assert_rounding_only(gnn.equivariance_error(net, x, group, n // 4, "group"), F64, net, x, "90 degrees")


def test_transform_helper_kinds():
    g = Group(4, True)
    t = torch.randn(1, 2, 8, 5, 5)
    # exact: the identity, the invariant kind and a quarter turn move values without arithmetic
    assert torch.equal(transform(g, 0, t, "group"), t)
    assert torch.equal(transform(g, 3, t, "invariant"), t)
    assert torch.equal(transform(g, 1, t[:, :, 0], "plane"), torch.rot90(t[:, :, 0], 1, dims=(-2, -1)))
    with pytest.raises(ValueError, match="output_kind"):
        gnn.equivariance_error(nn.Identity(), t[:, :, 0], g, 1, "vector")
