"""Argument checking shared by the gconv_ext.nn modules: every constructor error is a ValueError naming the
argument; a forward input that is not a tensor is a TypeError naming the module."""
from __future__ import annotations

import math
from typing import Any

import torch

from .._args import int_pair  # noqa: F401  (re-exported: the modules' pair helper)
from ..groups import Group, group_from_name


def positive_int(owner: str, name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{owner}: {name} must be a positive int, got {v!r}")
    return v


def flag(owner: str, name: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"{owner}: {name} must be a bool, got {v!r}")
    return v


def _real(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float))


def probability(owner: str, name: str, v: Any) -> float:
    if not _real(v) or not 0.0 <= v <= 1.0:  # NaN fails the comparison
        raise ValueError(f"{owner}: {name} must be a probability in [0, 1], got {v!r}")
    return float(v)


def positive_float(owner: str, name: str, v: Any) -> float:
    """A finite number > 0 (e.g. a normalisation ``eps``: NaN or inf would make every output NaN)."""
    if not _real(v) or not math.isfinite(v) or v <= 0:
        raise ValueError(f"{owner}: {name} must be a finite number > 0, got {v!r}")
    return float(v)


def momentum_arg(owner: str, v: Any) -> float | None:
    """A batch-norm ``momentum``: None (cumulative average) or a finite number in [0, 1]."""
    if v is None:
        return None
    if not _real(v) or not 0.0 <= v <= 1.0:  # NaN and inf fail the comparison
        raise ValueError(f"{owner}: momentum must be None or a number in [0, 1], got {v!r}")
    return float(v)


def float_dtype(owner: str, v: Any) -> torch.dtype | None:
    """A factory ``dtype``: None or a floating-point :class:`torch.dtype` (parameters need gradients)."""
    if v is not None and (not isinstance(v, torch.dtype) or not v.is_floating_point):
        raise ValueError(f"{owner}: dtype must be None or a floating-point torch.dtype, got {v!r}")
    return v


def check_tensor(owner: str, x: Any) -> None:
    """The input of a module's forward must be a tensor (a TypeError naming the module, not an AttributeError)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{owner}: input must be a torch.Tensor, got {type(x).__name__}")


def group_arg(owner: str, v: Any) -> Group:
    try:
        return group_from_name(v)
    except ValueError as exc:
        raise ValueError(f"{owner}: group must be a Group or a name like 'C4' or 'D8', got {v!r}") from exc


def fmt_pair(t: tuple[int, int]) -> str:
    return str(t[0]) if t[0] == t[1] else str(tuple(t))
