"""Tests for gconv_ext.data.transforms: exact quarter turns, rotation direction, batching."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from gconv_ext.data.transforms import flip, random_rotation, rotate  # noqa: E402


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
    for k in range(-8, 9):
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
            assert torch.equal(y[i], torch.rot90(x[i], k, dims=(-2, -1))), a
        else:
            # batched interpolation equals rotating the image on its own
            torch.testing.assert_close(y[i : i + 1], rotate(x[i : i + 1], a), rtol=0, atol=1e-6)
    assert y.shape == x.shape and y.dtype == x.dtype


@pytest.mark.parametrize("k", [1, 2, 3, -1])
def test_interpolation_path_agrees_with_rot90_direction(k: int) -> None:
    x = _rand(3, 1, 28, 28, seed=2)
    eps = 1e-3
    for angle in (90.0 * k - eps, 90.0 * k + eps):
        y = rotate(x, angle)  # not an exact multiple: goes through grid_sample
        torch.testing.assert_close(y, torch.rot90(x, k, dims=(-2, -1)), rtol=0, atol=1e-3)


def test_direction_is_counter_clockwise_as_displayed() -> None:
    # A blob right of centre (row 0 = top) rotated by +30 degrees must move up (smaller row).
    img = torch.zeros(1, 1, 41, 41)
    img[0, 0, 19:22, 29:32] = 1.0  # centre of mass (20, 30); image centre (20, 20)
    r, c = _centre_of_mass(rotate(img, 30.0)[0, 0])
    d = 10.0
    rad = torch.deg2rad(torch.tensor(30.0, dtype=torch.float64))
    assert r == pytest.approx(20.0 - d * float(torch.sin(rad)), abs=0.15)
    assert c == pytest.approx(20.0 + d * float(torch.cos(rad)), abs=0.15)
    # and the quarter turn moves the top-right corner to the top-left
    corner = torch.zeros(1, 1, 5, 5)
    corner[0, 0, 0, 4] = 1.0
    assert rotate(corner, 90.0)[0, 0, 0, 0] == 1.0


def test_rotation_preserves_mass_away_from_border() -> None:
    img = torch.zeros(2, 1, 33, 33)
    img[:, :, 12:21, 14:19] = 1.0
    out = rotate(img, torch.tensor([37.0, 123.4]))
    torch.testing.assert_close(out.sum(dim=(1, 2, 3)), img.sum(dim=(1, 2, 3)), rtol=2e-3, atol=0)


def test_non_square_images() -> None:
    x = _rand(2, 1, 6, 10, seed=3)
    assert torch.equal(rotate(x, 180.0), torch.rot90(x, 2, dims=(-2, -1)))
    y = rotate(x, 90.0)  # a quarter turn cannot keep the shape exactly: interpolated, same size
    assert y.shape == x.shape
    torch.testing.assert_close(rotate(x, 179.999), torch.rot90(x, 2, dims=(-2, -1)), rtol=0, atol=1e-3)


def test_returns_new_tensor_for_zero_angle() -> None:
    x = _rand(2, 1, 5, 5)
    y = rotate(x, 0.0)
    assert torch.equal(x, y) and y.data_ptr() != x.data_ptr()


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
    assert torch.equal(flip(x), torch.flip(x, dims=(-1,)))
    assert torch.equal(flip(flip(x)), x)
    # a flip conjugates a rotation into the opposite rotation
    torch.testing.assert_close(flip(rotate(flip(x[:, :, :4, :4]), 30.0)), rotate(x[:, :, :4, :4], -30.0),
                               rtol=0, atol=1e-5)


def test_random_rotation_is_seeded() -> None:
    x = _rand(16, 1, 12, 12)
    y1, a1 = random_rotation(x, torch.Generator().manual_seed(7))
    y2, a2 = random_rotation(x, torch.Generator().manual_seed(7))
    _, a3 = random_rotation(x, torch.Generator().manual_seed(8))
    assert torch.equal(y1, y2) and torch.equal(a1, a2) and not torch.equal(a1, a3)
    assert a1.shape == (16,) and a1.dtype == torch.float64
    assert bool(((a1 >= 0) & (a1 < 360)).all())
    assert torch.equal(y1, rotate(x, a1))
