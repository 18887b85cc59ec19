"""Image rotations for rotation-equivariance experiments.

:func:`rotate` turns a batch of images counter-clockwise *as displayed* (row 0
at the top) about the image centre. Angles that are exact multiples of 90
degrees are done with :func:`torch.rot90` (bit-identical, no interpolation),
per sample, so a batch may mix exact and interpolated angles. All other angles
use one batched ``F.affine_grid`` + ``F.grid_sample`` call (bilinear, zero fill,
``align_corners=False``), whose pixel-centre convention makes 90 degrees of
interpolation agree with ``rot90`` up to rounding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["rotate", "flip", "random_rotation", "rotation_affine_theta"]


def _angles_tensor(angles_deg: Tensor | float | int, batch: int) -> Tensor:
    """Angles as a float64 CPU tensor of shape [batch]."""
    if isinstance(angles_deg, Tensor):
        a = angles_deg.detach().to(device="cpu", dtype=torch.float64)
        if a.dim() == 0:
            a = a.expand(batch)
        elif a.dim() != 1 or a.shape[0] != batch:
            raise ValueError(
                f"angles_deg must be a scalar or have shape [{batch}] (one per image), "
                f"got shape {tuple(a.shape)}"
            )
        return a.contiguous()
    if isinstance(angles_deg, (int, float)):
        return torch.full((batch,), float(angles_deg), dtype=torch.float64)
    raise TypeError(f"angles_deg must be a float or a Tensor, got {type(angles_deg).__name__}")


def rotation_affine_theta(angles_deg: Tensor, height: int, width: int) -> Tensor:
    """Affine matrices [B,2,3] (float64) for ``F.affine_grid`` rotating counter-clockwise as displayed.

    In the normalised grid coordinates (x to the right, y *down*), the output
    pixel at (x, y) samples the input at ``(c*x - s*(H/W)*y, s*(W/H)*x + c*y)``,
    i.e. a rotation in pixel units about the centre (the H/W factors keep
    non-square images undistorted). Angles in degrees; not to be confused with the STN's
    :func:`gconv_ext.models.rotation_theta` (radians, square grids, the warp the network applies).
    """
    rad = angles_deg.to(torch.float64) * (math.pi / 180.0)
    c, s = torch.cos(rad), torch.sin(rad)
    zero = torch.zeros_like(c)
    row0 = torch.stack([c, -s * (height / width), zero], dim=-1)
    row1 = torch.stack([s * (width / height), c, zero], dim=-1)
    return torch.stack([row0, row1], dim=-2)


def rotate(images: Tensor, angles_deg: Tensor | float | int) -> Tensor:
    """Rotate ``images`` [B,C,H,W] (floating point) counter-clockwise as displayed by ``angles_deg``.

    Args:
        images: float tensor [B,C,H,W]; row 0 is the top of the image.
        angles_deg: one angle for all images, or a tensor [B] of per-image angles
            in degrees. Positive = counter-clockwise on screen, i.e. the same
            direction as ``torch.rot90(x, 1, dims=(-2, -1))``.

    Returns:
        A new tensor with the same shape, dtype and device. Images whose angle is
        an exact multiple of 90 degrees are bit-identical to
        ``torch.rot90(x, k, dims=(-2, -1))`` with ``k = angle / 90`` (for odd ``k``
        this needs a square image; non-square images use interpolation). Other
        images are resampled bilinearly with zero fill, same output size.
    """
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"images must have shape [B,C,H,W], got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"images must be floating point (got {images.dtype}); convert e.g. with x.float() / 255")
    batch, _, height, width = images.shape
    angles = _angles_tensor(angles_deg, batch)
    if not torch.isfinite(angles).all():
        raise ValueError("angles_deg contains NaN or infinite values")

    out = torch.empty_like(images, memory_format=torch.contiguous_format)
    if batch == 0:
        return out
    exact = torch.remainder(angles, 90.0) == 0
    k_all = torch.remainder(torch.round(angles / 90.0), 4).to(torch.int64)
    if height != width:
        exact &= k_all % 2 == 0  # a quarter turn would change the shape

    for k in range(4):
        sel = exact & (k_all == k)
        if not bool(sel.any()):
            continue
        idx = sel.nonzero(as_tuple=True)[0].to(images.device)
        part = images.index_select(0, idx)
        out.index_copy_(0, idx, part if k == 0 else torch.rot90(part, k, dims=(-2, -1)))

    interp = ~exact
    if bool(interp.any()):
        idx = interp.nonzero(as_tuple=True)[0]
        theta = rotation_affine_theta(angles[idx], height, width)
        idx = idx.to(images.device)
        part = images.index_select(0, idx)
        theta = theta.to(device=images.device, dtype=images.dtype)
        grid = F.affine_grid(theta, list(part.shape), align_corners=False)
        rotated = F.grid_sample(part, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        out.index_copy_(0, idx, rotated)
    return out


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
