"""Argument checking shared by the gconv_ext.nn modules: every error is a ValueError naming the argument."""
from __future__ import annotations

from typing import Any

from ..groups import Group, group_from_name


def positive_int(owner: str, name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{owner}: {name} must be a positive int, got {v!r}")
    return v


def int_pair(owner: str, name: str, v: Any, minimum: int) -> tuple[int, int]:
    t = (v, v) if isinstance(v, int) and not isinstance(v, bool) else v
    ok = isinstance(t, (tuple, list)) and len(t) == 2 and all(
        isinstance(i, int) and not isinstance(i, bool) and i >= minimum for i in t)
    if not ok:
        raise ValueError(f"{owner}: {name} must be an int >= {minimum} or a pair of them, got {v!r}")
    return int(t[0]), int(t[1])


def flag(owner: str, name: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"{owner}: {name} must be a bool, got {v!r}")
    return v


def probability(owner: str, name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
        raise ValueError(f"{owner}: {name} must be a probability in [0, 1], got {v!r}")
    return float(v)


def group_arg(owner: str, v: Any) -> Group:
    try:
        return group_from_name(v)
    except ValueError as exc:
        raise ValueError(f"{owner}: group must be a Group or a name like 'C4' or 'D8', got {v!r}") from exc


def fmt_pair(t: tuple[int, int]) -> str:
    return str(t[0]) if t[0] == t[1] else str(tuple(t))
