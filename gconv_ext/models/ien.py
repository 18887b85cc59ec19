"""A plain CNN for implicit-equivariance (IEN) training: every monitored layer's channel count is covered by
an :class:`~gconv_ext.losses.OrbitSpec`, so :class:`~gconv_ext.losses.EquivarianceLoss` can pool its orbits.

Layout (``IENCNN``): ``layers`` x [Conv2d(k, padding k//2) -> BatchNorm2d -> ReLU], a 2x2/2 max pool after
every second block, global average pool, ``Linear(channels, num_classes)``. The outputs of the ReLUs
(``blocks.<i>``) are the monitored layers (:attr:`IENCNN.monitored_layers`).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..losses.ien import EquivarianceLoss, OrbitSpec
from .common import check_int

__all__ = ["IENCNN", "ien_cnn", "ien_loss", "ien_cnn_parameter_count", "ien_cnn_for_params"]


class _Block(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, k: int) -> None:
        super().__init__(nn.Conv2d(c_in, c_out, k, padding=k // 2), nn.BatchNorm2d(c_out), nn.ReLU())


class IENCNN(nn.Module):
    """Plain CNN whose feature channels are grouped into orbits (:attr:`orbit_spec`)."""

    def __init__(self, channels: int, layers: int, spec: OrbitSpec, kernel_size: int = 3, in_channels: int = 1,
                 num_classes: int = 10) -> None:
        super().__init__()
        check_int("channels", channels)
        check_int("layers", layers)
        check_int("kernel_size", kernel_size)
        if spec.channels != channels:
            raise ValueError(f"the OrbitSpec covers {spec.channels} channels but the layers have {channels}")
        self.orbit_spec = spec
        self.blocks = nn.ModuleList(_Block(check_int("in_channels", in_channels) if i == 0 else channels, channels,
                                           kernel_size) for i in range(layers))
        self.pool = nn.MaxPool2d(2, 2)
        self.classifier = nn.Linear(channels, check_int("num_classes", num_classes))

    @property
    def monitored_layers(self) -> list[str]:
        """Names of the block outputs (``blocks.0``, ``blocks.1``, ...)."""
        return [f"blocks.{i}" for i in range(len(self.blocks))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i % 2 == 1 and i < len(self.blocks) - 1:
                x = self.pool(x)
        return self.classifier(x.mean(dim=(-2, -1)))


def ien_cnn(channels: int = 44, layers: int = 4, orbit_sizes: Sequence[int] = (4,),
            ratios: Sequence[float] | None = None, kernel_size: int = 3, in_channels: int = 1,
            num_classes: int = 10) -> IENCNN:
    """An :class:`IENCNN` with orbits of ``orbit_sizes``: one size (``channels`` must be a multiple of it) or
    several split by ``ratios`` (:meth:`OrbitSpec.from_ratios`, e.g. ``orbit_sizes=(4, 2, 1),
    ratios=(8, 2, 1)``)."""
    sizes = list(orbit_sizes)
    if ratios is None:
        if len(sizes) != 1:
            raise ValueError(f"several orbit_sizes {sizes} need ratios")
        spec = OrbitSpec.uniform(channels, sizes[0])
    else:
        spec = OrbitSpec.from_ratios(ratios, sizes, channels)
    return IENCNN(channels, layers, spec, kernel_size, in_channels, num_classes)


def ien_cnn_parameter_count(channels: int, layers: int = 4, kernel_size: int = 3, in_channels: int = 1,
                            num_classes: int = 10) -> int:
    """Trainable parameters of :class:`IENCNN` (conv weights and biases, BatchNorm affine, classifier)."""
    first = in_channels * channels * kernel_size ** 2 + 3 * channels
    rest = (layers - 1) * (channels * channels * kernel_size ** 2 + 3 * channels)
    return first + rest + channels * num_classes + num_classes


def _orbit_layout_ok(channels: int, orbit_sizes: Sequence[int], ratios: Sequence[float] | None) -> bool:
    try:
        if ratios is None:
            OrbitSpec.uniform(channels, list(orbit_sizes)[0])
        else:
            OrbitSpec.from_ratios(ratios, orbit_sizes, channels)
    except ValueError:
        return False
    return True


def ien_cnn_for_params(params: int, layers: int = 4, orbit_sizes: Sequence[int] = (4,),
                       ratios: Sequence[float] | None = None, kernel_size: int = 3, in_channels: int = 1,
                       num_classes: int = 10, max_channels: int = 1024) -> IENCNN:
    """The :func:`ien_cnn` whose parameter count is closest to ``params`` among the channel counts the orbit
    layout allows (multiples of the orbit size; for ``ratios`` the counts :meth:`OrbitSpec.from_ratios`
    accepts). Ties go to fewer channels. E.g. ``params=102_970`` (GCNN C4/4/16), 4 layers, orbits of 4:
    60 channels, 99,070 parameters."""
    check_int("params", params)
    best: tuple[int, int] | None = None
    for c in range(1, max_channels + 1):
        if not _orbit_layout_ok(c, orbit_sizes, ratios):
            continue
        diff = abs(ien_cnn_parameter_count(c, layers, kernel_size, in_channels, num_classes) - params)
        if best is None or diff < best[0]:
            best = (diff, c)
    if best is None:
        raise ValueError(f"no channel count up to {max_channels} fits orbit_sizes {list(orbit_sizes)}"
                         + (f" with ratios {list(ratios)}" if ratios is not None else ""))
    return ien_cnn(best[1], layers, orbit_sizes, ratios, kernel_size, in_channels, num_classes)


def ien_loss(model: IENCNN, beta: float = 1.0, transforms: str = "C4",
             generator: torch.Generator | None = None) -> EquivarianceLoss:
    """The :class:`EquivarianceLoss` on every block of an :class:`IENCNN`."""
    return EquivarianceLoss(model, model.monitored_layers, model.orbit_spec, transforms, beta, generator)
