"""Measuring equivariance: compare ``f(g x)`` with ``g f(x)``."""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterable

import torch

from ..groups import Group, group_from_name

__all__ = ["EquivarianceError", "equivariance_error", "transform"]

_KINDS = ("group", "invariant", "plane")


@dataclasses.dataclass(frozen=True)
class EquivarianceError:
    """``relative = ||f(g x) - g f(x)|| / ||g f(x)||`` (Frobenius norms) and ``max_abs`` of the difference;
    ``element`` is the group element (the worst one when several were measured)."""

    relative: float
    max_abs: float
    element: int

    def __str__(self) -> str:
        return f"g={self.element}: relative {self.relative:.3e}, max abs {self.max_abs:.3e}"


def transform(group: Group | str, g: int, t: torch.Tensor, kind: str) -> torch.Tensor:
    """Act with ``g`` on a tensor of the given kind: ``'group'`` ``[..., |G|, H, W]`` (plane and group axis),
    ``'plane'`` ``[..., H, W]`` or ``'invariant'`` (unchanged)."""
    group = group_from_name(group)
    if kind == "group":
        return group.act(g, t, group_dim=t.dim() - 3)
    if kind == "plane":
        return group.act(g, t, group_dim=None)
    if kind == "invariant":
        return t
    raise ValueError(f"output_kind must be one of {_KINDS}, got {kind!r}")


def equivariance_error(model_or_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, group: Group | str,
                       g: int | Iterable[int] | None = None, output_kind: str = "group",
                       input_kind: str | None = None) -> EquivarianceError:
    """How far ``f`` is from equivariant at ``x``: compares ``f(g x)`` with ``g f(x)``.

    ``x`` is an image batch ``[B, C, H, W]`` or a group feature map ``[B, C, |G|, H, W]`` (``input_kind``
    ``'plane'`` or ``'group'``, inferred from ``x.dim()``). ``output_kind`` says how ``g`` acts on the output:
    ``'group'`` (rotate the plane and permute the group axis), ``'plane'`` (rotate only) or ``'invariant'``
    (no change). ``g`` is one element, several, or None for every non-identity element; the worst (largest
    relative error) is returned. Rotations that are not multiples of 90 degrees use bilinear interpolation
    with zero fill for both transforms, so only inputs that vanish near the border are meaningful there.
    Runs under ``no_grad``; a module is evaluated in its current mode.
    """
    group = group_from_name(group)
    if output_kind not in _KINDS:
        raise ValueError(f"output_kind must be one of {_KINDS}, got {output_kind!r}")
    if input_kind is None:
        input_kind = {4: "plane", 5: "group"}.get(x.dim())
    if input_kind not in ("plane", "group"):
        raise ValueError(f"input_kind must be 'plane' or 'group' (x of shape {tuple(x.shape)})")
    elements = range(1, group.order) if g is None else ([g] if isinstance(g, int) else list(g))
    worst: EquivarianceError | None = None
    with torch.no_grad():
        y = model_or_fn(x)
        for e in elements:
            expected = transform(group, e, y, output_kind)
            actual = model_or_fn(transform(group, e, x, input_kind))
            diff = (actual - expected).double()
            denom = expected.double().norm().clamp_min(torch.finfo(torch.float64).tiny)
            err = EquivarianceError((diff.norm() / denom).item(), diff.abs().max().item() if diff.numel() else 0.0, e)
            if worst is None or err.relative > worst.relative:
                worst = err
    if worst is None:
        raise ValueError("equivariance_error: no group element to test")
    return worst
