import struct

import pytest
import torch

from gconv_ext.models import GCNN, STN
from gconv_ext.nn import GroupConv2d, LiftingConv2d
from gconv_ext.viz import plot_filter_bank, plot_group_feature_maps, plot_stn_transforms


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
    # what the picture shows: a quarter turn of the input = slices rotated and shifted by one
    with torch.no_grad():
        f0 = model.group_features(digit[None, None])[0, 0]
        f1 = model.group_features(torch.rot90(digit, 1)[None, None])[0, 0]
    for g in range(4):
        torch.testing.assert_close(f1[(g + 1) % 4], torch.rot90(f0[g], 1), atol=1e-5, rtol=1e-5)


def test_stn_transforms(tmp_path):
    model = STN(mode="single", head="rotation", channels=4, layers=2, loc_channels=4)
    plot_stn_transforms(model, torch.rand(3, 1, 28, 28), tmp_path / "stn.png")
    assert _png_size(tmp_path / "stn.png")[0] > 100
    with pytest.raises(TypeError, match="STN"):
        plot_stn_transforms(torch.nn.Linear(2, 2), torch.rand(1, 1, 28, 28), tmp_path / "x.png")
