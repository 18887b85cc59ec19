"""Functional API: filter transforms (custom C++/CUDA operators), group convolutions and pooling, and
their pure-PyTorch references."""
from . import reference
from .conv import group_conv2d, group_pool, lifting_conv2d
from .filter_transform import group_filter, lift_filter
from .pool import group_avg_pool2d, group_max_pool2d

__all__ = ["lift_filter", "group_filter", "lifting_conv2d", "group_conv2d", "group_pool", "group_max_pool2d",
           "group_avg_pool2d", "reference"]
