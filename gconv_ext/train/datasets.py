"""Training data sets by name, like the models: a :class:`DatasetSpec` says how to load the training
split, the validation set and the rotated test set of one data set.

Built in:

* ``"mnist"``: the MNIST IDX files; 50,000/10,000 train/validation split (seed 420, as the study);
  validation and test digits rotated by fixed, seeded angles (:func:`~gconv_ext.data.rotated_test_set`).
* ``"rotated-mnist"``: a SUBSTITUTE for the ``mnist_rotation_new`` benchmark
  (:func:`~gconv_ext.data.make_rotated_mnist`: 12,000 training digits each rotated by a seeded uniform
  angle, cached; *not* the benchmark files). Its training digits are split into ``12,000 - n_val``
  training and ``n_val`` (default 2,000) validation digits, both at the substitute's own angles; its 50,000
  rotated test digits are the rotated test set.

:func:`register_dataset` adds others.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gconv_ext.data import (
    load_mnist,
    make_rotated_mnist,
    normalize,
    rotated_test_set,
    split_train_val,
    to_float01,
)
from gconv_ext.data.paths import resolve_data_dir

__all__ = [
    "DatasetSpec",
    "TrainData",
    "RotatedTest",
    "register_dataset",
    "dataset_spec",
    "available_datasets",
    "load_train_data",
    "DATASETS",
    "ROTATED_MNIST_SEED",
]

#: Seed of the rotated-MNIST substitute (:func:`~gconv_ext.data.make_rotated_mnist`).
ROTATED_MNIST_SEED = 0


@dataclass
class TrainData:
    """Training digits (float in [0, 1], not normalised, so rotation fills with black) and the fixed
    rotated validation set (normalised)."""

    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    val_angles: Tensor


@dataclass
class RotatedTest:
    """A rotated test set: normalised images, labels, each digit's angle (degrees) and its name."""

    x: Tensor
    y: Tensor
    angles: Tensor
    seed: int
    name: str


@dataclass(frozen=True)
class DatasetSpec:
    """How to load one data set.

    Attributes:
        name: the registry name (``--dataset``).
        title: how logs and tables name it.
        default_n_val: validation digits held out of the training split when ``n_val`` is None.
        load_train: ``(data_dir, cache_dir, download) -> (images uint8 [N, H, W], labels, angles or None)``:
            the training split before the train/validation split; ``angles`` are the digits' own rotations
            (None: upright digits, whose validation copies get fixed seeded angles).
        load_rotated_test: ``(data_dir, cache_dir, test_images, test_labels, test_seed, limit) -> RotatedTest``.
    """

    name: str
    title: str
    default_n_val: int
    load_train: Callable[[Path, Any, bool], tuple[Tensor, Tensor, Tensor | None]]
    load_rotated_test: Callable[..., RotatedTest]


_DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec) -> None:
    """Add (or replace) a data set."""
    _DATASETS[spec.name] = spec


def dataset_spec(name: str) -> DatasetSpec:
    """The spec of a registered data set; ``ValueError`` naming the choices for an unknown name."""
    try:
        return _DATASETS[name]
    except KeyError:
        raise ValueError(f"dataset must be one of {available_datasets()}, got {name!r}") from None


def available_datasets() -> tuple[str, ...]:
    """The registered names."""
    return tuple(_DATASETS)


def _mnist_train(data_dir: Path, cache_dir: Any, download: bool):
    images, labels = load_mnist("train", data_dir, download=download)
    return images, labels, None


def _mnist_rotated_test(data_dir, cache_dir, images, labels, test_seed, limit) -> RotatedTest:
    x, y, angles = rotated_test_set(images, labels, seed=test_seed)
    return RotatedTest(x, y, angles, test_seed, "MNIST test digits at seeded uniform angles")


def _rotmnist_train(data_dir: Path, cache_dir: Any, download: bool):
    rot = make_rotated_mnist(data_dir, cache_dir, seed=ROTATED_MNIST_SEED)
    return rot.train_images, rot.train_labels, rot.train_angles


def _rotmnist_rotated_test(data_dir, cache_dir, images, labels, test_seed, limit) -> RotatedTest:
    rot = make_rotated_mnist(data_dir, cache_dir, seed=ROTATED_MNIST_SEED)
    stop = rot.test_labels.shape[0] if limit is None else limit
    x = normalize(to_float01(rot.test_images[:stop]).unsqueeze(1))
    return RotatedTest(x, rot.test_labels[:stop].clone(), rot.test_angles[:stop].clone(), ROTATED_MNIST_SEED,
                       "rotated-MNIST SUBSTITUTE test set (50,000 digits; not mnist_rotation_new)")


register_dataset(DatasetSpec("mnist", "MNIST", 10_000, _mnist_train, _mnist_rotated_test))
register_dataset(DatasetSpec("rotated-mnist", "rotated-MNIST SUBSTITUTE (not mnist_rotation_new)", 2_000,
                             _rotmnist_train, _rotmnist_rotated_test))
#: The built-in names (``--dataset`` choices).
DATASETS = available_datasets()


def _data_dir(data_dir: str | os.PathLike[str] | None, download: bool) -> Path:
    if data_dir is not None and download:
        Path(data_dir).expanduser().mkdir(parents=True, exist_ok=True)
    return resolve_data_dir(data_dir)


def load_train_data(cfg) -> TrainData:
    """Load the training split of ``cfg.dataset``, split it (``split_seed``, ``n_val``), apply the limits
    and rotate validation (upright data: fixed seeded angles; pre-rotated data: their own angles)."""
    spec = dataset_spec(cfg.dataset)
    images, labels, own_angles = spec.load_train(_data_dir(cfg.data_dir, cfg.download), cfg.cache_dir,
                                                 cfg.download)
    if cfg.val_size >= images.shape[0]:
        raise ValueError(f"n_val ({cfg.val_size}) must be smaller than the {images.shape[0]} training digits "
                         f"of {cfg.dataset}")
    train_idx, val_idx = split_train_val(images.shape[0], cfg.val_size, cfg.split_seed)
    if cfg.train_limit is not None:
        train_idx = train_idx[: cfg.train_limit]
    if cfg.val_limit is not None:
        val_idx = val_idx[: cfg.val_limit]
    if train_idx.numel() == 0 or val_idx.numel() == 0:
        raise ValueError("the training and validation sets must not be empty (check n_val and the limits)")
    train_x = to_float01(images[train_idx]).unsqueeze(1)
    if own_angles is not None:
        val_x = normalize(to_float01(images[val_idx]).unsqueeze(1))
        return TrainData(train_x, labels[train_idx].clone(), val_x, labels[val_idx].clone(),
                         own_angles[val_idx].clone())
    val_x, val_y, val_angles = rotated_test_set(images[val_idx], labels[val_idx], seed=cfg.val_rotation_seed)
    return TrainData(train_x, labels[train_idx].clone(), val_x, val_y, val_angles)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The CPU generator for the shuffle and augmentation of ``epoch`` (0-based) of run ``seed``."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(epoch) * 7919 + 12345) % (2**63))
