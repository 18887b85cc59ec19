"""Equivariant layers for C_N and D_N on plain tensors with layout ``(B, C, |G|, H, W)``.

* Convolutions: :class:`LiftingConv2d` (image -> group map), :class:`GroupConv2d` (group map -> group map),
  each with ``export()`` to a plain Conv2d (:class:`ExportedGroupConv`).
* :class:`GroupBatchNorm2d`, :class:`GroupLayerNorm`, :class:`GroupMaxPool2d`, :class:`GroupAvgPool2d`,
  :class:`GroupDropout`, :class:`GroupPool` (max/mean over |G|), :class:`InvariantPool` (-> ``[B, C]``);
  the pools that run custom operators export to :class:`ExportedGroupSpatialPool` / :class:`ExportedGroupPool`.
* :func:`export`: a whole model in standard torch ops only (no ``torch.ops.gconv_ext``), for
  ``torch.onnx.export`` and other deployment.
* :func:`check_exact`: is 90-degree equivariance exact at this input size (strides and pools)?
* :func:`equivariance_error`: measure ``f(g x)`` against ``g f(x)``.
"""
from .conv import ExportedGroupConv, GroupConv2d, LiftingConv2d, export
from .equivariance import EquivarianceError, equivariance_error
from .exactness import EquivarianceWarning, ExactnessReport, LayerCheck, check_exact
from .layers import (ExportedGroupPool, ExportedGroupSpatialPool, GroupAvgPool2d, GroupBatchNorm2d, GroupDropout,
                     GroupLayerNorm, GroupMaxPool2d, GroupPool, InvariantPool)

__all__ = [
    "LiftingConv2d",
    "GroupConv2d",
    "ExportedGroupConv",
    "export",
    "GroupBatchNorm2d",
    "GroupLayerNorm",
    "GroupPool",
    "GroupMaxPool2d",
    "GroupAvgPool2d",
    "GroupDropout",
    "InvariantPool",
    "ExportedGroupPool",
    "ExportedGroupSpatialPool",
    "check_exact",
    "ExactnessReport",
    "LayerCheck",
    "EquivarianceWarning",
    "equivariance_error",
    "EquivarianceError",
]
