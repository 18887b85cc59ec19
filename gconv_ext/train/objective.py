"""The training objective: cross-entropy, or the implicit-equivariance (IEN) loss.

With ``ien_beta`` set, every batch is doubled with ``T x`` (a random non-identity element of
``ien_transforms`` per digit) and ``ien_beta`` times the orbit-pooled feature MSE at the monitored layers is
added (:class:`~gconv_ext.losses.EquivarianceLoss`); ``ien_beta=0`` is the plain CNN trained on the same
doubled batches.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from gconv_ext.losses.ien import EquivarianceLoss, OrbitSpec
from gconv_ext.train.config import TrainConfig

__all__ = ["Objective", "build_objective"]


@dataclass
class Objective:
    """The IEN objective of a run: the loss around the (possibly DDP-wrapped) model and the monitored
    layers by their names in the unwrapped model (``metric_names``: the ``mse_<layer>`` columns)."""

    loss_fn: EquivarianceLoss
    layers: list[str]
    hook_names: list[str]

    @property
    def metric_names(self) -> list[str]:
        return [f"mse_{n}" for n in self.layers]


def build_objective(cfg: TrainConfig, model: nn.Module, train_model: nn.Module | None = None) -> Objective | None:
    """The IEN objective for ``cfg`` (None when ``cfg.ien_beta`` is None).

    ``model`` is the bare model (its ``monitored_layers`` and ``orbit_spec`` are used); ``train_model``
    the module the loss calls (a DDP wrapper of ``model``; default ``model``).

    Raises:
        ValueError: the model has no ``orbit_spec`` / ``monitored_layers`` (only ``ien-cnn`` has them)
            or a layer name is unknown.
    """
    if cfg.ien_beta is None:
        return None
    train_model = model if train_model is None else train_model
    spec = getattr(model, "orbit_spec", None)
    if not isinstance(spec, OrbitSpec):
        raise ValueError(f"ien_beta needs a model whose channels are grouped into orbits (an orbit_spec, "
                         f"e.g. model 'ien-cnn'); model {cfg.model!r} has none")
    layers = cfg.ien_layers
    if layers is None:
        layers = list(getattr(model, "monitored_layers", None) or [])
        if not layers:
            raise ValueError(f"model {cfg.model!r} documents no monitored_layers; give ien_layers")
    known = dict(model.named_modules())
    unknown = [n for n in layers if n not in known]
    if unknown:
        raise ValueError(f"ien_layers: unknown layer name(s) {unknown} in model {cfg.model!r}; monitored "
                         f"layers: {list(getattr(model, 'monitored_layers', []))}")
    prefix = "module." if train_model is not model else ""
    hook_names = [prefix + n for n in layers]
    loss_fn = EquivarianceLoss(train_model, hook_names, spec, cfg.ien_transforms, float(cfg.ien_beta))
    return Objective(loss_fn, list(layers), hook_names)
