"""Training, evaluation and the model registry for the study's MNIST experiments.

* :mod:`.registry`: :func:`build_model` / :func:`register_model` (models by name, with presets).
* :mod:`.loop`: :class:`TrainConfig` and :func:`train` (AdamW, early stopping, exact resume, DDP;
  cross-entropy or the IEN objective; MNIST or the rotated-MNIST substitute).
* :mod:`.evaluate`: rotated-test accuracy, per-angle curves and the markdown results table.
"""
from gconv_ext.train.loop import (
    DistContext,
    TrainConfig,
    accuracy,
    build_objective,
    load_checkpoint,
    model_from_checkpoint,
    setup_distributed,
    train,
)
from gconv_ext.train.registry import (
    available_models,
    build_model,
    model_presets,
    register_model,
    unregister_model,
)

__all__ = [
    "DistContext",
    "TrainConfig",
    "accuracy",
    "available_models",
    "build_objective",
    "build_model",
    "load_checkpoint",
    "model_from_checkpoint",
    "model_presets",
    "register_model",
    "setup_distributed",
    "train",
    "unregister_model",
]
