"""The study's GCNN: sizes, parameter counts, exact invariance, training smoke."""
import copy

import pytest
import torch

from gconv_ext.groups import Group
from gconv_ext.models import GCNN, GCNN_PRESETS, count_parameters, gcnn_parameter_count, gcnn_preset
from gconv_ext.nn import check_exact

from tolerances import F64, chain_rtol, reduction_lengths


@pytest.mark.parametrize("name,expected", [("C4/4/16", 102_970), ("C4/2/16", 51_770), ("C4/4/32", 410_730),
                                           ("C8/4/16", 205_370), ("C8/4/32", 820_330)])
def test_parameter_counts_match_the_study(name, expected):
    model = gcnn_preset(name)
    assert count_parameters(model) == expected
    g, layers, c = name.split("/")
    assert gcnn_parameter_count(g, int(layers), int(c)) == expected


def test_presets_cover_the_grid():
    assert len(GCNN_PRESETS) == 8 and "C8/4/32" in GCNN_PRESETS


def test_spatial_sizes():
    model = GCNN("C4", layers=4, channels=4)
    x = torch.randn(2, 1, 28, 28)
    sizes = []
    h = x
    for layer in model.features:
        h = layer(h)
        sizes.append(h.shape[-1])
    assert sorted(set(sizes), reverse=True) == [26, 22, 21, 17, 16, 12, 11, 7]
    assert model(x).shape == (2, 10)


@pytest.mark.parametrize("group", ["C4", "D4"])
@pytest.mark.parametrize("norm", ["layer", "batch"])
def test_exactly_invariant_to_quarter_turns_and_flips(group, norm):
    g = Group(4, group == "D4")
    model = GCNN(group, layers=2, channels=6, norm=norm).double().eval()
    assert check_exact(model, (1, 1, 28, 28)).exact
    x = torch.randn(3, 1, 28, 28, dtype=torch.float64)
    ref = model(x)
    # quarter turns and flips permute the terms of every sum: rounding only (chain_rtol of the net's reductions)
    atol = chain_rtol(F64, reduction_lengths(model, x)) * ref.abs().max().item()
    for e in range(g.order):
        torch.testing.assert_close(model(g.act_on_plane(e, x)), ref, atol=atol, rtol=0)
    # the group feature map moves with the input: rotate the input, rotate + shift the features
    feats = model.group_features(x)
    atol = chain_rtol(F64, reduction_lengths(model.features, x)) * feats.abs().max().item()
    torch.testing.assert_close(model.group_features(g.act_on_plane(1, x)), g.act(1, feats), atol=atol, rtol=0)


def test_float32_invariance_and_training_smoke():
    torch.manual_seed(0)
    model = GCNN("C4", layers=2, channels=8)
    x = torch.randn(64, 1, 28, 28)
    y = (x[:, 0, 10:18, 10:18].mean((1, 2)) > 0).long()  # a rotation-invariant toy label
    # invariance is checked on a float64 copy: the point is the math, and in float32 the rounding bound of
    # the layer norms over up to 8 x 4 x 26 x 26 values (chain_rtol) would be ~0.9, i.e. no check
    model64 = copy.deepcopy(model).double()
    x64 = x.double()
    logits = model64(x64)
    atol = chain_rtol(F64, reduction_lengths(model64, x64)) * logits.abs().max().item()
    torch.testing.assert_close(model64(torch.rot90(x64, 1, (-2, -1))), logits, atol=atol, rtol=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-4)
    first = None
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    # a learning check, not a rounding bound: 30 steps take this loss to ~0.3 of its start; 0.7 asks only
    # for clear progress (float32 rounding differences between kernels change it by ~1e-7)
    assert loss.item() < 0.7 * first


@pytest.mark.parametrize("kwargs,match", [({"layers": 0}, "layers"), ({"channels": -1}, "channels"),
                                          ({"norm": "group"}, "norm"), ({"group": "Q4"}, "group")])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GCNN(**kwargs)


def test_bad_preset_and_input():
    with pytest.raises(ValueError, match="C4/4/16"):
        gcnn_preset("C4-4-16")
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        GCNN(layers=1, channels=2)(torch.zeros(1, 28, 28))


def test_channels_last_recipe():
    """``model.to(memory_format=torch.channels_last)`` works on a GCNN (its group filters are 5-D, which torch
    cannot make channels_last; they convert as their planar 4-D filter), gives the same outputs and gradients
    with channels_last inputs, trains, and its checkpoints and the shipped weights load either way."""
    import io  # noqa: PLC0415

    from gconv_ext.models import weights as pre  # noqa: PLC0415

    torch.manual_seed(0)
    model = gcnn_preset("C4/2/16").double()
    cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    conv = cl.features[3]
    assert conv.weight.dim() == 5 and conv.weight.flatten(1, 2).is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(3, 1, 28, 28, dtype=torch.float64)
    ref, out = model(x), cl(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-12)  # float64: only the summation order differs
    ref.sum().backward()
    out.sum().backward()
    for (name, a), b in zip(model.named_parameters(), cl.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-9, atol=1e-12, msg=name)
    torch.optim.SGD(cl.parameters(), lr=0.1).step()  # in place on the channels_last filters
    assert conv.weight.flatten(1, 2).is_contiguous(memory_format=torch.channels_last)
    # a checkpoint of the channels_last model loads into a default one, and back
    buf = io.BytesIO()
    torch.save(cl.state_dict(), buf)
    buf.seek(0)
    plain = gcnn_preset("C4/2/16").double()
    plain.load_state_dict(torch.load(buf))
    cl.eval()
    plain.eval()
    with torch.no_grad():  # the eval path (cached filter) too
        torch.testing.assert_close(cl(x.to(memory_format=torch.channels_last)), plain(x), rtol=1e-9, atol=1e-12)
    shipped = pre.pretrained("gcnn-c4-upright").to(memory_format=torch.channels_last)
    fresh = gcnn_preset("C4/4/16").to(memory_format=torch.channels_last)
    fresh.load_state_dict(shipped.state_dict())
    assert fresh.features[3].weight.flatten(1, 2).is_contiguous(memory_format=torch.channels_last)
