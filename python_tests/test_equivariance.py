"""Equivariance of the gconv_ext.nn layers and small networks: exact for C4/D4 at valid sizes, detected and
measurably broken at invalid sizes, and bounded (measured) for C8/C16 at 45 and 22.5 degrees."""
from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

import gconv_ext.nn as gnn
from gconv_ext.groups import Group
from gconv_ext.nn.equivariance import transform

EXACT = [Group(4), Group(4, True)]
TOL = {torch.float32: 1e-5, torch.float64: 1e-12}


def _net(group, c=4, stride_conv=True):
    """lifting conv -> BN -> ReLU -> [strided group conv -> BN -> ReLU] -> 2x2/2 max pool -> group conv
    -> ReLU -> group pool (a planar map) ; valid sizes: 31, 35, ... (3 mod 4) with the strided conv."""
    layers = [gnn.LiftingConv2d(2, c, 3, group, padding=1), gnn.GroupBatchNorm2d(c, group), nn.ReLU()]
    if stride_conv:
        layers += [gnn.GroupConv2d(c, c, 3, group, stride=2, padding=1), gnn.GroupBatchNorm2d(c, group), nn.ReLU()]
    layers += [gnn.GroupMaxPool2d(2), gnn.GroupConv2d(c, c, 3, group), nn.ReLU(), gnn.GroupDropout(0.2),
               gnn.GroupLayerNorm(), gnn.GroupAvgPool2d(3, stride=1, padding=1)]
    return nn.Sequential(*layers)


def _assert_small(err, dtype, what=""):
    assert err.relative < TOL[dtype] and err.max_abs < 100 * TOL[dtype], f"{what}: {err}"


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
            _assert_small(err, dtype, f"{module} (train={mode})")
    # lifting conv, element by element, by hand: f(g x) == g . f(x) with the group axis permuted
    y = lift(x)
    for g in range(group.order):
        torch.testing.assert_close(lift(group.act(g, x, None)), group.act(g, y), atol=10 * TOL[dtype], rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("group", EXACT, ids=str)
def test_network_exact_at_valid_size(group, dtype):
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
                _assert_small(gnn.equivariance_error(net, x, group, g, "group"), dtype, f"g={g}")
    # the invariant projection is invariant, the group pool transforms like an image
    inv = nn.Sequential(net, gnn.InvariantPool()).eval()
    planar = nn.Sequential(net, gnn.GroupPool("max")).eval()
    _assert_small(gnn.equivariance_error(inv, x, group, None, "invariant"), dtype, "invariant")
    _assert_small(gnn.equivariance_error(planar, x, group, None, "plane"), dtype, "group pool")


# -- invalid sizes: reported, warned, and really inexact --------------------------------------------

@pytest.mark.parametrize("group", EXACT, ids=str)
@pytest.mark.parametrize("which,size", [("strided conv", 32), ("max pool", 29)])
def test_invalid_size_detected_warned_and_inexact(group, which, size):
    # 32: the 3x3/2 pad-1 conv sees 32 (residue 1); 29: the conv sees 29 (fine), the 2x2/2 pool sees 15
    net = _net(group).eval()
    report = gnn.check_exact(net, (1, 2, size, size), group)
    assert not report.exact and len(report.offending) == 1
    bad = report.offending[0]
    expected = {"strided conv": ("3", "GroupConv2d", size), "max pool": ("6", "GroupMaxPool2d", 15)}[which]
    assert (bad.name, bad.kind, bad.input_size[0]) == expected
    text = str(report)
    assert "NOT exact" in text and bad.kind in text and f"{bad.input_size[0]}x{bad.input_size[0]}" in text
    x = torch.randn(2, 2, size, size)
    with pytest.warns(gnn.EquivarianceWarning, match=f"{bad.kind}.*{bad.input_size[0]}x{bad.input_size[0]}"):
        y = net(x)
    with warnings.catch_warnings():  # once per module
        warnings.simplefilter("error", gnn.EquivarianceWarning)
        net(x)
    err = gnn.equivariance_error(net, x, group, 1, "group")
    assert err.relative > 1e-3, err
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

def _blobs(batch, size, dtype=torch.float32):
    """Smooth images: Gaussian blobs (sigma 2..4 px) well inside the inscribed disk, zero outside it."""
    gen = torch.Generator().manual_seed(1)
    c = (size - 1) / 2
    ii, jj = torch.meshgrid(torch.arange(size, dtype=dtype), torch.arange(size, dtype=dtype), indexing="ij")
    x, y = jj - c, c - ii
    out = torch.zeros(batch, 1, size, size, dtype=dtype)
    for b in range(batch):
        for _ in range(5):
            r, t, s, a = torch.rand(4, generator=gen, dtype=torch.float64).tolist()
            r, t, s, a = 0.4 * r * size / 2, 2 * math.pi * t, 2 + 2 * s, 2 * a - 1
            out[b, 0] += a * torch.exp(-((x - r * math.cos(t)) ** 2 + (y - r * math.sin(t)) ** 2) / (2 * s * s))
    return out * ((x**2 + y**2) <= (0.45 * size) ** 2)


def _smooth_filters(*lead, k, dtype=torch.float32):
    """Rotation-friendly filters: Gaussian-windowed linear functions of (x, y)."""
    c = (k - 1) / 2
    ii, jj = torch.meshgrid(torch.arange(k, dtype=dtype), torch.arange(k, dtype=dtype), indexing="ij")
    x, y = (jj - c) * 2 / k, (c - ii) * 2 / k
    a = torch.randn(*lead, 3, 1, 1, dtype=dtype)
    return torch.exp(-3 * (x**2 + y**2)) * (a[..., 0, :, :] + a[..., 1, :, :] * x + a[..., 2, :, :] * y)


# Measured (float32, the 4 images 41x41 of _blobs, C=6, k=5, disk-masked filters, torch.manual_seed(0)):
# relative error ||f(gx) - g f(x)|| / ||g f(x)|| at the smallest rotation g = 1:
#                             lifting conv   lift+ReLU+group conv   + ReLU + InvariantPool
#   C8 (45 deg), smooth        1.11e-2        2.18e-2                3.27e-3
#   C16 (22.5 deg), smooth     2.15e-2        2.63e-2                2.51e-3
# With the default He-initialised (white-noise) filters instead: C8 0.135 / 0.266 / 1.33e-2, C16 0.254 /
# 0.359 / 7.9e-3: bilinear rotation of a rough 5x5 filter loses its high frequencies.
# Multiples of 90 degrees stay exact (~4e-7 in float32).
BOUNDS = {8: (0.015, 0.03, 0.005), 16: (0.03, 0.035, 0.004)}


@pytest.mark.parametrize("n", [8, 16])
def test_c8_c16_bounded_error(n):
    torch.manual_seed(0)
    group = Group(n)
    lift = gnn.LiftingConv2d(1, 6, 5, group, padding="same", disk_mask=True)
    gconv = gnn.GroupConv2d(6, 6, 5, group, padding="same", disk_mask=True)
    with torch.no_grad():
        lift.weight.copy_(_smooth_filters(6, 1, k=5))
        gconv.weight.copy_(_smooth_filters(6, 6, n, k=5) / 10)
    net = nn.Sequential(lift, nn.ReLU(), gconv)
    inv = nn.Sequential(net, nn.ReLU(), gnn.InvariantPool())
    x = _blobs(4, 41)
    e_lift = gnn.equivariance_error(lift, x, group, 1, "group")
    e_net = gnn.equivariance_error(net, x, group, 1, "group")
    e_inv = gnn.equivariance_error(inv, x, group, 1, "invariant")
    b_lift, b_net, b_inv = BOUNDS[n]
    assert e_lift.relative < b_lift and e_net.relative < b_net and e_inv.relative < b_inv, (e_lift, e_net, e_inv)
    assert e_inv.relative > 1e-5  # not exact: it is a real measurement
    # the 90-degree elements of C8 / C16 remain exact
    assert gnn.equivariance_error(net, x, group, n // 4, "group").relative < 1e-5


def test_transform_helper_kinds():
    g = Group(4, True)
    t = torch.randn(1, 2, 8, 5, 5)
    assert torch.equal(transform(g, 0, t, "group"), t)
    assert torch.equal(transform(g, 3, t, "invariant"), t)
    assert torch.equal(transform(g, 1, t[:, :, 0], "plane"), torch.rot90(t[:, :, 0], 1, dims=(-2, -1)))
    with pytest.raises(ValueError, match="output_kind"):
        gnn.equivariance_error(nn.Identity(), t[:, :, 0], g, 1, "vector")
