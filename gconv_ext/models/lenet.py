"""LeNets for FRI/FRII radio-galaxy classification (Scaife & Porter 2021, "Fanaroff-Riley classification of
radio galaxies using group-equivariant convolutional neural networks", the E2CNNRadGal code).

* :class:`VanillaLeNet`: conv 1->6 (5x5, padding 1) -> ReLU -> max pool 2 -> conv 6->16 (5x5, padding 1) ->
  ReLU -> max pool 2 -> FC 120 -> ReLU -> FC 84 -> ReLU -> dropout 0.5 -> FC 2.
* :class:`EquivariantLeNet`: the same with a lifting convolution to 6 regular C_N/D_N fields, a group
  convolution to 16 fields, spatial max pools on the group maps, and a max over the group axis
  (:class:`gconv_ext.nn.GroupPool`) to 16 invariant channels before the same FC head.
* :func:`lenet`: either by name, ``lenet("vanilla")``, ``lenet("C4")``, ``lenet("D16")`` (any C_N / D_N).

The paper's images are 150x150, padded to 151x151 (one zero row at the bottom and one zero column at the
right, :func:`pad_to_odd`) so that the rotation centre is a pixel centre. Sizes at 151:
151 -> conv -> 149 -> pool -> 74 -> conv -> 72 -> pool -> 36, so ``fc1`` has ``16 * 36 * 36`` inputs.

**Exactness finding.** A 2x2/2 pool keeps 90-degree equivariance exact only when its input size is even
(:func:`gconv_ext.nn.check_exact`): at 151 the first pool sees 149 and the network is *not* exactly
invariant to 90-degree rotations of its padded input, even for C4/D4 (the tests measure the logit error).
The exact input sizes of this layout are ``n = 2 mod 4`` (both pools see even sizes), e.g. the unpadded 150:
150 -> 148 -> 74 -> 72 -> 36, same FC size. Padding to 151 buys a pixel-centred rotation axis, which matters
only for interpolated rotations, and costs the exactness of the 90-degree ones.

Pooling: the paper used antialiased (blur-then-subsample) pooling; here it is a plain 2x2/2 max pool, per
group slice (:class:`gconv_ext.nn.GroupMaxPool2d`), which is what the exactness analysis above is about.
For N other than 1, 2 and 4 the filters are disk-masked (``disk_mask=True``), which helps their equivariance
under interpolated rotations.
"""
from __future__ import annotations

import inspect
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..groups import Group, group_from_name
from ..nn import GroupConv2d, GroupMaxPool2d, GroupPool, LiftingConv2d
from .common import check_int

__all__ = ["VanillaLeNet", "EquivariantLeNet", "pad_to_odd", "lenet_feature_size", "lenet", "lenet_group_name",
           "group_name_from_base", "LEGACY_BASES"]


def pad_to_odd(images: torch.Tensor) -> torch.Tensor:
    """Pad ``[..., H, W]`` images with one zero row at the bottom and one zero column at the right
    (150 -> 151), as the paper's ``transforms.Pad((0, 0, 1, 1))``."""
    return F.pad(images, (0, 1, 0, 1))


def lenet_feature_size(input_size: int, kernel_size: int = 5) -> int:
    """Side of the last feature map: two [conv (padding 1) -> 2x2/2 max pool] stages."""
    s = input_size
    for _ in range(2):
        s = (s - kernel_size + 3) // 2
    return s


def _check_size(input_size: int, kernel_size: int) -> int:
    z = lenet_feature_size(check_int("input_size", input_size), check_int("kernel_size", kernel_size))
    if z < 1:
        raise ValueError(f"input_size {input_size} is too small for the LeNet (feature map {z}x{z})")
    return z


class _Head(nn.Sequential):
    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__(nn.Flatten(), nn.Linear(in_features, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                         nn.Dropout(0.5), nn.Linear(84, num_classes))


class VanillaLeNet(nn.Module):
    """The plain LeNet. ``input_size`` is the side of the (padded) input, 151 for the paper's images."""

    def __init__(self, in_channels: int = 1, num_classes: int = 2, input_size: int = 151, kernel_size: int = 5) -> None:
        super().__init__()
        z = _check_size(input_size, kernel_size)
        self.input_size = input_size
        self.features = nn.Sequential(
            nn.Conv2d(check_int("in_channels", in_channels), 6, kernel_size, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, kernel_size, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = _Head(16 * z * z, check_int("num_classes", num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class EquivariantLeNet(nn.Module):
    """The C_N / D_N LeNet: 6 and 16 regular fields, group max pool to 16 channels, the vanilla FC head."""

    def __init__(self, group: Group | str = "C4", in_channels: int = 1, num_classes: int = 2, input_size: int = 151,
                 kernel_size: int = 5, disk_mask: bool | None = None) -> None:
        super().__init__()
        self.group = group_from_name(group)
        z = _check_size(input_size, kernel_size)
        if disk_mask is None:
            disk_mask = self.group.rotations not in (1, 2, 4)
        self.input_size = input_size
        self.features = nn.Sequential(
            LiftingConv2d(check_int("in_channels", in_channels), 6, kernel_size, self.group, padding=1,
                          disk_mask=disk_mask),
            nn.ReLU(), GroupMaxPool2d(2),
            GroupConv2d(6, 16, kernel_size, self.group, padding=1, disk_mask=disk_mask),
            nn.ReLU(), GroupMaxPool2d(2),
            GroupPool("max"))
        self.head = _Head(16 * z * z, check_int("num_classes", num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


#: The pre-group-name spellings of :func:`lenet`'s ``base`` (``'CN'``/``'DN'`` with ``nrot``), still read.
LEGACY_BASES = ("vanilla", "CN", "DN")


def group_name_from_base(base: str, nrot: Any = 4, what: str = "base") -> str:
    """The group name of the deprecated ``base``/``nrot`` spelling: ``('CN', 4)`` -> ``'C4'``, ``('DN', 16)`` ->
    ``'D16'``, ``('vanilla', any nrot)`` -> ``'vanilla'``. ValueError naming ``what`` (or ``nrot``) for a bad value."""
    if not isinstance(base, str) or base not in LEGACY_BASES:
        raise ValueError(f"{what} must be 'vanilla', 'CN' or 'DN', got {base!r}")
    if base == "vanilla":
        return "vanilla"
    return f"{base[0]}{check_int('nrot', nrot)}"


def lenet_group_name(group: Group | str) -> str:
    """``'vanilla'`` or the canonical name of a group (``'c4'`` -> ``'C4'``, a :class:`Group` -> its name).
    ValueError naming ``group`` for anything else (``'Z4'``, ``'C0'``, ``'CN'``)."""
    if isinstance(group, str) and group.strip().lower() == "vanilla":
        return "vanilla"
    try:
        return group_from_name(group.strip() if isinstance(group, str) else group).name
    except ValueError:
        raise ValueError(f"group must be 'vanilla', a group name C<N> or D<N> with N >= 1 (e.g. 'C4', 'D16') "
                         f"or a Group, got {group!r}") from None


def _lenet(group: Group | str = "vanilla", in_channels: int = 1, num_classes: int = 2, input_size: int = 151
           ) -> nn.Module:
    name = lenet_group_name(group)
    if name == "vanilla":
        return VanillaLeNet(in_channels, num_classes, input_size)
    return EquivariantLeNet(group_from_name(name), in_channels, num_classes, input_size)


def _legacy_signature(base: str, nrot: int = 4, in_channels: int = 1, num_classes: int = 2,
                      input_size: int = 151) -> None:
    """The argument layout of :func:`lenet` before group names (for binding a deprecated call)."""


_LEGACY_SIGNATURE = inspect.signature(_legacy_signature)


def lenet(*args: Any, **kwargs: Any) -> nn.Module:
    """``lenet(group="vanilla", in_channels=1, num_classes=2, input_size=151)``: the LeNet of ``group``, a
    group name (``"C4"``, ``"D16"``, any C_N / D_N), a :class:`~gconv_ext.groups.Group`, or ``"vanilla"``
    (:class:`VanillaLeNet`); the equivariant ones are :class:`EquivariantLeNet`. ValueError naming the
    argument for a bad value.

    Deprecated: the former spelling ``lenet(base, nrot=4, in_channels, num_classes, input_size)`` with
    ``base`` ``'vanilla'`` | ``'CN'`` | ``'DN'`` (``lenet("CN", 4)``, ``lenet(base="DN", nrot=8)``) builds the
    same model with a FutureWarning naming the new spelling. A call is read the old way when its first
    argument is ``'CN'`` or ``'DN'`` or it passes ``base=`` or ``nrot=``; ``lenet("vanilla", 4)`` is the
    new spelling (``in_channels=4``)."""
    legacy = (bool(args) and isinstance(args[0], str) and args[0] in ("CN", "DN")) or "base" in kwargs \
        or "nrot" in kwargs
    if not legacy:
        return _lenet(*args, **kwargs)
    if "group" in kwargs:
        raise ValueError("lenet: give group (e.g. 'C4') or the deprecated base/nrot, not both")
    try:
        bound = _LEGACY_SIGNATURE.bind(*args, **kwargs)
    except TypeError as exc:
        raise TypeError(f"lenet: {exc}") from None
    bound.apply_defaults()
    a = bound.arguments
    if isinstance(a["base"], (str, Group)) and a["base"] not in LEGACY_BASES:
        try:
            lenet_group_name(a["base"])
        except ValueError:
            pass
        else:
            raise ValueError(f"lenet: nrot goes only with the deprecated base='CN' / 'DN'; the group "
                             f"{a['base']!r} already names N: lenet({lenet_group_name(a['base'])!r})")
    name = group_name_from_base(a["base"], a["nrot"])
    old = f"base={a['base']!r}" + ("" if a["base"] == "vanilla" else f", nrot={a['nrot']!r}")
    warnings.warn(f"lenet({old}) is deprecated; use lenet({name!r})", FutureWarning, stacklevel=2)
    return _lenet(name, a["in_channels"], a["num_classes"], a["input_size"])


lenet.__signature__ = inspect.Signature([  # type: ignore[attr-defined]
    *inspect.signature(_lenet).parameters.values(),
    inspect.Parameter("base", inspect.Parameter.KEYWORD_ONLY, default=None, annotation="str | None"),
    inspect.Parameter("nrot", inspect.Parameter.KEYWORD_ONLY, default=None, annotation="int | None")],
    return_annotation=inspect.signature(_lenet).return_annotation)
