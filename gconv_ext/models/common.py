"""Helpers shared by the baseline models in :mod:`gconv_ext.models`.

* :func:`count_parameters` counts parameters the way the study and the UvA tutorial reported them
  (every element of every distinct parameter tensor; buffers are not parameters).
* :func:`layer_norm_chw` is the normalisation used by the study's CNN-style blocks: ``layer_norm``
  over the last three axes ``(C, H, W)`` with no learnable affine, so it adds no parameters.
* ``check_*`` validate constructor arguments and raise ``ValueError`` messages that name the
  offending argument.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "count_parameters",
    "layer_norm_chw",
    "check_int",
    "check_float",
    "check_choice",
    "closest_channels",
]


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters of ``model``.

    Shared parameters are counted once (``nn.Module.parameters`` de-duplicates them). With
    ``trainable_only=True`` only parameters with ``requires_grad`` are counted.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def closest_channels(count: Callable[[int], int], target: int) -> int:
    """The channel count ``c >= 1`` whose ``count(c)`` (a parameter count, increasing in ``c``) is closest
    to ``target``; ties go to fewer channels. ``count`` raises for arguments it rejects."""
    check_int("target", target)
    best, best_diff, c = 1, abs(count(1) - target), 1
    while True:
        n = count(c)
        if abs(n - target) < best_diff:
            best, best_diff = c, abs(n - target)
        if n >= target:
            return best
        c += 1


def layer_norm_chw(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``layer_norm`` of a ``[B, C, H, W]`` tensor over ``(C, H, W)``, without affine parameters."""
    return F.layer_norm(x, x.shape[-3:], eps=eps)


def check_int(name: str, value: Any, minimum: int = 1) -> int:
    """Return ``value`` if it is an ``int`` (not a ``bool``) ``>= minimum``, else raise ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def check_float(name: str, value: Any, minimum: float = 0.0, strict: bool = False) -> float:
    """Return ``float(value)`` if it is a finite real ``>= minimum`` (``> minimum`` if ``strict``)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        value = float(value)
        ok = value == value and value not in (float("inf"), float("-inf"))
        ok = ok and (value > minimum if strict else value >= minimum)
    if not ok:
        relation = ">" if strict else ">="
        raise ValueError(f"{name} must be a finite float {relation} {minimum}, got {value!r}")
    return value


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise ``ValueError`` listing them."""
    if not isinstance(value, str) or value not in choices:
        options = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {options}; got {value!r}")
    return value
