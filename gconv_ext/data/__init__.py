"""Offline data sets and transforms for gconv_ext experiments.

Loaders read the checksummed files in the shared data folder
(:func:`~gconv_ext.data.paths.default_data_dir`) and never download anything
unless asked:

* :mod:`.mnist`: MNIST IDX files, train/validation split, normalisation.
* :mod:`.evalsets`: fixed rotated-MNIST evaluation sets and a cached
  rotated-MNIST *substitute* for ``mnist_rotation_new``.
* :mod:`.radio`: FRDEEP-F/N and early MiraBest radio galaxies (CIFAR-style
  pickles, read with a restricted unpickler).
* :mod:`.transforms`: rotations exact for multiples of 90 degrees.
* :mod:`.paths`: data/cache folders, MD5 checks, atomic writes, error types.
"""

from .evalsets import RotatedMNIST, fixed_angle_test_sets, make_rotated_mnist, rotated_test_set
from .mnist import MEAN, STD, load_mnist, normalize, split_train_val, to_float01, to_normalized_float
from .paths import (
    ChecksumError,
    DataFileError,
    DataFileNotFoundError,
    UnsafePickleError,
    atomic_torch_save,
    atomic_write_bytes,
    default_cache_dir,
    default_data_dir,
)
from .radio import (
    CifarStyleBatches,
    RestrictedUnpickler,
    load_cifar_style_batches,
    load_frdeep,
    load_frdeep_splits,
    load_mirabest_early,
    load_mirabest_early_splits,
    restricted_loads,
)
from .transforms import flip, random_rotation, rotate

__all__ = [
    "MEAN",
    "STD",
    "ChecksumError",
    "CifarStyleBatches",
    "DataFileError",
    "DataFileNotFoundError",
    "RestrictedUnpickler",
    "RotatedMNIST",
    "UnsafePickleError",
    "atomic_torch_save",
    "atomic_write_bytes",
    "default_cache_dir",
    "default_data_dir",
    "fixed_angle_test_sets",
    "flip",
    "load_cifar_style_batches",
    "load_frdeep",
    "load_frdeep_splits",
    "load_mirabest_early",
    "load_mirabest_early_splits",
    "load_mnist",
    "make_rotated_mnist",
    "normalize",
    "random_rotation",
    "restricted_loads",
    "rotate",
    "rotated_test_set",
    "split_train_val",
    "to_float01",
    "to_normalized_float",
]
