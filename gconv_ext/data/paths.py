"""Locating the offline data folder, checksum helpers and atomic file writes.

* :func:`default_data_dir` finds the shared, read-only data folder
  (``GCONV_EXT_DATA_DIR``, else ``<repo root>/../shared/data``, else
  ``$PWD/../shared/data``).
* :func:`default_cache_dir` is where derived data (e.g. the rotated-MNIST
  substitute) is cached: ``GCONV_EXT_CACHE_DIR``, else ``<repo root>/data_cache``.
* :func:`verify_md5` checks a file against a known MD5 and remembers a success
  per ``(path, size, mtime)`` for the life of the process, so a large file is
  hashed once.
* :func:`atomic_write_bytes` / :func:`atomic_torch_save` write to a temporary
  file in the destination folder, fsync it and ``os.replace`` it into place, so
  a reader never sees a half-written file.
* The exception classes used by all loaders in :mod:`gconv_ext.data` live here.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import threading
from pathlib import Path


DATA_DIR_ENV = "GCONV_EXT_DATA_DIR"
CACHE_DIR_ENV = "GCONV_EXT_CACHE_DIR"

#: The repository root: the parent of the ``gconv_ext`` package directory.
REPO_ROOT = Path(__file__).resolve().parents[2]


class DataFileNotFoundError(FileNotFoundError):
    """A required data file (or the data folder itself) could not be found."""


class DataFileError(ValueError):
    """A data file exists but is truncated, corrupt or not in the expected format."""


class ChecksumError(DataFileError):
    """A data file's MD5 does not match the known value."""


class UnsafePickleError(DataFileError, pickle.UnpicklingError):
    """A pickle referenced a global that the restricted unpickler does not allow."""


def default_data_dir() -> Path:
    """Return the folder holding the offline data sets.

    Order: the environment variable ``GCONV_EXT_DATA_DIR`` (must name an existing
    folder); else the first existing of ``<repo root>/../shared/data`` and
    ``Path.cwd()/../shared/data``.

    Raises:
        DataFileNotFoundError: no candidate exists; the message lists the places
            tried and how to point the code at the data.
    """
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise DataFileNotFoundError(
                f"{DATA_DIR_ENV}={env!r} does not name an existing folder; "
                "fix the variable or pass --data-dir / data_dir=..."
            )
        return path
    tried = [REPO_ROOT.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"]
    for cand in tried:
        if cand.is_dir():
            return cand
    places = ", ".join(str(p) for p in tried)
    raise DataFileNotFoundError(
        f"data folder not found (tried {places}); pass --data-dir / data_dir=... "
        f"or set the environment variable {DATA_DIR_ENV}"
    )


def resolve_data_dir(data_dir: str | os.PathLike[str] | None) -> Path:
    """``Path(data_dir)`` if given (it must exist), else :func:`default_data_dir`."""
    if data_dir is None:
        return default_data_dir()
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise DataFileNotFoundError(f"data folder {str(path)!r} does not exist")
    return path


def default_cache_dir() -> Path:
    """Folder for derived, regenerable data: ``GCONV_EXT_CACHE_DIR`` or ``<repo root>/data_cache``."""
    env = os.environ.get(CACHE_DIR_ENV)
    if env:
        return Path(env).expanduser()
    return REPO_ROOT / "data_cache"


# --------------------------------------------------------------------------- MD5

_VERIFIED: set[tuple[str, int, int, str]] = set()
_VERIFIED_LOCK = threading.Lock()


def md5_bytes(data: bytes | bytearray | memoryview) -> str:
    """Hex MD5 of a bytes-like object."""
    return hashlib.md5(data).hexdigest()


def md5_file(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Hex MD5 of a file, read in chunks."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            h.update(chunk)
    return h.hexdigest()


def _cache_key(path: Path, expected: str) -> tuple[str, int, int, str]:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns, expected.lower())


def is_verified(path: str | os.PathLike[str], expected_md5: str) -> bool:
    """True if ``path`` (with its current size and mtime) already passed :func:`verify_md5`."""
    key = _cache_key(Path(path), expected_md5)
    with _VERIFIED_LOCK:
        return key in _VERIFIED


def verify_md5(
    path: str | os.PathLike[str],
    expected_md5: str,
    data: bytes | bytearray | memoryview | None = None,
    what: str = "",
) -> None:
    """Check that ``path`` has MD5 ``expected_md5``; raise :class:`ChecksumError` if not.

    ``data`` may hold the file's bytes already read by the caller, to avoid a
    second read. A success is cached per ``(resolved path, size, mtime_ns)``
    for the life of the process; a file that changes on disk is hashed again.
    """
    path = Path(path)
    key = _cache_key(path, expected_md5)
    with _VERIFIED_LOCK:
        if key in _VERIFIED:
            return
    actual = md5_bytes(data) if data is not None else md5_file(path)
    if actual != expected_md5.lower():
        extra = f" ({what})" if what else ""
        raise ChecksumError(
            f"MD5 mismatch for {path}{extra}: expected {expected_md5}, got {actual}; "
            "the file is corrupt, truncated or a different file with the same name"
        )
    with _VERIFIED_LOCK:
        _VERIFIED.add(key)


def mark_verified(path: str | os.PathLike[str], expected_md5: str) -> None:
    """Record that ``path`` (at its current size and mtime) passed a check against ``expected_md5``."""
    key = _cache_key(Path(path), expected_md5)
    with _VERIFIED_LOCK:
        _VERIFIED.add(key)


def clear_verification_cache() -> None:
    """Forget all cached MD5 successes (mainly for tests)."""
    with _VERIFIED_LOCK:
        _VERIFIED.clear()


# ------------------------------------------------------------------ atomic write

# The atomic writers live in gconv_ext.io; re-exported here for code written against earlier versions.
from gconv_ext.io import atomic_torch_save, atomic_write_bytes  # noqa: E402,F401
