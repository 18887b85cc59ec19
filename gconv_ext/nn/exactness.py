"""Is a network's equivariance to 90-degree rotations (and reflections) exact at a given input size?

A strided layer samples its output on a grid. Rotating the input by 90 degrees about the image centre maps
that grid onto itself only when the grid is centred, i.e. when the last window ends exactly at the last
input pixel. For a layer with input size ``i``, kernel ``k``, stride ``s``, padding ``p`` and dilation ``d``
(per spatial dim) the condition is::

    (i + 2p - d(k - 1) - 1) mod s == 0        (i.e. (i' - k') mod s == 0 for the padded size i' = i + 2p
                                               and the dilated kernel k' = d(k - 1) + 1)

Stride-1 layers always satisfy it. Otherwise the output is equivariant only up to a one-pixel shift of the
sampling grid, which compounds with depth (Edixhoven et al., "Using and Abusing Equivariance", 2023:
an MNIST GCNN with one 2x2/2 pool is exact at 26, 28, 30 and inexact at 27, 29).

* :func:`check_exact` runs the model once on a dummy input, records every subsampling layer in forward
  order and returns an :class:`ExactnessReport`.
* The strided equivariant convolutions and the group pools of :mod:`gconv_ext.nn` also warn once per
  module (:class:`EquivarianceWarning`) when a forward breaks the rule.
"""
from __future__ import annotations

import contextlib
import dataclasses
import warnings
from typing import Iterator, Sequence

import torch
from torch import nn

from ..groups import Group, group_from_name

__all__ = ["EquivarianceWarning", "LayerCheck", "ExactnessReport", "check_exact", "subsampling_residue",
           "exact_sizes"]


class EquivarianceWarning(UserWarning):
    """A layer's geometry breaks exact equivariance to 90-degree rotations and reflections."""


def subsampling_residue(i: int, k: int, s: int, p: int = 0, d: int = 1) -> int:
    """``(i + 2p - d(k - 1) - 1) mod s``: 0 when a strided layer keeps 90-degree equivariance exact."""
    return (i + 2 * p - d * (k - 1) - 1) % s


def exact_sizes(k: int, s: int, p: int = 0, d: int = 1, near: int | None = None, count: int = 2) -> list[int]:
    """Input sizes for which the layer is exact (the ``count`` nearest to ``near``, or the smallest)."""
    first = max(1, d * (k - 1) + 1 - 2 * p)
    first += (-subsampling_residue(first, k, s, p, d)) % s
    if near is None:
        return [first + j * s for j in range(count)]
    below = near - subsampling_residue(near, k, s, p, d)
    cands = sorted({c for c in (below, below + s, below - s) if c >= first}, key=lambda c: (abs(c - near), c))
    return cands[:count]


@dataclasses.dataclass(frozen=True)
class LayerCheck:
    """One recorded layer: its qualified name, type, input size and geometry (each a (h, w) pair)."""

    name: str
    kind: str
    input_size: tuple[int, int]
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]

    @property
    def residues(self) -> tuple[int, int]:
        return tuple(subsampling_residue(i, k, s, p, d) for i, k, s, p, d in  # type: ignore[return-value]
                     zip(self.input_size, self.kernel_size, self.stride, self.padding, self.dilation))

    @property
    def subsampling(self) -> bool:
        return any(s > 1 for s in self.stride)

    @property
    def exact(self) -> bool:
        return all(r == 0 for r in self.residues)

    def _label(self) -> str:
        return self.name if self.name.startswith(self.kind) else f"layer '{self.name}' ({self.kind})"

    def message(self) -> str:
        h, w = self.input_size
        geom = (f"kernel {_fmt(self.kernel_size)}, stride {_fmt(self.stride)}, padding {_fmt(self.padding)}, "
                f"dilation {_fmt(self.dilation)}")
        if self.exact:
            return f"{self._label()}: input {h}x{w}, {geom}: exact"
        k, s, p, d = (t[0] for t in (self.kernel_size, self.stride, self.padding, self.dilation))
        hint = ", ".join(str(c) for c in exact_sizes(k, s, p, d, near=h))
        return (f"{self._label()}: input {h}x{w}, {geom}: (i + 2p - d(k-1) - 1) mod s = "
                f"{_fmt(self.residues)} != 0, so 90-degree rotation equivariance is NOT exact here "
                f"(exact input sizes for this layer near {h}: {hint})")


def _fmt(t: tuple[int, int]) -> str:
    return str(t[0]) if t[0] == t[1] else f"{t[0]}x{t[1]}"


@dataclasses.dataclass
class ExactnessReport:
    """The result of :func:`check_exact`: every layer with a stride or pooling window, in forward order."""

    input_size: tuple[int, ...]
    group: Group | None
    layers: list[LayerCheck]
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def offending(self) -> list[LayerCheck]:
        return [layer for layer in self.layers if not layer.exact]

    @property
    def exact(self) -> bool:
        return not self.offending and not self.notes

    def __bool__(self) -> bool:
        return self.exact

    def __str__(self) -> str:
        what = f"{self.group.name} " if self.group is not None else ""
        head = (f"{what}equivariance at input {tuple(self.input_size)}: "
                f"{'EXACT' if self.exact else 'NOT exact'} ({len(self.layers)} strided/pooling layer(s) checked, "
                f"{len(self.offending)} offending)")
        lines = [head] + [f"  - {layer.message()}" for layer in self.offending] + [f"  - {n}" for n in self.notes]
        return "\n".join(lines)


def _geometry(module: nn.Module):
    """(kernel, stride, padding, dilation) pairs for a subsampling-capable layer, else None."""
    geom = getattr(module, "_subsampling_geometry", None)
    if geom is not None:
        return geom()
    if isinstance(module, nn.Conv2d) and not isinstance(module.padding, str):
        return module.kernel_size, module.stride, module.padding, module.dilation
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
        pair = nn.modules.utils._pair
        dil = module.dilation if isinstance(module, nn.MaxPool2d) else 1
        return pair(module.kernel_size), pair(module.stride), pair(module.padding), pair(dil)
    return None


_suppress_depth = 0


@contextlib.contextmanager
def _suppress_module_warnings() -> Iterator[None]:
    global _suppress_depth
    _suppress_depth += 1
    try:
        yield
    finally:
        _suppress_depth -= 1


def warn_if_inexact(module: nn.Module, x: torch.Tensor) -> None:
    """Called by the strided layers of gconv_ext.nn: warn once per module on an inexact input size."""
    if _suppress_depth or getattr(module, "_inexact_warned", False) or torch.compiler.is_compiling():
        return
    k, s, p, d = module._subsampling_geometry()  # type: ignore[operator]
    if s == (1, 1):
        return
    check = LayerCheck(f"{type(module).__name__}({module.extra_repr()})", type(module).__name__,
                       (int(x.shape[-2]), int(x.shape[-1])), k, s, p, d)
    if not check.exact:
        module._inexact_warned = True
        warnings.warn(f"gconv_ext: {check.message()}. Use gconv_ext.nn.check_exact(model, input_size) to check "
                      "a whole network.", EquivarianceWarning, stacklevel=3)


def check_exact(model: nn.Module, input_size: Sequence[int] | torch.Tensor, group: Group | str | None = None
                ) -> ExactnessReport:
    """Run ``model`` once on zeros of shape ``input_size`` (the full input shape, batch included, e.g.
    ``(1, 1, 28, 28)``; or an example tensor) and check every strided conv and pooling layer.

    The model runs in eval mode under ``no_grad`` (so batch-norm statistics are untouched) and is put back
    in its previous mode. ``group`` (optional) names the symmetry in the report; for groups whose only
    rotation is by 180 degrees non-square inputs are fine, otherwise they are reported too.
    """
    group = group_from_name(group) if group is not None else None
    if isinstance(input_size, torch.Tensor):
        example = input_size
    else:
        if not all(isinstance(n, int) and n >= 1 for n in input_size) or len(input_size) < 3:
            raise ValueError(f"check_exact: input_size must be the full input shape (batch included), "
                             f"got {input_size!r}")
        param = next(model.parameters(), None)
        example = torch.zeros(tuple(input_size), dtype=param.dtype if param is not None else torch.float32,
                              device=param.device if param is not None else "cpu")
    records: list[LayerCheck] = []
    handles = []

    def hook(name):
        def pre(module, args):
            x = args[0]
            k, s, p, d = (nn.modules.utils._pair(v) for v in _geometry(module))
            records.append(LayerCheck(name or type(module).__name__, type(module).__name__,
                                      (int(x.shape[-2]), int(x.shape[-1])), k, s, p, d))
        return pre

    wrappers: list[str] = []  # layers that report their own geometry (e.g. ExportedGroupConv): skip their insides
    for name, module in model.named_modules():
        if _geometry(module) is None or any(name.startswith(w + ".") for w in wrappers):
            continue
        if hasattr(module, "_subsampling_geometry"):
            wrappers.append(name)
        handles.append(module.register_forward_pre_hook(hook(name)))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad(), _suppress_module_warnings():
            model(example)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    layers = [r for r in records if r.subsampling]
    notes = []
    h, w = example.shape[-2:]
    if h != w and (group is None or group.rotations > 2):
        notes.append(f"the input is not square ({h}x{w}): 90-degree rotations do not map it onto itself")
    return ExactnessReport(tuple(example.shape), group, layers, notes)
