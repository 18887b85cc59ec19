"""Radio-galaxy data sets stored as CIFAR-style pickle batches (FRDEEP-F/N, MiraBest): their files, checksums
and class tables. The generic batch reader is :mod:`gconv_ext.data.cifar_batches` (re-exported here).

* :func:`load_frdeep_splits` / :func:`load_frdeep` read FRDEEP-F (FIRST) or FRDEEP-N (NVSS) straight out of
  ``frdeep/<SURVEY>_PNG_dataset.tar.gz`` (nothing is extracted to disk), checking
  the archive MD5 and every member's MD5 against hard-coded tables, and returns
  uint8 images [N,150,150] and int64 labels (FRI=0, FRII=1).
* :func:`load_cifar_style_batches` is the general reader for a folder or tar(.gz)
  holding ``data_batch_<n>``, ``test_batch`` and ``batches.meta`` (e.g. the early
  MiraBest ``batches.tar.gz``); it checks members against an optional MD5 table or
  the ``hash.md5`` file shipped inside the archive.
* :func:`load_mirabest_early_splits` / :func:`load_mirabest_early` load the early (2019) MiraBest batches
  with their MD5s.

The ``*_splits`` functions return the training and test split from one read (and one verification) of the
archive; ``load_frdeep(..., split=)`` and ``load_mirabest_early(..., split=)`` return one of them.

All pickles go through :class:`RestrictedUnpickler`, which only resolves the few
numpy globals that array pickles need, so a malicious pickle cannot run code.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from torch import Tensor

from .cifar_batches import CifarStyleBatches, RestrictedUnpickler, load_cifar_style_batches, restricted_loads
from .paths import DataFileError, DataFileNotFoundError, resolve_data_dir

__all__ = [
    "FRDEEP_CLASSES",
    "FRDEEP_ARCHIVES",
    "FRDEEP_MEMBER_MD5",
    "MIRABEST_EARLY_2019_ARCHIVE",
    "MIRABEST_EARLY_2019_MEMBER_MD5",
    "CifarStyleBatches",
    "RestrictedUnpickler",
    "restricted_loads",
    "load_cifar_style_batches",
    "load_frdeep",
    "load_frdeep_splits",
    "load_mirabest_early",
    "load_mirabest_early_splits",
    "RadioSplits",
]


class RadioSplits(NamedTuple):
    """Both splits of a radio-galaxy data set: ``(images uint8 [N, H, W], labels int64 [N])`` each."""

    train: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor]

FRDEEP_CLASSES: tuple[str, str] = ("FRI", "FRII")

#: survey -> (archive file name, archive MD5)
FRDEEP_ARCHIVES: dict[str, tuple[str, str]] = {
    "FIRST": ("FIRST_PNG_dataset.tar.gz", "2f39461e6c62fb45289559915106013a"),
    "NVSS": ("NVSS_PNG_dataset.tar.gz", "2584ed1e174ea71f581d0e0d6f32ef38"),
}

#: survey -> member name -> MD5 (computed from the original archives).
FRDEEP_MEMBER_MD5: dict[str, dict[str, str]] = {
    "FIRST": {
        "batches.meta": "655493bdee948954f3939727b3f9e735",
        "data_batch_1": "f34da44757c7fa3f6e6cd3d0839a4634",
        "data_batch_2": "f56cda0d9a99305fee2bad7de0560f95",
        "data_batch_3": "93265dd849331af4e1b092f74b06450b",
        "data_batch_4": "0de8f4c18b775251f4e553e2990cd446",
        "data_batch_5": "c6aa87400a1be6007da7cfcefd2c3e5c",
        "data_batch_6": "cebd3fdea93abbc048a3a4d5e58528e0",
        "data_batch_7": "49497445e9380f157e78cf8d74fca1eb",
        "data_batch_8": "88e298eed2d87bbdddad83fef1482723",
        "data_batch_9": "8c40117dbf4d456e63a8a665b245aa63",
        "data_batch_10": "f24d110cc5811ba4651630b9ee9b2989",
        "data_batch_11": "b843dc3b7f48606235029f135d41c85e",
        "test_batch": "4e06889b1e7713deb46e62887eb37727",
    },
    "NVSS": {
        "batches.meta": "655493bdee948954f3939727b3f9e735",
        "data_batch_1": "3a2a15d88756ba61c796378fc8574540",
        "data_batch_2": "6a04e3985397e1f67f0ad42153dca64e",
        "data_batch_3": "d852c8200f3bbb63beacf31f3e954f9a",
        "data_batch_4": "a5739996ca44a1a1841f2d0e6b844dd6",
        "data_batch_5": "8e2fdb3f60bf7541ca135fc8e2407f7a",
        "data_batch_6": "9e5a82500bd9742f8fefe412ada95336",
        "data_batch_7": "f66af7795265fbe24376f669200412c4",
        "data_batch_8": "75982afc09bf480ecc521acdb39cbe46",
        "data_batch_9": "72aee306fef9acee21a0e5537bb681e4",
        "data_batch_10": "7a039ce8062a533b23b401a612c5f9b7",
        "data_batch_11": "c0013314098c96ca4c7c20c0f17abcd3",
        "test_batch": "39fd167b9a7df12cee1ef9a804f9fa86",
    },
}

FRDEEP_COUNTS: dict[str, int] = {"train": 550, "test": 50}

#: (relative path under the data folder, MD5) of the early MiraBest archive.
MIRABEST_EARLY_2019_ARCHIVE: tuple[str, str] = (
    "mirabest_early_2019/batches.tar.gz",
    "fa9d6ad8fdde95b0a19df11433e8bca3",
)

#: Member MD5s of the early MiraBest archive (they match its own ``hash.md5``).
MIRABEST_EARLY_2019_MEMBER_MD5: dict[str, str] = {
    "batches.meta": "712f770028e9a0eaac781559b0583435",
    "data_batch_1": "c8553f5c39137ba41dc302be689fa425",
    "data_batch_2": "07a11c5cae9036d41a4241722be20fdb",
    "data_batch_3": "162c84378d8357c4d2456db8cdae3920",
    "data_batch_4": "1ad4b501088a6d7f8b72f5079b6fdacf",
    "data_batch_5": "e1807ceb56507a1f4b75a9db746115cd",
    "data_batch_6": "1fd032d36f34d1090c153bf6ea126f65",
    "data_batch_7": "fe6af26ec520a988087c1d23d645cf83",
    "data_batch_8": "3466396ca190e7c36b47fbb9c4067dbf",
    "test_batch": "58e771ce101c4cbe8595b214d0cf02c3",
}

def _check_split(split: str) -> None:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")


def load_frdeep(
    data_dir: str | os.PathLike[str] | None = None,
    survey: str = "FIRST",
    split: str = "train",
    *,
    verify: bool = True,
) -> tuple[Tensor, Tensor]:
    """One split (``'train'`` or ``'test'``) of :func:`load_frdeep_splits`."""
    _check_split(split)
    return getattr(load_frdeep_splits(data_dir, survey, verify=verify), split)


def load_frdeep_splits(
    data_dir: str | os.PathLike[str] | None = None,
    survey: str = "FIRST",
    *,
    verify: bool = True,
) -> RadioSplits:
    """Load FRDEEP-F (``survey='FIRST'``) or FRDEEP-N (``'NVSS'``), both splits from one read.

    Reads ``<data_dir>/frdeep/<SURVEY>_PNG_dataset.tar.gz`` (or the archive directly
    in ``data_dir``) in memory, checks the archive MD5 and every member's MD5, and
    returns the training and the test ``(images uint8 [N,150,150], labels int64 [N])`` with FRI=0,
    FRII=1; 550 training and 50 test images per survey.

    Raises:
        ValueError: bad ``survey``.
        DataFileNotFoundError / DataFileError / ChecksumError / UnsafePickleError.
    """
    key = survey.upper() if isinstance(survey, str) else survey
    if key not in FRDEEP_ARCHIVES:
        raise ValueError(f"survey must be 'FIRST' or 'NVSS', got {survey!r}")
    root = resolve_data_dir(data_dir)
    name, md5 = FRDEEP_ARCHIVES[key]
    tried = [root / "frdeep" / name, root / name]
    archive = next((p for p in tried if p.is_file()), None)
    if archive is None:
        raise DataFileNotFoundError(
            f"FRDEEP archive {name} not found; tried: {', '.join(str(p) for p in tried)}. "
            "Pass data_dir=... / --data-dir or set GCONV_EXT_DATA_DIR"
        )
    batches = load_cifar_style_batches(
        archive,
        expected_md5=FRDEEP_MEMBER_MD5[key] if verify else None,
        archive_md5=md5 if verify else None,
    )
    if verify:
        if batches.label_names != FRDEEP_CLASSES:
            raise DataFileError(f"{archive}: label names {batches.label_names}, expected {FRDEEP_CLASSES}")
        for s, n in (("train", batches.train_labels.numel()), ("test", batches.test_labels.numel())):
            if n != FRDEEP_COUNTS[s]:
                raise DataFileError(f"{archive}: {n} {s} images, expected {FRDEEP_COUNTS[s]}")
    return RadioSplits((batches.train_images, batches.train_labels), (batches.test_images, batches.test_labels))


def load_mirabest_early(
    data_dir: str | os.PathLike[str] | None = None, split: str = "train"
) -> tuple[Tensor, Tensor]:
    """One split (``'train'`` or ``'test'``) of :func:`load_mirabest_early_splits`."""
    _check_split(split)
    return getattr(load_mirabest_early_splits(data_dir), split)


def load_mirabest_early_splits(data_dir: str | os.PathLike[str] | None = None) -> RadioSplits:
    """Load the early (2019) MiraBest batches, both splits: 704 training / 88 test images, FRI=0, FRII=1.

    This is NOT ``MiraBest_full`` (1256 images, 10 classes); see the data README.
    Reads ``<data_dir>/mirabest_early_2019/batches.tar.gz`` with archive and member MD5 checks.
    """
    rel, md5 = MIRABEST_EARLY_2019_ARCHIVE
    archive = resolve_data_dir(data_dir) / rel
    if not archive.is_file():
        raise DataFileNotFoundError(
            f"MiraBest archive not found at {archive}; pass data_dir=... or set GCONV_EXT_DATA_DIR"
        )
    b = load_cifar_style_batches(archive, expected_md5=MIRABEST_EARLY_2019_MEMBER_MD5, archive_md5=md5)
    return RadioSplits((b.train_images, b.train_labels), (b.test_images, b.test_labels))
