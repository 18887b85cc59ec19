"""Plain CNN baseline for MNIST 28x28 with about the parameters of the study's GCNN C4/4/16.

The study ("Group Equivariant CNNs Outperform Spatial Transformers on Tasks Which Require Rotation
Invariance") had no separate CNN baseline: its upright-trained spatial transformers were plain CNNs in
effect only because their localisation nets never trained (see :mod:`gconv_ext.models.stn`). The UvA
tutorial it builds on did have one: five ``Conv2d(k=5, padding=0)`` layers of 32 channels, each
followed by ``layer_norm`` over ``(C, H, W)`` without affine and ReLU, a global average pool and
``Linear(32, 10)``: 103,690 parameters, 47.35% on rotated MNIST after upright training.

:class:`CNN` is that network with the GCNN's spatial max pools added, so that it differs from the
GCNN C4/4/16 (102,970 parameters) in equivariance rather than in layout:

* ``Conv2d(k, bias=True, padding=0)`` -> ``layer_norm`` over ``(C, H, W)`` (no affine) -> ReLU,
  ``layers`` times;
* ``MaxPool2d(2, stride=1)`` after the first layer and after every second layer from there
  (layers 1, 3, 5, ...), as the GCNN pools after its layers;
* global average pool over ``(H, W)`` -> ``Linear(C, num_classes)``.

For the default ``CNN(channels=32, layers=5)`` the spatial sizes are
28 -> 24 -> 23 -> 19 -> 15 -> 14 -> 10 -> 6 -> 5, and the parameter count is
``100*C^2 + 40*C + 10`` = **103,690** (0.70% above 102,970; the tutorial CNN's count, since pools
and the affine-free norms add no parameters). :func:`cnn_for_params` picks the channel count
closest to any target.

The tutorial's ``adaptive_avg_pool2d(x, 1).squeeze()`` returned ``[C]`` logits for a batch of one;
here the pool is ``x.mean((-2, -1))`` and the output is always ``[B, num_classes]``.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gconv_ext.models.common import check_int, closest_channels, layer_norm_chw

__all__ = ["CNN", "cnn_parameter_count", "cnn_for_params", "GCNN_C4_4_16_PARAMS"]

#: Parameters of the study's GCNN C4 / 4 group-conv layers / 16 channels (25C + 25*L*N*C^2 + 10C + 10).
GCNN_C4_4_16_PARAMS = 102_970


def _pool_after(layers: int) -> tuple[bool, ...]:
    """Whether a ``MaxPool2d(2, stride=1)`` follows layer ``i`` (0-based): layers 1, 3, 5, ... (1-based)."""
    return tuple(i % 2 == 0 for i in range(layers))


def _spatial_sizes(input_size: int, kernel_size: int, pool_after: tuple[bool, ...]) -> list[int]:
    sizes = [input_size]
    for pool in pool_after:
        sizes.append(sizes[-1] - kernel_size + 1)
        if pool:
            sizes.append(sizes[-1] - 1)
    return sizes


class CNN(nn.Module):
    """Plain CNN baseline: ``layers`` x [Conv(k, no pad) -> LayerNorm(C,H,W) -> ReLU] with GCNN-style pools.

    Args:
        channels: channels of every conv layer (default 32).
        layers: number of conv layers (default 5).
        kernel_size: conv kernel size (default 5, as in the study).
        in_channels: input channels (1 for MNIST).
        num_classes: outputs of the final linear layer (10 for MNIST).
        input_size: side of the square input the layout is checked against (28 for MNIST); the
            constructor raises if the feature maps would shrink below 1x1.

    ``CNN()`` has 103,690 parameters. Input ``[B, in_channels, H, W]``, output ``[B, num_classes]``.
    """

    def __init__(
        self,
        channels: int = 32,
        layers: int = 5,
        kernel_size: int = 5,
        in_channels: int = 1,
        num_classes: int = 10,
        input_size: int = 28,
    ) -> None:
        super().__init__()
        self.channels = check_int("channels", channels)
        self.layers = check_int("layers", layers)
        self.kernel_size = check_int("kernel_size", kernel_size)
        self.in_channels = check_int("in_channels", in_channels)
        self.num_classes = check_int("num_classes", num_classes)
        self.input_size = check_int("input_size", input_size)
        self.pool_after = _pool_after(layers)
        sizes = _spatial_sizes(input_size, kernel_size, self.pool_after)
        if min(sizes) < 1:
            raise ValueError(
                f"layers={layers} with kernel_size={kernel_size} shrinks a {input_size}x{input_size} "
                f"input below 1x1 (sizes {sizes}); use fewer layers or a smaller kernel_size"
            )
        self.spatial_sizes: tuple[int, ...] = tuple(sizes)
        self.convs = nn.ModuleList(
            nn.Conv2d(in_channels if i == 0 else channels, channels, kernel_size, padding=0, bias=True)
            for i in range(layers)
        )
        self.classifier = nn.Linear(channels, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The ``[B, channels]`` embedding (global average pool of the last feature map)."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape [B, {self.in_channels}, H, W], got {list(x.shape)}")
        for conv, pool in zip(self.convs, self.pool_after):
            x = F.relu(layer_norm_chw(conv(x)))
            if pool:
                x = F.max_pool2d(x, kernel_size=2, stride=1)
        return x.mean(dim=(-2, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_classes]`` for images ``[B, in_channels, H, W]``."""
        return self.classifier(self.embed(x))

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, layers={self.layers}, kernel_size={self.kernel_size}, "
            f"sizes={'->'.join(map(str, self.spatial_sizes))}"
        )


def cnn_parameter_count(
    channels: int, layers: int, kernel_size: int = 5, in_channels: int = 1, num_classes: int = 10
) -> int:
    """Closed-form parameter count of :class:`CNN` (equals ``count_parameters(CNN(...))``)."""
    k2 = kernel_size * kernel_size
    first = in_channels * channels * k2 + channels
    rest = (layers - 1) * (channels * channels * k2 + channels)
    return first + rest + channels * num_classes + num_classes


def cnn_for_params(target: int = GCNN_C4_4_16_PARAMS, **kwargs: Any) -> CNN:
    """The :class:`CNN` whose parameter count is closest to ``target``; ``kwargs`` are :class:`CNN`'s other
    arguments (``layers``, ``kernel_size``, ...).

    Only the channel count is searched (ties go to fewer channels). With the defaults (target =
    the GCNN C4/4/16's 102,970 and 5 layers) it returns ``CNN(channels=32, layers=5)``: 103,690
    parameters, 0.70% above the target.
    """
    if "channels" in kwargs:
        raise ValueError("cnn_for_params searches channels: do not pass channels")
    probe = CNN(1, **kwargs)  # checks every argument (and the layout) once
    return CNN(closest_channels(lambda c: cnn_parameter_count(c, probe.layers, probe.kernel_size,
                                                              probe.in_channels, probe.num_classes), target),
               **kwargs)
