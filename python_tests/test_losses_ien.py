"""Tests for the implicit-equivariance loss (gconv_ext.losses.ien) and the IEN CNN factory."""
from __future__ import annotations

import csv
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gconv_ext.losses import (EquivarianceLoss, OrbitSpec, apply_transform, invert_transform, orbit_pool,
                              sample_transforms)
from gconv_ext.groups import Group
from gconv_ext.models import GCNN, ien_cnn, ien_loss

from conftest import REPO, torch_threads
from tolerances import F64, chain_rtol, gamma, reduction_lengths


@pytest.fixture(autouse=True)
def _threads():
    with torch_threads(1):
        yield


def test_orbit_spec_uniform_and_ratios():
    assert OrbitSpec.uniform(12, 4).sizes == (4, 4, 4)
    spec = OrbitSpec.from_ratios((8, 2, 1), (4, 2, 1), 44)
    assert spec.sizes == (4,) * 8 + (2,) * 4 + (1,) * 4 and spec.channels == 44 and spec.n_orbits == 16
    assert spec.runs() == [(0, 4, 8), (32, 2, 4), (40, 1, 4)]
    with pytest.raises(ValueError, match="multiple"):
        OrbitSpec.uniform(10, 4)
    with pytest.raises(ValueError, match="cannot be split"):
        OrbitSpec.from_ratios((1, 1), (4, 4), 10)
    with pytest.raises(ValueError, match="sizes"):
        OrbitSpec((4, 0))


def test_orbit_pool_heterogeneous():
    spec = OrbitSpec((4, 2, 2, 1, 4))
    x = torch.randn(2, 13, 5, 5)
    expected = torch.stack([x[:, 0:4].amax(1), x[:, 4:6].amax(1), x[:, 6:8].amax(1), x[:, 8],
                            x[:, 9:13].amax(1)], dim=1)
    assert torch.equal(orbit_pool(x, spec), expected)  # maxima: exact
    assert orbit_pool(torch.randn(3, 13), spec).shape == (3, 5)  # fully connected features
    with pytest.raises(ValueError, match="13 channels"):
        orbit_pool(torch.randn(2, 12, 5, 5), spec)


@pytest.mark.parametrize("kind", ["C4", "D4"])
def test_transform_round_trip_exact(kind):
    x = torch.randn(16, 3, 7, 7)
    e = sample_transforms(16, kind, torch.Generator().manual_seed(1))
    assert e.shape == (16,) and (e != 0).all()  # group indices, never the identity
    assert torch.equal(invert_transform(apply_transform(x, e, kind), e, kind), x)  # permutations: exact
    group = Group(4, kind == "D4")
    for i in range(16):  # the group's own plane action: element m * 4 + r is R_r F^m (flip first, then rotate)
        assert torch.equal(apply_transform(x, e, kind)[i], group.act_on_plane(int(e[i]), x[i]))


def test_old_transform_names_still_work():
    # 'rot90+flip' was the name of D4 before the transforms were group elements: same draw, same images
    x = torch.randn(6, 1, 9, 9)
    with pytest.warns(DeprecationWarning, match="D4"):
        e = sample_transforms(6, "rot90+flip", torch.Generator().manual_seed(4))
    assert torch.equal(e, sample_transforms(6, "D4", torch.Generator().manual_seed(4)))
    with pytest.warns(DeprecationWarning, match="C8"):
        assert torch.equal(apply_transform(x, e % 8, "rot45"), apply_transform(x, e % 8, "C8"))


@pytest.mark.parametrize("group,kind", [("C4", "C4"), ("D4", "D4")])
def test_loss_vanishes_for_exactly_equivariant_network(group, kind):
    # float64: the point is the math (in float32 the rounding bound of the layer norms would be loose)
    model = GCNN(group, layers=2, channels=4, kernel_size=3).double().eval()
    order = model.group.order
    # features.5 is a 5-D group map [B, 4, |G|, H, W]: flattened channel-major, orbits of |G| consecutive channels
    loss = EquivarianceLoss(model, ["features.2", "features.5"], OrbitSpec.uniform(4 * order, order), kind, 1.0,
                            torch.Generator().manual_seed(0))
    x = torch.randn(4, 1, 17, 17, dtype=F64)
    out = loss(x, torch.randint(0, 10, (4,)))
    # the transformed input permutes every sum's terms: the monitored features differ by rounding only, at
    # most chain_rtol times their size (orbit max pooling and the inverse transform add none); the MSE is
    # at most the square of that
    with torch.no_grad():
        scale = max(model.features[: i + 1](x).abs().max().item() for i in (2, 5))
    rounding = chain_rtol(F64, reduction_lengths(model.features, x)) * scale
    assert max(out.mse.values()) <= rounding**2
    # the wrong channel ordering (group-major) mixes fields: the loss is no longer zero
    class GroupMajor(nn.Module):
        def forward(self, x):
            return x.transpose(1, 2).flatten(1, 2)

    probe = nn.Sequential(model.features, GroupMajor())
    wrong = EquivarianceLoss(nn.Sequential(probe, nn.Flatten(), nn.LazyLinear(10, dtype=F64)), ["0.1"],
                             OrbitSpec.uniform(4 * order, order), kind, 1.0, torch.Generator().manual_seed(0))
    # mixed fields: an error of the order of the (layer-normalised, O(1)) features, not rounding (above)
    assert wrong(x, torch.randint(0, 10, (4,))).mse["0.1"] > max(1e-4, 1e6 * rounding**2)


def test_loss_nonzero_for_random_cnn_and_gradients_flow():
    torch.manual_seed(0)
    model = ien_cnn(12, 2, (4,))
    x, y = torch.randn(4, 1, 12, 12), torch.randint(0, 10, (4,))
    grads = []
    for beta in (0.0, 10.0):
        model.zero_grad()
        out = ien_loss(model, beta, "C4", torch.Generator().manual_seed(3))(x, y)
        # a random plain CNN is not equivariant: an O(1) fraction of its features' size, far above rounding
        assert all(v > 1e-3 for v in out.mse.values())
        out.loss.backward()
        grads.append(model.blocks[0][0].weight.grad.clone())
        assert torch.isfinite(grads[-1]).all() and grads[-1].abs().sum() > 0
    # the equivariance term (beta = 10) contributes an O(1) gradient, far beyond allclose's 1e-5
    assert not torch.allclose(grads[0], grads[1])


def test_beta_zero_is_cross_entropy_on_doubled_batch():
    torch.manual_seed(0)
    model = ien_cnn(8, 2, (4,)).eval()
    x, y = torch.randn(5, 1, 10, 10), torch.randint(0, 10, (5,))
    out = ien_loss(model, 0.0, "D4", torch.Generator().manual_seed(7))(x, y)
    e = sample_transforms(5, "D4", torch.Generator().manual_seed(7))
    assert torch.equal(out.elements, e)
    xx = torch.cat([x, apply_transform(x, e, "D4")])
    expected = F.cross_entropy(model(xx), torch.cat([y, y]))
    # exact: the loss runs the same model on the same doubled batch, then the same cross-entropy
    assert torch.equal(out.loss, expected) and out.task == expected.item()
    with_beta = ien_loss(model, 0.5, "D4", torch.Generator().manual_seed(7))(x, y)
    # the same task term plus 0.5 x each layer's MSE, added in float32: one rounding per addition
    rel = 2 * gamma(len(with_beta.mse) + 1, torch.float32)
    assert with_beta.loss.item() == pytest.approx(expected.item() + 0.5 * sum(with_beta.mse.values()), rel=rel)


def test_heterogeneous_orbits_and_c8():
    model = ien_cnn(44, 2, (4, 2, 1), (8, 2, 1))
    assert model.orbit_spec.n_orbits == 16 and model.monitored_layers == ["blocks.0", "blocks.1"]
    out = ien_loss(model, 1.0, "C8")(torch.randn(3, 1, 16, 16), torch.randint(0, 10, (3,)))
    assert set(out.mse) == {"blocks.0", "blocks.1"} and out.logits.shape == (6, 10)
    out.loss.backward()


def test_bad_arguments():
    model = ien_cnn(8, 2, (4,))
    with pytest.raises(ValueError, match="transforms"):
        EquivarianceLoss(model, ["blocks.0"], OrbitSpec.uniform(8, 4), "rot30")
    with pytest.raises(ValueError, match="beta"):
        EquivarianceLoss(model, ["blocks.0"], OrbitSpec.uniform(8, 4), beta=-1.0)
    with pytest.raises(ValueError, match="nope"):
        EquivarianceLoss(model, ["nope"], OrbitSpec.uniform(8, 4))
    with pytest.raises(ValueError, match="OrbitSpecs for 2 layers"):
        EquivarianceLoss(model, ["blocks.0", "blocks.1"], [OrbitSpec.uniform(8, 4)])
    with pytest.raises(ValueError, match="multiple"):
        ien_cnn(10, 2, (4,))
    with pytest.raises(ValueError, match="need ratios"):
        ien_cnn(12, 2, (4, 2))


def test_ien_example_smoke(tmp_path, shared_data_dir):
    out = tmp_path / "ien"
    # the timeout only guards against a hang (the run takes ~50 s on 2 shared cores): never a speed check
    subprocess.run([sys.executable, str(REPO / "examples" / "ien_mnist.py"), "--budget", "smoke", "--out", str(out),
                    "--data-dir", str(shared_data_dir)], check=True, capture_output=True, timeout=900)
    rows = list(csv.DictReader(open(out / "ien.csv")))
    assert [float(r["beta"]) for r in rows] == [0.0, 1.0]
    # the equivariance term does its job: much smaller test equivariance MSE with beta > 0 (a learning check,
    # ~100x smaller in these runs on AVX-512 and AVX2 alike; 0.5 asks only for a clear effect)
    assert float(rows[1]["mse_sum"]) < 0.5 * float(rows[0]["mse_sum"])
    assert "random-angle acc." in (out / "summary.md").read_text()
    # each beta trained through the engine: per-epoch metrics with the IEN columns, checkpoints
    metrics = list(csv.DictReader(open(out / "beta1" / "metrics.csv")))
    assert [int(r["epoch"]) for r in metrics] == [1, 2] and "mse_blocks.0" in metrics[0]
    assert (out / "beta0" / "last.pt").is_file() and (out / "beta1" / "summary.json").is_file()
