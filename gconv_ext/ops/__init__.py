"""Functional API, one module per op family (each holds its public functions, then the fake kernels and
autograd of its C++/CUDA operators): filter transforms, lifting and group convolutions, group pooling and
spatial pooling, the fused layer norm + ReLU + max pool; and their pure-PyTorch references."""
from . import reference
from .conv import group_conv2d, lifting_conv2d
from .filter_transform import group_filter, lift_filter
from .group_pool import group_pool
from .norm_pool import group_layer_norm_relu_max_pool2d
from .spatial_pool import group_avg_pool2d, group_max_pool2d

__all__ = ["lift_filter", "group_filter", "lifting_conv2d", "group_conv2d", "group_pool", "group_max_pool2d",
           "group_avg_pool2d", "group_layer_norm_relu_max_pool2d", "reference"]
