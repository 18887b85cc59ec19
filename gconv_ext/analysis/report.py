"""Atomic writers for experiment outputs: CSV tables, markdown/text and matplotlib figures (PNG); and
:func:`mean_std`, the mean ± sample std used by the multi-seed summaries.

Every writer renders the whole file in memory and hands it to
:mod:`gconv_ext.io` (temp file, fsync, ``os.replace``), so a reader never sees a
half-written file and an interrupted run leaves the previous file intact.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence

from ..io import atomic_write_text as write_text
from ..io import save_figure
from ..io import write_csv as _write_csv

__all__ = ["write_csv", "write_text", "save_figure", "markdown_table", "mean_std"]


def write_csv(path: str | os.PathLike[str], rows: Sequence[dict], columns: Sequence[str] | None = None) -> None:
    """Write ``rows`` (dicts) as CSV, floats as ``%.6g``; ``columns`` default to the keys of the rows in
    first-seen order."""
    if columns is None:
        columns = list(dict.fromkeys(k for r in rows for k in r))
    _write_csv(path, [{k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows],
               list(columns))


def markdown_table(rows: Sequence[dict], columns: Sequence[str], headers: Sequence[str] | None = None,
                   fmt: str = "{:.4f}") -> str:
    """A GitHub markdown table of ``rows`` (floats formatted with ``fmt``)."""
    headers = list(columns if headers is None else headers)
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for r in rows:
        cells = [fmt.format(r[c]) if isinstance(r.get(c), float) else str(r.get(c, "")) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation of ``values`` (std 0 for a single value)."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_std: values is empty")
    m = math.fsum(values) / len(values)
    if len(values) < 2:
        return m, 0.0
    return m, math.sqrt(math.fsum((v - m) ** 2 for v in values) / (len(values) - 1))
