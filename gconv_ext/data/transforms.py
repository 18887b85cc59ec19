"""Image rotations for rotation-equivariance experiments.

:func:`rotate` is :func:`gconv_ext.groups.rotate_images`, the plane action of the rotation groups on image
batches (it lives with the groups; :meth:`gconv_ext.groups.Group.act_on_images` applies group elements
through it). It turns a batch of images counter-clockwise *as displayed* (row 0
at the top) about the image centre. Angles that are exact multiples of 90
degrees are done with :func:`torch.rot90` (bit-identical, no interpolation),
per sample, so a batch may mix exact and interpolated angles. All other angles
use one batched ``F.affine_grid`` + ``F.grid_sample`` call (bilinear, zero fill,
``align_corners=False``), whose pixel-centre convention makes 90 degrees of
interpolation agree with ``rot90`` up to rounding.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..groups import rotate_images as rotate
from ..groups import rotation_affine_theta

__all__ = ["rotate", "flip", "random_rotation", "rotation_affine_theta"]


def flip(images: Tensor) -> Tensor:
    """Mirror images left-right (flip the last, width, dimension)."""
    return torch.flip(images, dims=(-1,))


def random_rotation(images: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Rotate each image of [B,C,H,W] by its own uniform angle in [0, 360).

    The angles are drawn on the CPU from ``generator`` (a CPU ``torch.Generator``)
    so the result is reproducible whatever device the images are on.

    Returns:
        ``(rotated, angles_deg)`` with ``angles_deg`` a float64 CPU tensor [B].
    """
    if images.dim() != 4:
        raise ValueError(f"images must have shape [B,C,H,W], got shape {tuple(images.shape)}")
    angles = torch.rand(images.shape[0], generator=generator, dtype=torch.float64) * 360.0
    angles = torch.remainder(angles, 360.0)  # guards the (rounding) edge case 360.0
    return rotate(images, angles), angles
