"""Pretrained weights shipped in the package (no download): the best checkpoints of the headline models.

Each file in ``gconv_ext/pretrained/`` is a weights-only training checkpoint (format, config, model
state, provenance and the measured test accuracy); ``manifest.json`` beside them lists each one's SHA-256,
which :func:`pretrained` verifies before loading. ``examples/export_pretrained.py`` makes them from a
run's ``best.pt``.

    from gconv_ext.models import pretrained
    model = pretrained("gcnn-c4-rotated")          # eval mode, on the CPU
    python -m gconv_ext evaluate gcnn-c4-rotated   # the command line takes the names too
"""
from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from torch import nn

__all__ = ["PRETRAINED_DIR", "available_pretrained", "pretrained", "pretrained_path", "pretrained_info",
           "sha256_file"]

#: The folder of the shipped weights and their manifest.
PRETRAINED_DIR = Path(__file__).resolve().parents[1] / "pretrained"


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@lru_cache(maxsize=1)
def _manifest() -> dict[str, dict[str, Any]]:
    path = PRETRAINED_DIR / "manifest.json"
    if not path.is_file():
        return {}
    return json.loads(path.read_text())


def available_pretrained() -> tuple[str, ...]:
    """The names of the shipped weights."""
    return tuple(sorted(_manifest()))


def pretrained_info(name: str) -> dict[str, Any]:
    """The manifest entry of ``name``: file, sha256, model, train setting, test accuracy, provenance."""
    manifest = _manifest()
    if name not in manifest:
        raise ValueError(f"no pretrained weights named {name!r}; available: {', '.join(available_pretrained()) or 'none'}")
    return dict(manifest[name])


def pretrained_path(name: str, verify: bool = True) -> Path:
    """The file of ``name``, its SHA-256 checked against the manifest (``verify``).

    Raises:
        ValueError: unknown name, or a checksum mismatch (a damaged or replaced file).
        FileNotFoundError: the manifest lists a file the installation lacks.
    """
    info = pretrained_info(name)
    path = PRETRAINED_DIR / info["file"]
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights {name!r}: {path} is missing from the installation")
    if verify:
        digest = sha256_file(path)
        if digest != info["sha256"]:
            raise ValueError(f"pretrained weights {name!r}: {path} has SHA-256 {digest}, the manifest says "
                             f"{info['sha256']} (damaged or replaced file)")
    return path


def pretrained(name: str, map_location: str = "cpu") -> nn.Module:
    """The model with the shipped weights ``name`` (e.g. ``"gcnn-c4-rotated"``), in eval mode."""
    from gconv_ext.train.checkpoint import model_from_checkpoint  # noqa: PLC0415

    model, _, _ = model_from_checkpoint(pretrained_path(name), map_location)
    return model
