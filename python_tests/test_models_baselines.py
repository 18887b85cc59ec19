"""Tests for the study's baselines: the plain CNN and the spatial-transformer CNN (STN).

Covers shapes, the exact identity initialisation of the STN, that its localisation nets train (the
study's saturated-sigmoid init made that impossible), parameter counts, a short smoke training,
argument validation and ``torch.compile(fullgraph=True)``.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gconv_ext.models.cnn import CNN, GCNN_C4_4_16_PARAMS, cnn_for_params, cnn_parameter_count
from gconv_ext.models.common import count_parameters
from gconv_ext.models.stn import (
    STN,
    LocalizationNet,
    rotation_theta,
    affine_warp,
    stn_for_params,
    stn_parameter_count,
)

MODES = ("single", "multi")
HEADS = ("rotation", "affine")


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
@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("batch", [1, 4])
def test_stn_forward_shape(mode: str, head: str, batch: int) -> None:
    torch.manual_seed(0)
    model = small_stn(mode, head, init="random")
    x = torch.randn(batch, 1, 28, 28)
    assert model(x).shape == (batch, 10)
    warped, params = model.transformed_input(x)
    assert warped.shape == x.shape
    assert params.shape == ((batch,) if head == "rotation" else (batch, 2, 3))
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
        if head == "rotation":
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


def test_random_init_is_small_and_input_dependent() -> None:
    torch.manual_seed(0)
    model = small_stn("single", "rotation", init="random", init_std=0.05)
    _, angles = model.transformed_input(torch.rand(16, 1, 28, 28))
    assert 0 < angles.abs().max() < 0.5 and angles.std() > 0


# --------------------------------------------------------------------------------------------
# gradients reach the localisation nets


def test_study_init_blocks_all_localizer_gradients() -> None:
    """The study's rotation head (weight 0, bias 1e5, angle = 2*pi*sigmoid) gets exactly zero grads."""
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
    moved = params.abs() if head == "rotation" else (params - identity).abs()
    assert moved.max() > 1e-4 and params.reshape(len(params), -1).std(0).max() > 0  # input-dependent warps


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
    expected_default = {("single", "rotation"): 110_539, ("single", "affine"): 110_624,
                        ("multi", "rotation"): 187_535, ("multi", "affine"): 187_960}
    expected_matched = {("single", "rotation"): (31, 104_199), ("single", "affine"): (31, 104_284),
                        ("multi", "rotation"): (20, 105_455), ("multi", "affine"): (19, 100_340)}
    for (mode, head), n in expected_default.items():
        assert count_parameters(STN(mode, head)) == stn_parameter_count(mode, head) == n
        model = stn_for_params(GCNN_C4_4_16_PARAMS, mode, head)
        assert (model.channels, count_parameters(model)) == expected_matched[(mode, head)]
        assert abs(count_parameters(model) / 102_970 - 1) < 0.03
    for kwargs in [dict(channels=5, layers=3, loc_channels=3, kernel_size=3),
                   dict(channels=9, layers=2, loc_channels=7, kernel_size=5, in_channels=3)]:
        for mode in MODES:
            for head in HEADS:
                assert count_parameters(STN(mode, head, **kwargs)) == \
                    stn_parameter_count(mode, head, **kwargs)


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
        (cnn_for_params, dict(target=0), "target"),
        (stn_for_params, dict(mode="both"), "mode"),
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
    compiled = torch.compile(model, fullgraph=True)
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_compile_fullgraph_stn() -> None:
    """Multi mode (a localiser and sampler before every block); about 21 s cold on 2 CPU cores."""
    torch.manual_seed(0)
    model = small_stn("multi", "rotation", init="random")
    x = torch.randn(4, 1, 28, 28)
    compiled = torch.compile(model, fullgraph=True)
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)
