"""MNIST loading from the standard IDX files, with checksum verification.

:func:`load_mnist` reads ``{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (gzip
or uncompressed) from ``data_dir``, ``data_dir/mnist`` or torchvision's
``data_dir/MNIST/raw`` layout, checks the structure (gzip stream, IDX magic,
dimensions, size, label range) and the known MD5s, and returns uint8 images
[N,28,28] and int64 labels [N]. Nothing is downloaded unless ``download=True``.
The IDX header is checked against the known counts before the body is read, and a
``.gz`` file is decompressed as a stream capped at the size that header needs, so a
gzip bomb (or any oversized file) fails early with a :class:`DataFileError`.

Also here: the deterministic train/validation split used by the study
(:func:`split_train_val`, 50,000/10,000 with seed 420) and the usual
normalisation (:data:`MEAN`, :data:`STD`, :func:`normalize`).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import Tensor

from .paths import (
    ChecksumError,
    DataFileError,
    DataFileNotFoundError,
    is_verified,
    mark_verified,
    md5_bytes,
    resolve_data_dir,
)

__all__ = [
    "MEAN",
    "STD",
    "MNIST_FILES",
    "MNIST_CLASS_COUNTS",
    "load_mnist",
    "find_mnist_file",
    "split_train_val",
    "normalize",
    "to_float01",
    "to_normalized_float",
]

#: Pixel mean and standard deviation of the MNIST training set (values in [0, 1]).
MEAN: float = 0.1307
STD: float = 0.3081


@dataclass(frozen=True)
class MnistFileInfo:
    """What is known about one of the four original MNIST IDX files."""

    name: str
    magic: int
    count: int
    gz_md5: str
    raw_md5: str
    gz_size: int
    raw_size: int

    @property
    def is_images(self) -> bool:
        return self.magic == 0x803


#: The four original files (sizes and MD5s from the data README / the originals), one per row:
#: name, IDX magic, item count, .gz MD5, raw MD5, .gz size, raw size.
_MNIST_TABLE = """
train-images-idx3-ubyte 0x803 60000 f68b3c2dcbeaaa9fbdd348bbdeb94873 6bbc9ace898e44ae57da46a324031adb 9912422 47040016
train-labels-idx1-ubyte 0x801 60000 d53e105ee54ea40749a09fcbcd1e9432 a25bea736e30d166cdddb491f175f624   28881    60008
t10k-images-idx3-ubyte  0x803 10000 9fb629c4189551a2d022fa330f9573f3 2646ac647ad5339dbf082846283269ea 1648877  7840016
t10k-labels-idx1-ubyte  0x801 10000 ec29112dd5afa0611ce80d1b7f02629c 27ae3e4e09519cfbb04c329615203637    4542    10008
"""
MNIST_FILES: dict[str, MnistFileInfo] = {
    name: MnistFileInfo(name, int(magic, 16), int(count), gz_md5, raw_md5, int(gz_size), int(raw_size))
    for name, magic, count, gz_md5, raw_md5, gz_size, raw_size in map(str.split, _MNIST_TABLE.strip().splitlines())
}

_SPLIT_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

#: Per-digit counts (0..9) of the original splits.
MNIST_CLASS_COUNTS: dict[str, tuple[int, ...]] = {
    "train": (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949),
    "test": (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009),
}

_ROWS = _COLS = 28


def _search_dirs(root: Path) -> list[Path]:
    return [root, root / "mnist", root / "MNIST" / "raw"]


def find_mnist_file(name: str, data_dir: Path) -> Path:
    """Path of MNIST file ``name`` (uncompressed preferred, else ``.gz``) under ``data_dir``.

    Looks in ``data_dir``, ``data_dir/mnist`` and ``data_dir/MNIST/raw``.

    Raises:
        DataFileNotFoundError: naming every place tried.
    """
    tried: list[str] = []
    for folder in _search_dirs(data_dir):
        for fname in (name, name + ".gz"):
            cand = folder / fname
            tried.append(str(cand))
            if cand.is_file():
                return cand
    raise DataFileNotFoundError(
        f"MNIST file {name!r} (.gz or uncompressed) not found; tried: {', '.join(tried)}. "
        "Pass data_dir=... / --data-dir, set GCONV_EXT_DATA_DIR, or use download=True"
    )


_CHUNK = 1 << 20  # bytes decompressed (or read) per step


class _HashingReader:
    """Read-only file wrapper that feeds every byte read through it into an MD5 (or nothing)."""

    def __init__(self, f: BinaryIO, md5: Any | None) -> None:
        self._f = f
        self._md5 = md5

    def read(self, size: int = -1) -> bytes:
        data = self._f.read(size)
        if self._md5 is not None:
            self._md5.update(data)
        return data


def _check_header(path: Path, info: MnistFileInfo, head: bytes, verify: bool) -> tuple[tuple[int, ...], int]:
    """Check the IDX header (magic, dims, count) against what ``info`` says; return ``(dims, total size)``.

    Runs before the body is read or decompressed, so the size it returns can cap the reading. The count
    must equal the original's when ``verify``; without it a smaller count is accepted (a subset), a
    larger one never (nothing is read beyond the original file's size).
    """
    kind = "images (magic 0x803 = 2051)" if info.is_images else "labels (magic 0x801 = 2049)"
    ndim = 3 if info.is_images else 1
    header_size = 4 + 4 * ndim
    if len(head) < header_size:
        raise DataFileError(
            f"{path} is truncated: {len(head)} bytes, shorter than the {header_size}-byte IDX header "
            f"expected for MNIST {kind}"
        )
    (magic,) = struct.unpack(">I", head[:4])
    if magic != info.magic:
        raise DataFileError(
            f"{path} has bad IDX magic {magic:#x}; expected {info.magic:#x} for MNIST {kind} "
            f"({info.name})"
        )
    dims = struct.unpack(">" + "I" * ndim, head[4:header_size])
    n = dims[0]
    if info.is_images and tuple(dims[1:]) != (_ROWS, _COLS):
        raise DataFileError(f"{path} has image dims {dims}; expected (N, 28, 28)")
    if verify and n != info.count:
        raise DataFileError(f"{path} declares {n} items; expected {info.count} for {info.name}")
    if n > info.count:
        raise DataFileError(
            f"{path} declares {n} items, more than the {info.count} of the original {info.name}; "
            "refusing to read it"
        )
    item = _ROWS * _COLS if info.is_images else 1
    return dims, header_size + n * item


def _size_error(path: Path, dims: tuple[int, ...], expected: int, size: int | None, gz: bool) -> DataFileError:
    """``size`` bytes (uncompressed) where the header dims need ``expected``; None: more than ``expected``."""
    if size is not None and size < expected:
        got = f"{'it decompresses to ' if gz else ''}{size} bytes (uncompressed)"
        return DataFileError(f"{path} is truncated: {got} but the header dims {dims} need {expected} bytes")
    got = (f"it decompresses to more than {expected} bytes (reading stopped there: trailing data or a "
           "decompression bomb)" if size is None else f"{size} bytes (uncompressed)")
    return DataFileError(f"{path} is too long: {got} but the header dims {dims} need {expected} bytes")


def _read_into(src: Any, buf: memoryview) -> int:
    """Fill ``buf`` from ``src.read`` in chunks of at most :data:`_CHUNK`; return the bytes read (short at EOF)."""
    pos = 0
    while pos < len(buf):
        chunk = src.read(min(_CHUNK, len(buf) - pos))
        if not chunk:
            break
        buf[pos:pos + len(chunk)] = chunk
        pos += len(chunk)
    return pos


def _read_content(path: Path, info: MnistFileInfo, f: BinaryIO, verify: bool, md5: Any | None
                  ) -> tuple[tuple[int, ...], bytearray]:
    """The uncompressed IDX content of the open file ``f``: header first (checked by :func:`_check_header`),
    then exactly the size the header needs. A ``.gz`` file is decompressed as a stream, capped at that size:
    a gzip bomb fails after the expected number of bytes, never decompressed in full. ``md5`` (if given)
    is fed every byte of a ``.gz`` file as it streams by."""
    header_size = 16 if info.is_images else 8
    if not path.name.endswith(".gz"):
        head = f.read(header_size)
        dims, expected = _check_header(path, info, head, verify)
        size = os.fstat(f.fileno()).st_size
        if size != expected:
            raise _size_error(path, dims, expected, size, gz=False)
        content = bytearray(expected)
        content[:header_size] = head
        got = header_size + _read_into(f, memoryview(content)[header_size:])
        if got != expected or f.read(1):  # the file changed since the fstat
            raise _size_error(path, dims, expected, got if got != expected else None, gz=False)
        return dims, content
    src = _HashingReader(f, md5)
    try:
        with gzip.GzipFile(fileobj=src, mode="rb") as gz:  # type: ignore[arg-type]
            head = gz.read(header_size)
            dims, expected = _check_header(path, info, head, verify)
            content = bytearray(expected)
            content[: len(head)] = head
            got = len(head) + _read_into(gz, memoryview(content)[len(head):])
            if got != expected:
                raise _size_error(path, dims, expected, got, gz=True)
            if gz.read(1):  # decompresses to more than the header says: stop here
                raise _size_error(path, dims, expected, None, gz=True)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataFileError(
            f"{path} is not a valid gzip file or is truncated ({type(exc).__name__}: {exc}); "
            "delete it and copy/download it again"
        ) from exc
    if md5 is not None:
        while src.read(_CHUNK):  # hash whatever the gzip reader left unread (normally nothing)
            pass
    return dims, content


def _check_md5(path: Path, info: MnistFileInfo, file_md5: str, content: bytearray) -> None:
    """Verify the file against the known MD5 (``file_md5``: the MD5 of the file's bytes as read).

    A ``.gz`` file passes if its own MD5 matches the original download, or if its
    decompressed content matches the original uncompressed MD5 (a re-compressed
    copy of the same data). An uncompressed file must match the uncompressed MD5.
    """
    is_gz = path.name.endswith(".gz")
    expected = info.gz_md5 if is_gz else info.raw_md5
    if is_gz:
        if file_md5 != info.gz_md5:
            actual_content = md5_bytes(content)
            if actual_content != info.raw_md5:
                raise ChecksumError(
                    f"MD5 mismatch for {path}: expected {info.gz_md5} (gzip file) or "
                    f"{info.raw_md5} (decompressed content), got {file_md5} / {actual_content}. "
                    "This is not the original MNIST file (e.g. Fashion-MNIST uses the same names) "
                    "or it is corrupt; pass verify=False to load it anyway"
                )
    elif file_md5 != info.raw_md5:
        raise ChecksumError(
            f"MD5 mismatch for {path}: expected {info.raw_md5} (uncompressed {info.name}), "
            f"got {file_md5}. This is not the original MNIST file or it is corrupt; "
            "pass verify=False to load it anyway"
        )
    mark_verified(path, expected)


def _read_mnist_file(path: Path, info: MnistFileInfo, verify: bool) -> np.ndarray:
    """Read, check and (if ``verify``) checksum one IDX file, plain or ``.gz``.

    Order: the IDX header is read and checked first, then exactly the number of bytes it needs is read
    (decompressed: a stream capped at that size, see :func:`_read_content`), and only then are the MD5s
    compared (once per file per process), so a huge or hostile file fails before it is read in full.
    """
    is_gz = path.name.endswith(".gz")
    try:
        f = open(path, "rb")  # noqa: SIM115 (closed below)
        needs_md5 = verify and not is_verified(path, info.gz_md5 if is_gz else info.raw_md5)
    except OSError as exc:
        raise DataFileNotFoundError(f"cannot read MNIST file {path}: {exc}") from exc
    with f:
        # plain files: md5_bytes of the content (one call per file); .gz: an MD5 fed while streaming
        md5 = hashlib.md5() if needs_md5 and is_gz else None
        dims, content = _read_content(path, info, f, verify, md5)
    if needs_md5:
        _check_md5(path, info, md5.hexdigest() if md5 is not None else md5_bytes(content), content)
    header_size = 16 if info.is_images else 8
    return np.frombuffer(content, dtype=np.uint8, offset=header_size).reshape(dims)


def _download(root: Path, split: str) -> None:
    try:
        from torchvision.datasets import MNIST  # noqa: PLC0415 (optional dependency)
    except ImportError as exc:
        raise ImportError(
            "load_mnist(download=True) needs torchvision, which is not importable here; "
            f"copy the four MNIST IDX files into {root} (or {root / 'MNIST' / 'raw'}) instead"
        ) from exc
    MNIST(root=str(root), train=(split == "train"), download=True)


def load_mnist(
    split: str,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
    *,
    verify: bool = True,
) -> tuple[Tensor, Tensor]:
    """Load an MNIST split as ``(images uint8 [N,28,28], labels int64 [N])``.

    Args:
        split: ``"train"`` (60,000 digits) or ``"test"`` (10,000 digits).
        data_dir: folder holding the IDX files (directly, in ``mnist/`` or in
            torchvision's ``MNIST/raw/``); default :func:`~gconv_ext.data.paths.default_data_dir`.
        download: only if True and the files are missing, fetch them with
            ``torchvision.datasets.MNIST(data_dir, download=True)``. Never downloads otherwise.
        verify: check the known MD5s (done once per file per process) and counts. Without it a
            file may hold fewer items than the original, never more.

    Raises:
        ValueError: bad ``split``.
        DataFileNotFoundError: files missing (message lists the places tried).
        DataFileError / ChecksumError: corrupt, truncated or unexpected files.
    """
    if split not in _SPLIT_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = resolve_data_dir(data_dir)
    img_name, lbl_name = _SPLIT_FILES[split]
    try:
        img_path = find_mnist_file(img_name, root)
        lbl_path = find_mnist_file(lbl_name, root)
    except DataFileNotFoundError:
        if not download:
            raise
        _download(root, split)
        img_path = find_mnist_file(img_name, root)
        lbl_path = find_mnist_file(lbl_name, root)

    images = _read_mnist_file(img_path, MNIST_FILES[img_name], verify)
    labels = _read_mnist_file(lbl_path, MNIST_FILES[lbl_name], verify)
    if images.shape[0] != labels.shape[0]:
        raise DataFileError(
            f"{img_path} holds {images.shape[0]} images but {lbl_path} holds {labels.shape[0]} labels"
        )
    if labels.size and int(labels.max()) > 9:
        raise DataFileError(f"{lbl_path} contains label {int(labels.max())}; MNIST labels are 0..9")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def split_train_val(n: int = 60000, n_val: int = 10000, seed: int = 420) -> tuple[Tensor, Tensor]:
    """Deterministic split of ``range(n)`` into ``(train_idx, val_idx)`` (int64 tensors).

    A seeded random permutation: the first ``n - n_val`` entries are the training
    indices and the last ``n_val`` the validation indices. With the same torch
    version this equals ``torch.utils.data.random_split(range(n), [n - n_val, n_val],
    generator=torch.Generator().manual_seed(seed))``, the study's 50,000/10,000
    split with seed 420; the idea (seeded, disjoint, covering) is what matters.
    """
    if not 0 <= n_val <= n:
        raise ValueError(f"n_val must be in [0, n] = [0, {n}], got {n_val}")
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=gen)
    return perm[: n - n_val].clone(), perm[n - n_val :].clone()


def normalize(x: Tensor) -> Tensor:
    """``(x - MEAN) / STD`` for float images with values in [0, 1]."""
    return (x - MEAN) / STD


def to_float01(images_uint8: Tensor) -> Tensor:
    """uint8 images -> float32 in [0, 1]."""
    return images_uint8.to(torch.float32) / 255.0


def to_normalized_float(images_uint8: Tensor) -> Tensor:
    """uint8 images [N,28,28] or [N,1,28,28] -> normalised float32 [N,1,28,28]."""
    x = to_float01(images_uint8)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    return normalize(x)
