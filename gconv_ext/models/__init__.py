"""Models: the study's GCNN, the spatial transformer network (STN), the plain CNN baseline, the IEN CNN
and the radio-galaxy LeNets."""
from gconv_ext.models.cnn import CNN, GCNN_C4_4_16_PARAMS, cnn_for_params, cnn_parameter_count
from gconv_ext.models.gcnn import GCNN, GCNN_PRESETS, gcnn_parameter_count, gcnn_preset
from gconv_ext.models.common import count_parameters, layer_norm_chw
from gconv_ext.models.ien import IENCNN, ien_cnn, ien_cnn_for_params, ien_cnn_parameter_count, ien_loss
from gconv_ext.models.lenet import EquivariantLeNet, VanillaLeNet, lenet, lenet_feature_size, pad_to_odd
from gconv_ext.models.weights import available_pretrained, pretrained, pretrained_info
from gconv_ext.models.stn import (STN, EquivariantLocalizationNet, LocalizationNet, affine_warp, rotation_theta, stn_for_params,
                                  stn_parameter_count, theta_rotation_angle)

__all__ = [
    "GCNN",
    "GCNN_PRESETS",
    "gcnn_preset",
    "gcnn_parameter_count",
    "CNN",
    "GCNN_C4_4_16_PARAMS",
    "cnn_for_params",
    "cnn_parameter_count",
    "count_parameters",
    "layer_norm_chw",
    "STN",
    "LocalizationNet",
    "EquivariantLocalizationNet",
    "affine_warp",
    "rotation_theta",
    "theta_rotation_angle",
    "stn_for_params",
    "stn_parameter_count",
    "IENCNN",
    "ien_cnn",
    "ien_loss",
    "ien_cnn_for_params",
    "ien_cnn_parameter_count",
    "VanillaLeNet",
    "EquivariantLeNet",
    "lenet",
    "lenet_feature_size",
    "pad_to_odd",
    "available_pretrained",
    "pretrained",
    "pretrained_info",
]
