"""Compatibility module: the training code that lived here is now split by concern.

:mod:`.config` (``TrainConfig``, recipes), :mod:`.datasets` (data sets by name), :mod:`.distributed`,
:mod:`.checkpoint`, :mod:`.objective` (cross-entropy or IEN), :mod:`.precision`, :mod:`.schedule` and
:mod:`.engine` (``train``). Import from those, or from :mod:`gconv_ext.train`.
"""
from gconv_ext.train.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, model_from_checkpoint
from gconv_ext.train.config import TRAIN_ROTATIONS, TrainConfig
from gconv_ext.train.datasets import (
    DATASETS,
    ROTATED_MNIST_SEED,
    TrainData,
    epoch_generator,
    load_train_data,
)
from gconv_ext.train.distributed import DistContext, resolve_device, setup_distributed
from gconv_ext.train.engine import accuracy, train
from gconv_ext.train.objective import build_objective

__all__ = [
    "TrainConfig", "DistContext", "TrainData", "setup_distributed", "resolve_device", "load_train_data",
    "epoch_generator", "accuracy", "model_from_checkpoint", "load_checkpoint", "train", "TRAIN_ROTATIONS",
    "DATASETS", "CHECKPOINT_FORMAT", "build_objective", "ROTATED_MNIST_SEED",
]
