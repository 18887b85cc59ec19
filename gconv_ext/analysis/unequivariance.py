""""Learning unequivariance" (Using and Abusing Equivariance, section 4): a single strided P4 convolution at
an inexact input size can learn to tell an image from its own 90-degree rotation, which an exactly
equivariant network with an invariant head cannot do.

The network: ``LiftingConv2d(C_in, C, 3, C4, stride=2, padding=1)`` -> ReLU -> mean over (|G|, H, W) ->
``Linear(C, 2)``. The task: label 0 for an image, 1 for the same image rotated by 90 degrees, on a fixed set
of images (full-batch SGD). The stride-2 layer is exact when ``(n + 2 - 3) mod 2 == 0``, i.e. at odd sizes:
at 33x33 both images give identical invariant features, so the loss cannot fall below ln 2 = 0.693; at
32x32 the sampling grid of the rotated image is shifted by one pixel and the loss falls (the paper: 0.70 ->
0.09 in 400 steps).
"""
from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ..models.common import check_int
from ..nn import EquivarianceWarning, InvariantPool, LiftingConv2d

__all__ = ["UnequivarianceNet", "learn_unequivariance", "LN2"]

LN2 = math.log(2.0)


class UnequivarianceNet(nn.Module):
    """One P4 conv (3x3, stride 2, padding 1) -> ReLU -> invariant mean pool -> Linear(C, 2)."""

    def __init__(self, channels: int = 16, in_channels: int = 1) -> None:
        super().__init__()
        self.conv = LiftingConv2d(check_int("in_channels", in_channels), check_int("channels", channels), 3, "C4",
                                  stride=2, padding=1)
        self.pool = InvariantPool("mean")
        self.head = nn.Linear(channels, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(torch.relu(self.conv(x))))


def learn_unequivariance(size: int, steps: int = 400, n_images: int = 1, channels: int = 16, lr: float = 0.1,
                         momentum: float = 0.9, images: torch.Tensor | None = None, seed: int = 0
                         ) -> list[float]:
    """Train :class:`UnequivarianceNet` to separate ``n_images`` images (default one, as in the paper) from
    their 90-degree rotations;
    returns the loss of every step (the first is the loss at initialisation).

    ``images`` ``[N, C, H, W]`` (square, any size; centre-cropped or zero-padded to ``size``) or None for
    standard-normal noise images of ``size x size``, drawn with ``seed``.
    """
    from .parity import fit_size

    check_int("size", size)
    check_int("steps", steps)
    gen = torch.Generator().manual_seed(seed)
    if images is None:
        images = torch.randn(n_images, 1, size, size, generator=gen)
    else:
        images = fit_size(images.float(), size)
    x = torch.cat([images, torch.rot90(images, 1, dims=(-2, -1))])
    y = torch.cat([torch.zeros(len(images), dtype=torch.long), torch.ones(len(images), dtype=torch.long)])
    torch.manual_seed(seed)
    model = UnequivarianceNet(channels, images.shape[1])
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    losses = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EquivarianceWarning)  # 32x32 is inexact on purpose
        for _ in range(steps):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    return losses
