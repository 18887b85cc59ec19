"""gconv_ext: C++/CUDA-accelerated group-equivariant convolutions (C_N and D_N) for PyTorch.

Tensor layout of group feature maps: ``(B, C, |G|, H, W)``, plain tensors.
"""
from . import groups, nn, ops
from ._extension import build_info
from .malloc import tune_malloc
from .groups import CyclicGroup, DihedralGroup, Group, group_from_name
from .ops import group_filter, lift_filter

__version__ = "0.1.0"

__all__ = [
    "Group",
    "CyclicGroup",
    "DihedralGroup",
    "group_from_name",
    "lift_filter",
    "group_filter",
    "build_info",
    "tune_malloc",
    "groups",
    "ops",
    "nn",
]
