"""Tolerances from floating-point error analysis: no tolerance in the op and equivariance tests is one
machine's measurement.

A comparison is one of three kinds:

* exact (``torch.equal`` or ``atol=0``): the result involves no rounding that could differ, e.g. a
  permutation (quarter turns, flips, the group axis), a max, a copy, or the same code on the same data;
* a rounding bound for sums of products. For *any* summation order (sequential, blocked, pairwise, SIMD
  lanes, with or without FMA) the computed ``s = sum_{i<=n} a_i b_i`` obeys
  ``|fl(s) - s| <= gamma_n * sum_i |a_i b_i|`` with ``gamma_n = n u / (1 - n u)``, ``u = eps / 2``
  (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., Lemma 3.1 and eq. (3.5)). Two
  evaluations of the same sum (ours and the reference, or one kernel on a rotated input) differ by at
  most ``2 gamma_n sum |a_i b_i|``; the magnitude ``sum |a_i b_i|`` is computed exactly enough in float64
  from ``|a|`` and ``|b|``. This covers oneDNN / MKL direct convolutions and GEMMs on every ISA (SSE4.1,
  AVX2, AVX-512, AMX with the default fp32 math mode), whatever order their kernels sum in. It would not
  cover Winograd / FFT convolution or implicit bf16 / tf32 down-conversion, which PyTorch's CPU
  convolutions do not use by default;
* an interpolation-error bound (C8, C16, non-right angles), from the analysis in the test that uses it.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from gconv_ext.groups import Group
from gconv_ext.ops import reference

F64 = torch.float64


def unit_roundoff(dtype: torch.dtype) -> float:
    """``u = eps / 2``: the largest relative error of one correctly rounded operation."""
    return torch.finfo(dtype).eps / 2


def gamma(n: int, dtype: torch.dtype) -> float:
    """Higham's ``gamma_n = n u / (1 - n u)``: relative bound, against ``sum |terms|``, on a sum of n
    products in any order."""
    nu = n * unit_roundoff(dtype)
    if nu >= 0.5:
        raise ValueError(f"gamma_{n} for {dtype} is meaningless (n u = {nu})")
    return nu / (1 - nu)


def sum_atol(n: int, magnitude: float, dtype: torch.dtype, sides: int = 2) -> float:
    """Bound on the difference of ``sides`` evaluations of a sum of ``n`` products whose absolute values
    add up to at most ``magnitude``."""
    return sides * gamma(n, dtype) * float(magnitude)


# -- convolutions ----------------------------------------------------------------------------------

def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


# A transformed filter tap is <= 4 bilinear terms whose weights two plans (C++ and Python, or float32 and
# float64) compute from positions at most COORD_ULPS * k ulps apart: see interp_atol.
COORD_ULPS = 8


def conv_terms(lifting: bool, c_in: int, k: int, order: int) -> int:
    """Terms in one output of a lifting / group convolution: ``C_in (|G|) k^2`` products, up to 4 bilinear
    terms inside each transformed filter tap (their rounding is bounded by the same gamma), and the bias."""
    return c_in * (1 if lifting else order) * k * k + 4 + 1


def conv_magnitude(lifting: bool, x, w, b, group: Group, stride=1, padding=0, dilation=1,
                   disk: bool = False) -> torch.Tensor:
    """``sum |x| |W_g| + |b|`` for every output, in float64. The bilinear transform weights are >= 0, so
    the transform of ``|w|`` bounds ``|W_g|`` term by term."""
    ref = reference.lifting_conv2d if lifting else reference.group_conv2d
    ab = None if b is None else b.detach().abs().to(F64)
    return ref(x.detach().abs().to(F64), w.detach().abs().to(F64), ab, group, stride, padding, dilation, disk)


def _planar_abs(lifting: bool, x, w, group: Group, stride, padding, dilation):
    """``|x|`` as the planar input of the equivalent ``F.conv2d`` and an all-ones expanded filter."""
    xa = x.detach().abs().to(F64)
    if not lifting:
        xa = xa.flatten(1, 2)
    ones = torch.ones(w.shape[0] * group.order, xa.shape[1], w.shape[-1], w.shape[-1], dtype=F64)
    return xa, ones, dict(stride=_pair(stride), padding=_pair(padding), dilation=_pair(dilation))


def _position_unit(k: int) -> float:
    """Largest change of one transformed tap, per unit of the largest filter tap, from the two plans'
    source positions (interp_atol without the rounding of the sum)."""
    return 8 * COORD_ULPS * k * unit_roundoff(F64)


def conv_atol(lifting: bool, x, w, b, group: Group, stride=1, padding=0, dilation=1, disk: bool = False,
              dtype: torch.dtype | None = None, sides: int = 2) -> float:
    """Largest possible difference between two evaluations (any summation order, either plan) of the
    convolution: ``gamma_n sum |x| |W_g|`` each, plus the transformed taps' position term times the input
    mass under the filter."""
    mag = conv_magnitude(lifting, x, w, b, group, stride, padding, dilation, disk)
    if mag.numel() == 0:
        return 0.0
    n = conv_terms(lifting, w.shape[1], w.shape[-1], group.order)
    xa, ones, kw = _planar_abs(lifting, x, w, group, stride, padding, dilation)
    mass = F.conv2d(xa, ones[:1], **kw).max().item()
    position = _position_unit(w.shape[-1]) * w.detach().abs().max().item() * mass
    return sides * (gamma(n, dtype or x.dtype) * mag.max().item() + position)


def conv_grad_magnitudes(lifting: bool, x, w, b, group: Group, grad_out, stride=1, padding=0, dilation=1,
                         disk: bool = False) -> list[tuple[int, float, float]]:
    """For the gradients with respect to x, w and b (b only when not None): ``(terms, magnitude,
    position)`` -- the terms per gradient element, the largest ``sum |terms|`` and the largest position
    term (as in conv_atol).

    The convolution is bilinear, so backpropagating ``|grad_out|`` through the convolution of ``|x|`` and
    ``|w|`` gives each gradient's ``sum |terms|``. Terms per gradient element: ``C_out |G| k^2 + 4`` for x;
    ``B H' W'`` per transformed tap, and the adjoint of the transform adds up at most 9 taps (a 2x2 cell
    meets at most 9 points of a rotated unit grid) of each of the ``|G|`` slices, for w; ``B |G| H' W'``
    for b. Position term: grad_x sums |go| over the taps of the (changed) filter; grad_w is the adjoint,
    <= 9 |G| changed weights, of sum |go| |x| per transformed tap; none for b.
    """
    leaves = [t.detach().abs().to(F64).requires_grad_() for t in (x, w, b) if t is not None]
    ref = reference.lifting_conv2d if lifting else reference.group_conv2d
    out = ref(leaves[0], leaves[1], leaves[2] if b is not None else None, group, stride, padding, dilation, disk)
    go = grad_out.detach().abs().to(F64)
    mags = torch.autograd.grad(out, leaves, go)
    c_out, k, order = w.shape[0], w.shape[-1], group.order
    spatial = grad_out.shape[0] * grad_out.shape[-2] * grad_out.shape[-1]
    terms = [c_out * order * k * k + 4, 9 * order * spatial, order * spatial]
    xa, ones, kw = _planar_abs(lifting, x, w, group, stride, padding, dilation)
    xa.requires_grad_()
    ones.requires_grad_()
    planar = F.conv2d(xa, ones, **kw)
    gx_mass, gw_mass = torch.autograd.grad(planar, (xa, ones), go.reshape(planar.shape))
    unit = _position_unit(k)
    positions = [unit * w.detach().abs().max().item() * gx_mass.max().item(),
                 unit * 9 * order * gw_mass.max().item(), 0.0]
    return [(n, m.max().item() if m.numel() else 0.0, pos) for n, m, pos in zip(terms, mags, positions)]


def conv_grad_atols(lifting: bool, x, w, b, group: Group, grad_out, stride=1, padding=0, dilation=1,
                    disk: bool = False, dtype: torch.dtype | None = None, sides: int = 2) -> list[float]:
    """conv_atol for the gradients with respect to x, w and b (b only when not None)."""
    dtype = dtype or x.dtype
    return [sides * (gamma(n, dtype) * mag + pos)
            for n, mag, pos in conv_grad_magnitudes(lifting, x, w, b, group, grad_out, stride, padding, dilation,
                                                    disk)]


# -- filter transform ------------------------------------------------------------------------------

def interp_atol(k: int, magnitude: float, dtype: torch.dtype = F64, coord_ulps: int = COORD_ULPS,
                sides: int = 2) -> float:
    """Difference between two implementations of the bilinear filter transform of a ``k x k`` filter whose
    taps are at most ``magnitude`` in absolute value.

    Each computes the source position of a tap from cos, sin and the tap coordinates (|coordinate| <= k):
    a few roundings, at most ``coord_ulps * k * u`` pixels apart. A bilinear weight is a product of two
    1-D weights, each changed by at most that much, and 4 weights per tap: ``8 coord_ulps k u`` times the
    largest tap; the 4-term sum adds ``gamma_4``.
    """
    u = unit_roundoff(dtype)
    return sides * (8 * coord_ulps * k * u + gamma(4, dtype)) * float(magnitude)


# -- networks --------------------------------------------------------------------------------------

def chain_rtol(dtype: torch.dtype, lengths: list[int]) -> float:
    """Relative (Frobenius) bound on the rounding difference of two evaluations of a chain of layers
    whose reductions have ``lengths`` terms.

    Each reduction errs by at most ``gamma_n sum |terms|``; the errors of successive layers add (the
    layers are normalised or He-initialised: gain about 1), so the total stays below
    ``gamma_{sum n} sum |terms|``. ``sum |terms|`` exceeds the result by about ``sqrt(n)`` for the
    random-sign sums of random weights and inputs, so ``sqrt(max n)`` is the cancellation allowance.
    Two evaluations: a factor 2.
    """
    lengths = [n for n in lengths if n > 0]
    if not lengths:
        return 0.0
    return 2 * gamma(sum(lengths), dtype) * math.sqrt(max(lengths))


def reduction_lengths(model: torch.nn.Module, x: torch.Tensor) -> list[int]:
    """The number of terms of the longest reduction each layer of ``model`` performs on input ``x``
    (recorded with forward hooks; exact layers such as max pooling, ReLU and permutations count 0)."""
    import gconv_ext.nn as gnn

    lengths: list[int] = []

    def hook(module, inputs, output):
        t = inputs[0]
        if isinstance(module, (gnn.LiftingConv2d, gnn.GroupConv2d)):
            lifting = isinstance(module, gnn.LiftingConv2d)
            lengths.append(conv_terms(lifting, module.in_channels, module.kernel_size, module.group.order))
        elif isinstance(module, torch.nn.Conv2d):
            lengths.append(module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1] + 1)
        elif isinstance(module, torch.nn.Linear):
            lengths.append(module.in_features + 1)
        elif isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            # batch statistics over all but the channel axis, then a few elementwise operations
            stats = module.training or not module.track_running_stats
            lengths.append((t.numel() // t.shape[1] if stats else 0) + 4)
        elif isinstance(module, gnn.GroupLayerNorm):
            lengths.append(t[0].numel() + 4)
        elif isinstance(module, gnn.GroupAvgPool2d):
            kh, kw = _pair(module.kernel_size)
            lengths.append(kh * kw + 1)
        elif isinstance(module, gnn.GroupPool) and module.mode == "mean":
            lengths.append(t.shape[2] + 1)
        elif isinstance(module, gnn.InvariantPool) and module.mode == "mean":
            lengths.append(t[0, 0].numel() + 1)

    forward_with_hooks(model, x, lambda name, module: hook)
    return lengths


def forward_with_hooks(model: torch.nn.Module, x: torch.Tensor, hook_for) -> None:
    """One no-grad forward of ``model`` on ``x`` with ``hook_for(name, module)`` (a forward hook, or None
    to skip the module) registered on every module, all removed afterwards."""
    handles = []
    try:
        for name, module in model.named_modules():
            hook = hook_for(name, module)
            if hook is not None:
                handles.append(module.register_forward_hook(hook))
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
