"""Functional API: filter transforms (custom C++/CUDA operators) and their pure-PyTorch references."""
from . import reference
from .filter_transform import group_filter, lift_filter

__all__ = ["lift_filter", "group_filter", "reference"]
