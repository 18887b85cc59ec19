import struct

import pytest
import torch

from gconv_ext.data import normalize, rotate
from gconv_ext.models import GCNN, STN
from gconv_ext.nn import GroupConv2d, LiftingConv2d
from gconv_ext.viz import plot_filter_bank, plot_group_feature_maps, plot_stn_transforms

from tolerances import F64, chain_rtol, reduction_lengths


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_filter_bank(tmp_path):
    plot_filter_bank(LiftingConv2d(1, 3, 5, "D4"), tmp_path / "lift.png")
    plot_filter_bank(GroupConv2d(2, 2, 3, "C8"), tmp_path / "group.png", channels=2)
    w, h = _png_size(tmp_path / "lift.png")
    assert w > h  # 8 columns (D4), 3 rows
    with pytest.raises(TypeError, match="LiftingConv2d"):
        plot_filter_bank(torch.nn.Conv2d(1, 1, 3), tmp_path / "x.png")


def test_group_feature_maps_and_the_shift_they_show(tmp_path):
    model = GCNN("C4", layers=1, channels=3)
    digit = torch.zeros(28, 28)
    digit[6:22, 12:16] = 1.0
    digit[6:10, 8:20] = 1.0
    plot_group_feature_maps(model, digit, tmp_path / "maps.png")
    assert _png_size(tmp_path / "maps.png")[0] > 100
    # what the picture shows: a quarter turn of the input = slices rotated and shifted by one. Checked in
    # float64 (the math): only the summation order differs, bounded by chain_rtol of the reductions
    model = model.double()
    x = digit[None, None].double()
    with torch.no_grad():
        f0 = model.group_features(x)[0, 0]
        f1 = model.group_features(torch.rot90(x, 1, dims=(-2, -1)))[0, 0]
    atol = chain_rtol(F64, reduction_lengths(model.features, x)) * f0.abs().max().item()
    for g in range(4):
        torch.testing.assert_close(f1[(g + 1) % 4], torch.rot90(f0[g], 1), atol=atol, rtol=0)


def test_stn_transforms(tmp_path):
    model = STN(mode="single", head="rotation", channels=4, layers=2, loc_channels=4)
    plot_stn_transforms(model, torch.rand(1, 1, 28, 28), tmp_path / "one.png")
    w, h = _png_size(tmp_path / "one.png")
    assert w > 1.5 * h  # one digit: an input row above a warped row, 6 rotations across
    plot_stn_transforms(model, torch.rand(4, 28, 28), tmp_path / "four.png", angles_deg=(0, 90, 180))
    w, h = _png_size(tmp_path / "four.png")
    assert h > w  # 4 digits: 8 rows, 3 columns
    affine = STN(mode="single", head="affine", channels=4, layers=2, loc_channels=4, init="random")
    plot_stn_transforms(affine, (torch.rand(2, 1, 28, 28) * 255).to(torch.uint8), tmp_path / "affine.png")
    assert _png_size(tmp_path / "affine.png")[0] > 100
    with pytest.raises(TypeError, match="STN"):
        plot_stn_transforms(torch.nn.Linear(2, 2), torch.rand(1, 1, 28, 28), tmp_path / "x.png")
    with pytest.raises(ValueError, match="digits"):
        plot_stn_transforms(model, torch.rand(2, 3, 28, 28), tmp_path / "x.png")


def test_stn_transforms_feeds_rotated_normalised_copies(tmp_path):
    """The figure's inputs are what training feeds: each digit rotated in [0, 1], then normalised,
    digit by digit, one column per angle."""
    seen = []

    class Recorder(STN):
        def transformed_input(self, x):
            seen.append(x.clone())
            return super().transformed_input(x)

    model = Recorder(channels=4, layers=2, loc_channels=4)
    digits = torch.rand(2, 1, 28, 28)
    plot_stn_transforms(model, digits, tmp_path / "stn.png", angles_deg=(0, 30, 90))
    angles = torch.tensor([0.0, 30.0, 90.0, 0.0, 30.0, 90.0], dtype=torch.float64)
    expected = normalize(rotate(digits.repeat_interleave(3, dim=0), angles))
    # exact: the same functions on the same data; a 90-degree rotate is a permutation (bit-identical to rot90)
    assert len(seen) == 1 and torch.equal(seen[0], expected)
    assert torch.equal(seen[0][2], normalize(torch.rot90(digits[0], 1, dims=(-2, -1))))
