"""How well an STN's localiser *canonicalises* rotated digits.

A spatial transformer can only make a classifier rotation invariant if its first warp turns every
rotated copy of a digit into the same orientation. This module measures that directly:

* Each test digit ``x`` is rotated counter-clockwise by ``theta_i`` (default ``10 * i`` degrees,
  ``i = 0..35``) with :func:`gconv_ext.data.rotate` on ``[0, 1]`` pixels, then normalised with
  :func:`gconv_ext.data.normalize`: exactly what the training and evaluation code feed the models.
* ``alpha_i`` is the counter-clockwise rotation the STN's first warp applies to that copy (the angle
  of a rotation head; :func:`~gconv_ext.models.stn.theta_rotation_angle` of ``theta`` for the affine
  head). A canonicaliser has ``alpha_i = -theta_i + c(x)``: every copy ends up in the orientation
  ``c(x)``, so ``s_i = alpha_i + theta_i`` is the same for all ``i``.
* ``c(x)`` is half the circular mean of the doubled angles ``2 * s_i`` (``atan2`` of the mean sine
  and mean cosine, halved), and the digit's error is the mean over ``i`` of
  ``min(|wrap(s_i - c)|, |wrap(s_i - c - 180)|)`` in degrees, ``wrap`` to ``(-180, 180]``. An
  orientation and its half turn count as the same because 0, 1 and 8 look alike upside down; each
  term is therefore in ``[0, 90]``.

A perfect canonicaliser scores 0 degrees. A constant warp (``alpha_i`` the same for all copies, e.g.
an identity-initialised STN) leaves ``s_i = alpha + theta_i`` spread evenly around the circle and
scores exactly 45 degrees for the default 36 angles (for any constant; the doubled angles then have no
circular mean, and every choice of ``c`` gives the same mean distance). :func:`canonicalization_error`
reports the median and the mean over the digits.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from ..data import normalize, rotate, to_float01
from ..models.stn import theta_rotation_angle

__all__ = [
    "CANONICALIZATION_ANGLES",
    "canonicalization_error",
    "canonicalization_error_from_angles",
    "warp_angles_deg",
]

#: The default test rotations: 0, 10, ..., 350 degrees.
CANONICALIZATION_ANGLES: tuple[float, ...] = tuple(float(a) for a in range(0, 360, 10))


def _wrap_deg(x: Tensor) -> Tensor:
    """Angles in degrees wrapped to ``(-180, 180]``."""
    return 180.0 - torch.remainder(180.0 - x, 360.0)


def canonicalization_error_from_angles(alpha_deg: Tensor, theta_deg: Tensor | Iterable[float]) -> Tensor:
    """Per-digit canonicalisation errors (degrees) from the warp angles of rotated copies.

    Args:
        alpha_deg: ``[N, M]`` counter-clockwise rotation (degrees) the warp applies to copy ``i`` of
            digit ``n``; any real values (they are taken modulo 360).
        theta_deg: ``[M]`` counter-clockwise rotation (degrees) of copy ``i`` (the same for every
            digit).

    Returns:
        A float64 ``[N]`` tensor: for each digit, the mean over ``i`` of the distance, modulo 180
        degrees, between ``s_i = alpha_i + theta_i`` and ``c``, half the circular mean of ``2 * s_i``
        (see the module docstring). Each value is in ``[0, 90]``; 0 for a canonicaliser
        (``alpha_i = -theta_i + c``, also if some copies are off by exactly 180 degrees).

    Raises:
        ValueError: ``alpha_deg`` is not 2-D, ``theta_deg`` is not 1-D with ``M`` entries, or either
            holds NaN or infinite values.
    """
    alpha = torch.as_tensor(alpha_deg).detach().to(device="cpu", dtype=torch.float64)
    if not isinstance(theta_deg, Tensor):
        theta_deg = torch.tensor([float(a) for a in theta_deg], dtype=torch.float64)
    theta = theta_deg.detach().to(device="cpu", dtype=torch.float64)
    if alpha.dim() != 2:
        raise ValueError(
            f"alpha_deg must have shape [N, M] (digits, rotated copies), got {list(alpha.shape)}"
        )
    if theta.dim() != 1 or theta.shape[0] != alpha.shape[1]:
        raise ValueError(
            f"theta_deg must have shape [{alpha.shape[1]}] (one angle per column of alpha_deg), "
            f"got {list(theta.shape)}"
        )
    if alpha.shape[1] == 0:
        raise ValueError("alpha_deg must have at least one rotated copy per digit (M >= 1)")
    if not torch.isfinite(alpha).all():
        raise ValueError("alpha_deg contains NaN or infinite values")
    if not torch.isfinite(theta).all():
        raise ValueError("theta_deg contains NaN or infinite values")
    s = alpha + theta  # [N, M], the orientation each copy ends in
    doubled = torch.deg2rad(2.0 * s)
    c = 0.5 * torch.rad2deg(torch.atan2(torch.sin(doubled).mean(dim=1), torch.cos(doubled).mean(dim=1)))
    d = s - c[:, None]
    dist = torch.minimum(_wrap_deg(d).abs(), _wrap_deg(d - 180.0).abs())
    return dist.mean(dim=1)


def warp_angles_deg(params: Tensor) -> Tensor:
    """Counter-clockwise warp angles (degrees, float64 ``[B]``) from ``STN.transformed_input`` params.

    Args:
        params: the angles ``[B]`` (radians) of a rotation head, or ``theta [B, 2, 3]`` of the affine
            head (its angle is :func:`~gconv_ext.models.stn.theta_rotation_angle`).
    """
    if params.dim() == 1:
        rad = params
    elif params.dim() == 3 and tuple(params.shape[1:]) == (2, 3):
        rad = theta_rotation_angle(params)
    else:
        raise ValueError(f"params must be angles [B] or theta [B, 2, 3], got shape {list(params.shape)}")
    return torch.rad2deg(rad.detach().to(device="cpu", dtype=torch.float64))


def _images01(images: Tensor) -> Tensor:
    """Raw test images -> float ``[N, 1, H, W]`` in ``[0, 1]``."""
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() == 3:
        images = images.unsqueeze(1)
    if images.dim() != 4 or images.shape[1] != 1:
        raise ValueError(f"images must have shape [N, H, W] or [N, 1, H, W], got {list(images.shape)}")
    if images.dtype == torch.uint8:
        return to_float01(images)
    if not images.is_floating_point():
        raise ValueError(f"images must be uint8 (raw MNIST) or float in [0, 1], got dtype {images.dtype}")
    if images.numel() and (images.min() < 0 or images.max() > 1):
        raise ValueError(
            "float images must be in [0, 1] (raw pixels / 255, not normalised): they are rotated and then "
            f"normalised here; got values in [{images.min().item():.3g}, {images.max().item():.3g}]"
        )
    return images


def canonicalization_error(
    model: nn.Module,
    images: Tensor,
    *,
    angles_deg: Iterable[float] = CANONICALIZATION_ANGLES,
    batch_size: int = 2048,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Canonicalisation error of an STN's first warp on rotated copies of ``images``.

    Every digit is rotated counter-clockwise by each of ``angles_deg`` (in ``[0, 1]``, then
    normalised, as the models are fed), the model's ``transformed_input`` gives the warp angle of
    every copy, and :func:`canonicalization_error_from_angles` scores each digit.

    Args:
        model: an :class:`~gconv_ext.models.STN` or any module with ``transformed_input(x)`` returning
            ``(warped, params)`` as the STN does (angles ``[B]`` in radians or ``theta [B, 2, 3]``).
            It is moved to ``device`` and evaluated in eval mode (its training mode is restored).
        images: raw test images, uint8 ``[N, 28, 28]`` / ``[N, 1, 28, 28]`` (as from
            :func:`~gconv_ext.data.load_mnist`) or float ``[N, 28, 28]`` / ``[N, 1, 28, 28]`` in
            ``[0, 1]`` (not normalised).
        angles_deg: the counter-clockwise test rotations in degrees (default 0, 10, ..., 350).
        batch_size: rotated copies per forward pass (at least one digit's worth is used).
        device: where the model runs.

    Returns:
        ``{"median_deg", "mean_deg"}`` (floats, over the digits; NaN for no digits),
        ``"per_digit_deg"`` (float64 ``[N]``), ``"n_digits"`` and ``"angles_deg"`` (list of floats).
    """
    if not callable(getattr(model, "transformed_input", None)):
        raise TypeError("canonicalization_error: model must be an STN (have a transformed_input(x) method)")
    angles = [float(a) for a in angles_deg]
    if not angles:
        raise ValueError("angles_deg must contain at least one angle")
    if not all(math.isfinite(a) for a in angles):
        raise ValueError(f"angles_deg must be finite, got {angles}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    x01 = _images01(images)
    n, m = x01.shape[0], len(angles)
    theta = torch.tensor(angles, dtype=torch.float64)
    per_chunk = max(1, batch_size // m)
    was_training = model.training
    model = model.to(device)
    model.eval()
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    alpha = torch.empty(n, m, dtype=torch.float64)
    try:
        with torch.no_grad():
            for start in range(0, n, per_chunk):
                chunk = x01[start:start + per_chunk].to(device=device, dtype=dtype)
                b = chunk.shape[0]
                copies = chunk.repeat_interleave(m, dim=0)  # digit-major: [d0 at all angles, d1 ...]
                x = normalize(rotate(copies, theta.repeat(b)))
                _, params = model.transformed_input(x)
                alpha[start:start + b] = warp_angles_deg(params).view(b, m)
    finally:
        model.train(was_training)
    per_digit = canonicalization_error_from_angles(alpha, theta) if n else torch.empty(0, dtype=torch.float64)
    return {
        "median_deg": float(per_digit.quantile(0.5)) if n else float("nan"),
        "mean_deg": float(per_digit.mean()) if n else float("nan"),
        "per_digit_deg": per_digit,
        "n_digits": int(n),
        "angles_deg": angles,
    }
