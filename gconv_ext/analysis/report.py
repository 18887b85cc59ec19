"""Atomic writers for experiment outputs: CSV tables, markdown/text and matplotlib figures (PNG); and
:func:`mean_std`, the mean ± sample std used by the multi-seed summaries.

Every writer renders the whole file in memory and hands it to
:func:`gconv_ext.data.paths.atomic_write_bytes` (temp file, fsync, ``os.replace``), so a reader never sees a
half-written file and an interrupted run leaves the previous file intact.
"""
from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence

from ..data.paths import atomic_write_bytes

__all__ = ["write_csv", "write_text", "save_figure", "markdown_table", "mean_std"]


def write_csv(path: str | os.PathLike[str], rows: Sequence[dict], columns: Sequence[str] | None = None) -> None:
    """Write ``rows`` (dicts) as CSV; ``columns`` default to the keys of the rows in first-seen order."""
    if columns is None:
        columns = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    atomic_write_bytes(path, buf.getvalue().encode())


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write a text (e.g. markdown) file atomically."""
    atomic_write_bytes(path, text.encode())


def save_figure(fig, path: str | os.PathLike[str], dpi: int = 120) -> None:
    """Save a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


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
