"""Tests for the study's baselines: the plain CNN and the spatial-transformer CNN (STN).

Covers shapes, the exact identity initialisation of the STN, that its localisation nets train (the
study's saturated-sigmoid init made that impossible), that the default unit-circle rotation head can
represent and learn any angle (the ``pi * tanh`` head cannot go all the way round), parameter counts, a
short smoke training, argument validation and ``torch.compile(fullgraph=True)``; and for the
rotation-equivariant localiser (``loc_kind="equivariant"``): that its angle shifts by exactly minus the
input's rotation for the group's quarter turns (and half turns), that gradients reach all of it, its
parameter counts and its argument validation.
"""
from __future__ import annotations

import os

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gconv_ext.models.cnn import CNN, GCNN_C4_4_16_PARAMS, cnn_for_params, cnn_parameter_count
from gconv_ext.models.common import count_parameters
from gconv_ext.models.stn import (
    STN,
    EquivariantLocalizationNet,
    LocalizationNet,
    rotation_theta,
    affine_warp,
    stn_for_params,
    stn_parameter_count,
    theta_rotation_angle,
)

MODES = ("single", "multi")
#: Heads whose identity init is exactly the identity and trains.
HEADS = ("rotation", "rotation-tanh", "affine")
ALL_HEADS = HEADS + ("rotation-sigmoid",)


def small_stn(mode: str, head: str, **kwargs) -> STN:
    """A narrow STN (fast on 2 CPU cores) with the full 5-block layout."""
    kwargs.setdefault("channels", 8)
    kwargs.setdefault("loc_channels", 4)
    return STN(mode, head, **kwargs)


def bars_task(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tiny synthetic 3-class task: a horizontal bar, a vertical bar or a square, at random places."""
    g = torch.Generator().manual_seed(seed)
    x = 0.1 * torch.rand(n, 1, 28, 28, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    for i in range(n):
        r, c = torch.randint(4, 14, (2,), generator=g).tolist()
        if y[i] == 0:
            x[i, 0, r:r + 3, c:c + 12] = 1.0
        elif y[i] == 1:
            x[i, 0, r:r + 12, c:c + 3] = 1.0
        else:
            x[i, 0, r:r + 7, c:c + 7] = 1.0
    return x, y


# --------------------------------------------------------------------------------------------
# shapes


@pytest.mark.parametrize("batch", [1, 4])
def test_cnn_forward_shape(batch: int) -> None:
    model = CNN(channels=8)
    out = model(torch.randn(batch, 1, 28, 28))
    assert out.shape == (batch, 10)
    assert model.spatial_sizes == (28, 24, 23, 19, 15, 14, 10, 6, 5)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("head", ALL_HEADS)
@pytest.mark.parametrize("batch", [1, 4])
def test_stn_forward_shape(mode: str, head: str, batch: int) -> None:
    torch.manual_seed(0)
    model = small_stn(mode, head, init="random")
    x = torch.randn(batch, 1, 28, 28)
    assert model(x).shape == (batch, 10)
    warped, params = model.transformed_input(x)
    assert warped.shape == x.shape
    assert params.shape == ((batch,) if head.startswith("rotation") else (batch, 2, 3))
    assert model.localizers[0].head.out_features == {"rotation": 2, "affine": 6}.get(head, 1)
    assert len(model.localizers) == (1 if mode == "single" else 5)
    assert model.block_input_sizes == (28, 23, 18, 13, 8) and model.output_size == 4


def test_batch_of_one_matches_batched_row() -> None:
    """Per-sample LayerNorm and mean pooling: no coupling across the batch, and [1, 10] for B = 1."""
    torch.manual_seed(0)
    x = torch.randn(4, 1, 28, 28)
    for model in (CNN(channels=8), small_stn("multi", "affine", init="random")):
        torch.testing.assert_close(model(x[2:3]), model(x)[2:3], rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------
# the transform


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("head", HEADS)
def test_identity_init_is_exactly_identity(mode: str, head: str) -> None:
    torch.manual_seed(0)
    model = small_stn(mode, head)
    x = torch.rand(8, 1, 28, 28)
    for localizer in model.localizers:
        theta, params = localizer(x if localizer is model.localizers[0] else
                                  torch.rand(8, 8, 23, 23))
        assert torch.equal(theta, torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(8, 2, 3))
        if head.startswith("rotation"):
            assert torch.equal(params, torch.zeros(8))
    warped, _ = model.transformed_input(x)
    # Only the float32 rounding of the sampling grid remains (~1e-6 of a pixel).
    torch.testing.assert_close(warped, x, rtol=0, atol=5e-6)
    warped64, _ = model.double().transformed_input(x.double())
    torch.testing.assert_close(warped64, x.double(), rtol=0, atol=1e-12)


def test_rotation_convention_matches_rot90() -> None:
    """angle = pi/2 rotates counter-clockwise, like torch.rot90(x, 1, dims=(-2, -1))."""
    x = torch.rand(2, 3, 28, 28, dtype=torch.float64)
    theta = rotation_theta(torch.full((2,), math.pi / 2, dtype=torch.float64))
    torch.testing.assert_close(affine_warp(x, theta), torch.rot90(x, 1, dims=(-2, -1)), rtol=0, atol=1e-12)
    assert torch.equal(rotation_theta(torch.zeros(1)), torch.tensor([[[1.0, 0, 0], [0, 1.0, 0]]]))


def test_rotation_head_bias_sets_the_warp() -> None:
    """Head weight 0 and bias (0, 1): angle pi/2 and exactly the rot90 warp (any bias length)."""
    loc = LocalizationNet(1, 4).double()
    x = torch.rand(3, 1, 28, 28, dtype=torch.float64)
    for scale in (1.0, 0.25, 7.0):
        with torch.no_grad():
            loc.head.bias.copy_(torch.tensor([0.0, scale]))
        theta, angle = loc(x)
        quarter = torch.tensor([[0.0, -1, 0], [1, 0, 0]], dtype=torch.float64)
        assert torch.equal(theta, quarter.expand(3, 2, 3))
        torch.testing.assert_close(angle, torch.full((3,), math.pi / 2, dtype=torch.float64), rtol=0,
                                   atol=1e-15)
        torch.testing.assert_close(affine_warp(x, theta), torch.rot90(x, 1, dims=(-2, -1)), rtol=0,
                                   atol=1e-12)


def test_rotation_head_represents_every_angle() -> None:
    """Bias (r cos a, r sin a) gives angle a for every a in (-pi, pi], across the +-pi seam too."""
    loc = LocalizationNet(1, 4).double()
    x = torch.rand(2, 1, 28, 28, dtype=torch.float64)
    angles = torch.cat([torch.linspace(-math.pi, math.pi, 73, dtype=torch.float64)[1:],
                        torch.tensor([-math.pi + 1e-6, math.pi - 1e-6, 2.5, -2.5], dtype=torch.float64)])
    for a in angles.tolist():
        r = 0.5 + abs(a)  # the length of (c, s) does not matter
        with torch.no_grad():
            loc.head.bias.copy_(torch.tensor([r * math.cos(a), r * math.sin(a)], dtype=torch.float64))
        theta, got = loc(x)
        assert -math.pi <= got.min() and got.max() <= math.pi
        diff = torch.remainder(got - a + math.pi, 2 * math.pi) - math.pi
        assert diff.abs().max() < 1e-12, (a, got)
        torch.testing.assert_close(theta, rotation_theta(torch.full((2,), a, dtype=torch.float64)),
                                   rtol=0, atol=1e-15)
        torch.testing.assert_close(theta_rotation_angle(theta), got, rtol=0, atol=1e-12)


def test_theta_rotation_angle() -> None:
    """The rotation of theta's polar decomposition: inverts rotation_theta; scale/shear/shift ignored."""
    a = torch.tensor([0.0, 0.3, math.pi / 2, 2.0, -2.9, -math.pi / 2, math.pi], dtype=torch.float64)
    theta = rotation_theta(a)
    torch.testing.assert_close(theta_rotation_angle(theta), a, rtol=0, atol=1e-12)
    # theta = [R(a) P | t] with P symmetric positive definite: still angle a.
    p = torch.tensor([[1.7, 0.4], [0.4, 0.6]], dtype=torch.float64)
    affine = theta.clone()
    affine[:, :, :2] = theta[:, :, :2] @ p
    affine[:, :, 2] = torch.tensor([0.3, -0.2], dtype=torch.float64)
    got = theta_rotation_angle(affine)
    torch.testing.assert_close(torch.cos(got), torch.cos(a), rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.sin(got), torch.sin(a), rtol=0, atol=1e-12)
    # Sign: a quarter turn counter-clockwise (torch.rot90 k=1) reads +pi/2.
    quarter = torch.tensor([[[0.0, -1, 0], [1, 0, 0]]], dtype=torch.float64)
    x = torch.rand(1, 1, 28, 28, dtype=torch.float64)
    torch.testing.assert_close(affine_warp(x, quarter), torch.rot90(x, 1, dims=(-2, -1)), rtol=0, atol=1e-12)
    assert theta_rotation_angle(quarter).item() == pytest.approx(math.pi / 2)
    with pytest.raises(ValueError, match="theta"):
        theta_rotation_angle(torch.zeros(2, 3, 3))


def test_random_init_is_small_and_input_dependent() -> None:
    for head in ("rotation", "rotation-tanh"):
        torch.manual_seed(0)
        model = small_stn("single", head, init="random", init_std=0.05)
        _, angles = model.transformed_input(torch.rand(16, 1, 28, 28))
        assert 0 < angles.abs().max() < 0.5 and angles.std() > 0, head


def test_study_sigmoid_head_reproduces_the_study() -> None:
    """head="rotation-sigmoid": identity init = bias 1e5 (angle 2*pi, identity up to sin(2*pi) in
    float32); random init = PyTorch's default Linear init (angles near pi)."""
    torch.manual_seed(0)
    loc = LocalizationNet(1, 4, head="rotation-sigmoid")
    assert torch.count_nonzero(loc.head.weight) == 0 and loc.head.bias.item() == 1e5
    x = torch.rand(8, 1, 28, 28)
    theta, angle = loc(x)
    assert torch.equal(angle, torch.full((8,), 2 * math.pi))
    identity = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(8, 2, 3)
    torch.testing.assert_close(theta, identity, rtol=0, atol=1e-6)
    rand = LocalizationNet(1, 16, head="rotation-sigmoid", init="random")
    bound = 1 / math.sqrt(16)  # nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert rand.head.weight.abs().max() <= bound and rand.head.weight.std() > bound / 4
    _, angle = rand(x)
    assert (angle - math.pi).abs().max() < 1.5


# --------------------------------------------------------------------------------------------
# gradients reach the localisation nets


def test_study_init_blocks_all_localizer_gradients() -> None:
    """The study's rotation head (weight 0, bias 1e5, angle = 2*pi*sigmoid) gets exactly zero grads,
    written out by hand and as head="rotation-sigmoid" in a whole STN, however long it trains."""
    torch.manual_seed(0)
    head = nn.Linear(16, 1)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(1e5)
    features = torch.randn(4, 16, requires_grad=True)
    angle = 2 * math.pi * torch.sigmoid(head(features))[:, 0]
    x = torch.rand(4, 1, 28, 28)
    affine_warp(x, rotation_theta(angle)).square().sum().backward()
    assert torch.count_nonzero(head.weight.grad) == 0 and torch.count_nonzero(head.bias.grad) == 0
    assert torch.count_nonzero(features.grad) == 0

    model = small_stn("single", "rotation-sigmoid")
    before = [p.detach().clone() for p in model.localizer_parameters()]
    x, y = bars_task(16, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        for name, p in model.localizers.named_parameters():
            assert torch.count_nonzero(p.grad) == 0, name
        opt.step()
    assert all(torch.equal(p, q) for p, q in zip(model.localizer_parameters(), before))


def test_rotation_head_gradient_from_the_first_step() -> None:
    """At the identity init (bias (1, 0)) the sine output gets the whole gradient; the cosine, the
    radial direction of the normalisation, exactly none."""
    torch.manual_seed(0)
    loc = LocalizationNet(1, 4)
    x = torch.rand(6, 1, 28, 28)
    theta, _ = loc(x)
    (affine_warp(x, theta) - torch.rot90(x, 1, dims=(-2, -1))).square().sum().backward()
    assert loc.head.bias.grad[1] != 0 and loc.head.bias.grad[0] == 0
    assert loc.head.weight.grad[1].abs().sum() > 0 and torch.count_nonzero(loc.head.weight.grad[0]) == 0
    assert torch.count_nonzero(loc.conv1.weight.grad) == 0  # behind the zero head weight, until step 2


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("head", HEADS)
def test_localizers_receive_gradients(mode: str, head: str) -> None:
    torch.manual_seed(0)
    model = small_stn(mode, head)
    x, y = bars_task(16, seed=1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-4)

    def step() -> None:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()

    # Step 1: every head already gets a gradient (the study's got exactly 0); the convs behind a
    # zero head weight do not, yet.
    step()
    for loc in model.localizers:
        assert loc.head.weight.grad.abs().sum() > 0 and loc.head.bias.grad.abs().sum() > 0
        assert torch.count_nonzero(loc.conv1.weight.grad) == 0
    opt.step()
    # Steps 2 and 3: gradients reach every localiser parameter.
    for _ in range(2):
        step()
        for name, p in model.localizers.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        opt.step()
    _, params = model.transformed_input(x)
    identity = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])
    moved = params.abs() if head.startswith("rotation") else (params - identity).abs()
    assert moved.max() > 1e-4 and params.reshape(len(params), -1).std(0).max() > 0  # input-dependent warps


class GivenFeatures(LocalizationNet):
    """A localiser whose convs already give an orientation descriptor: ``features(f) = f``."""

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x


@pytest.mark.parametrize("head", ["rotation", "rotation-tanh"])
def test_head_learns_angles_all_the_way_round(head: str) -> None:
    """Copies of a digit at theta = 0, 30, ..., 330 degrees, described by (cos theta, sin theta) (what a
    rotation-equivariant descriptor gives), must be warped by -theta to end upright: 150 Adam steps
    from the identity init on the squared distance of theta's linear part to R(-theta).

    The unit-circle head learns the canonicaliser (it is linear in these features: c = cos theta,
    s = -sin theta), the warps beyond +-90 degrees and across the +-180 seam included. The pi*tanh
    head cannot: its angle is a monotone function of a sinusoid of theta, which rises on about half
    of the 12 steps where -theta falls, and it ends more than 45 degrees off somewhere.
    """
    theta = torch.deg2rad(torch.arange(0.0, 360.0, 30.0))
    target = torch.remainder(math.pi - theta, 2 * math.pi) - math.pi  # -theta in [-pi, pi)
    features = torch.stack((torch.cos(theta), torch.sin(theta)), dim=1)
    loc = GivenFeatures(1, 2, head=head)
    opt = torch.optim.Adam(loc.parameters(), lr=0.05)
    goal = rotation_theta(target)[:, :, :2]
    for _ in range(150):
        opt.zero_grad()
        warp, _ = loc(features)
        (warp[:, :, :2] - goal).square().sum((1, 2)).mean().backward()
        opt.step()
    with torch.no_grad():
        _, angle = loc(features)
    error = torch.rad2deg(torch.remainder(angle - target + math.pi, 2 * math.pi) - math.pi).abs()
    if head == "rotation":
        assert error.max() < 1.0, error
        assert (torch.rad2deg(target).abs() > 90).sum() == 5  # the warps tanh-like heads struggle with
    else:
        assert error.max() > 45.0, error


# --------------------------------------------------------------------------------------------
# parameter counts


def test_count_parameters() -> None:
    lin = nn.Linear(3, 4)
    shared = nn.Sequential(lin, nn.ReLU(), lin)
    assert count_parameters(shared) == 16
    lin.bias.requires_grad_(False)
    assert count_parameters(shared, trainable_only=True) == 12
    with pytest.raises(ValueError, match="model"):
        count_parameters(torch.zeros(3))  # type: ignore[arg-type]


def test_cnn_parameter_counts() -> None:
    assert count_parameters(CNN()) == 103_690  # the UvA tutorial CNN's count
    model = cnn_for_params(GCNN_C4_4_16_PARAMS)
    assert model.channels == 32 and model.layers == 5
    assert count_parameters(model) == 103_690
    assert abs(count_parameters(model) / 102_970 - 1) < 0.02
    # The GCNN C4/2/16 (51,770) is matched by 3 layers of 32 channels: 52,426 (+1.3%).
    small = cnn_for_params(51_770, layers=3)
    assert small.channels == 32 and count_parameters(small) == cnn_parameter_count(32, 3) == 52_426
    for channels, layers, k in [(1, 1, 1), (7, 2, 3), (16, 6, 5)]:
        assert count_parameters(CNN(channels, layers, k)) == cnn_parameter_count(channels, layers, k)


def test_stn_parameter_counts() -> None:
    # The study's one-output heads give its 110,539; the unit-circle head has loc_channels + 1 = 17
    # more per localiser.
    expected_default = {("single", "rotation"): 110_556, ("single", "rotation-tanh"): 110_539,
                        ("single", "rotation-sigmoid"): 110_539, ("single", "affine"): 110_624,
                        ("multi", "rotation"): 187_620, ("multi", "rotation-tanh"): 187_535,
                        ("multi", "rotation-sigmoid"): 187_535, ("multi", "affine"): 187_960}
    expected_matched = {("single", "rotation"): (31, 104_216), ("single", "rotation-tanh"): (31, 104_199),
                        ("single", "rotation-sigmoid"): (31, 104_199), ("single", "affine"): (31, 104_284),
                        ("multi", "rotation"): (20, 105_540), ("multi", "rotation-tanh"): (20, 105_455),
                        ("multi", "rotation-sigmoid"): (20, 105_455), ("multi", "affine"): (19, 100_340)}
    assert stn_parameter_count("single", "rotation") - stn_parameter_count("single", "rotation-tanh") == 17
    for (mode, head), n in expected_default.items():
        assert count_parameters(STN(mode, head)) == stn_parameter_count(mode, head) == n
        model = stn_for_params(GCNN_C4_4_16_PARAMS, mode=mode, head=head)
        assert (model.channels, count_parameters(model)) == expected_matched[(mode, head)]
        assert abs(count_parameters(model) / 102_970 - 1) < 0.03
    for kwargs in [dict(channels=5, layers=3, loc_channels=3, kernel_size=3),
                   dict(channels=9, layers=2, loc_channels=7, kernel_size=5, in_channels=3)]:
        for mode in MODES:
            for head in ALL_HEADS:
                for pool in ("mean", "grid"):
                    assert count_parameters(STN(mode, head, loc_pool=pool, **kwargs)) == \
                        stn_parameter_count(mode, head, loc_pool=pool, **kwargs)
    # The grid-pooled localiser: 16 channels x 4 x 4 cells -> 32 hidden -> 2, i.e. 8,192 + 32 + 64 + 2 more
    # weights than the mean-pooled one's 16 -> 2 head (34).
    assert stn_parameter_count(loc_pool="grid") - stn_parameter_count() == 8_256
    grid = stn_for_params(GCNN_C4_4_16_PARAMS, loc_pool="grid")
    assert (grid.channels, count_parameters(grid)) == (29, 100_392) and grid.loc_pool == "grid"
    with pytest.raises(ValueError, match="loc_pool"):
        STN(loc_pool="max")


def test_grid_localiser_sees_orientation() -> None:
    # The mean over a feature map's positions hardly changes when the digit turns; the grid of cells does.
    # Two copies of an asymmetric blob 90 degrees apart: the grid descriptors differ, the head can tell them.
    torch.manual_seed(0)
    x = torch.zeros(1, 1, 28, 28)
    x[..., 4:12, 6:22] = 1.0
    x[..., 12:24, 6:10] = 1.0
    both = torch.cat([x, torch.rot90(x, 1, dims=(-2, -1))])
    grid = LocalizationNet(1, 8, 5, pool="grid")
    mean = LocalizationNet(1, 8, 5, pool="mean")
    mean.load_state_dict({k: v for k, v in grid.state_dict().items() if k.startswith("conv")}, strict=False)
    with torch.no_grad():
        g, m = grid.features(both), mean.features(both)
    assert (g[0] - g[1]).norm() / g[0].norm() > 0.1
    assert g.shape == (2, 32) and m.shape == (2, 8)


# --------------------------------------------------------------------------------------------
# the equivariant localiser


def equivariant_stn(group: str = "C8", dtype: torch.dtype = torch.float32, **kwargs) -> STN:
    kwargs.setdefault("channels", 4)
    kwargs.setdefault("layers", 2)
    kwargs.setdefault("loc_channels", 3)
    return STN(loc_kind="equivariant", loc_group=group, **kwargs).to(dtype)


def wrapped_deg(a: torch.Tensor) -> torch.Tensor:
    """Angles (degrees) wrapped to [-180, 180)."""
    return torch.remainder(a + 180.0, 360.0) - 180.0


class GivenGroupMap(EquivariantLocalizationNet):
    """An equivariant localiser whose network is bypassed: ``features(h) = h`` for ``h [B, C, N, H, W]``."""

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x


READOUTS = ("dipole", "group", "both")


@pytest.mark.parametrize("group", ["C4", "C6", "C8", "C16"])
def test_group_readout_turns_with_the_group_axis(group: str) -> None:
    """Rolling the group axis by k (what rotating the input by 2*pi*k/N does to it, besides moving the
    pixels) turns the group readout's phi by exactly 360*k/N degrees and the warp angle by minus that,
    for every k, whatever the learned offset; the dipole readout ignores the group axis."""
    torch.manual_seed(0)
    n = int(group[1:])
    h = torch.randn(5, 3, n, 6, 6, dtype=torch.float64)
    loc = GivenGroupMap(1, 3, group=group, readout="group").double()
    with torch.no_grad():
        loc.offset.fill_(0.7)
    _, alpha = loc(h)
    cos, sin = loc.orientation(h)
    phi = torch.rad2deg(torch.atan2(sin, cos))
    zeros = torch.zeros(5, dtype=torch.float64)
    torch.testing.assert_close(wrapped_deg(torch.rad2deg(alpha) + phi - math.degrees(0.7)), zeros,
                               rtol=0, atol=1e-10)
    dipole = GivenGroupMap(1, 3, group=group, readout="dipole").double()
    for k in range(1, n):
        rolled = torch.roll(h, k, dims=2)
        cos_k, sin_k = loc.orientation(rolled)
        _, alpha_k = loc(rolled)
        shift = 360.0 * k / n
        torch.testing.assert_close(wrapped_deg(torch.rad2deg(torch.atan2(sin_k, cos_k)) - phi - shift), zeros,
                                   rtol=0, atol=1e-10)
        torch.testing.assert_close(wrapped_deg(torch.rad2deg(alpha_k - alpha) + shift), zeros, rtol=0, atol=1e-10)
        torch.testing.assert_close(dipole.orientation_vector(rolled), dipole.orientation_vector(h),
                                   rtol=0, atol=1e-12)


@pytest.mark.parametrize("readout", READOUTS)
def test_readouts_turn_with_a_rotated_group_map(readout: str) -> None:
    """A group map turned by q quarter turns (pixels by torch.rot90, group axis rolled by q*N/4), on odd
    and even sizes: v turns by exactly 90*q degrees, for every readout."""
    torch.manual_seed(0)
    loc = GivenGroupMap(1, 3, group="C8", readout=readout).double()
    if readout == "both":
        with torch.no_grad():
            loc.score.weight.normal_()  # 0 at init: give the group part a say
    for size in (6, 7):
        h = torch.randn(4, 3, 8, size, size, dtype=torch.float64)
        v = loc.orientation_vector(h)
        for q in (1, 2, 3):
            turned = torch.roll(torch.rot90(h, q, dims=(-2, -1)), 2 * q, dims=2)
            c, s = (0.0, 1.0) if q == 1 else (-1.0, 0.0) if q == 2 else (0.0, -1.0)
            expected = torch.stack((c * v[:, 0] - s * v[:, 1], s * v[:, 0] + c * v[:, 1]), dim=-1)
            torch.testing.assert_close(loc.orientation_vector(turned), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("readout", READOUTS)
@pytest.mark.parametrize(("group", "quarter_turns", "size"), [
    ("C4", (1, 2, 3), 28), ("C8", (1, 2, 3), 28), ("C16", (1, 2, 3), 28), ("C8", (1, 2, 3), 32),
    ("C6", (2,), 28),  # 180 degrees is element 3 of C6; its quarter turns are not in the group
])
def test_equivariant_localizer_is_exact_for_quarter_turns(readout: str, group: str, quarter_turns,
                                                          size: int) -> None:
    """float64, even sizes (the 2x2/2 pool is exact): rotating the input by k quarter turns
    (torch.rot90, counter-clockwise) shifts the warp angle by exactly -90k degrees, to ~1e-10 degrees
    (measured ~1e-12), and every copy is warped to the same image."""
    torch.manual_seed(1)
    model = equivariant_stn(group, torch.float64, input_size=size, loc_readout=readout)
    if readout == "both":
        with torch.no_grad():
            model.localizers[0].score.weight.normal_()
    x = torch.rand(4, 1, size, size, dtype=torch.float64) * (torch.rand(4, 1, size, size) > 0.6)
    with torch.no_grad():
        warped, alpha = model.transformed_input(x)
        for k in quarter_turns:
            warped_k, alpha_k = model.transformed_input(torch.rot90(x, k, dims=(-2, -1)))
            err = wrapped_deg(torch.rad2deg(alpha_k - alpha) + 90.0 * k)
            assert err.abs().max() < 1e-4, (k, err)
            torch.testing.assert_close(warped_k, warped, rtol=0, atol=1e-9)
        assert torch.rad2deg(alpha).std() > 1.0  # not a constant warp


@pytest.mark.parametrize("readout", READOUTS)
def test_equivariant_localizer_gradients_reach_every_parameter(readout: str) -> None:
    """From the very first step (no identity init to wait behind): one cross-entropy backward gives every
    localiser parameter, the offset (and for "both" the zero-initialised score) included, a nonzero
    gradient, also under bf16 autocast; a few AdamW steps change the warps."""
    torch.manual_seed(0)
    model = equivariant_stn("C8", channels=8, layers=2, loc_channels=4, num_classes=3, loc_readout=readout)
    x, y = bars_task(16, seed=1)
    names = {name for name, _ in model.localizers.named_parameters()}
    readout_names = {"dipole": {"0.field.weight"}, "group": {"0.score.weight"},
                     "both": {"0.field.weight", "0.score.weight"}}[readout]
    assert names == {"0.lift.weight", "0.lift.bias", "0.gconv.weight", "0.gconv.bias", "0.offset"} | readout_names
    for autocast in (False, True):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        for name, p in model.localizers.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, (autocast, name)
    with torch.no_grad():
        _, before = model.transformed_input(x)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    with torch.no_grad():
        _, after = model.transformed_input(x)
    assert (after - before).abs().max() > 1e-4


def test_equivariant_localizer_degenerate_input_is_finite() -> None:
    """A blank image has no orientation (v = 0): the eps guard keeps the warp and its gradient finite."""
    model = equivariant_stn("C8")
    x = torch.zeros(2, 1, 28, 28, requires_grad=True)
    out = model(x)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()
    for name, p in model.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), name


def test_equivariant_parameter_counts() -> None:
    # Localiser: lift 1*C*k^2 + C, group conv C*C*N*k^2 + C, readout C (2C for "both"; no biases), offset 1.
    k2 = 25
    for c, n in [(8, 8), (4, 16), (3, 6)]:
        for readout, r in (("dipole", 1), ("group", 1), ("both", 2)):
            loc = EquivariantLocalizationNet(1, c, 5, f"C{n}", readout)
            assert count_parameters(loc) == c * k2 + c + c * c * n * k2 + c + r * c + 1
    assert count_parameters(EquivariantLocalizationNet(1, 8, 5, "C8")) == 13_025
    # The whole STN: the CNN body (32 channels, exactly the plain CNN's 103,690) plus the localiser.
    assert stn_parameter_count(loc_channels=8, loc_kind="equivariant") == 103_690 + 13_025 == 116_715
    assert count_parameters(STN(loc_channels=8, loc_kind="equivariant")) == 116_715
    for kwargs in [dict(), dict(channels=5, layers=3, loc_channels=3, kernel_size=3),
                   dict(channels=9, layers=2, loc_channels=2, kernel_size=5, in_channels=3),
                   dict(channels=7, layers=4, loc_channels=4, kernel_size=7)]:
        for group, readout in (("C4", "dipole"), ("C8", "group"), ("C16", "both"), ("C6", "dipole")):
            model = STN(loc_kind="equivariant", loc_group=group, loc_readout=readout, **kwargs)
            assert count_parameters(model) == stn_parameter_count(
                loc_kind="equivariant", loc_group=group, loc_readout=readout, **kwargs), (kwargs, group)
    # Matched to the GCNN C4/4/16 (102,970): 30 body channels and 8 C8 fields, 104,235 (+1.2%).
    model = stn_for_params(GCNN_C4_4_16_PARAMS, loc_channels=8, loc_kind="equivariant", loc_group="C8")
    assert (model.channels, count_parameters(model)) == (30, 104_235) and model.loc_kind == "equivariant"
    assert isinstance(model.localizers[0], EquivariantLocalizationNet) and len(model.localizers) == 1
    assert model.loc_group.name == "C8" and model.loc_readout == "dipole"
    both = stn_for_params(GCNN_C4_4_16_PARAMS, loc_channels=8, loc_kind="equivariant", loc_readout="both")
    assert (both.channels, count_parameters(both)) == (30, 104_243)
    # The group's (cos, sin) table is a non-persistent buffer: checkpoints hold the parameters only.
    assert set(both.localizers[0].state_dict()) == {"lift.weight", "lift.bias", "gconv.weight", "gconv.bias",
                                                    "score.weight", "field.weight", "offset"}


def test_registry_canonical_stn() -> None:
    from gconv_ext.train import build_model  # noqa: PLC0415

    matched = build_model("stn-single-canonical", preset="matched")
    assert isinstance(matched, STN) and matched.loc_kind == "equivariant" and matched.mode == "single"
    assert count_parameters(matched) == 104_235 and matched.loc_group.name == "C8"
    small = build_model("stn-single-canonical", preset="under103k")
    assert (small.channels, small.loc_channels, count_parameters(small)) == (30, 7, 101_207)
    tiny = build_model("stn-single-canonical", preset="tiny", group="C16")
    assert (tiny.channels, tiny.layers, tiny.loc_channels, tiny.loc_group.name) == (8, 2, 4, "C16")
    assert tiny(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    for kwargs, name in [(dict(group="D8"), "group"), (dict(group="C1"), "group"), (dict(group="Z4"), "group"),
                         (dict(channels=8, params=1000), "params"), (dict(loc_pool="grid"), "loc_pool"),
                         (dict(loc_readout="argmax"), "loc_readout")]:
        with pytest.raises(ValueError, match=rf"\b{name}\b"):
            build_model("stn-single-canonical", **kwargs)


# --------------------------------------------------------------------------------------------
# training


@pytest.mark.parametrize("kind", ["cnn", "stn-single-rotation", "stn-multi-affine"])
def test_smoke_training_learns_tiny_task(kind: str) -> None:
    """30 AdamW steps (the study's lr 1e-2, wd 1e-4) on the 3-class bars task: real learning."""
    torch.manual_seed(0)
    model = {"cnn": lambda: CNN(channels=8, num_classes=3),
             "stn-single-rotation": lambda: small_stn("single", "rotation", num_classes=3),
             "stn-multi-affine": lambda: small_stn("multi", "affine", num_classes=3)}[kind]()
    x, y = bars_task(32, seed=2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-4)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    final = sum(losses[-5:]) / 5
    # Chance level is ln(3) = 1.10: the loss must go well below it, not just drop from a bad start.
    assert final < 0.75 * losses[0] and final < 0.9, losses
    x_test, y_test = bars_task(64, seed=3)
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    assert accuracy > 0.5  # chance is 1/3


# --------------------------------------------------------------------------------------------
# argument validation


@pytest.mark.parametrize(
    "factory, kwargs, name",
    [
        (CNN, dict(channels=0), "channels"),
        (CNN, dict(channels=2.0), "channels"),
        (CNN, dict(layers=True), "layers"),
        (CNN, dict(layers=7), "layers"),
        (CNN, dict(kernel_size=0), "kernel_size"),
        (CNN, dict(in_channels=-1), "in_channels"),
        (CNN, dict(num_classes=0), "num_classes"),
        (STN, dict(mode="double"), "mode"),
        (STN, dict(head="scale"), "head"),
        (STN, dict(head=None), "head"),
        (STN, dict(channels=-3), "channels"),
        (STN, dict(layers=0), "layers"),
        (STN, dict(layers=6), "layers"),
        (STN, dict(loc_channels=0), "loc_channels"),
        (STN, dict(kernel_size="5"), "kernel_size"),
        (STN, dict(init="zeros"), "init"),
        (STN, dict(init_std=-1.0), "init_std"),
        (STN, dict(init_std=float("nan")), "init_std"),
        (STN, dict(input_size=0), "input_size"),
        (LocalizationNet, dict(in_channels=1, loc_channels=0), "loc_channels"),
        (LocalizationNet, dict(in_channels=1, loc_channels=4, head="rotation-cos"), "head"),
        (stn_parameter_count, dict(head="rotation-study"), "head"),
        (cnn_for_params, dict(target=0), "target"),
        (stn_for_params, dict(mode="both"), "mode"),
        (STN, dict(loc_kind="steerable"), "loc_kind"),
        (STN, dict(loc_kind="equivariant", loc_group="D8"), "loc_group"),
        (STN, dict(loc_kind="equivariant", loc_group="C1"), "loc_group"),
        (STN, dict(loc_kind="equivariant", loc_group="R8"), "loc_group"),
        (STN, dict(loc_kind="equivariant", loc_group=8), "loc_group"),
        (STN, dict(loc_kind="equivariant", mode="multi"), "mode"),
        (STN, dict(loc_kind="equivariant", head="affine"), "head"),
        (STN, dict(loc_kind="equivariant", loc_pool="grid"), "loc_pool"),
        (STN, dict(loc_kind="equivariant", kernel_size=4), "kernel_size"),
        (STN, dict(loc_kind="equivariant", loc_channels=0), "loc_channels"),
        (STN, dict(loc_kind="equivariant", loc_readout="quadrupole"), "loc_readout"),
        (EquivariantLocalizationNet, dict(in_channels=1, loc_channels=4, readout="mean"), "readout"),
        (stn_parameter_count, dict(loc_kind="equivariant", loc_readout=None), "loc_readout"),
        (EquivariantLocalizationNet, dict(in_channels=1, loc_channels=0), "loc_channels"),
        (EquivariantLocalizationNet, dict(in_channels=0, loc_channels=4), "in_channels"),
        (EquivariantLocalizationNet, dict(in_channels=1, loc_channels=4, kernel_size=6), "kernel_size"),
        (EquivariantLocalizationNet, dict(in_channels=1, loc_channels=4, group="D4"), "group"),
        (stn_parameter_count, dict(loc_kind="equivariant", loc_group="D4"), "loc_group"),
        (stn_parameter_count, dict(loc_kind="equivariant", mode="multi"), "mode"),
        (stn_parameter_count, dict(loc_kind="cnn-ish"), "loc_kind"),
        (stn_for_params, dict(loc_kind="equivariant", head="rotation-tanh"), "head"),
    ],
)
def test_bad_arguments_name_the_argument(factory, kwargs, name: str) -> None:
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        factory(**kwargs)


def test_bad_input_shape() -> None:
    for model in (CNN(channels=4), small_stn("single", "rotation")):
        with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
            model(torch.randn(2, 3, 28, 28))
        with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
            model(torch.randn(28, 28))


# --------------------------------------------------------------------------------------------
# torch.compile


def test_compile_fullgraph_cnn() -> None:
    """About 9 s cold on 2 CPU cores (inductor C++ codegen), so not marked slow."""
    torch.manual_seed(0)
    model = CNN(channels=8)
    x = torch.randn(4, 1, 28, 28)
    _assert_compiled_matches_eager(model, x)


def _assert_compiled_matches_eager(model: torch.nn.Module, x: torch.Tensor) -> None:
    """Compiled and eager outputs agree; on a failure the message says which side is not finite and how the
    process was set up, because a compile failure is usually about the environment."""
    torch._dynamo.reset()
    got = torch.compile(model, fullgraph=True)(x)
    want = model(x)
    where = (f"threads={torch.get_num_threads()}, capability={torch.backends.cpu.get_cpu_capability()}, "
             f"inductor cache={os.environ.get('TORCHINDUCTOR_CACHE_DIR')}")
    assert torch.isfinite(want).all(), f"eager output not finite ({where})"
    assert torch.isfinite(got).all(), f"compiled output has {int((~torch.isfinite(got)).sum())} non-finite values ({where})"
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_compile_fullgraph_stn() -> None:
    """Multi mode (a localiser and sampler before every block); about 21 s cold on 2 CPU cores."""
    torch.manual_seed(0)
    model = small_stn("multi", "rotation", init="random")
    x = torch.randn(4, 1, 28, 28)
    _assert_compiled_matches_eager(model, x)
