"""Implicit equivariance (IEN): an equivariance loss on the orbit-pooled features of a plain CNN.

The channels of a monitored layer are grouped into *orbits* of consecutive channels (:class:`OrbitSpec`);
max-pooling each orbit (:func:`orbit_pool`) gives features that an equivariant network would transform
like planar images. Each batch is doubled with a transformed copy ``T x`` (a random group element per
sample) and at every monitored layer the loss compares ``pool(f(x))`` with ``T^-1 pool(f(T x))``:

    total = CE(model(x), y) + CE(model(T x), y)  (the mean over the doubled batch)
            + beta * sum_layers MSE(pool(f_l(x)), T^-1 pool(f_l(T x)))

``beta = 0`` is the plain-CNN baseline trained on the same augmented batches.

Channel ordering: a group network's feature map ``[B, C, |G|, H, W]`` flattened to ``C * |G|`` channels
(``x.flatten(1, 2)``, channel-major) puts the |G| slices of one field next to each other, so
``OrbitSpec.uniform(C * |G|, |G|)`` matches it and the loss is zero (up to rounding) for an exactly
equivariant network. 5-D outputs of monitored layers are flattened that way automatically.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..groups import Group, group_from_name

__all__ = ["OrbitSpec", "orbit_pool", "EquivarianceLoss", "IENOutput", "TRANSFORMS", "sample_transforms",
           "apply_transform", "invert_transform"]

#: The transform groups, by name: C4 (quarter turns), D4 (quarter turns and reflections), C8 (eighth turns,
#: odd multiples of 45 degrees interpolated). An element is a group index (``m * N + r``: reflect ``m`` times,
#: then rotate by ``r * 360 / N`` degrees), applied with :meth:`gconv_ext.groups.Group.act_on_images`.
TRANSFORMS: dict[str, Group] = {"C4": Group(4), "D4": Group(4, True), "C8": Group(8)}

#: The names used before the transforms were group elements (still accepted, with a DeprecationWarning).
DEPRECATED_TRANSFORM_NAMES = {"rot90": "C4", "rot90+flip": "D4", "rot45": "C8"}


def transform_group(kind: str | Group) -> Group:
    """The group of an IEN transform family: ``'C4'``, ``'D4'`` or ``'C8'`` (or the Group itself); the old
    names ``'rot90'``, ``'rot90+flip'`` and ``'rot45'`` are read as those, with a DeprecationWarning."""
    if isinstance(kind, str) and kind in DEPRECATED_TRANSFORM_NAMES:
        new = DEPRECATED_TRANSFORM_NAMES[kind]
        warnings.warn(f"IEN transforms {kind!r} is now called {new!r} (the group name)", DeprecationWarning,
                      stacklevel=3)
        kind = new
    try:
        group = group_from_name(kind)
    except ValueError:
        group = None
    if group not in TRANSFORMS.values():
        raise ValueError(f"transforms must be one of {list(TRANSFORMS)}, got {kind!r}")
    return group


@dataclasses.dataclass(frozen=True)
class OrbitSpec:
    """Orbit sizes of consecutive channels, in channel order: ``sizes = (4, 4, 2, 1)`` means channels
    0-3, 4-7, 8-9 and 10 are four orbits."""

    sizes: tuple[int, ...]

    def __post_init__(self) -> None:
        sizes = tuple(self.sizes)
        if not sizes or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes):
            raise ValueError(f"OrbitSpec: sizes must be a non-empty sequence of ints >= 1, got {self.sizes!r}")
        object.__setattr__(self, "sizes", sizes)

    @classmethod
    def uniform(cls, channels: int, size: int) -> "OrbitSpec":
        """``channels / size`` orbits of ``size`` channels (``channels`` must be a multiple of ``size``)."""
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"OrbitSpec.uniform: size must be an int >= 1, got {size!r}")
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1 or channels % size:
            raise ValueError(f"OrbitSpec.uniform: channels must be a positive multiple of size {size}, "
                             f"got {channels!r}")
        return cls((size,) * (channels // size))

    @classmethod
    def from_ratios(cls, ratios: Sequence[float], sizes: Sequence[int], total_channels: int) -> "OrbitSpec":
        """Split ``total_channels`` by ``ratios`` into parts of orbits of ``sizes`` (the IEN paper's
        heterogeneous orbits, e.g. ``ratios=(8, 2, 1), sizes=(4, 2, 1)``).

        Every part but the last gets ``round(total * r_i / sum(r) / size_i)`` orbits; the last part takes the
        remaining channels, which must be a non-negative multiple of its orbit size. Parts are laid out in
        the given order. Example: 44 channels, 8:2:1 into 4, 2, 1 -> 8 orbits of 4, 4 of 2, 4 of 1.
        """
        if len(ratios) != len(sizes) or not ratios:
            raise ValueError(f"OrbitSpec.from_ratios: ratios and sizes must have the same non-zero length, "
                             f"got {list(ratios)} and {list(sizes)}")
        if any(not isinstance(r, (int, float)) or isinstance(r, bool) or not r > 0 for r in ratios):
            raise ValueError(f"OrbitSpec.from_ratios: ratios must be positive numbers, got {list(ratios)}")
        if isinstance(total_channels, bool) or not isinstance(total_channels, int) or total_channels < 1:
            raise ValueError(f"OrbitSpec.from_ratios: total_channels must be an int >= 1, got {total_channels!r}")
        total_ratio = math.fsum(ratios)
        out: list[int] = []
        used = 0
        for i, (r, s) in enumerate(zip(ratios, sizes)):
            if isinstance(s, bool) or not isinstance(s, int) or s < 1:
                raise ValueError(f"OrbitSpec.from_ratios: orbit sizes must be ints >= 1, got {list(sizes)}")
            if i < len(sizes) - 1:
                n = round(total_channels * r / total_ratio / s)
            else:
                rest = total_channels - used
                if rest < 0 or rest % s:
                    raise ValueError(f"OrbitSpec.from_ratios: {total_channels} channels cannot be split "
                                     f"{':'.join(map(str, ratios))} into orbits of {list(sizes)}: {rest} channels "
                                     f"left for orbits of size {s}")
                n = rest // s
            out += [s] * n
            used += n * s
        return cls(tuple(out))

    @property
    def channels(self) -> int:
        """The number of channels covered."""
        return sum(self.sizes)

    @property
    def n_orbits(self) -> int:
        return len(self.sizes)

    def runs(self) -> list[tuple[int, int, int]]:
        """Maximal runs of equal-size orbits as ``(first_channel, orbit_size, n_orbits)``."""
        out: list[tuple[int, int, int]] = []
        start = 0
        for s in self.sizes:
            if out and out[-1][1] == s and out[-1][0] + out[-1][1] * out[-1][2] == start:
                out[-1] = (out[-1][0], s, out[-1][2] + 1)
            else:
                out.append((start, s, 1))
            start += s
        return out


def orbit_pool(feature: torch.Tensor, spec: OrbitSpec) -> torch.Tensor:
    """Max over each orbit's channels: ``[B, C, ...] -> [B, n_orbits, ...]`` (any trailing dims, e.g.
    ``H, W``; ``[B, C]`` for fully connected features)."""
    if feature.dim() < 2 or feature.shape[1] != spec.channels:
        raise ValueError(f"orbit_pool: feature must have {spec.channels} channels on dim 1 for this OrbitSpec, "
                         f"got shape {tuple(feature.shape)}")
    parts = []
    for start, size, n in spec.runs():
        chunk = feature.narrow(1, start, size * n)
        parts.append(chunk if size == 1 else chunk.unflatten(1, (n, size)).amax(dim=2))
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def sample_transforms(batch: int, kind: str | Group, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random non-identity elements of the transform group ``kind`` (see :data:`TRANSFORMS`): int64 ``[batch]``
    group indices, uniform over the non-identity elements."""
    return torch.randint(1, transform_group(kind).order, (batch,), generator=generator)  # never the identity


def apply_transform(x: torch.Tensor, elements: torch.Tensor, kind: str | Group) -> torch.Tensor:
    """``T x`` per sample, ``T`` = ``elements[i]`` of the group ``kind``: reflect, then rotate counter-clockwise
    (:meth:`~gconv_ext.groups.Group.act_on_images`: exact at multiples of 90 degrees, bilinear otherwise)."""
    return transform_group(kind).act_on_images(elements, x)


def invert_transform(y: torch.Tensor, elements: torch.Tensor, kind: str | Group) -> torch.Tensor:
    """``T^-1 y`` on planar maps ``[B, C, H, W]``: rotate back, then reflect. Non-spatial ``[B, C]`` features
    are returned unchanged (they carry no plane to transform)."""
    if y.dim() == 2:
        return y
    if y.dim() != 4:
        raise ValueError(f"invert_transform: expected [B, C, H, W] or [B, C], got shape {tuple(y.shape)}")
    return transform_group(kind).act_on_images(elements, y, inverse=True)


@dataclasses.dataclass
class IENOutput:
    """One evaluation of :class:`EquivarianceLoss`: ``loss`` (differentiable total), ``task`` (cross-entropy
    over the doubled batch), ``mse`` (per monitored layer, floats for logging), ``logits`` of the doubled
    batch (first half: ``x``; second half: ``T x``) and the sampled ``elements``."""

    loss: torch.Tensor
    task: float
    mse: dict[str, float]
    logits: torch.Tensor
    elements: torch.Tensor


class EquivarianceLoss(nn.Module):
    """The IEN training objective for ``model`` (see the module docstring).

    Args:
        model: the network; its monitored layers are found by name in ``model.named_modules()``.
        layers: names of the monitored layers.
        specs: one :class:`OrbitSpec` for every layer, a sequence (one per layer) or a mapping name -> spec.
        transforms: the group of the transforms, ``'C4'``, ``'D4'`` or ``'C8'`` (odd multiples of 45 degrees
            interpolated; the inverse rotation of the pooled features interpolates too, so the MSE has a floor
            even for an equivariant network). The old names ``'rot90'``, ``'rot90+flip'``, ``'rot45'`` still
            work, with a DeprecationWarning.
        beta: weight of the equivariance term (``>= 0``); 0 gives the plain baseline on the same batches.
        generator: optional CPU ``torch.Generator`` for the random transforms.

    Call as ``out = loss_fn(x, y)`` and backpropagate ``out.loss``.
    """

    def __init__(self, model: nn.Module, layers: Sequence[str], specs: OrbitSpec | Sequence[OrbitSpec]
                 | Mapping[str, OrbitSpec], transforms: str = "C4", beta: float = 1.0,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.group = transform_group(transforms)
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not beta >= 0 or math.isinf(beta):
            raise ValueError(f"beta must be a finite float >= 0, got {beta!r}")
        layers = list(layers)
        if not layers:
            raise ValueError("layers must name at least one monitored layer")
        modules = dict(model.named_modules())
        missing = [n for n in layers if n not in modules]
        if missing:
            raise ValueError(f"unknown layer name(s) {missing}; see dict(model.named_modules())")
        if isinstance(specs, OrbitSpec):
            spec_map = {n: specs for n in layers}
        elif isinstance(specs, Mapping):
            spec_map = dict(specs)
            if set(spec_map) != set(layers):
                raise ValueError(f"specs must have one OrbitSpec per layer {layers}, got keys {list(spec_map)}")
        else:
            specs = list(specs)
            if len(specs) != len(layers):
                raise ValueError(f"specs: {len(specs)} OrbitSpecs for {len(layers)} layers")
            spec_map = dict(zip(layers, specs))
        if not all(isinstance(s, OrbitSpec) for s in spec_map.values()):
            raise ValueError("specs must be OrbitSpec instances")
        self.model = model
        self.layers = layers
        self.specs = spec_map
        self.transforms = self.group.name
        self.beta = float(beta)
        self.generator = generator
        self._modules_by_name = {n: modules[n] for n in layers}

    def _run(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        feats: dict[str, torch.Tensor] = {}
        handles = []

        def hook(name: str):
            def fn(_module, _args, output):
                if name in feats:
                    raise RuntimeError(f"EquivarianceLoss: layer {name!r} ran twice in one forward")
                feats[name] = output
            return fn

        for n, m in self._modules_by_name.items():
            handles.append(m.register_forward_hook(hook(n)))
        try:
            logits = self.model(x)
        finally:
            for h in handles:
                h.remove()
        return logits, feats

    def forward(self, x: torch.Tensor, y: torch.Tensor, elements: torch.Tensor | None = None) -> IENOutput:
        """``elements`` (int64 ``[B]`` group indices, as from :func:`sample_transforms`) fixes the transforms; None draws
        them from :attr:`generator`. (The training loop draws them for the global batch and passes each DDP
        rank its slice, so every rank and a single process see the same transforms.)"""
        if x.dim() != 4 or x.shape[-1] != x.shape[-2]:
            raise ValueError(f"x must be a square image batch [B, C, H, H], got shape {tuple(x.shape)}")
        b = x.shape[0]
        if elements is None:
            elements = sample_transforms(b, self.group, self.generator)
        else:
            if (not isinstance(elements, torch.Tensor) or elements.shape != (b,) or elements.dtype != torch.int64
                    or bool((elements < 0).any()) or bool((elements >= self.group.order).any())):
                raise ValueError(f"elements must be int64 [{b}] element indices of {self.group.name} (see "
                                 f"sample_transforms), got {getattr(elements, 'dtype', type(elements).__name__)} "
                                 f"{tuple(getattr(elements, 'shape', ()))}")
        xx = torch.cat([x, apply_transform(x, elements, self.group)])
        logits, feats = self._run(xx)
        task = F.cross_entropy(logits, torch.cat([y, y]))
        total = task
        mse: dict[str, float] = {}
        for name in self.layers:
            if name not in feats:
                raise RuntimeError(f"EquivarianceLoss: monitored layer {name!r} did not run in the forward")
            f = feats[name]
            if f.dim() == 5:  # a group map [B, C, |G|, H, W]: channel-major C * |G| channels
                f = f.flatten(1, 2)
            pooled = orbit_pool(f, self.specs[name])
            ref, moved = pooled[:b], invert_transform(pooled[b:], elements, self.group)
            term = F.mse_loss(ref, moved)
            mse[name] = term.item()
            if self.beta:
                total = total + self.beta * term
        return IENOutput(total, task.item(), mse, logits, elements)
