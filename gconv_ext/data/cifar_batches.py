"""A reader for CIFAR-style pickle batches (``data_batch_<n>``, ``test_batch``, ``batches.meta``) in a folder or
a tar(.gz) archive, read in memory (nothing is extracted to disk), with member MD5 checks against a table or the
``hash.md5`` shipped inside the archive.

All pickles go through :class:`RestrictedUnpickler`, which only resolves the few numpy globals that array
pickles need, so a malicious pickle cannot run code. The radio-galaxy tables (FRDEEP, MiraBest) that use this
reader are in :mod:`gconv_ext.data.radio`.
"""

from __future__ import annotations

import importlib
import io
import os
import pickle
import posixpath
import re
import tarfile
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .paths import (
    ChecksumError,
    DataFileError,
    DataFileNotFoundError,
    UnsafePickleError,
    md5_bytes,
    verify_md5,
)

__all__ = ["CifarStyleBatches", "RestrictedUnpickler", "restricted_loads", "load_cifar_style_batches"]

_MAX_MEMBER_BYTES = 256 * 1024 * 1024
_MEMBER_RE = re.compile(r"^(data_batch_(\d+)|test_batch|batches\.meta|hash\.md5)$")

# ----------------------------------------------------------------- unpickling

#: (module, name) pairs a numpy array pickle needs; nothing else is resolved.
_ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
    }
)


#: The one non-numpy global allowed: ``_codecs.encode``, which Python 3 writes for every ``bytes`` object
#: in a protocol 0-2 pickle (``_codecs.encode(<str>, 'latin1')``, e.g. a numpy array's data). It resolves
#: to :meth:`RestrictedUnpickler._latin1_encode`, which accepts exactly that call and nothing else.
_CODECS_ENCODE: tuple[str, str] = ("_codecs", "encode")
_LATIN1_NAMES: frozenset[str] = frozenset({"latin1", "latin-1"})


def _numpy_multiarray() -> Any:
    try:  # numpy >= 2: numpy.core is a deprecated alias of numpy._core
        return importlib.import_module("numpy._core.multiarray")
    except ImportError:
        return importlib.import_module("numpy.core.multiarray")


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only ``numpy.ndarray``, ``numpy.dtype`` and the
    ``multiarray._reconstruct`` / ``multiarray.scalar`` helpers, plus ``_codecs.encode``
    restricted to ``(str, 'latin1')`` (how Python 3 pickles ``bytes`` under protocol 2).

    Any other global (``os.system``, ``builtins.eval``, ``_codecs.decode``, ...) raises
    :class:`~gconv_ext.data.paths.UnsafePickleError` before it can be called.
    Use with ``encoding="latin1"`` for Python 2 era pickles.
    """

    def __init__(self, file: io.BufferedIOBase | io.BytesIO, *, source: str = "<pickle>",
                 encoding: str = "latin1") -> None:
        super().__init__(file, encoding=encoding)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == _CODECS_ENCODE:
            return self._latin1_encode
        if (module, name) not in _ALLOWED_GLOBALS:
            raise UnsafePickleError(
                f"refusing to unpickle {self.source}: it references {module}.{name}, which is not "
                "an allowed numpy array global (possible malicious or unexpected pickle)"
            )
        if module == "numpy":
            return getattr(np, name)
        return getattr(_numpy_multiarray(), name)

    def _latin1_encode(self, *args: Any, **kwargs: Any) -> bytes:
        """Stands in for ``_codecs.encode``: only ``encode(<str>, 'latin1')`` (a protocol-2 ``bytes``)."""
        if kwargs or len(args) != 2 or not all(isinstance(a, str) for a in args) \
                or args[1] not in _LATIN1_NAMES:
            shown = ", ".join([repr(a) if isinstance(a, str) and len(a) <= 20 else f"<{type(a).__name__}>"
                               for a in args] + [f"{k}=..." for k in kwargs])
            raise UnsafePickleError(
                f"refusing to unpickle {self.source}: it calls _codecs.encode({shown}); only "
                "_codecs.encode(<str>, 'latin1'), the protocol-2 form of bytes, is allowed"
            )
        return args[0].encode("latin-1")

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"refusing to unpickle {self.source}: persistent ids are not allowed")


def restricted_loads(data: bytes, source: str = "<pickle>") -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler` (``encoding='latin1'``).

    Raises:
        UnsafePickleError: a disallowed global was referenced.
        DataFileError: the pickle is truncated or malformed (message names ``source``).
    """
    try:
        return RestrictedUnpickler(io.BytesIO(data), source=source).load()
    except UnsafePickleError:
        raise
    except Exception as exc:  # noqa: BLE001 (any decoding failure means a corrupt file)
        raise DataFileError(
            f"cannot unpickle {source}: truncated or corrupt pickle ({type(exc).__name__}: {exc})"
        ) from exc


# ---------------------------------------------------------------- file access


def _wanted(basename: str, train_batches: set[int] | None) -> bool:
    m = _MEMBER_RE.match(basename)
    if m is None:
        return False
    if m.group(2) is not None and train_batches is not None:
        return int(m.group(2)) in train_batches
    return True


def _hidden(relpath: str) -> bool:
    return any(part.startswith(".") for part in relpath.split("/") if part not in ("", "."))


def _read_tar_members(path: Path, train_batches: set[int] | None) -> dict[str, bytes]:
    members: dict[str, bytes] = {}
    where: dict[str, str] = {}
    try:
        with tarfile.open(path, mode="r:*") as tar:
            for info in tar:
                if not info.isfile() or _hidden(info.name):
                    continue
                base = posixpath.basename(info.name)
                if not _wanted(base, train_batches):
                    continue
                if base in members:
                    raise DataFileError(
                        f"{path} holds {base!r} twice ({where[base]} and {info.name}); "
                        "cannot tell which batch set to use"
                    )
                if info.size > _MAX_MEMBER_BYTES:
                    raise DataFileError(f"member {info.name} of {path} is implausibly large ({info.size} bytes)")
                fobj = tar.extractfile(info)
                if fobj is None:
                    continue
                members[base] = fobj.read()
                where[base] = info.name
    except DataFileError:
        raise
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise DataFileError(
            f"{path} is not a readable tar(.gz) archive or is truncated ({type(exc).__name__}: {exc})"
        ) from exc
    return members


def _batch_folder(path: Path) -> Path:
    def has_batches(p: Path) -> bool:
        return (p / "test_batch").is_file() or any(p.glob("data_batch_*"))

    if has_batches(path):
        return path
    subs = [p for p in sorted(path.iterdir()) if p.is_dir() and not p.name.startswith(".") and has_batches(p)]
    if len(subs) == 1:
        return subs[0]
    if not subs:
        raise DataFileNotFoundError(
            f"no CIFAR-style batches (data_batch_<n>, test_batch) in {path} or its subfolders"
        )
    raise DataFileError(f"several batch folders under {path}: {', '.join(str(s) for s in subs)}; pass one")


def _read_folder_members(path: Path, train_batches: set[int] | None) -> dict[str, bytes]:
    folder = _batch_folder(path)
    out: dict[str, bytes] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and _wanted(p.name, train_batches):
            out[p.name] = p.read_bytes()
    return out


def _parse_hash_file(text: bytes, source: str) -> dict[str, str]:
    table: dict[str, str] = {}
    for line in text.decode("utf-8", errors="replace").splitlines():
        parts = line.strip().split()
        if not parts:
            continue
        if len(parts) != 2 or not re.fullmatch(r"[0-9a-fA-F]{32}", parts[0]):
            raise DataFileError(f"malformed line in {source}: {line!r}; expected '<md5>  <file name>'")
        table[posixpath.basename(parts[1].lstrip("*"))] = parts[0].lower()
    return table


# -------------------------------------------------------------------- parsing


@dataclass
class CifarStyleBatches:
    """Images and labels read from CIFAR-style batches.

    Images are uint8 [N,H,W]; labels int64 [N]; ``train_batches`` lists the
    ``data_batch_<n>`` numbers that were read, in order.
    """

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    label_names: tuple[str, ...]
    train_batches: tuple[int, ...]
    source: Path
    train_filenames: list[str] = field(default_factory=list)
    test_filenames: list[str] = field(default_factory=list)


def _parse_batch(
    blob: bytes, source: str, n_classes: int, num_vis: int | None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    obj = restricted_loads(blob, source)
    if not isinstance(obj, dict) or "data" not in obj or "labels" not in obj:
        raise DataFileError(f"{source} is not a CIFAR-style batch (a dict with 'data' and 'labels')")
    try:
        data = np.stack([np.asarray(a) for a in obj["data"]]) if isinstance(obj["data"], list) \
            else np.asarray(obj["data"])
    except ValueError as exc:
        raise DataFileError(f"{source}: images have inconsistent shapes ({exc})") from exc
    if data.dtype != np.uint8:
        raise DataFileError(f"{source}: images have dtype {data.dtype}; expected uint8")
    if data.ndim == 2:
        side = int(np.sqrt(data.shape[1]))
        if side * side != data.shape[1]:
            raise DataFileError(
                f"{source}: flat images of length {data.shape[1]} are not square single-channel images"
            )
        data = data.reshape(data.shape[0], side, side)
    elif data.ndim != 3:
        raise DataFileError(f"{source}: images have shape {data.shape}; expected [N,H*W] or [N,H,W]")
    if num_vis is not None and data.shape[1] * data.shape[2] != num_vis:
        raise DataFileError(
            f"{source}: images are {data.shape[1]}x{data.shape[2]} but batches.meta says num_vis={num_vis}"
        )
    try:
        labels = np.asarray(obj["labels"], dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise DataFileError(f"{source}: labels are not integers ({exc})") from exc
    if labels.shape[0] != data.shape[0]:
        raise DataFileError(f"{source}: {data.shape[0]} images but {labels.shape[0]} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise DataFileError(
            f"{source}: labels range {labels.min()}..{labels.max()}, expected 0..{n_classes - 1}"
        )
    names = [str(f) for f in obj.get("filenames", [])]
    return data, labels, names


def load_cifar_style_batches(
    path: str | os.PathLike[str],
    train_batches: Iterable[int] | None = None,
    *,
    expected_md5: Mapping[str, str] | None = None,
    archive_md5: str | None = None,
) -> CifarStyleBatches:
    """Read CIFAR-style batches from a folder or a tar(.gz) archive, without extracting to disk.

    Args:
        path: a folder holding ``data_batch_<n>``, ``test_batch`` and ``batches.meta``
            (directly or in its single batch subfolder), or a ``.tar``/``.tar.gz`` with
            them in any one folder. Hidden entries (e.g. ``.ipynb_checkpoints``) are ignored.
        train_batches: numbers ``n`` of the ``data_batch_<n>`` to use (default: all, in
            numerical order).
        expected_md5: member name -> MD5; every member read must be listed and match.
            If not given and the batches come with a ``hash.md5`` file, the members it
            lists are checked against it.
        archive_md5: MD5 of the archive file itself (checked once per process).

    Raises:
        DataFileNotFoundError, DataFileError, ChecksumError, UnsafePickleError.
    """
    path = Path(path)
    if not path.exists():
        raise DataFileNotFoundError(f"CIFAR-style batches not found: {path} does not exist")
    wanted: set[int] | None = None
    if train_batches is not None:
        wanted = set()
        for b in train_batches:
            if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 1:
                raise ValueError(f"train_batches must hold batch numbers >= 1, got {b!r}")
            wanted.add(int(b))

    if path.is_dir():
        if archive_md5 is not None:
            raise ValueError("archive_md5 only applies when path is an archive file")
        members = _read_folder_members(path, wanted)
    else:
        if archive_md5 is not None:
            verify_md5(path, archive_md5, what="archive")
        members = _read_tar_members(path, wanted)

    table: Mapping[str, str] | None = expected_md5
    if table is None and "hash.md5" in members:
        table = _parse_hash_file(members["hash.md5"], f"{path}:hash.md5")
    members.pop("hash.md5", None)
    for name, blob in members.items():
        if table is None:
            break
        expected = table.get(name)
        if expected is None:
            if expected_md5 is not None:
                raise ChecksumError(f"member {name} of {path} is not in the expected MD5 table")
            continue
        actual = md5_bytes(blob)
        if actual != expected.lower():
            raise ChecksumError(
                f"MD5 mismatch for member {name} of {path}: expected {expected}, got {actual}"
            )

    available = sorted(int(m.group(2)) for n in members if (m := _MEMBER_RE.match(n)) and m.group(2))
    if wanted is not None:
        missing = sorted(wanted - set(available))
        if missing:
            raise DataFileNotFoundError(
                f"{path} has no data_batch_{missing[0]} (requested train_batches={sorted(wanted)}; "
                f"available: {available})"
            )
    if not available:
        raise DataFileNotFoundError(f"{path} holds no data_batch_<n> files")
    for required in ("test_batch", "batches.meta"):
        if required not in members:
            raise DataFileNotFoundError(f"{path} has no {required}")

    meta = restricted_loads(members["batches.meta"], f"{path}:batches.meta")
    if not isinstance(meta, dict) or not isinstance(meta.get("label_names"), list):
        raise DataFileError(f"{path}:batches.meta has no 'label_names' list")
    label_names = tuple(str(n) for n in meta["label_names"])
    num_vis = meta.get("num_vis")
    num_vis = int(num_vis) if isinstance(num_vis, (int, np.integer)) else None

    def parse(names: list[str]) -> tuple[Tensor, Tensor, list[str]]:
        imgs, lbls, fnames = [], [], []
        for n in names:
            d, lab, f = _parse_batch(members[n], f"{path}:{n}", len(label_names), num_vis)
            imgs.append(d)
            lbls.append(lab)
            fnames.extend(f)
        shapes = {x.shape[1:] for x in imgs}
        if len(shapes) > 1:
            raise DataFileError(f"{path}: batches have different image sizes {sorted(shapes)}")
        return (torch.from_numpy(np.concatenate(imgs)), torch.from_numpy(np.concatenate(lbls)), fnames)

    tr_x, tr_y, tr_f = parse([f"data_batch_{i}" for i in available])
    te_x, te_y, te_f = parse(["test_batch"])
    if tr_x.shape[1:] != te_x.shape[1:]:
        raise DataFileError(f"{path}: train images {tuple(tr_x.shape[1:])} vs test {tuple(te_x.shape[1:])}")
    return CifarStyleBatches(tr_x, tr_y, te_x, te_y, label_names, tuple(available), path, tr_f, te_f)


# ------------------------------------------------------------------ data sets
