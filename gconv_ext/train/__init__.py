"""Training, evaluation and the model and data-set registries.

* :mod:`.config`: :class:`TrainConfig`, the single source of the run's settings, and the recipes
  (``study``: the study's exact protocol; ``default``: the measured recommendation).
* :mod:`.engine`: :func:`fit` (epochs, validation, early stopping, checkpoints, exact resume, DDP,
  precision, ``torch.compile``, learning-rate schedules) for any model and tensors, the engine every
  experiment trains with; :func:`train` (a registered model on a registered data set).
* :mod:`.registry` / :mod:`.datasets`: models and data sets by name.
* :mod:`.checkpoint`, :mod:`.objective`, :mod:`.precision`, :mod:`.schedule`, :mod:`.distributed`.
* :mod:`.evaluate`: rotated-test accuracy, per-angle curves and the markdown results table.
"""
from gconv_ext.train.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from gconv_ext.train.config import RECIPES, TrainConfig
from gconv_ext.train.datasets import DatasetSpec, available_datasets, dataset_spec, register_dataset
from gconv_ext.train.distributed import DistContext, DistributedError, setup_distributed
from gconv_ext.train.engine import ConfigError, RunFiles, accuracy, evaluate, fit, train
from gconv_ext.train.objective import build_objective
from gconv_ext.train.registry import (
    available_models,
    build_model,
    model_presets,
    register_model,
    unregister_model,
)

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DatasetSpec",
    "DistContext",
    "DistributedError",
    "RECIPES",
    "RunFiles",
    "TrainConfig",
    "accuracy",
    "available_datasets",
    "available_models",
    "build_objective",
    "build_model",
    "dataset_spec",
    "evaluate",
    "fit",
    "load_checkpoint",
    "model_from_checkpoint",
    "model_presets",
    "register_dataset",
    "register_model",
    "setup_distributed",
    "train",
    "unregister_model",
]
