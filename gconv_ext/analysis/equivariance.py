"""Layer-wise equivariance analysis, after Edixhoven, Lengyel and van Gemert, "Using and Abusing
Equivariance" (ICCVw 2023).

For a network ``f`` and a group element ``g`` the error of a layer with output ``f_l`` is measured by
comparing the feature map of the transformed input, ``f_l(g x)``, with the transformed feature map
``g f_l(x)``:

* 5-D group maps ``[B, C, |G|, H, W]``: ``g`` rotates/reflects the plane and permutes the group axis
  (the regular representation, :meth:`gconv_ext.groups.Group.act`);
* 4-D planar maps ``[B, C, H, W]``: ``g`` acts on the plane only;
* other outputs (e.g. logits) are expected to be invariant (:func:`invariance_error`).

Two numbers per layer:

* ``relative``: ``||f_l(g x) - g f_l(x)|| / ||g f_l(x)||`` (Frobenius norms over the whole batch),
  **averaged** over the non-trivial elements;
* ``l1``: the mean absolute difference ``mean |f_l(g x) - g f_l(x)|``, **summed** over the non-trivial
  elements, as the paper does (for C4: the sum over the rotations by 90, 180 and 270 degrees).

The group transform of a feature map is always defined (``torch.rot90`` of any square map, bilinear
interpolation for other angles), whether or not the network's strides and pools make the comparison exact:
at an "inexact" input size (:func:`gconv_ext.nn.check_exact`) the sampling grids of ``f(g x)`` and
``g f(x)`` differ by a pixel and the error is what the paper plots. Rotations that are not multiples of
90 degrees compare two interpolations, so they are meaningful only for inputs that vanish near the border.

The model runs in eval mode (dropout and batch-norm statistics must not differ between the two forwards)
under ``no_grad`` and is put back in its previous mode.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import nn

from ..groups import Group, group_from_name
from ..nn import check_exact
from ..nn.equivariance import transform
from ..nn.exactness import _suppress_module_warnings

__all__ = ["layer_equivariance_errors", "average_over_batches", "invariance_error", "exact_input_sizes",
           "default_layers"]

_KINDS = ("group", "plane")


def _elements(group: Group, elements: Iterable[int] | None) -> list[int]:
    out = list(range(1, group.order)) if elements is None else [int(e) for e in elements]
    if not out:
        raise ValueError("no group element to measure (elements is empty)")
    for e in out:
        group.element(e)  # validates
    return out


def _kind_of(t: object, group: Group) -> str | None:
    """``'group'`` for a ``[B, C, |G|, H, W]`` tensor, ``'plane'`` for ``[B, C, H, W]``, both with square
    spatial dims; None for anything else."""
    if not isinstance(t, torch.Tensor) or t.dim() not in (4, 5) or t.shape[-1] != t.shape[-2]:
        return None
    if t.dim() == 5:
        return "group" if t.shape[2] == group.order else None
    return "plane"


def default_layers(model: nn.Module) -> list[str]:
    """Names of the leaf modules of ``model`` (modules without children). Layers that report their own
    geometry (``ExportedGroupConv``) count as leaves: their inner ``Conv2d`` is skipped."""
    names: list[str] = []
    wrappers: list[str] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(w + ".") for w in wrappers):
            continue
        if hasattr(module, "_subsampling_geometry") and any(True for _ in module.children()):
            wrappers.append(name)
            names.append(name)
        elif not any(True for _ in module.children()):
            names.append(name)
    return names


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad(), _suppress_module_warnings():
            yield
    finally:
        model.train(was_training)


def _capture(model: nn.Module, names: Sequence[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Run ``model(x)`` and return the outputs of the named modules. A module called ``k > 1`` times in one
    forward gives the keys ``name``, ``name#1``, ..., ``name#{k-1}``."""
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise ValueError(f"unknown layer name(s) {missing}; see dict(model.named_modules())")
    out: dict[str, torch.Tensor] = {}
    handles = []

    def hook(name: str):
        def fn(_module, _args, output):
            key, k = name, 0
            while key in out:
                k += 1
                key = f"{name}#{k}"
            if isinstance(output, torch.Tensor):
                out[key] = output.detach()
        return fn

    for n in names:
        handles.append(modules[n].register_forward_hook(hook(n)))
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return out


def layer_equivariance_errors(model: nn.Module, x: torch.Tensor, group: Group | str,
                              elements: Iterable[int] | None = None, layers: Sequence[str] | None = None,
                              kinds: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """Per-layer equivariance errors of ``model`` at the image batch ``x`` ``[B, C, H, W]`` (square).

    Args:
        model: any module; forward hooks record the chosen layers' outputs.
        x: the input batch.
        group: the group acting on the input (a Group or a name such as ``'C4'``).
        elements: the elements to test (default: every non-identity element).
        layers: module names (as in ``model.named_modules()``); default: every leaf module (see
            :func:`default_layers`) whose output is a group map ``[B, C, |G|, H, W]`` or a square planar
            map ``[B, C, H, W]``.
        kinds: keep only layers whose output is of these kinds (``'group'``, ``'plane'``); default both.

    Returns:
        ``{layer_name: {"relative": float, "l1": float}}`` in forward order: ``relative`` averaged and
        ``l1`` summed over ``elements`` (see the module docstring). Layers named explicitly whose output is
        neither a group map nor a square planar map raise ``ValueError``.
    """
    group = group_from_name(group)
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[-1] != x.shape[-2]:
        raise ValueError(f"x must be a square image batch [B, C, H, H], got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    kinds = tuple(_KINDS if kinds is None else kinds)
    bad = [k for k in kinds if k not in _KINDS]
    if bad:
        raise ValueError(f"kinds must be a subset of {_KINDS}, got {bad}")
    elems = _elements(group, elements)
    explicit = layers is not None
    names = list(layers) if explicit else default_layers(model)
    with _eval_mode(model):
        ref = _capture(model, names, x)
        keep: dict[str, str] = {}
        for key, t in ref.items():
            kind = _kind_of(t, group)
            if kind is None:
                if explicit:
                    raise ValueError(f"layer {key!r}: output of shape {tuple(t.shape)} is neither a group map "
                                     f"[B, C, {group.order}, H, H] nor a square planar map [B, C, H, H]")
                continue
            if kind in kinds:
                keep[key] = kind
        rel = {k: 0.0 for k in keep}
        l1 = {k: 0.0 for k in keep}
        for g in elems:
            moved = _capture(model, names, transform(group, g, x, "plane"))
            for key, kind in keep.items():
                expected = transform(group, g, ref[key], kind).double()
                diff = moved[key].double() - expected
                rel[key] += (diff.norm() / expected.norm().clamp_min(1e-300)).item() / len(elems)
                l1[key] += diff.abs().mean().item()
    return {k: {"relative": rel[k], "l1": l1[k]} for k in keep}


def _batch_input(batch: object) -> torch.Tensor:
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    raise ValueError(f"batches must be tensors or (inputs, ...) tuples, got {type(batch).__name__}")


def average_over_batches(model: nn.Module, loader: Iterable, group: Group | str,
                         elements: Iterable[int] | None = None, layers: Sequence[str] | None = None,
                         kinds: Sequence[str] | None = None, max_batches: int | None = None
                         ) -> dict[str, dict[str, float]]:
    """:func:`layer_equivariance_errors` averaged over the batches of ``loader`` (tensors or
    ``(inputs, labels, ...)`` tuples), each batch weighted equally as in the paper; at most
    ``max_batches`` batches."""
    sums: dict[str, dict[str, float]] = {}
    count = 0
    elems = None if elements is None else list(elements)
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        errs = layer_equivariance_errors(model, _batch_input(batch), group, elems, layers, kinds)
        for name, e in errs.items():
            s = sums.setdefault(name, {"relative": 0.0, "l1": 0.0})
            s["relative"] += e["relative"]
            s["l1"] += e["l1"]
        count += 1
    if count == 0:
        raise ValueError("average_over_batches: the loader gave no batch")
    return {n: {k: v / count for k, v in s.items()} for n, s in sums.items()}


def invariance_error(model: nn.Module, x: torch.Tensor, group: Group | str,
                     elements: Iterable[int] | None = None) -> dict[str, float]:
    """How far the model's output (e.g. logits) is from invariant: ``relative`` (averaged) and ``l1``
    (summed) over ``elements`` as in :func:`layer_equivariance_errors`, and ``max_abs`` (the largest
    absolute difference over all elements)."""
    group = group_from_name(group)
    elems = _elements(group, elements)
    rel = l1 = worst = 0.0
    with _eval_mode(model):
        y = model(x).double()
        for g in elems:
            diff = model(transform(group, g, x, "plane")).double() - y
            rel += (diff.norm() / y.norm().clamp_min(1e-300)).item() / len(elems)
            l1 += diff.abs().mean().item()
            worst = max(worst, diff.abs().max().item())
    return {"relative": rel, "l1": l1, "max_abs": worst}


def exact_input_sizes(model: nn.Module, group: Group | str, sizes: Iterable[int], channels: int = 1
                      ) -> dict[int, bool]:
    """``{size: exact}``: whether 90-degree equivariance of ``model`` is exact at a square input of each size
    (:func:`gconv_ext.nn.check_exact` on ``(1, channels, size, size)``). A model whose head fixes the input
    size (a Linear on flattened maps) runs only at that size: pass its convolutional part instead."""
    group = group_from_name(group)
    return {int(s): check_exact(model, (1, channels, int(s), int(s)), group).exact for s in sizes}
