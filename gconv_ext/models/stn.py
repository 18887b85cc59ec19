"""Spatial-transformer CNN (STN) baseline from the study, with its localiser actually trainable.

The study ("Group Equivariant CNNs Outperform Spatial Transformers on Tasks Which Require Rotation
Invariance", repository gboduljak/group-equivariant-cnns-vs-spatial-transformers) compared GCNNs with
CNNs whose conv blocks are preceded by a spatial transformer:

* block = localisation net -> ``affine_grid`` + ``grid_sample(align_corners=False)`` (bilinear, zero
  padding) -> ``Conv2d(k=5, bias, no padding)`` -> ``layer_norm`` over ``(C, H, W)`` without affine
  -> ReLU; ``"single"`` has a localiser before the first block only, ``"multi"`` before every block;
  ``MaxPool2d(2, stride=1)`` between blocks; global average pool; ``Linear(C, 10)``.
* localisation net = ``Conv(same)`` -> LN -> ReLU -> ``MaxPool(2, 2)`` -> ``Conv(same)`` -> LN -> ReLU
  -> global average pool -> head. The rotation head (used for every reported STN) predicted one
  angle, ``2*pi*sigmoid(Linear(features))``, rotation only, no translation; an affine head (6
  numbers, identity bias) existed but was not used.

Its bug: the "identity" initialisation set the rotation head's weight to 0 and its bias to 1e5. The
sigmoid saturates, so the angle is 2*pi (the identity) but ``sigmoid'(1e5)`` is exactly 0 in float32:
no gradient ever reaches the head or the localisation convs, and every identity-initialised STN in the
study was a plain CNN with a frozen, input-independent identity warp. (Its "random" initialisation,
PyTorch's default ``Linear`` init, starts from angles near ``2*pi*sigmoid(0) = pi``, i.e. upside down.)

What this module does instead:

* The rotation head predicts ``z`` and uses ``angle = pi * tanh(z)``. ``init="identity"`` sets the
  head's weight and bias to 0, so ``z = 0`` and the warp is exactly the identity, while
  ``d angle / d z = pi`` at ``z = 0``: the head receives gradients from the first step. With a zero
  head weight the localiser's convs get no gradient on that first step only; once the first update
  has made the head weight nonzero, gradients reach every localiser layer (tested).
* The affine head predicts the 6 entries of ``theta`` directly (no squashing); ``init="identity"``
  sets weight 0 and bias ``[1, 0, 0, 0, 1, 0]``.
* ``init="random"`` draws the head weight from ``N(0, init_std^2)`` (default 0.01) and keeps the
  identity bias: a small, input-dependent warp near the identity, for comparison.
* Pools: a ``MaxPool2d(2, stride=1)`` sits between every two consecutive blocks (the study's code
  zipped ``layers - 1`` blocks with ``layers - 2`` pools and so had none after the first block).
  The global average pool is ``mean((-2, -1))``, so a batch of one gives ``[1, 10]`` logits (the
  study's ``squeeze()`` gave ``[10]``).

Angle convention (the project's: ``x`` right, ``y`` up): the sampler output is the input rotated
counter-clockwise by ``angle``; ``angle = pi/2`` reproduces ``torch.rot90(x, 1, dims=(-2, -1))`` on a
square image. For ``theta`` (both heads), output pixel at normalised ``(x, y_down)`` reads the input at
``theta @ (x, y_down, 1)``, as in ``F.affine_grid``.
"""
from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from gconv_ext.models.cnn import GCNN_C4_4_16_PARAMS
from gconv_ext.models.common import check_choice, check_float, check_int, layer_norm_chw

__all__ = [
    "LocalizationNet",
    "STN",
    "rotation_theta",
    "affine_warp",
    "stn_parameter_count",
    "stn_for_params",
]

_MODES = ("single", "multi")
_HEADS = ("rotation", "affine")
_INITS = ("identity", "random")


def rotation_theta(angle: torch.Tensor) -> torch.Tensor:
    """``[B]`` angles (radians) -> ``[B, 2, 3]`` ``affine_grid`` matrices of pure rotations.

    ``theta = [[cos a, -sin a, 0], [sin a, cos a, 0]]``: with :func:`affine_warp` the output is the input
    rotated counter-clockwise by ``a`` (``y`` up). ``a = 0`` gives exactly ``[[1, 0, 0], [0, 1, 0]]``.
    """
    cos, sin = torch.cos(angle), torch.sin(angle)
    zero = torch.zeros_like(angle)
    return torch.stack((cos, -sin, zero, sin, cos, zero), dim=-1).unflatten(-1, (2, 3))


def affine_warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Warp ``x [B, C, H, W]`` by ``theta [B, 2, 3]``: ``affine_grid`` + bilinear ``grid_sample``.

    ``align_corners=False`` and zero padding, as in the study. The identity ``theta`` returns ``x``
    up to the float rounding of the grid coordinates: the sampling points land within about 1e-6
    pixel of the pixel centres in float32 (an error of ~1e-6 times the local pixel differences), and
    within ~1e-15 in float64.
    """
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class LocalizationNet(nn.Module):
    """The study's localiser with a trainable, exactly-identity-initialised head.

    ``Conv(k, same) -> LN(C,H,W) -> ReLU -> MaxPool(2, 2) -> Conv(k, same) -> LN -> ReLU -> mean(H, W)
    -> Linear(loc_channels, 1 or 6)``.

    Args:
        in_channels: channels of the feature map it looks at.
        loc_channels: channels of both localiser convs.
        kernel_size: kernel of both convs (``padding="same"``).
        head: ``"rotation"`` (``angle = pi * tanh(z)``, no translation) or ``"affine"`` (6 free numbers).
        init: ``"identity"`` (head weight 0, identity bias: exactly the identity transform) or
            ``"random"`` (head weight ``N(0, init_std^2)``, identity bias).
        init_std: standard deviation of the head weight for ``init="random"``.

    ``forward(x)`` returns ``(theta [B, 2, 3], params)`` where ``params`` is the angle ``[B]`` (radians)
    for the rotation head and ``theta`` itself for the affine head.
    """

    def __init__(
        self,
        in_channels: int,
        loc_channels: int,
        kernel_size: int = 5,
        head: str = "rotation",
        init: str = "identity",
        init_std: float = 1e-2,
    ) -> None:
        super().__init__()
        check_int("in_channels", in_channels)
        check_int("loc_channels", loc_channels)
        check_int("kernel_size", kernel_size)
        self.head_kind = check_choice("head", head, _HEADS)
        self.init = check_choice("init", init, _INITS)
        self.init_std = check_float("init_std", init_std)
        self.conv1 = nn.Conv2d(in_channels, loc_channels, kernel_size, padding="same")
        self.conv2 = nn.Conv2d(loc_channels, loc_channels, kernel_size, padding="same")
        self.head = nn.Linear(loc_channels, 1 if head == "rotation" else 6)
        self.reset_head()

    def reset_head(self) -> None:
        """Re-initialise the head according to ``init`` (identity bias in both modes)."""
        with torch.no_grad():
            if self.init == "identity":
                self.head.weight.zero_()
            else:
                self.head.weight.normal_(0.0, self.init_std)
            if self.head_kind == "rotation":
                self.head.bias.zero_()
            else:
                self.head.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The ``[B, loc_channels]`` descriptor the head reads."""
        x = F.relu(layer_norm_chw(self.conv1(x)))
        x = F.max_pool2d(x, kernel_size=2, stride=2)
        x = F.relu(layer_norm_chw(self.conv2(x)))
        return x.mean(dim=(-2, -1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.head(self.features(x))
        if self.head_kind == "rotation":
            angle = math.pi * torch.tanh(out[:, 0])
            return rotation_theta(angle), angle
        theta = out.view(-1, 2, 3)
        return theta, theta

    def extra_repr(self) -> str:
        return f"head={self.head_kind!r}, init={self.init!r}"


class STN(nn.Module):
    """Spatial-transformer CNN: ``layers`` blocks of [localiser -> sampler] -> Conv -> LN -> ReLU.

    Args:
        mode: ``"single"`` (a localiser before the first block only) or ``"multi"`` (before every block).
        head: ``"rotation"`` or ``"affine"`` (see :class:`LocalizationNet`).
        channels: channels of every conv block (default 32).
        layers: number of conv blocks (default 5); ``MaxPool2d(2, stride=1)`` between consecutive blocks.
        loc_channels: channels of the localisation nets (default 16).
        kernel_size: kernel of the block convs (no padding) and the localiser convs (``same``); default 5.
        init: ``"identity"`` or ``"random"`` head initialisation (see :class:`LocalizationNet`).
        init_std: head weight std for ``init="random"``.
        in_channels: input channels (1 for MNIST).
        num_classes: outputs (10 for MNIST).
        input_size: side of the square input the layout is checked against (28 for MNIST).

    For 28x28 inputs and the defaults the block sizes are 28 -> 24 -> 23 -> 19 -> 18 -> 14 -> 13 -> 9
    -> 8 -> 4, and ``STN()`` (single, rotation) has 110,539 parameters, as the study's code gives for
    its "single, 5 convs, 32 channels, 16 localisation channels" configuration (pools and the
    affine-free norms hold no parameters, so its missing first pool does not change the count).
    """

    def __init__(
        self,
        mode: str = "single",
        head: str = "rotation",
        channels: int = 32,
        layers: int = 5,
        loc_channels: int = 16,
        kernel_size: int = 5,
        init: str = "identity",
        init_std: float = 1e-2,
        in_channels: int = 1,
        num_classes: int = 10,
        input_size: int = 28,
    ) -> None:
        super().__init__()
        self.mode = check_choice("mode", mode, _MODES)
        self.head = check_choice("head", head, _HEADS)
        self.channels = check_int("channels", channels)
        self.layers = check_int("layers", layers)
        self.loc_channels = check_int("loc_channels", loc_channels)
        self.kernel_size = check_int("kernel_size", kernel_size)
        self.init = check_choice("init", init, _INITS)
        self.init_std = check_float("init_std", init_std)
        self.in_channels = check_int("in_channels", in_channels)
        self.num_classes = check_int("num_classes", num_classes)
        self.input_size = check_int("input_size", input_size)

        block_inputs = [input_size]
        for _ in range(layers - 1):
            block_inputs.append(block_inputs[-1] - kernel_size + 1 - 1)
        final = block_inputs[-1] - kernel_size + 1
        if min(block_inputs + [final]) < 1:
            raise ValueError(
                f"layers={layers} with kernel_size={kernel_size} shrinks a {input_size}x{input_size} "
                f"input below 1x1; use fewer layers or a smaller kernel_size"
            )
        n_loc = 1 if mode == "single" else layers
        if min(block_inputs[:n_loc]) < 2:
            raise ValueError(
                f"layers={layers}: a localiser would see a feature map smaller than 2x2 (its "
                f"MaxPool(2, 2) needs 2x2); use fewer layers"
            )
        self.block_input_sizes: tuple[int, ...] = tuple(block_inputs)
        self.output_size = final

        self.localizers = nn.ModuleList(
            LocalizationNet(in_channels if i == 0 else channels, loc_channels, kernel_size, head,
                            init, init_std)
            for i in range(n_loc)
        )
        self.convs = nn.ModuleList(
            nn.Conv2d(in_channels if i == 0 else channels, channels, kernel_size, padding=0, bias=True)
            for i in range(layers)
        )
        self.classifier = nn.Linear(channels, num_classes)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape [B, {self.in_channels}, H, W], got {list(x.shape)}")

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The ``[B, channels]`` embedding (global average pool of the last block)."""
        self._check_input(x)
        n_loc = len(self.localizers)
        for i, conv in enumerate(self.convs):
            if i > 0:
                x = F.max_pool2d(x, kernel_size=2, stride=1)
            if i < n_loc:
                theta, _ = self.localizers[i](x)
                x = affine_warp(x, theta)
            x = F.relu(layer_norm_chw(conv(x)))
        return x.mean(dim=(-2, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_classes]`` for images ``[B, in_channels, H, W]``."""
        return self.classifier(self.embed(x))

    def transformed_input(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What the first sampler produces, for visualisation.

        Returns ``(warped [B, in_channels, H, W], params)`` with ``params`` the predicted angles ``[B]``
        (radians, counter-clockwise) for the rotation head or ``theta [B, 2, 3]`` for the affine head.
        Gradients are tracked; wrap in ``torch.no_grad()`` when only plotting.
        """
        self._check_input(x)
        theta, params = self.localizers[0](x)
        return affine_warp(x, theta), params

    def localizer_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of all localisation nets."""
        return self.localizers.parameters()

    def extra_repr(self) -> str:
        return (
            f"mode={self.mode!r}, head={self.head!r}, channels={self.channels}, layers={self.layers}, "
            f"loc_channels={self.loc_channels}, kernel_size={self.kernel_size}, init={self.init!r}"
        )


def _localizer_count(in_channels: int, loc_channels: int, k2: int, head: str) -> int:
    outputs = 1 if head == "rotation" else 6
    return (in_channels * loc_channels * k2 + loc_channels
            + loc_channels * loc_channels * k2 + loc_channels
            + loc_channels * outputs + outputs)


def stn_parameter_count(
    mode: str = "single",
    head: str = "rotation",
    channels: int = 32,
    layers: int = 5,
    loc_channels: int = 16,
    kernel_size: int = 5,
    in_channels: int = 1,
    num_classes: int = 10,
) -> int:
    """Closed-form parameter count of :class:`STN` (equals ``count_parameters(STN(...))``)."""
    check_choice("mode", mode, _MODES)
    check_choice("head", head, _HEADS)
    k2 = kernel_size * kernel_size
    body = (in_channels * channels * k2 + channels
            + (layers - 1) * (channels * channels * k2 + channels)
            + channels * num_classes + num_classes)
    loc = _localizer_count(in_channels, loc_channels, k2, head)
    if mode == "multi":
        loc += (layers - 1) * _localizer_count(channels, loc_channels, k2, head)
    return body + loc


def stn_for_params(
    target: int = GCNN_C4_4_16_PARAMS,
    mode: str = "single",
    head: str = "rotation",
    layers: int = 5,
    loc_channels: int = 16,
    kernel_size: int = 5,
    init: str = "identity",
    in_channels: int = 1,
    num_classes: int = 10,
    input_size: int = 28,
) -> STN:
    """The :class:`STN` whose parameter count is closest to ``target``, searching ``channels`` only.

    With ``target = 102,970`` (the GCNN C4/4/16), 5 layers and 16 localiser channels:
    single/rotation -> 31 channels, 104,199 parameters (+1.2%); single/affine -> 31 channels, 104,284
    (+1.3%); multi/rotation -> 20 channels, 105,455 (+2.4%); multi/affine -> 19 channels, 100,340
    (-2.6%). Ties go to fewer channels.
    """
    check_int("target", target)
    for name, value in (("layers", layers), ("loc_channels", loc_channels),
                        ("kernel_size", kernel_size), ("in_channels", in_channels),
                        ("num_classes", num_classes)):
        check_int(name, value)

    def count(c: int) -> int:
        return stn_parameter_count(mode, head, c, layers, loc_channels, kernel_size, in_channels,
                                   num_classes)

    best = 1
    channels = 1
    while True:
        n = count(channels)
        if abs(n - target) < abs(count(best) - target):
            best = channels
        if n >= target:
            break
        channels += 1
    return STN(mode, head, best, layers, loc_channels, kernel_size, init, in_channels=in_channels,
               num_classes=num_classes, input_size=input_size)
