"""Writing outputs: every file gconv_ext writes goes through these helpers, atomically.

A reader never sees a half-written file: each writer writes a temporary file in the same folder,
fsyncs it and ``os.replace``s it over the target (then fsyncs the folder). A crash leaves either the old
file or the new one.
"""
from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_torch_save", "write_json", "write_csv",
           "save_figure"]


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: Path, writer: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            writer(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp_name, 0o644)  # mkstemp makes 0600 files; outputs and caches should be readable by others
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes | bytearray | memoryview) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, ``os.replace``)."""
    _atomic_write(Path(path), lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save(obj, path)`` atomically (temp file in the same folder, fsync, ``os.replace``)."""
    import torch  # noqa: PLC0415

    _atomic_write(Path(path), lambda f: torch.save(obj, f))


def write_json(path: str | os.PathLike[str], obj: Any, sort_keys: bool = False) -> None:
    """``obj`` as indented JSON with a final newline, atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=sort_keys) + "\n")


def write_csv(path: str | os.PathLike[str], rows: Iterable[Mapping[str, Any]] | Iterable[Sequence[Any]],
              columns: Sequence[str] | None = None) -> None:
    """Rows as CSV, atomically: dicts (``columns`` = their keys, default the first row's) or sequences
    (``columns`` = the header line, if given)."""
    rows = list(rows)
    buf = io.StringIO()
    if rows and isinstance(rows[0], Mapping):
        columns = list(columns or rows[0].keys())
        writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    else:
        writer = csv.writer(buf, lineterminator="\n")
        if columns is not None:
            writer.writerow(columns)
        writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def save_figure(fig: Any, path: str | os.PathLike[str], dpi: int = 120) -> None:
    """Save a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt  # noqa: PLC0415

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
