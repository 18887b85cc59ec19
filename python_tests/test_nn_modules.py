"""gconv_ext.nn modules: construction, init, eval cache, state_dict, export, torch.compile / torch.export."""
from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gconv_ext
import gconv_ext.nn as gnn
from gconv_ext.groups import Group
from gconv_ext.ops import group_conv2d, lifting_conv2d
from gconv_ext.ops.reference import disk_mask, transform_matrix

from tolerances import F64, chain_rtol, conv_atol, gamma, reduction_lengths, sum_atol

GROUPS = [Group(4), Group(4, True), Group(8)]


def _net(group, c=4, disk=False):
    return nn.Sequential(
        gnn.LiftingConv2d(1, c, 3, group, padding=1, disk_mask=disk), gnn.GroupBatchNorm2d(c, group), nn.ReLU(),
        gnn.GroupConv2d(c, c, 3, group, stride=2, padding=1, disk_mask=disk), gnn.GroupBatchNorm2d(c, group),
        nn.ReLU(), gnn.GroupMaxPool2d(2), gnn.GroupDropout(0.1), gnn.GroupConv2d(c, c, 3, group, padding="same"),
        gnn.InvariantPool(), nn.Linear(c, 3))


def _net_atol(net, x, ref):
    """Two evaluations of ``net`` on ``x`` by different code paths (eval cache, export, torch.compile,
    torch.export) compute the same function with the same reductions in possibly other orders: at most
    chain_rtol of those reductions (tolerances.reduction_lengths, measured on a copy: batch norm in train mode
    updates its running statistics) times the output's size."""
    return chain_rtol(x.dtype, reduction_lengths(copy.deepcopy(net), x)) * ref.detach().abs().max().item()


def _normalize_atol(x, dims, eps, sides=2):
    """Largest difference between ``sides`` evaluations of ``(x - mean) / sqrt(var + eps)``, statistics over
    ``dims`` (n values), in any summation order, two-pass or Welford.

    The mean errs by <= gamma_{n+1} mean|x|; the variance relatively by <= gamma_{2n+4} kappa^2,
    ``kappa^2 = 1 + mean^2 / var`` (two-pass: gamma_{n+3}; Welford: ~ n u kappa, Chan, Golub & LeVeque 1983);
    ``iota = 1 / sqrt(var + eps)`` by half that plus 3 u; ``x * alpha + beta`` or ``(x - mean) * iota`` by 3 u
    of ``(|x| + |mean|) iota``. So each output errs by <= ``gamma_{2n+8} kappa^2 iota (mean|x| + 2|x| + 2|mean|)``
    (the ``|y| <= iota (|x| + |mean|)`` term included), computed here in float64 from x."""
    n = math.prod(x.shape[d] for d in dims)
    xa = x.detach().to(F64)
    mean = xa.mean(dims, keepdim=True)
    var = xa.var(dims, unbiased=False, keepdim=True)
    kappa2 = 1 + mean.square() / var
    mag = xa.abs().mean(dims, keepdim=True) + 2 * xa.abs().amax(dims, keepdim=True) + 2 * mean.abs()
    mag = mag / (var + eps).sqrt()
    return sides * gamma(2 * n + 8, x.dtype) * (kappa2 * mag).max().item()


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
    # exact: the module's training forward is this very op call (same code, same tensors, same threads)
    torch.testing.assert_close(y, lifting_conv2d(x, lift.weight, lift.bias, group, 2, 1, 1), atol=0, rtol=0)
    gc = gnn.GroupConv2d(5, 2, 5, group, padding="same", dilation=2, disk_mask=True)
    assert gc.weight.shape == (2, 5, n, 5, 5) and gc.padding == (4, 4)
    z = gc(y)
    assert z.shape == (2, 2, n, 6, 6)
    torch.testing.assert_close(z, group_conv2d(y, gc.weight, gc.bias, group, 1, 4, 2, True), atol=0, rtol=0)  # as above


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
        geometry = (kwargs.get("stride", 1), kwargs["padding"], kwargs.get("dilation", 1))
        expected = op(x, m.weight, m.bias, "C4", *geometry)
        torch.testing.assert_close(m(x), expected, atol=0, rtol=0)  # the training forward is this op call: exact
        with torch.no_grad():  # the eval-cache path too: F.conv2d on the cached filter, then the bias
            # the same sums in another order (another kernel): 2 gamma_n sum |x| |W_g| (tolerances.conv_atol)
            atol = conv_atol(lifting, x, m.weight, m.bias, Group(4), geometry[0], m.padding, geometry[2])
            torch.testing.assert_close(m.eval()(x), expected, atol=atol, rtol=0)
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
        # a device mismatch is a RuntimeError (as in torch and the C++ check), a dtype a TypeError
        assert train_err[0] is (RuntimeError if case == "device" else TypeError)
        assert train_err[1].startswith("gconv_ext: ")
    elif case != "small":
        assert train_err[0] is ValueError and train_err[1].startswith(f"{type(m).__name__}: input must be")


# -- init -----------------------------------------------------------------------------------------------

def _init_law(layer):
    """``(var_w, gbar, keep)`` of a lifting / group conv, derived from its filter transform (not from the
    module's ``fan_in`` / ``transform_gain``).

    Output slice g at p is ``sum_planes sum_s w_s z_s`` with ``z_s = sum_t M_g[t, s] r(p + t)`` (M_g the
    filter transform, taps t, s; a group conv's permutation of the group axis only relabels the input
    planes). For i.i.d. ``w ~ N(0, var_w)`` and zero bias, ``E_W out^2 = var_w sum_planes r_p^T M_g M_g^T r_p``;
    for white ``r`` that is ``var_w planes tr(gbar) E r^2``, ``gbar = mean_g M_g M_g^T``, so He's
    ``E out^2 = 2 E r^2`` needs ``var_w = 2 / (planes tr gbar)``. ``keep``: the taps used (disk mask)."""
    k, order = layer.kernel_size, layer.group.order
    keep = disk_mask(k).flatten() > 0 if layer.disk_mask else torch.ones(k * k, dtype=torch.bool)
    m = transform_matrix(layer.group, k, layer.disk_mask)  # [|G|, t, s], float64
    gbar = torch.einsum("gts,gus->tu", m, m)[keep][:, keep] / order
    planes = layer.in_channels * (1 if isinstance(layer, gnn.LiftingConv2d) else order)
    return 2.0 / (planes * gbar.trace().item()), gbar, keep


def _expected_square(layer, r, var_w, gbar, keep):
    """``(E_W[mean layer(r)^2], beta)`` in float64 over the init law of ``_init_law``, given the input
    ``r``: ``var_w sum_{t,u} gbar[t, u] K[t, u]`` with ``K`` the patch second moments of ``r`` (zero padded,
    summed over planes, averaged over batch and output positions). ``beta = tr K / (planes taps mean r^2)
    <= 1`` is the share of the input energy the zero-padded windows see."""
    k = layer.kernel_size
    planes = (r if isinstance(layer, gnn.LiftingConv2d) else r.flatten(1, 2)).detach().to(F64)
    cols = F.unfold(planes, k, padding=layer.padding)  # [B, P k^2, L]: r(p + t) for every output p
    b, p, n_out = planes.shape[0], planes.shape[1], cols.shape[-1]
    cols = cols.view(b * p, k * k, n_out)
    second = torch.bmm(cols, cols.transpose(1, 2)).sum(0)[keep][:, keep] / (b * n_out)
    beta = second.trace().item() / (p * int(keep.sum()) * planes.square().mean().item())
    return var_w * (second * gbar).sum().item(), beta


@pytest.mark.parametrize("group,disk", [(Group(4), False), (Group(4, True), True), (Group(8), True), (Group(16), False)],
                         ids=str)
def test_he_init_preserves_variance_through_relu_stack(group, disk):
    # A ReLU stack of He-initialised layers. The init law, E out^2 given the input, and how far that is from He's
    # 2 E r^2 are computed exactly (_init_law, _expected_square); the realised weights and outputs of 16 seeds
    # are checked against them with bands from the law's own variance, so nothing here is a measured number.
    c, k, seeds = 16, 5 if disk else 3, 16
    dev = torch.zeros(seeds, 4, dtype=F64)
    for seed in range(seeds):
        torch.manual_seed(seed)
        layers = [gnn.LiftingConv2d(3, c, k, group, padding="same", disk_mask=disk)]
        layers += [gnn.GroupConv2d(c, c, k, group, padding="same", disk_mask=disk) for _ in range(3)]
        h = torch.randn(2, 3, 16, 16)
        for i, layer in enumerate(layers):
            var_w, gbar, keep = _init_law(layer)
            # the module's fan_in * transform_gain is planes * tr(gbar): two float64 sums of <= |G| k^4
            # non-negative terms, 2 gamma_{|G| k^4 + 4} apart
            assert var_w == pytest.approx(2 / (layer.fan_in * layer.transform_gain),
                                          rel=2 * gamma(group.order * k ** 4 + 4, F64))
            # the n used taps are i.i.d. N(0, var_w): mean(w^2) / var_w has mean 1 and std sqrt(2 / n); 6 sigma
            w = layer.weight.detach().to(F64).flatten(-2)[..., keep]
            assert abs(w.square().mean().item() / var_w - 1) <= 6 * math.sqrt(2 / w.numel()), (i, seed)
            r = torch.relu(h) if i else h
            with torch.no_grad():
                h = layer(r)
            expected, beta = _expected_square(layer, r, var_w, gbar, keep)
            dev[seed, i] = h.double().square().mean() / expected - 1
            # He: E out^2 = 2 E r^2 (for the ReLU layers 2 E relu(h)^2 = E h^2, h being symmetric in law), up
            # to the zero padding (beta) and, where the transform interpolates, to the input's correlations:
            # a Rayleigh quotient of gbar, so the ratio lies in beta [lambda_min, lambda_max] / mean(lambda).
            # C4 / D4 permute taps (gbar = I): exactly beta. C8 (k=5, disk): [0.70, 1.45]; C16 (k=3): [0.52, 1.82].
            ratio = expected / (2 * r.double().square().mean().item())
            lam = torch.linalg.eigvalsh(gbar)
            # both sides are float64 sums of <= numel(r) k^2 products (and eigvalsh, far more accurate): 2 gamma
            slack = 2 * gamma(r.numel() * k * k, F64)
            bounds = beta * lam[[0, -1]] / lam.mean()
            assert bounds[0] * (1 - slack) <= ratio <= bounds[1] * (1 + slack), (i, seed, ratio, bounds)
    # Given its input, a layer's mean(out^2) is a Gaussian quadratic form (1/C) sum_o w_o^T A w_o of its C output
    # channels' independent weights: mean var_w tr A (= expected), std var_w sqrt(2 tr(A^2) / C) <= sqrt(2 / C)
    # times the mean (tr A^2 <= (tr A)^2 for A >= 0). The seeds are independent: the mean relative deviation
    # over them has std <= sqrt(2 / (C seeds)) = 0.088 (float32 rounding of h, <~1e-5, is negligible). 6 sigma.
    band = 6 * math.sqrt(2 / (c * seeds))
    assert (dev.mean(0).abs() <= band).all(), (dev.mean(0), band)
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
    # the sample std of n i.i.d. normal draws has relative std sqrt(1 / (2 (n - 1))): 6 sigma
    n = gc.weight.numel()
    assert gc.weight.std().item() == pytest.approx((2 / gc.fan_in) ** 0.5, rel=6 * math.sqrt(1 / (2 * (n - 1))))
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
        cache = gc._cache  # (expanded filter, bias repeated over the group axis)
        assert cache is not None and all(not t.requires_grad and t.grad_fn is None for t in cache)
        gc(x)
        assert gc._cache is cache  # reused
    # F.conv2d on the cached filter with the folded bias vs the op: the same sums in other orders (conv_atol)
    atol = conv_atol(False, x, gc.weight, gc.bias, Group(4, True), 1, 1)
    torch.testing.assert_close(y_eval, y_train.detach(), atol=atol, rtol=0)
    with torch.inference_mode():
        torch.testing.assert_close(gc(x), y_train.detach(), atol=atol, rtol=0)  # the same cached path
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
    # the step changed the outputs by more than rounding could (_net_atol: two evaluations of one net)...
    assert (after - before).abs().max() > _net_atol(net, x, before)
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
        # float64: the point is that the exported net computes the same function, which in float32 the
        # rounding bound of the whole net (chain_rtol 6e-4 to 1.5e-3 relative) would check only loosely
        net64, x64 = copy.deepcopy(net).double(), x.double()
        expected = net64(x64)
        torch.testing.assert_close(gnn.export(net64)(x64), expected, atol=_net_atol(net64, x64, expected), rtol=0)
        assert exported(x).dtype == torch.float32 and exported(x).shape == expected.shape
    # a single layer exports to its wrapper; shapes stay (B, C, |G|, H, W)
    gc = gnn.GroupConv2d(2, 3, 3, group, stride=2, padding=1).eval()
    xg = torch.randn(2, 2, group.order, 9, 9)
    e = gc.export()
    assert isinstance(e.conv, nn.Conv2d) and e.conv.weight.shape == (3 * group.order, 2 * group.order, 3, 3)
    with torch.no_grad():
        # one Conv2d with the bias folded in vs the cached conv plus the bias: other orders of the same sums
        atol = conv_atol(False, xg, gc.weight, gc.bias, group, 2, 1)
        torch.testing.assert_close(e(xg), gc(xg), atol=atol, rtol=0)
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
    # float64: the point is which values share the statistics (per channel over B, |G|, H, W; per-(C, g)
    # statistics would be ~0.1 off), which float64 rounding (_normalize_atol ~1e-11) cannot mask
    bn = gnn.GroupBatchNorm2d(3, "C4", dtype=F64)
    assert dict(bn.named_parameters())["weight"].shape == (3,)
    x = torch.randn(5, 3, 4, 6, 6, dtype=F64) * torch.tensor([1.0, 2.0, 3.0], dtype=F64).view(1, 3, 1, 1, 1) + 1.0
    y = bn(x)
    dims = (0, 2, 3, 4)
    # the exact mean is 0: one evaluation's error, plus the rounding of the mean of n values of |y| <= ~1
    atol = _normalize_atol(x, dims, bn.eps, sides=1)
    atol += gamma(x[:, 0].numel() + 1, F64) * y.abs().mean(dims).max().item()
    torch.testing.assert_close(y.mean(dim=dims), torch.zeros(3, dtype=F64), atol=atol, rtol=0)
    ref = nn.functional.batch_norm(x, None, None, training=True, eps=bn.eps)
    torch.testing.assert_close(y, ref, atol=_normalize_atol(x, dims, bn.eps), rtol=0)  # two evaluations
    assert set(bn.state_dict()) == set(nn.BatchNorm3d(3).state_dict())


def test_layer_norm_and_pools():
    x = torch.randn(2, 3, 4, 8, 8)
    # layer norm in float64 (the point: statistics over all of C, |G|, H, W): its exact mean is 0, so one
    # evaluation's error (_normalize_atol) plus the rounding of the mean of n values of |y| <= ~1
    ln = gnn.GroupLayerNorm()
    x64, dims = x.double(), (1, 2, 3, 4)
    y = ln(x64)
    atol = _normalize_atol(x64, dims, ln.eps, sides=1)
    atol += gamma(x64[0].numel() + 1, F64) * y.abs().mean(dims).max().item()
    torch.testing.assert_close(y.mean(dim=dims), torch.zeros(2, dtype=F64), atol=atol, rtol=0)
    # |G| values summed in any order and divided: 2 gamma_{|G|+1} times the fibre's mean |x| (as test_group_pool)
    atol = sum_atol(x.shape[2] + 1, x.abs().double().mean(2).max(), torch.float32)
    torch.testing.assert_close(gnn.GroupPool("mean")(x), x.mean(2), atol=atol, rtol=0)
    torch.testing.assert_close(gnn.InvariantPool()(x), x.mean(dim=(2, 3, 4)), atol=0, rtol=0)  # this very call
    torch.testing.assert_close(gnn.InvariantPool("max")(x), x.amax(dim=(2, 3, 4)), atol=0, rtol=0)  # a max: exact
    mp = gnn.GroupMaxPool2d(2)(x)
    assert mp.shape == (2, 3, 4, 4, 4)
    torch.testing.assert_close(mp[:, 1, 2], nn.functional.max_pool2d(x[:, 1, 2], 2), atol=0, rtol=0)  # exact
    ap = gnn.GroupAvgPool2d(3, stride=1, padding=1)(x)
    # <= 9 values summed in any order and divided by 9: 2 gamma_10 times the largest |x| (as test_spatial_pool)
    atol = sum_atol(9 + 1, x.abs().max().double(), torch.float32)
    torch.testing.assert_close(ap[:, 2, 3], nn.functional.avg_pool2d(x[:, 2, 3], 3, 1, 1), atol=atol, rtol=0)


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
        torch.testing.assert_close(y[~zero], torch.full_like(y[~zero], 2.0), atol=0, rtol=0)  # 1 / (1 - 0.5): exact
        d.eval()
        assert d(x) is x


# -- torch.compile and torch.export ---------------------------------------------------------------------

def test_torch_compile_fullgraph_train_and_eval():
    torch.manual_seed(0)
    # float64: the point is that the compiled graph is the same function. Each comparison is bounded by
    # chain_rtol of the net's reductions in that mode (_net_atol): <= ~3e-11 relative in float64 (train mode,
    # batch statistics over 1800 values), but ~1e-2 in float32, i.e. hardly a check
    net = _net(Group(4)).double()
    x = torch.randn(2, 1, 15, 15, dtype=F64)
    compiled = torch.compile(net, fullgraph=True, backend="aot_eager")
    net.train()
    net[7].p = 0.0  # deterministic comparison
    y = compiled(x)
    y.sum().backward()
    assert net[0].weight.grad is not None
    expected = net(x)
    torch.testing.assert_close(y, expected, atol=_net_atol(net, x, expected), rtol=0)
    net.eval()
    with torch.no_grad():
        expected = net(x)
        atol = _net_atol(net, x, expected)
        torch.testing.assert_close(compiled(x), expected, atol=atol, rtol=0)
    torch.testing.assert_close(compiled(x), net(x), atol=atol, rtol=0)  # grad enabled: the same function


def test_torch_export_eval():
    torch.manual_seed(0)
    # float64: the point is that the exported programs are the same function; bounded by chain_rtol of the
    # net's reductions (_net_atol), ~3e-12 relative in float64
    net = _trained_stats(_net(Group(4, True))).double().eval()
    x = torch.randn(2, 1, 15, 15, dtype=F64)
    with torch.no_grad():
        expected = net(x)  # fills the caches first: export must not capture them
    atol = _net_atol(net, x, expected)
    program = torch.export.export(net, (x,))
    assert not any("cache" in name for name in program.state_dict)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), expected, atol=atol, rtol=0)
    # the exported (plain Conv2d) network also goes through torch.export
    plain = torch.export.export(gnn.export(net), (x,))
    with torch.no_grad():
        torch.testing.assert_close(plain.module()(x), expected, atol=atol, rtol=0)


def test_no_warning_from_unstrided_layers_at_odd_sizes():
    net = nn.Sequential(gnn.LiftingConv2d(1, 2, 4, "C4"), gnn.GroupConv2d(2, 2, 2, "C4"),
                        gnn.GroupMaxPool2d(3, stride=1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net(torch.randn(1, 1, 13, 13))


@pytest.mark.parametrize("disk", [False, True])
def test_modules_build_on_the_meta_device_without_poisoning_caches(disk):
    # Building under ``torch.device("meta")`` (deferred init of a large model) must work: the constants the
    # constructors compute (disk mask, transform matrix for the init gain) are built on the CPU, and the
    # cached transform matrix must stay a CPU tensor for the modules built afterwards.
    from gconv_ext.ops import reference  # noqa: PLC0415

    k, group = 7, "C8"  # a (k, group) pair no other test caches first
    with torch.device("meta"):
        lift = gnn.LiftingConv2d(1, 3, k, group, disk_mask=disk)
        gconv = gnn.GroupConv2d(3, 2, k, group, disk_mask=disk)
    assert lift.weight.device.type == "meta" and gconv.weight.device.type == "meta"
    assert reference.transform_matrix(Group(8), k, disk).device.type == "cpu"
    real = gnn.GroupConv2d(3, 2, k, group, disk_mask=disk)
    assert real.weight.device.type == "cpu" and torch.isfinite(real.weight).all()
    assert real.weight.std() > 0
    assert gconv.weight.shape == real.weight.shape and lift.weight.shape[:2] == (3, 1)


# -- deployment: export() to standard torch ops, torch.export, ONNX ------------------------------------

_CUSTOM_OP_MODULES = (gnn.LiftingConv2d, gnn.GroupConv2d, gnn.GroupPool, gnn.GroupMaxPool2d, gnn.GroupAvgPool2d)


class _EveryGroupModule(nn.Module):
    """Every gconv_ext.nn module, the pools with non-default options: a max pool with stride 2 and padding
    ahead of the ReLU (so its -inf padding matters), a rectangular average pool with zero padding counted,
    a dilated 'same' conv and a conv with a stride pair. Exact sizes at 15x15 (no EquivarianceWarning):
    15 -> 15 -> 8 -> 8 -> 8x7 -> 8x4. Returns the planar group pools and the invariant pools."""

    def __init__(self, group):
        super().__init__()
        self.body = nn.Sequential(
            gnn.LiftingConv2d(1, 3, 3, group, padding=1, disk_mask=True), gnn.GroupBatchNorm2d(3, group),
            gnn.GroupMaxPool2d(3, stride=2, padding=1), nn.ReLU(),
            gnn.GroupConv2d(3, 4, 3, group, padding="same", dilation=2), gnn.GroupLayerNorm(),
            gnn.GroupAvgPool2d((3, 2), stride=1, padding=(1, 0)), gnn.GroupDropout(0.3, whole_channel=True),
            gnn.GroupConv2d(4, 4, 3, group, stride=(1, 2), padding=1, bias=False))
        self.group_max, self.group_mean = gnn.GroupPool("max"), gnn.GroupPool("mean")
        self.inv_mean, self.inv_max = gnn.InvariantPool("mean"), gnn.InvariantPool("max")

    def forward(self, x):
        h = self.body(x)
        planar = torch.cat([self.group_max(h), self.group_mean(h)], dim=1)
        return planar, torch.cat([self.inv_mean(h), self.inv_max(h)], dim=1)


def _deploy_model(name):
    """(model in eval mode with non-trivial batch-norm statistics, example input, exact) for the deployment
    tests; ``exact``: export() must be bit-identical in float32 (bias-free convs on the same F.conv2d call,
    max pools, the same layer norm and mean)."""
    from gconv_ext.models import gcnn_preset  # noqa: PLC0415
    from gconv_ext.train import build_model  # noqa: PLC0415

    torch.manual_seed(0)
    if name == "gcnn-C4/4/16":
        return gcnn_preset("C4/4/16").eval(), torch.randn(2, 1, 28, 28), True
    if name == "gcnn-D4/2/8-batchnorm":
        return _trained_stats(gcnn_preset("D4/2/8", norm="batch"), 28).eval(), torch.randn(2, 1, 28, 28), True
    if name == "stn-single-canonical-tiny":  # C8 lifting and group convs with biases, a group average pool
        return build_model("stn-single-canonical", preset="tiny").eval(), torch.randn(2, 1, 28, 28), False
    return _trained_stats(_EveryGroupModule(Group(4, True))).eval(), torch.randn(2, 1, 15, 15), False


_DEPLOY = ["gcnn-C4/4/16", "gcnn-D4/2/8-batchnorm", "stn-single-canonical-tiny", "every-group-module"]


def _outputs(y):
    return y if isinstance(y, tuple) else (y,)


def _gconv_targets(program) -> list[str]:
    """The custom operators (node targets in the ``gconv_ext`` namespace) in a torch.export program's graph."""
    return sorted({str(node.target) for node in program.graph.nodes if node.op == "call_function"
                   and (getattr(node.target, "namespace", None) == "gconv_ext"
                        or str(node.target).startswith("gconv_ext."))})


@pytest.mark.parametrize("name", _DEPLOY)
def test_export_gives_standard_modules_with_the_same_outputs(name):
    net, x, exact = _deploy_model(name)
    types = [type(m) for m in net.modules()]
    state = {k: v.clone() for k, v in net.state_dict().items()}
    exported = gnn.export(net)
    # inplace=False: the original keeps its modules and values (and still runs the custom operators)
    assert [type(m) for m in net.modules()] == types and any(issubclass(t, _CUSTOM_OP_MODULES) for t in types)
    after = net.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(v, state[k]) for k, v in after.items())
    assert not any(isinstance(m, _CUSTOM_OP_MODULES) for m in exported.modules())
    assert not exported.training
    with torch.no_grad():
        if exact:  # the same ATen convolution on the bit-identical expanded filter, and max pools: exact
            # (a GCNN's fused LayerNorm + ReLU + max pool sums its statistics in another order than torch's
            # LayerNorm: the same function to within rounding, checked in float64 below; bit for bit unfused)
            fused = getattr(net, "fuse_glue", None)
            if fused is not None:
                net.fuse_glue = False
            try:
                for a, b in zip(_outputs(exported(x)), _outputs(net(x))):
                    assert torch.equal(a, b)
            finally:
                if fused is not None:
                    net.fuse_glue = fused
        # float64 (biases folded into the Conv2d, the average and mean pools on ATen kernels: other orders of
        # the same sums), bounded by chain_rtol of the net's reductions (_net_atol)
        net64, x64 = copy.deepcopy(net).double(), x.double()
        for a, b in zip(_outputs(gnn.export(net64)(x64)), _outputs(net64(x64))):
            torch.testing.assert_close(a, b, atol=_net_atol(net64, x64, b), rtol=0)


@pytest.mark.parametrize("name", _DEPLOY)
def test_torch_export_of_original_and_exported_models(name):
    # float64: the programs compute the same function as the modules (bounded by _net_atol)
    net, x, _ = _deploy_model(name)
    net, x = net.double(), x.double()
    with torch.no_grad():
        expected = _outputs(net(x))  # fills the eval caches first: torch.export must not capture them
    # the original through the custom operators' fake kernels: its graph holds them (without the compiled
    # extension the modules run the pure-PyTorch reference instead)
    program = torch.export.export(net, (x,))
    assert bool(_gconv_targets(program)) == gconv_ext.build_info()["compiled"]
    exported = gnn.export(net)
    plain = torch.export.export(exported, (x,))
    assert _gconv_targets(plain) == []
    with torch.no_grad():
        for prog in (program, plain):
            for a, b in zip(_outputs(prog.module()(x)), expected):
                torch.testing.assert_close(a, b, atol=_net_atol(net, x, b), rtol=0)


def _onnx_atol(y32: torch.Tensor, y64: torch.Tensor) -> float:
    """onnxruntime against PyTorch: both evaluate the float32 model, with other kernels (MLAS convolutions,
    its own layer norm, grid sample and reductions). onnxruntime has no float64 Conv, and in float32 the chain
    bound of _net_atol is no check at these depths (chain_rtol is about 2.8 relative for the GCNN C4/4/16,
    whose layer norms reduce 43,268 values), so this checks against float32 rounding as this computation
    shows it: 16 times PyTorch's own float32 error (against float64) plus 16 ulps of the output. A wrong
    padding, pool semantics or layout in the ONNX graph changes outputs by orders of magnitude more."""
    eps = torch.finfo(torch.float32).eps
    return 16 * (y32.double() - y64).abs().max().item() + 16 * eps * y64.abs().max().item()


@pytest.mark.parametrize("name", _DEPLOY)
def test_exported_model_goes_to_onnx_and_onnxruntime(name):
    onnx = pytest.importorskip("onnx", reason="onnx not installed (requirements-test.txt)")
    pytest.importorskip("onnxscript", reason="onnxscript not installed (torch.onnx.export(dynamo=True) needs it)")
    net, x, _ = _deploy_model(name)
    exported = gnn.export(net)
    # the dynamo exporter (torch.export underneath), with a dynamic batch size
    program = torch.onnx.export(exported, (x,), dynamo=True, verbose=False,
                                dynamic_shapes=({0: torch.export.Dim("batch")},))
    model = program.model_proto
    onnx.checker.check_model(model)
    assert {node.domain for node in model.graph.node} <= {"", "ai.onnx"}  # standard ONNX operators only
    assert not any("gconv" in node.op_type.lower() for node in model.graph.node)
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed: the ONNX model was not run")
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x3 = torch.randn(3, *x.shape[1:])  # another batch size than the export's
    got = session.run(None, {session.get_inputs()[0].name: x3.numpy()})
    with torch.no_grad():
        want = _outputs(net(x3))
        want64 = _outputs(copy.deepcopy(net).double()(x3.double()))
    assert len(got) == len(want)
    for g, w, w64 in zip(got, want, want64):
        g = torch.from_numpy(g)
        assert g.shape == w.shape and g.dtype == w.dtype
        torch.testing.assert_close(g.double(), w64, atol=_onnx_atol(w, w64), rtol=0)


def test_pool_exports_standard_pools_and_rejects_what_they_cannot_express():
    x = torch.randn(2, 3, 4, 9, 9)
    gp = gnn.GroupMaxPool2d((3, 2), stride=(2, 1), padding=(1, 0))
    e = gnn.export(gp)  # a single module exports to its replacement
    assert isinstance(e, gnn.ExportedGroupSpatialPool) and isinstance(e.pool, nn.MaxPool2d)
    assert (e.pool.kernel_size, e.pool.stride, e.pool.padding, e.pool.dilation, e.pool.ceil_mode) == \
        ((3, 2), (2, 1), (1, 0), 1, False)
    assert repr(e).startswith("ExportedGroupSpatialPool(\n  max, kernel_size=(3, 2), stride=(2, 1), padding=(1, 0)\n"
                              "  (pool): MaxPool2d(kernel_size=(3, 2), stride=(2, 1), padding=(1, 0), dilation=1")
    assert torch.equal(e(x), gp(x))  # a max: exact
    ap = gnn.GroupAvgPool2d(3, stride=2, padding=1)
    ea = ap.export()
    assert isinstance(ea.pool, nn.AvgPool2d) and ea.pool.count_include_pad and not ea.pool.ceil_mode
    # <= 9 values summed in any order and divided by 9: 2 gamma_10 times the largest |x| (as test_spatial_pool)
    torch.testing.assert_close(ea(x), ap(x), atol=sum_atol(9 + 1, x.abs().max().double(), torch.float32), rtol=0)
    for mode in ("max", "mean"):
        g = gnn.GroupPool(mode).export()
        assert isinstance(g, gnn.ExportedGroupPool) and repr(g) == f"ExportedGroupPool(mode={mode!r})"
    assert torch.equal(gnn.GroupPool("max").export()(x), gnn.GroupPool("max")(x))  # a max: exact
    # the exported strided pool keeps the exactness warning and check_exact sees its geometry
    with pytest.warns(gnn.EquivarianceWarning, match=r"ExportedGroupSpatialPool\(max, kernel_size=2, stride=2\)"):
        gnn.GroupMaxPool2d(2).export()(torch.randn(1, 1, 4, 9, 9))
    net = gnn.export(nn.Sequential(gnn.LiftingConv2d(1, 2, 3, "C4"), gnn.GroupMaxPool2d(2)))
    assert gnn.check_exact(net, (1, 1, 10, 10), "C4").exact  # 10 -> 8 -> 4
    report = gnn.check_exact(net, (1, 1, 11, 11), "C4")  # 11 -> 9: a 2x2/2 pool on an odd size
    assert [c.kind for c in report.offending] == ["ExportedGroupSpatialPool"]
    # options the group pools do not have raise, naming the option, instead of changing results
    for pool, match in [(nn.MaxPool2d(2, ceil_mode=True), "ceil_mode=True"), (nn.MaxPool2d(3, dilation=2), "dilation"),
                        (nn.MaxPool2d(2, return_indices=True), "return_indices"),
                        (nn.AvgPool2d(2, count_include_pad=False), "count_include_pad=False"),
                        (nn.AvgPool2d(2, divisor_override=3), "divisor_override"),
                        (nn.MaxPool2d(3, padding=2), "padding must be at most half")]:
        with pytest.raises(ValueError, match=match):
            gnn.ExportedGroupSpatialPool(pool)
    with pytest.raises(ValueError, match="MaxPool2d or AvgPool2d"):
        gnn.ExportedGroupSpatialPool(nn.LPPool2d(2, 2))

    class _OtherPool(gnn.GroupMaxPool2d):  # a subclass with a pool function export() does not know
        _name = "OtherPool"
        _pool_fn = staticmethod(lambda x, k, s, p: x)

    with pytest.raises(ValueError, match="OtherPool: export"):
        gnn.export(nn.Sequential(_OtherPool(2)))


@pytest.mark.parametrize("lifting", [True, False])
def test_eval_cache_under_autocast_matches_the_op_path_and_casts_once(lifting):
    # Under autocast the op casts input, weight and bias to bf16 and folds the bias into the conv: its output
    # is bf16. The eval cache must give that dtype too (an fp32 bias added after the conv used to promote
    # the output to fp32), and hold the filter already cast (not cast again on every call).
    torch.manual_seed(0)
    m = gnn.LiftingConv2d(3, 4, 3, "C4", padding=1) if lifting else gnn.GroupConv2d(3, 4, 3, "C4", padding=1)
    x = torch.randn(2, 3, 9, 9) if lifting else torch.randn(2, 3, 4, 9, 9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        op_out = m(x)  # training mode: the op path
        m.eval()
        with torch.no_grad():
            cached = m(x)
            filt = m._cache[0]
            again = m(x)
    assert op_out.dtype == cached.dtype == torch.bfloat16
    assert filt.dtype == torch.bfloat16 and m._cache[0] is filt  # cast once, reused
    assert torch.equal(cached, again)
    # the same bf16 operands and a float32 accumulation on both paths; at most the final bf16 rounding of
    # each output differs (2 ulps of bf16 at the output's magnitude)
    torch.testing.assert_close(cached.float(), op_out.detach().float(), rtol=2 * 2.0**-8, atol=1e-6)
    with torch.no_grad():  # leaving autocast: a float32 cache entry again
        assert m(x).dtype == torch.float32 and m._cache[0].dtype == torch.float32
