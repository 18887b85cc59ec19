"""Tests for gconv_ext.data.transforms: exact quarter turns, rotation direction, batching."""

from __future__ import annotations

import math

import pytest
import torch

from gconv_ext.data.transforms import flip, random_rotation, rotate
from gconv_ext.ops import reference

from tolerances import F64, interp_atol

F32 = torch.float32


def _near_turn_atol(h: int, w: int, eps_deg: float, max_step: float) -> float:
    """Bound on |rotate(x, a + eps) - rotate(x, a)| for a multiple of 90 degrees: the source point of every
    pixel moves by at most r * eps (r <= the half-diagonal), and a bilinear interpolant changes by at most
    max_step per pixel along each axis, so by at most sqrt(2) * max_step per pixel of displacement; plus
    float32 interpolation rounding (interp_atol)."""
    r = math.hypot((h - 1) / 2, (w - 1) / 2)
    return math.sqrt(2) * max_step * r * math.radians(eps_deg) + interp_atol(max(h, w), max_step, F32)


def _rand(*shape: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _centre_of_mass(img: torch.Tensor) -> tuple[float, float]:
    """(row, col) centre of mass of a 2-D image."""
    h, w = img.shape
    rows = torch.arange(h, dtype=torch.float64)[:, None]
    cols = torch.arange(w, dtype=torch.float64)[None, :]
    m = img.to(torch.float64)
    total = m.sum()
    return float((m * rows).sum() / total), float((m * cols).sum() / total)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("size", [8, 9, 28])
def test_multiples_of_90_are_bit_identical_to_rot90(dtype: torch.dtype, size: int) -> None:
    x = _rand(4, 3, size, size, dtype=dtype)
    for k in range(-8, 9):  # exact: quarter turns are permutations
        expected = torch.rot90(x, k, dims=(-2, -1))
        assert torch.equal(rotate(x, 90.0 * k), expected), k
        assert torch.equal(rotate(x, torch.full((4,), 90.0 * k)), expected), k
        assert torch.equal(rotate(x, torch.tensor(90 * k)), expected), k  # integer 0-d tensor


def test_mixed_batch_exact_and_interpolated() -> None:
    x = _rand(8, 2, 11, 11, seed=1)
    angles = torch.tensor([0.0, 90.0, 45.0, 180.0, 270.0, -90.0, 360.0, 12.5])
    y = rotate(x, angles)
    for i, a in enumerate(angles.tolist()):
        if a % 90 == 0:
            k = int(a // 90)
            assert torch.equal(y[i], torch.rot90(x[i], k, dims=(-2, -1))), a  # a permutation: exact
        else:
            # batched interpolation equals rotating the image on its own: at most the float32 rounding of
            # the source positions and of the 4-term sum (interp_atol; x in [0, 1))
            torch.testing.assert_close(y[i : i + 1], rotate(x[i : i + 1], a), rtol=0, atol=interp_atol(11, 1.0, F32))
    assert y.shape == x.shape and y.dtype == x.dtype


@pytest.mark.parametrize("k", [1, 2, 3, -1])
def test_interpolation_path_agrees_with_rot90_direction(k: int) -> None:
    x = _rand(3, 1, 28, 28, seed=2)
    eps = 1e-3
    for angle in (90.0 * k - eps, 90.0 * k + eps):
        y = rotate(x, angle)  # not an exact multiple: goes through grid_sample
        # x in [0, 1): neighbouring pixels differ by < 1; the source points move by <= r * eps
        torch.testing.assert_close(y, torch.rot90(x, k, dims=(-2, -1)), rtol=0, atol=_near_turn_atol(28, 28, eps, 1.0))


def test_direction_is_counter_clockwise_as_displayed() -> None:
    # A blob right of centre (row 0 = top) rotated by +30 degrees must move up (smaller row).
    img = torch.zeros(1, 1, 41, 41, dtype=F64)
    img[0, 0, 19:22, 29:32] = 1.0  # centre of mass (20, 30); image centre (20, 20)
    r, c = _centre_of_mass(rotate(img, 30.0)[0, 0])
    d = 10.0
    rad = torch.deg2rad(torch.tensor(30.0, dtype=torch.float64))
    # Bilinear weights are >= 0 and reach only sources within one pixel on each axis, so each source pixel's
    # mass lands within sqrt(2) px of its exact rotated position, and the weights (the column sums) move
    # the 3x3 blob's centre by at most its half-diagonal, sqrt(2): |error| < 2 sqrt(2). The clockwise
    # answer is 2 d sin(30) = 10 px away in rows: the direction is unambiguous.
    bound = 2 * math.sqrt(2)
    assert r == pytest.approx(20.0 - d * float(torch.sin(rad)), abs=bound)
    assert c == pytest.approx(20.0 + d * float(torch.cos(rad)), abs=bound)
    # and the quarter turn moves the top-right corner to the top-left
    corner = torch.zeros(1, 1, 5, 5)
    corner[0, 0, 0, 4] = 1.0
    assert rotate(corner, 90.0)[0, 0, 0, 0] == 1.0  # a permutation: exact


def test_rotation_preserves_mass_away_from_border() -> None:
    # float64: the mass change is a property of bilinear interpolation, not of float32 rounding
    img = torch.zeros(2, 1, 33, 33, dtype=F64)
    img[:, :, 12:21, 14:19] = 1.0
    angles = [37.0, 123.4]
    out = rotate(img, torch.tensor(angles, dtype=F64))  # float64 angles: 123.4 is not a float32
    for i, a in enumerate(angles):
        src = img[i : i + 1].clone().requires_grad_()
        ref = reference.rotate_bilinear(src, math.radians(a))
        # the same bilinear rotation as the reference's (align_corners differs, the operator does not):
        # source positions a few ulps apart, <= 4 terms (interp_atol)
        torch.testing.assert_close(out[i : i + 1], ref.detach(), rtol=0, atol=interp_atol(33, 1.0))
        # mass: sum_p out(p) = sum_q x_q c_q with c_q the column sums of the bilinear weights (the gradient
        # of the reference's sum). Nothing is near the border, so no weight falls outside, and with x >= 0
        # the change is at most sum_q x_q |c_q - 1|: what bilinear resampling moves, no more
        (c,) = torch.autograd.grad(ref.sum(), src)
        assert 0 < abs(out[i].sum() - img[i].sum()) <= (img[i] * (c[0] - 1).abs()).sum()


def test_non_square_images() -> None:
    x = _rand(2, 1, 6, 10, seed=3)
    assert torch.equal(rotate(x, 180.0), torch.rot90(x, 2, dims=(-2, -1)))  # a permutation: exact
    y = rotate(x, 90.0)  # a quarter turn cannot keep the shape exactly: interpolated, same size
    assert y.shape == x.shape
    # x in [0, 1), source points moved by <= r * 0.001 degrees (see _near_turn_atol)
    torch.testing.assert_close(rotate(x, 179.999), torch.rot90(x, 2, dims=(-2, -1)), rtol=0,
                               atol=_near_turn_atol(6, 10, 0.001, 1.0))


def test_returns_new_tensor_for_zero_angle() -> None:
    x = _rand(2, 1, 5, 5)
    y = rotate(x, 0.0)
    assert torch.equal(x, y) and y.data_ptr() != x.data_ptr()  # a copy: exact


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match=r"\[B,C,H,W\]"):
        rotate(torch.zeros(1, 5, 5), 10.0)
    with pytest.raises(TypeError, match="floating point"):
        rotate(torch.zeros(1, 1, 5, 5, dtype=torch.uint8), 10.0)
    with pytest.raises(ValueError, match="angles_deg"):
        rotate(torch.zeros(3, 1, 5, 5), torch.zeros(2))
    with pytest.raises(ValueError, match="NaN"):
        rotate(torch.zeros(1, 1, 5, 5), float("nan"))
    assert rotate(torch.zeros(0, 1, 5, 5), 10.0).shape == (0, 1, 5, 5)


def test_flip() -> None:
    x = _rand(2, 1, 4, 6)
    assert torch.equal(flip(x), torch.flip(x, dims=(-1,)))  # flips are permutations: exact
    assert torch.equal(flip(flip(x)), x)
    # a flip conjugates a rotation into the opposite rotation: the same bilinear weights, mirrored, up to the
    # float32 rounding of the source positions and of the 4-term sums (interp_atol; x in [0, 1))
    torch.testing.assert_close(flip(rotate(flip(x[:, :, :4, :4]), 30.0)), rotate(x[:, :, :4, :4], -30.0),
                               rtol=0, atol=interp_atol(4, 1.0, F32))


def test_random_rotation_is_seeded() -> None:
    x = _rand(16, 1, 12, 12)
    y1, a1 = random_rotation(x, torch.Generator().manual_seed(7))
    y2, a2 = random_rotation(x, torch.Generator().manual_seed(7))
    _, a3 = random_rotation(x, torch.Generator().manual_seed(8))
    # exact: the same seed, the same draws, the same computation
    assert torch.equal(y1, y2) and torch.equal(a1, a2) and not torch.equal(a1, a3)
    assert a1.shape == (16,) and a1.dtype == torch.float64
    assert bool(((a1 >= 0) & (a1 < 360)).all())
    assert torch.equal(y1, rotate(x, a1))


@pytest.mark.parametrize("angle", [10.0, 45.0, 137.0, 300.0])
def test_data_rotation_is_the_group_plane_action_in_pixel_space(angle) -> None:
    # The data rotation (align_corners=False, degrees) and the plane action used by the filter transform and
    # Group.act_on_plane (align_corners=True, radians) are one map in pixel space: random content up to the
    # border, float64, so the only difference is rounding of the source positions (interp_atol).
    x = _rand(3, 2, 17, 17, seed=5).to(F64)
    want = reference.rotate_bilinear(x, math.radians(angle))
    torch.testing.assert_close(rotate(x, angle), want, rtol=0, atol=interp_atol(17, 1.0))
    if angle == 45.0:
        from gconv_ext.groups import Group  # noqa: PLC0415

        torch.testing.assert_close(Group(8).act_on_plane(1, x), want, rtol=0, atol=0)


def test_data_rotation_algorithm_is_pinned() -> None:
    # Committed results and resumed runs depend on the data rotation bit for bit: it must stay rot90 for
    # multiples of 90 degrees and ONE batched affine_grid + grid_sample (bilinear, zeros, align_corners=False)
    # with this float64 matrix cast to the image dtype otherwise. Recomputed here from those ops, so the pin
    # holds on any CPU (the same ops round the same way in one process).
    x = _rand(4, 1, 28, 28, seed=7)
    angles = torch.tensor([90.0, 33.3, 271.0, -45.0], dtype=F64)
    got = rotate(x, angles)
    assert torch.equal(got[0], torch.rot90(x[0], 1, dims=(-2, -1)))
    rad = angles[1:] * (math.pi / 180.0)
    c, s, z = torch.cos(rad), torch.sin(rad), torch.zeros(3, dtype=F64)
    theta = torch.stack([torch.stack([c, -s, z], -1), torch.stack([s, c, z], -1)], -2).to(x.dtype)
    grid = torch.nn.functional.affine_grid(theta, [3, 1, 28, 28], align_corners=False)
    want = torch.nn.functional.grid_sample(x[1:], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    assert torch.equal(got[1:], want)
