"""Argument helpers shared by the functional ops (``gconv_ext.ops``) and the modules (``gconv_ext.nn``).

Every error is a ``ValueError`` that names the argument, its owner (``gconv_ext`` for the ops, the module's
class name for the modules) and what was expected.
"""
from __future__ import annotations

from typing import Any

__all__ = ["int_pair"]


def int_pair(owner: str, name: str, v: Any, minimum: int) -> tuple[int, int]:
    """``v`` as a pair of ints ``>= minimum``: an int ``n`` means ``(n, n)``; a tuple or list of two ints is
    taken as it is. Anything else (``None``, a bool, a float, three ints, a value below ``minimum``) raises a
    ``ValueError`` naming ``name`` (torch's ``_pair`` validates nothing)."""
    t = (v, v) if isinstance(v, int) and not isinstance(v, bool) else v
    ok = isinstance(t, (tuple, list)) and len(t) == 2 and all(
        isinstance(i, int) and not isinstance(i, bool) and i >= minimum for i in t)
    if not ok:
        raise ValueError(f"{owner}: {name} must be an int >= {minimum} or a pair of them, got {v!r}")
    return int(t[0]), int(t[1])
