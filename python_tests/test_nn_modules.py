"""gconv_ext.nn modules: construction, init, eval cache, state_dict, export, torch.compile / torch.export."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import gconv_ext
import gconv_ext.nn as gnn
from gconv_ext.groups import Group
from gconv_ext.ops import group_conv2d, lifting_conv2d

GROUPS = [Group(4), Group(4, True), Group(8)]


def _net(group, c=4, disk=False):
    return nn.Sequential(
        gnn.LiftingConv2d(1, c, 3, group, padding=1, disk_mask=disk), gnn.GroupBatchNorm2d(c, group), nn.ReLU(),
        gnn.GroupConv2d(c, c, 3, group, stride=2, padding=1, disk_mask=disk), gnn.GroupBatchNorm2d(c, group),
        nn.ReLU(), gnn.GroupMaxPool2d(2), gnn.GroupDropout(0.1), gnn.GroupConv2d(c, c, 3, group, padding="same"),
        gnn.InvariantPool(), nn.Linear(c, 3))


def _trained_stats(net, size=15):
    """Give the batch norms non-trivial running statistics."""
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(4, 1, size, size) * 2 + 0.5)
    return net


# -- construction ----------------------------------------------------------------------------------

@pytest.mark.parametrize("group", GROUPS, ids=str)
def test_shapes_and_functional_equivalence(group):
    n = group.order
    x = torch.randn(2, 3, 11, 11)
    lift = gnn.LiftingConv2d(3, 5, 3, group.name, stride=2, padding=(1, 1), dilation=1)
    assert lift.weight.shape == (5, 3, 3, 3) and lift.group == group
    y = lift(x)
    assert y.shape == (2, 5, n, 6, 6)
    torch.testing.assert_close(y, lifting_conv2d(x, lift.weight, lift.bias, group, 2, 1, 1))
    gc = gnn.GroupConv2d(5, 2, 5, group, padding="same", dilation=2, disk_mask=True)
    assert gc.weight.shape == (2, 5, n, 5, 5) and gc.padding == (4, 4)
    z = gc(y)
    assert z.shape == (2, 2, n, 6, 6)
    torch.testing.assert_close(z, group_conv2d(y, gc.weight, gc.bias, group, 1, 4, 2, True))


def test_extra_repr():
    r = repr(gnn.GroupConv2d(4, 8, 3, "D4", stride=2, padding=1, bias=False, disk_mask=True))
    assert r == "GroupConv2d(4, 8, kernel_size=3, group=D4, stride=2, padding=1, bias=False, disk_mask=True)"
    assert repr(gnn.LiftingConv2d(1, 2, 5, "C8", padding="same")) == \
        "LiftingConv2d(1, 2, kernel_size=5, group=C8, padding='same')"
    assert "group=C4" in repr(gnn.GroupBatchNorm2d(3, "C4"))
    assert repr(gnn.GroupMaxPool2d(2)) == "GroupMaxPool2d(kernel_size=2, stride=2)"


@pytest.mark.parametrize("make,arg", [
    (lambda: gnn.LiftingConv2d(0, 4, 3, "C4"), "in_channels"),
    (lambda: gnn.LiftingConv2d(1, 2.0, 3, "C4"), "out_channels"),
    (lambda: gnn.GroupConv2d(1, 4, 0, "C4"), "kernel_size"),
    (lambda: gnn.GroupConv2d(1, 4, (3, 5), "C4"), "kernel_size"),
    (lambda: gnn.GroupConv2d(1, 4, 3, "Q4"), "group"),
    (lambda: gnn.GroupConv2d(1, 4, 3, 4), "group"),
    (lambda: gnn.GroupConv2d(1, 4, 3, "C4", stride=0), "stride"),
    (lambda: gnn.GroupConv2d(1, 4, 3, "C4", padding=-1), "padding"),
    (lambda: gnn.GroupConv2d(1, 4, 3, "C4", padding="full"), "padding"),
    (lambda: gnn.LiftingConv2d(1, 4, 3, "C4", padding="SAME"), "padding"),
    (lambda: gnn.GroupConv2d(1, 4, 3, "C4", stride=2, padding="same"), "padding='same' needs stride 1"),
    (lambda: gnn.GroupConv2d(1, 4, 4, "C4", padding="same"), "padding='same' needs an odd"),
    (lambda: gnn.GroupConv2d(1, 4, 3, "C4", dilation=(1, 0)), "dilation"),
    (lambda: gnn.GroupConv2d(1, 4, 3, "C4", bias=1), "bias"),
    (lambda: gnn.LiftingConv2d(1, 4, 3, "C4", disk_mask="yes"), "disk_mask"),
    (lambda: gnn.GroupBatchNorm2d(0, "C4"), "channels"),
    (lambda: gnn.GroupBatchNorm2d(3, "X"), "group"),
    (lambda: gnn.GroupMaxPool2d(0), "kernel_size"),
    (lambda: gnn.GroupAvgPool2d(2, stride=0), "stride"),
    (lambda: gnn.GroupMaxPool2d(2, padding=2), "padding"),
    (lambda: gnn.GroupPool("sum"), "mode"),
    (lambda: gnn.InvariantPool("median"), "mode"),
    (lambda: gnn.GroupDropout(1.5), "p"),
    (lambda: gnn.GroupLayerNorm(eps=0), "eps"),
    # non-finite and out-of-range numbers (fuzz finds: eps=NaN made every output NaN)
    (lambda: gnn.GroupBatchNorm2d(3, "C4", eps=float("nan")), "eps"),
    (lambda: gnn.GroupBatchNorm2d(3, "C4", eps=float("inf")), "eps"),
    (lambda: gnn.GroupBatchNorm2d(3, "C4", eps=-1e-5), "eps"),
    (lambda: gnn.GroupBatchNorm2d(3, "C4", eps="1e-5"), "eps"),
    (lambda: gnn.GroupBatchNorm2d(3, "C4", momentum=float("nan")), "momentum"),
    (lambda: gnn.GroupBatchNorm2d(3, "C4", momentum=2.0), "momentum"),
    (lambda: gnn.GroupBatchNorm2d(3, "C4", momentum=-1), "momentum"),
    (lambda: gnn.GroupBatchNorm2d(3, "C4", momentum=float("inf")), "momentum"),
    (lambda: gnn.GroupBatchNorm2d(3, "C4", momentum="0.1"), "momentum"),
    (lambda: gnn.GroupBatchNorm2d(3, "C4", affine=1), "affine"),
    (lambda: gnn.GroupBatchNorm2d(3, "C4", track_running_stats=None), "track_running_stats"),
    (lambda: gnn.GroupBatchNorm2d(3, "C4", dtype=torch.int64), "dtype"),
    (lambda: gnn.GroupLayerNorm(eps=float("nan")), "eps"),
    (lambda: gnn.GroupLayerNorm(eps=float("inf")), "eps"),
    (lambda: gnn.GroupLayerNorm(eps=True), "eps"),
    (lambda: gnn.GroupDropout(float("nan")), "p"),
    (lambda: gnn.GroupDropout(-0.1), "p"),
    (lambda: gnn.GroupDropout("0.5"), "p"),
    (lambda: gnn.GroupDropout(0.5, whole_channel=1), "whole_channel"),
    (lambda: gnn.GroupPool(["max"]), "mode"),
    (lambda: gnn.InvariantPool(None), "mode"),
    (lambda: gnn.GroupMaxPool2d((2, 0)), "kernel_size"),
    (lambda: gnn.GroupAvgPool2d(2.0), "kernel_size"),
    (lambda: gnn.GroupAvgPool2d(2, stride=(1, 2, 3)), "stride"),
    (lambda: gnn.GroupMaxPool2d(3, padding=-1), "padding"),
    (lambda: gnn.GroupAvgPool2d(3, padding=True), "padding"),
    (lambda: gnn.LiftingConv2d(1, 4, 3, "C4", stride=1.5), "stride"),
    (lambda: gnn.GroupConv2d(1, 4, 3, "C4", padding=(1, 1, 1)), "padding"),
    (lambda: gnn.GroupConv2d(True, 4, 3, "C4"), "in_channels"),
    (lambda: gnn.GroupConv2d(1, 4, 3, "C4", dilation=0), "dilation"),
    (lambda: gnn.GroupConv2d(1, 4, 3, "C4", dtype=torch.int32), "dtype"),
    (lambda: gnn.ExportedGroupConv(nn.Linear(2, 4), "C4", 1, lifting=True), "conv"),
    (lambda: gnn.ExportedGroupConv(nn.Conv2d(1, 4, 3), "C4", 2, lifting=True), "out_channels"),
])
def test_bad_constructor_args(make, arg):
    with pytest.raises(ValueError, match=arg.replace("(", r"\(")):
        make()


def test_batchnorm_momentum_none_and_bounds_accepted():
    x = torch.randn(4, 3, 4, 5, 5)
    for momentum in (None, 0, 0.0, 1, 1.0):
        bn = gnn.GroupBatchNorm2d(3, "C4", eps=1, momentum=momentum)
        assert bn.momentum == momentum and bn.eps == 1.0
        assert torch.isfinite(bn(x)).all()


@pytest.mark.parametrize("cls", [gnn.LiftingConv2d, gnn.GroupConv2d], ids=lambda c: c.__name__)
def test_padding_valid_and_same_like_the_functional_ops(cls):
    lifting = cls is gnn.LiftingConv2d
    op = lifting_conv2d if lifting else group_conv2d
    x = torch.randn(2, 2, 11, 11) if lifting else torch.randn(2, 2, 4, 11, 11)
    for kwargs, pad in (({"padding": "valid"}, 0), ({"padding": "valid", "stride": 2}, 0),
                        ({"padding": "same", "dilation": 2}, 2)):
        m = cls(2, 3, 3, "C4", **kwargs)
        assert m.padding == (pad, pad)
        ref = cls(2, 3, 3, "C4", **{**kwargs, "padding": pad})
        assert repr(m) == repr(ref) or kwargs["padding"] == "same"
        expected = op(x, m.weight, m.bias, "C4", kwargs.get("stride", 1), kwargs["padding"], kwargs.get("dilation", 1))
        torch.testing.assert_close(m(x), expected)
        with torch.no_grad():  # the eval-cache path too
            torch.testing.assert_close(m.eval()(x), expected, atol=1e-5, rtol=1e-5)
    assert gnn.GroupConv2d(2, 3, 3, "C4", padding="same")(torch.randn(1, 2, 4, 7, 7)).shape[-2:] == (7, 7)
    assert gnn.LiftingConv2d(2, 3, 3, "C4", padding="valid")(torch.randn(1, 2, 7, 7)).shape[-2:] == (5, 5)
    with pytest.raises(ValueError, match="padding='same' needs stride 1"):  # as the functional ops
        cls(2, 3, 3, "C4", stride=2, padding="same")
    with pytest.raises(ValueError, match="padding='same' needs stride 1"):
        op(x, torch.randn((3, 2, 3, 3) if lifting else (3, 2, 4, 3, 3)), None, "C4", 2, "same")


def test_bad_inputs():
    gc = gnn.GroupConv2d(3, 4, 3, "C4")
    with pytest.raises(ValueError, match=r"\|G\| = 4"):
        gc(torch.randn(1, 3, 8, 9, 9))
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
        gnn.LiftingConv2d(1, 4, 3, "C4")(torch.randn(1, 2, 9, 9))
    with pytest.raises(ValueError, match="5-D"):
        gnn.GroupBatchNorm2d(3, "C4")(torch.randn(2, 3, 9, 9))
    with pytest.raises(ValueError, match="ExportedGroupConv: input must be a 5-D"):
        gc.export()(torch.randn(1, 12, 9, 9))


@pytest.mark.parametrize("make", [
    lambda: gnn.LiftingConv2d(1, 2, 3, "C4"),
    lambda: gnn.GroupConv2d(2, 2, 3, "C4"),
    lambda: gnn.GroupConv2d(2, 2, 3, "C4").export(),
    lambda: gnn.GroupBatchNorm2d(2, "C4"),
    lambda: gnn.GroupLayerNorm(),
    lambda: gnn.GroupPool("max"),
    lambda: gnn.InvariantPool(),
    lambda: gnn.GroupMaxPool2d(2),
    lambda: gnn.GroupAvgPool2d(2),
    lambda: gnn.GroupDropout(0.5),
], ids=["lifting", "group", "exported", "bn", "ln", "gpool", "invpool", "maxpool", "avgpool", "dropout"])
@pytest.mark.parametrize("bad", [[[1.0, 2.0]], None, 3.0], ids=["list", "None", "float"])
def test_non_tensor_input_is_a_type_error_naming_the_module(make, bad):
    m = make()
    for mode in (True, False):  # train and eval (the eval-cache path of the convolutions)
        m.train(mode)
        with torch.no_grad(), pytest.raises(TypeError, match=rf"^{type(m).__name__}: input must be a torch\.Tensor, "
                                                              rf"got {type(bad).__name__}$"):
            m(bad)


def _error(fn):
    try:
        fn()
    except Exception as exc:  # noqa: BLE001
        return type(exc), str(exc)
    return None


@pytest.mark.parametrize("lifting", [True, False], ids=["lifting", "group"])
@pytest.mark.parametrize("case", ["rank", "channels", "group_axis", "float64", "float16", "int", "device", "small"])
def test_eval_cache_path_raises_like_the_op_path(lifting, case):
    torch.manual_seed(0)
    m = gnn.LiftingConv2d(3, 4, 3, "D4", padding=1) if lifting else gnn.GroupConv2d(3, 4, 3, "D4", padding=1)
    good = torch.randn(2, 3, 9, 9) if lifting else torch.randn(2, 3, 8, 9, 9)
    x = {
        "rank": good[0],
        "channels": torch.cat([good, good[:, :1]], 1),
        "group_axis": good.unsqueeze(2) if lifting else good[:, :, :4],
        "float64": good.double(),
        "float16": good.half(),
        "int": good.long(),
        "device": good.to("meta"),
        "small": good[..., :0, :],
    }[case]
    train_err = _error(lambda: m.train()(x))
    m.eval()
    with torch.no_grad():
        m(good)
        assert m._cache is not None  # the eval forward below takes the cached F.conv2d path
        eval_err = _error(lambda: m(x))
    assert train_err is not None, "the bad input was accepted"
    assert eval_err == train_err
    if case in ("float64", "float16", "int", "device"):
        # ...which is what the functional op itself says about that input and weight
        op = lifting_conv2d if lifting else group_conv2d
        assert _error(lambda: op(x, m.weight, m.bias, m.group, 1, 1)) == train_err
        assert train_err[0] in (TypeError, ValueError) and train_err[1].startswith("gconv_ext: ")
    elif case != "small":
        assert train_err[0] is ValueError and train_err[1].startswith(f"{type(m).__name__}: input must be")


# -- init -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("group,disk", [(Group(4), False), (Group(4, True), True), (Group(8), True), (Group(16), False)],
                         ids=str)
def test_he_init_preserves_variance_through_relu_stack(group, disk):
    # lifting: Var(out) = fan_in * Var(w) * E[x^2] = 2 Var(x); after that He keeps the pre-activation
    # variance of a ReLU stack constant: each layer's ratio ~ 1. For C8/C16 the init divides by the transform
    # gain (bilinear rotation by 45 / 22.5 degrees keeps only ~0.7 / ~0.55 of a white-noise filter's energy).
    # Measured mean ratios over 4 inits (C=16, 24x24): C4 0.94 0.90 0.97 0.81, D4+disk 0.94 0.94 0.98 0.97,
    # C8+disk 0.94 1.05 1.15 1.22, C16 0.95 1.11 1.18 1.44.
    c, k = 16, 5 if disk else 3
    ratios = []
    for seed in range(4):
        torch.manual_seed(seed)
        layers = [gnn.LiftingConv2d(3, c, k, group, padding="same", disk_mask=disk)]
        layers += [gnn.GroupConv2d(c, c, k, group, padding="same", disk_mask=disk) for _ in range(3)]
        x = torch.randn(2, 3, 24, 24)
        variances = []
        with torch.no_grad():
            h = x
            for i, layer in enumerate(layers):
                h = layer(torch.relu(h) if i else h)
                variances.append(h.var().item())
        ratios.append([variances[0] / (2 * x.var().item())] + [b / a for a, b in zip(variances, variances[1:])])
    mean = torch.tensor(ratios).mean(0)
    assert ((mean > 0.5) & (mean < 2.0)).all(), mean
    assert layers[1].fan_in == c * group.order * layers[1].taps
    assert (layers[1].transform_gain == 1.0) == (group.rotations == 4)
    if disk:
        assert layers[0].taps == 21 and (layers[0].weight[..., 0, 0] == 0).all()


def test_reset_parameters_reinitialises():
    gc = gnn.GroupConv2d(3, 4, 3, "C4")
    with torch.no_grad():
        gc.weight.fill_(1.0)
        gc.bias.fill_(1.0)
    gc.reset_parameters()
    assert gc.weight.std().item() == pytest.approx((2 / gc.fan_in) ** 0.5, rel=0.3)
    assert (gc.bias == 0).all()


# -- eval cache ----------------------------------------------------------------------------------------

def test_eval_uses_cache_and_matches_train_path():
    gc = gnn.GroupConv2d(3, 4, 3, "D4", padding=1)
    x = torch.randn(2, 3, 8, 7, 7)
    y_train = gc(x)
    gc.eval()
    assert gc._cache is None
    y_graph = gc(x)  # grad enabled and the weight requires grad: no cache (the output must be differentiable)
    assert gc._cache is None and y_graph.requires_grad
    with torch.no_grad():
        y_eval = gc(x)
        cache = gc._cache
        assert cache is not None and not cache.requires_grad and cache.grad_fn is None
        gc(x)
        assert gc._cache is cache  # reused
    torch.testing.assert_close(y_eval, y_train.detach(), atol=1e-5, rtol=1e-5)
    with torch.inference_mode():
        torch.testing.assert_close(gc(x), y_train.detach(), atol=1e-5, rtol=1e-5)
    assert copy.deepcopy(gc)._cache is None  # copies and pickles never carry the cache
    gc.train()
    assert gc._cache is None


def test_cache_invalidated_by_optimiser_step_and_load():
    torch.manual_seed(0)
    net = _trained_stats(_net(Group(4))).eval()
    x = torch.randn(3, 1, 15, 15)
    with torch.no_grad():
        before = net(x)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    net(x).square().sum().backward()  # eval mode, grad enabled: the uncached differentiable path
    opt.step()
    with torch.no_grad():
        after = net(x)
        fresh = copy.deepcopy(net)
        for m in fresh.modules():
            if hasattr(m, "clear_cache"):
                m.clear_cache()
        expected = fresh(x)
    assert (after - before).abs().max() > 1e-3  # the step changed the weights...
    torch.testing.assert_close(after, expected, atol=0, rtol=0)  # ...and the cache followed them
    # load_state_dict writes in place: the cache follows again
    other = _net(Group(4)).eval()
    other.load_state_dict(net.state_dict())
    with torch.no_grad():
        other(x)
        net.load_state_dict(_trained_stats(_net(Group(4))).state_dict())
        new = net(x)
        fresh = _net(Group(4)).eval()
        fresh.load_state_dict(net.state_dict())
        torch.testing.assert_close(new, fresh(x), atol=0, rtol=0)
    # dtype conversion drops the cache
    net.double()
    with torch.no_grad():
        assert net(x.double()).dtype == torch.float64


# -- state_dict --------------------------------------------------------------------------------------

@pytest.mark.parametrize("group", GROUPS[:2], ids=str)
def test_state_dict_round_trip(group):
    torch.manual_seed(0)
    net = _trained_stats(_net(group, disk=True))
    keys_train = list(net.state_dict().keys())
    net.eval()
    x = torch.randn(2, 1, 15, 15)
    with torch.no_grad():
        y = net(x)  # fills the caches
    assert list(net.state_dict().keys()) == keys_train
    assert not any("cache" in k for k in keys_train)
    fresh = _net(group, disk=True)
    fresh.load_state_dict(net.state_dict())
    fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), y, atol=0, rtol=0)
    # strict loading of a train-mode state dict into an eval-mode model and back
    fresh.train()
    fresh.load_state_dict(net.state_dict(), strict=True)


# -- export ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("group", GROUPS, ids=str)
def test_export_matches_original(group):
    torch.manual_seed(0)
    net = _trained_stats(_net(group)).eval()
    exported = gnn.export(net)
    assert exported is not net and not any(isinstance(m, (gnn.LiftingConv2d, gnn.GroupConv2d))
                                           for m in exported.modules())
    assert sum(isinstance(m, gnn.ExportedGroupConv) for m in exported.modules()) == 3
    assert any(isinstance(m, gnn.GroupConv2d) for m in net.modules())  # original untouched
    x = torch.randn(4, 1, 15, 15)
    with torch.no_grad():
        torch.testing.assert_close(exported(x), net(x), atol=1e-5, rtol=1e-5)
    # a single layer exports to its wrapper; shapes stay (B, C, |G|, H, W)
    gc = gnn.GroupConv2d(2, 3, 3, group, stride=2, padding=1).eval()
    xg = torch.randn(2, 2, group.order, 9, 9)
    e = gc.export()
    assert isinstance(e.conv, nn.Conv2d) and e.conv.weight.shape == (3 * group.order, 2 * group.order, 3, 3)
    with torch.no_grad():
        torch.testing.assert_close(e(xg), gc(xg), atol=1e-5, rtol=1e-5)
    assert gnn.export(gc).conv.stride == (2, 2)
    assert gconv_ext.nn.export is gnn.export


def test_export_inplace_and_checker_sees_exported_layers():
    net = _net(Group(4)).eval()
    out = gnn.export(net, inplace=True)
    assert out is net and isinstance(net[0], gnn.ExportedGroupConv)
    report = gnn.check_exact(net, (1, 1, 16, 16), "C4")
    assert [c.kind for c in report.offending] == ["ExportedGroupConv"]  # the 3x3/2 pad-1 conv at 16
    with pytest.warns(gnn.EquivarianceWarning, match="ExportedGroupConv"):
        net(torch.randn(1, 1, 16, 16))


# -- other layers ----------------------------------------------------------------------------------

def test_group_batchnorm_shares_statistics_over_group_axis():
    bn = gnn.GroupBatchNorm2d(3, "C4")
    assert dict(bn.named_parameters())["weight"].shape == (3,)
    x = torch.randn(5, 3, 4, 6, 6) * torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1, 1) + 1.0
    y = bn(x)
    torch.testing.assert_close(y.mean(dim=(0, 2, 3, 4)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(y, nn.functional.batch_norm(x, None, None, training=True), atol=1e-5, rtol=0)
    assert set(bn.state_dict()) == set(nn.BatchNorm3d(3).state_dict())


def test_layer_norm_and_pools():
    x = torch.randn(2, 3, 4, 8, 8)
    y = gnn.GroupLayerNorm()(x)
    torch.testing.assert_close(y.mean(dim=(1, 2, 3, 4)), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(gnn.GroupPool("mean")(x), x.mean(2))
    torch.testing.assert_close(gnn.InvariantPool()(x), x.mean(dim=(2, 3, 4)))
    torch.testing.assert_close(gnn.InvariantPool("max")(x), x.amax(dim=(2, 3, 4)))
    mp = gnn.GroupMaxPool2d(2)(x)
    assert mp.shape == (2, 3, 4, 4, 4)
    torch.testing.assert_close(mp[:, 1, 2], nn.functional.max_pool2d(x[:, 1, 2], 2))
    ap = gnn.GroupAvgPool2d(3, stride=1, padding=1)(x)
    torch.testing.assert_close(ap[:, 2, 3], nn.functional.avg_pool2d(x[:, 2, 3], 3, 1, 1))


def test_group_dropout_drops_whole_fields():
    x = torch.ones(4, 8, 4, 6, 6)
    for whole in (False, True):
        d = gnn.GroupDropout(0.5, whole_channel=whole)
        y = d(x)
        zero = y == 0
        # the same mask for all |G| slices of a channel
        assert (zero == zero[:, :, :1]).all()
        if whole:
            assert (zero == zero[:, :, :, :1, :1]).all()
        assert 0.2 < zero.float().mean() < 0.8
        torch.testing.assert_close(y[~zero], torch.full_like(y[~zero], 2.0))
        d.eval()
        assert d(x) is x


# -- torch.compile and torch.export ---------------------------------------------------------------------

def test_torch_compile_fullgraph_train_and_eval():
    torch.manual_seed(0)
    net = _net(Group(4))
    x = torch.randn(2, 1, 15, 15)
    compiled = torch.compile(net, fullgraph=True, backend="aot_eager")
    net.train()
    net[7].p = 0.0  # deterministic comparison
    y = compiled(x)
    y.sum().backward()
    assert net[0].weight.grad is not None
    torch.testing.assert_close(y, net(x), atol=1e-5, rtol=1e-5)
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), net(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(compiled(x), net(x), atol=1e-5, rtol=1e-5)


def test_torch_export_eval():
    torch.manual_seed(0)
    net = _trained_stats(_net(Group(4, True))).eval()
    x = torch.randn(2, 1, 15, 15)
    with torch.no_grad():
        expected = net(x)  # fills the caches first: export must not capture them
    program = torch.export.export(net, (x,))
    assert not any("cache" in name for name in program.state_dict)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), expected, atol=1e-5, rtol=1e-5)
    # the exported (plain Conv2d) network also goes through torch.export
    plain = torch.export.export(gnn.export(net), (x,))
    with torch.no_grad():
        torch.testing.assert_close(plain.module()(x), expected, atol=1e-5, rtol=1e-5)


def test_no_warning_from_unstrided_layers_at_odd_sizes():
    net = nn.Sequential(gnn.LiftingConv2d(1, 2, 4, "C4"), gnn.GroupConv2d(2, 2, 2, "C4"),
                        gnn.GroupMaxPool2d(3, stride=1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net(torch.randn(1, 1, 13, 13))
