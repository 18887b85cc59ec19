"""Spatial-transformer CNN (STN) baseline from the study, with a localiser head that reaches any rotation
and a rotation-equivariant localiser that canonicalises rotated digits.

The study ("Group Equivariant CNNs Outperform Spatial Transformers on Tasks Which Require Rotation
Invariance", repository gboduljak/group-equivariant-cnns-vs-spatial-transformers) compared GCNNs with
CNNs whose conv blocks are preceded by a spatial transformer:

* block = localisation net -> ``affine_grid`` + ``grid_sample(align_corners=False)`` (bilinear, zero
  padding) -> ``Conv2d(k=5, bias, no padding)`` -> ``layer_norm`` over ``(C, H, W)`` without affine
  -> ReLU; ``"single"`` has a localiser before the first block only, ``"multi"`` before every block;
  ``MaxPool2d(2, stride=1)`` between blocks; global average pool; ``Linear(C, 10)``.
* localisation net = ``Conv(same)`` -> LN -> ReLU -> ``MaxPool(2, 2)`` -> ``Conv(same)`` -> LN -> ReLU
  -> global average pool -> head. The rotation head (used for every reported STN) predicted one
  angle, ``2*pi*sigmoid(Linear(features))``, rotation only, no translation; an affine head (6
  numbers, identity bias) existed but was not used.

Its bug: the "identity" initialisation set the rotation head's weight to 0 and its bias to 1e5. The
sigmoid saturates, so the angle is 2*pi (the identity) but ``sigmoid'(1e5)`` is exactly 0 in float32:
no gradient ever reaches the head or the localisation convs, and every identity-initialised STN in the
study was a plain CNN with a frozen, input-independent identity warp. (Its "random" initialisation,
PyTorch's default ``Linear`` init, starts from angles near ``2*pi*sigmoid(0) = pi``, i.e. upside down.)

A first fix, ``angle = pi * tanh(z)`` with ``z = 0`` at init, trains but has the opposite problem: a
canonicaliser must undo rotations of up to 180 degrees either way, so it must reach ``|angle| = pi``,
where ``tanh`` saturates. Rotated digits whose canonical warp is near 180 degrees push ``z`` towards
``+-inf``, the gradient vanishes there, and in practice the head collapsed to a constant 180-degree
warp for every digit. A scalar angle has a seam somewhere on the circle whatever squashing is used.

Heads (``head=``):

* ``"rotation"`` (default): the head predicts two numbers ``(c, s)`` and projects them onto the unit
  circle, ``(cos a, sin a) = (c, s) / max(sqrt(c^2 + s^2), 1e-12)`` (``F.normalize``), and builds
  ``theta = [[cos a, -sin a, 0], [sin a, cos a, 0]]`` from them directly. Every angle in ``(-pi, pi]``
  is an interior point (no saturation, no seam); the ``params`` it returns are
  ``atan2(sin a, cos a)``, used for reporting only. ``init="identity"`` sets the head weight to 0 and
  its bias to ``(1, 0)``: the norm is exactly 1, so ``theta`` is exactly the identity, and
  ``d sin a / d s = 1`` there, so the head gets gradients from the first step. Reaching every angle
  with a gradient is necessary for a canonicaliser, not sufficient: whether training finds one is
  measured by :func:`gconv_ext.analysis.canonicalization_error` (0 degrees for a canonicaliser, 45
  for a constant warp), which the evaluation reports for every STN.
* ``"rotation-tanh"``: the first fix above, ``angle = pi * tanh(z)`` (one output; identity init weight
  0, bias 0), kept to reproduce its runs.
* ``"rotation-sigmoid"``: the study's head, ``angle = 2*pi*sigmoid(z)`` (one output), with the study's
  initialisations, bug included: ``init="identity"`` is weight 0, bias 1e5 (angle ``2*pi``, gradient
  exactly 0 in float32, so the localiser never trains); ``init="random"`` is PyTorch's default
  ``Linear`` init (angles near ``pi``; ``init_std`` is not used).
* ``"affine"``: the 6 entries of ``theta`` directly (no squashing); ``init="identity"`` sets weight 0
  and bias ``[1, 0, 0, 0, 1, 0]``.

For every head but ``"rotation-sigmoid"``, ``init="random"`` draws the head weight from
``N(0, init_std^2)`` (default 0.01) and keeps the identity bias: a small, input-dependent warp near
the identity, for comparison. With ``init="identity"`` the head weight is 0, so on the first step the
localiser's convs get no gradient (the head's output does not depend on them yet) while the head does;
once the first update has made the head weight nonzero, gradients reach every localiser layer (tested).

Localisers (``loc_kind=``, ``loc_pool=``): three designs.

* ``loc_kind="cnn", loc_pool="mean"``: the study's plain conv localiser with a global average pool.
  The mean over positions is nearly the same for every rotation of a digit, so the head has little to
  tell orientations apart with.
* ``loc_kind="cnn", loc_pool="grid"``: the same convs, averaged into a 4x4 grid of cells (which keeps
  where the strokes are) -> layer norm -> ``Linear -> tanh`` -> head. Trained directly to output
  ``-theta`` (supervised) it canonicalises to about 7 degrees, so it has the capacity. But trained
  end-to-end with the classification loss on rotated digits (AdamW lr 5e-3, warm-up + cosine, 3
  epochs on 10,000 digits) both CNN localisers collapsed to a constant warp (canonicalisation error
  exactly 45 degrees: a ReLU hidden layer died; with tanh it saturated to the same features for every
  digit) while the classifier learned rotation robustness by itself (grid: rotated-test accuracy
  0.902). The classification loss does not ask for a canonicaliser, and a constant warp is as good a
  place to stop as any for a classifier that copes on its own.
* ``loc_kind="equivariant"`` (:class:`EquivariantLocalizationNet`; learned canonicalisation, Kaba et
  al. 2023, "Equivariance with learned canonicalization functions"): a small ``C_N`` group-conv network
  (``loc_group``, default C8) whose predicted angle turns with the input *by construction*. Rotating
  the input by an element of ``C_N`` rolls the network's group axis and moves its pixels; the
  orientation vector ``v`` it reads off (``loc_readout``) turns by the same angle, and the warp rotates
  by ``offset - atan2(v)``, undoing the rotation: ``alpha_i = -theta_i + c(x)``, exactly for quarter
  turns, up to interpolation for other angles. Canonicalising is therefore not something the
  end-to-end loss has to discover, and the warp can never collapse to a constant; training only
  chooses each digit's canonical pose and makes the orientation robust between the group's angles.
  Readouts: ``"group"`` is the first circular harmonic of per-orientation scores (the group axis);
  ``"dipole"`` (default) the dipole moment, about the image centre, of a learned rotation-invariant
  field (the group-averaged features), whose positions turn exactly at any angle; ``"both"`` their
  sum. Measured with the recipe above (registry ``"stn-single-canonical"``, preset ``"matched"``,
  104,235 parameters, bf16, 500 test digits; median / mean canonicalisation error, rotated-test
  accuracy): the dipole readout 0.85 / 1.35 degrees and 0.972 (seed 0), 0.96 / 1.61 and 0.964
  (seed 1); the group readout, with a max pool as first built, 6.1 / 9.2 degrees and 0.952 (seed 0)
  but 23.4 / 24.3 and 0.912 (seed 1), and with the average pool 19.3 / 21.5 and 0.942 (seed 1); a
  prototype of ``"both"`` 1.3-1.7 degrees and 0.972 on seeds 0, 1 and 2. The plain CNN on the same
  budget reached 0.904. Untrained (50 test digits, init seeds 0-9), the dipole readout already scores
  medians of 2-19 degrees, the group readout 22-31, close to the 34.5 that exactness across quarter
  turns alone gives. It needs ``mode="single"``, ``head="rotation"`` and ``loc_pool="mean"``.

Pools: a ``MaxPool2d(2, stride=1)`` sits between every two consecutive blocks (the study's code zipped
``layers - 1`` blocks with ``layers - 2`` pools and so had none after the first block). The global
average pool is ``mean((-2, -1))``, so a batch of one gives ``[1, 10]`` logits (the study's
``squeeze()`` gave ``[10]``).

Angle convention (the project's: ``x`` right, ``y`` up): the sampler output is the input rotated
counter-clockwise by ``angle``; ``angle = pi/2`` reproduces ``torch.rot90(x, 1, dims=(-2, -1))`` on a
square image. For ``theta`` (all heads), output pixel at normalised ``(x, y_down)`` reads the input at
``theta @ (x, y_down, 1)``, as in ``F.affine_grid``. :func:`theta_rotation_angle` reads the same
counter-clockwise angle off any ``theta`` (the rotation of the polar decomposition of its 2x2 part).
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gconv_ext.groups import Group, group_from_name
from gconv_ext.models.cnn import GCNN_C4_4_16_PARAMS
from gconv_ext.models.common import check_choice, check_float, check_int, closest_channels, layer_norm_chw
from gconv_ext.nn import GroupAvgPool2d, GroupConv2d, GroupLayerNorm, LiftingConv2d

__all__ = [
    "LocalizationNet",
    "EquivariantLocalizationNet",
    "STN",
    "rotation_theta",
    "theta_rotation_angle",
    "affine_warp",
    "stn_parameter_count",
    "stn_for_params",
    "STUDY_SIGMOID_BIAS",
]

_MODES = ("single", "multi")
_HEADS = ("rotation", "rotation-tanh", "rotation-sigmoid", "affine")
#: How the localiser summarises its feature map: the study's global mean, or a GRID x GRID average-pooled
#: map flattened into a hidden layer (keeps where the strokes are, which is what orientation needs).
_POOLS = ("mean", "grid")
GRID = 4
LOC_HIDDEN = 32
#: Number of head outputs per head kind.
_HEAD_OUTPUTS = {"rotation": 2, "rotation-tanh": 1, "rotation-sigmoid": 1, "affine": 6}
#: Bias of the study's "identity" init of its sigmoid head: sigmoid(1e5) == 1 exactly in float32.
STUDY_SIGMOID_BIAS = 1e5
_INITS = ("identity", "random")
#: Localiser designs: the study's plain conv localiser (with ``head`` and ``loc_pool``), or the
#: rotation-equivariant one (:class:`EquivariantLocalizationNet`).
_LOC_KINDS = ("cnn", "equivariant")
#: Default group of the equivariant localiser.
DEFAULT_LOC_GROUP = "C8"
#: How the equivariant localiser reads an orientation vector off its group feature map.
_READOUTS = ("dipole", "group", "both")
DEFAULT_LOC_READOUT = "dipole"
#: ``eps`` of the equivariant localiser's normalisation ``v / max(|v|, eps)``.
EQUIVARIANT_EPS = 1e-6


def _check_loc_group(group: Group | str, name: str = "loc_group") -> Group:
    """The argument ``name`` as a cyclic :class:`~gconv_ext.groups.Group` ``C_N`` with ``N >= 2``."""
    try:
        g = group_from_name(group)
    except ValueError as err:
        raise ValueError(f"{name} must be a cyclic group such as 'C8' or 'C16' ({err})") from None
    if g.reflections or g.order < 2:
        raise ValueError(f"{name} must be a cyclic group C_N with N >= 2 (its group axis is a circle of "
                         f"orientations), got {g.name}")
    return g


def rotation_theta(angle: torch.Tensor) -> torch.Tensor:
    """``[B]`` angles (radians) -> ``[B, 2, 3]`` ``affine_grid`` matrices of pure rotations.

    ``theta = [[cos a, -sin a, 0], [sin a, cos a, 0]]``: with :func:`affine_warp` the output is the input
    rotated counter-clockwise by ``a`` (``y`` up). ``a = 0`` gives exactly ``[[1, 0, 0], [0, 1, 0]]``.
    """
    return _rotation_theta_cs(torch.cos(angle), torch.sin(angle))


def _rotation_theta_cs(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``[B]`` cosines and sines -> ``[B, 2, 3]`` ``[[cos, -sin, 0], [sin, cos, 0]]``."""
    zero = torch.zeros_like(cos)
    return torch.stack((cos, -sin, zero, sin, cos, zero), dim=-1).unflatten(-1, (2, 3))


def theta_rotation_angle(theta: torch.Tensor) -> torch.Tensor:
    """The counter-clockwise rotation angle (radians, in ``[-pi, pi]``) of ``theta [..., 2, 3]`` warps.

    ``atan2(A10 - A01, A00 + A11)`` of the 2x2 linear part ``A``: the angle of the rotation ``R`` in
    its polar decomposition ``A = R P`` (``P`` symmetric positive definite) when ``det A > 0``, so
    scaling, shear and translation do not change it. It inverts :func:`rotation_theta`:
    ``theta_rotation_angle(rotation_theta(a)) == a`` for ``a`` in ``(-pi, pi]`` (up to rounding), with
    the same convention (the warped image is the input turned counter-clockwise by the angle). For a
    reflection (``det A < 0``) it is the angle of the closest rotation, for what that is worth.
    """
    if theta.dim() < 2 or tuple(theta.shape[-2:]) != (2, 3):
        raise ValueError(f"theta must have shape [..., 2, 3], got {list(theta.shape)}")
    a00, a01 = theta[..., 0, 0], theta[..., 0, 1]
    a10, a11 = theta[..., 1, 0], theta[..., 1, 1]
    return torch.atan2(a10 - a01, a00 + a11)


def affine_warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Warp ``x [B, C, H, W]`` by ``theta [B, 2, 3]``: ``affine_grid`` + bilinear ``grid_sample``.

    ``align_corners=False`` and zero padding, as in the study. The identity ``theta`` returns ``x``
    up to the float rounding of the grid coordinates: the sampling points land within about 1e-6
    pixel of the pixel centres in float32 (an error of ~1e-6 times the local pixel differences), and
    within ~1e-15 in float64.
    """
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class LocalizationNet(nn.Module):
    """The study's localiser with a trainable, exactly-identity-initialised head.

    ``Conv(k, same) -> LN(C,H,W) -> ReLU -> MaxPool(2, 2) -> Conv(k, same) -> LN -> ReLU -> pool ->
    Linear(., outputs)`` with 2 outputs for ``"rotation"``, 1 for ``"rotation-tanh"`` and
    ``"rotation-sigmoid"``, 6 for ``"affine"`` (see the module docstring). ``pool="mean"`` is the
    study's global average over (H, W): nearly the same descriptor for every rotation of a digit, so its
    head has little to go on. ``pool="grid"`` averages into a ``GRID x GRID`` (4 x 4) grid of cells,
    standardises the ``loc_channels * 16`` numbers (layer norm, no affine) and maps them through
    ``Linear(., hidden) -> tanh`` (``hidden`` = 32): the cells keep where the strokes are.

    Args:
        in_channels: channels of the feature map it looks at.
        loc_channels: channels of both localiser convs.
        kernel_size: kernel of both convs (``padding="same"``).
        head: ``"rotation"`` (``(c, s)`` normalised onto the unit circle, any angle, no translation),
            ``"rotation-tanh"`` (``angle = pi * tanh(z)``), ``"rotation-sigmoid"`` (the study's
            ``angle = 2 * pi * sigmoid(z)``) or ``"affine"`` (6 free numbers).
        init: ``"identity"`` (head weight 0, identity bias: exactly the identity transform, except
            ``"rotation-sigmoid"``, which gets the study's bias 1e5: an angle of ``2*pi`` and no
            gradient) or ``"random"`` (head weight ``N(0, init_std^2)``, identity bias; the study's
            PyTorch-default init for ``"rotation-sigmoid"``).
        init_std: standard deviation of the head weight for ``init="random"``.
        pool: ``"mean"`` (the study's) or ``"grid"`` (see above).
        hidden: width of the grid localiser's hidden layer.

    ``forward(x)`` returns ``(theta [B, 2, 3], params)`` where ``params`` is the counter-clockwise angle
    ``[B]`` (radians) for the rotation heads (``atan2(sin a, cos a)`` in ``[-pi, pi]`` for
    ``"rotation"``, ``[-pi, pi]`` for ``"rotation-tanh"``, ``[0, 2*pi]`` for ``"rotation-sigmoid"``)
    and ``theta`` itself for the affine head.
    """

    def __init__(
        self,
        in_channels: int,
        loc_channels: int,
        kernel_size: int = 5,
        head: str = "rotation",
        init: str = "identity",
        init_std: float = 1e-2,
        pool: str = "mean",
        hidden: int = LOC_HIDDEN,
    ) -> None:
        super().__init__()
        check_int("in_channels", in_channels)
        check_int("loc_channels", loc_channels)
        check_int("kernel_size", kernel_size)
        self.head_kind = check_choice("head", head, _HEADS)
        self.init = check_choice("init", init, _INITS)
        self.init_std = check_float("init_std", init_std)
        self.pool = check_choice("pool", pool, _POOLS)
        self.conv1 = nn.Conv2d(in_channels, loc_channels, kernel_size, padding="same")
        self.conv2 = nn.Conv2d(loc_channels, loc_channels, kernel_size, padding="same")
        if self.pool == "grid":
            self.fc = nn.Linear(loc_channels * GRID * GRID, check_int("hidden", hidden))
            self.head = nn.Linear(hidden, _HEAD_OUTPUTS[head])
        else:
            self.head = nn.Linear(loc_channels, _HEAD_OUTPUTS[head])
        self.reset_head()

    def reset_head(self) -> None:
        """Re-initialise the head according to ``init`` (see the class docstring)."""
        if self.head_kind == "rotation-sigmoid" and self.init == "random":
            self.head.reset_parameters()  # the study's "random": PyTorch's default Linear init
            return
        identity_bias = {
            "rotation": [1.0, 0.0],
            "rotation-tanh": [0.0],
            "rotation-sigmoid": [STUDY_SIGMOID_BIAS],
            "affine": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
        }[self.head_kind]
        with torch.no_grad():
            if self.init == "identity":
                self.head.weight.zero_()
            else:
                self.head.weight.normal_(0.0, self.init_std)
            self.head.bias.copy_(torch.tensor(identity_bias))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The descriptor the head reads: ``[B, loc_channels]`` (``pool="mean"``) or ``[B, hidden]``
        (``pool="grid"``)."""
        x = F.relu(layer_norm_chw(self.conv1(x)))
        x = F.max_pool2d(x, kernel_size=2, stride=2)
        x = F.relu(layer_norm_chw(self.conv2(x)))
        if self.pool == "grid":
            # Standardised cells, then tanh: a ReLU hidden layer died in end-to-end training (all its units
            # negative for every digit), which left the head a constant warp.
            cells = F.adaptive_avg_pool2d(x, GRID).flatten(1)
            return torch.tanh(self.fc(F.layer_norm(cells, cells.shape[-1:])))
        return x.mean(dim=(-2, -1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.head(self.features(x))
        if self.head_kind == "rotation":
            # Exactly (1, 0) -> (1, 0) at the identity init (norm 1); eps only guards (0, 0).
            unit = F.normalize(out, dim=-1, eps=1e-12)
            cos, sin = unit[:, 0], unit[:, 1]
            return _rotation_theta_cs(cos, sin), torch.atan2(sin, cos)
        if self.head_kind == "rotation-tanh":
            angle = math.pi * torch.tanh(out[:, 0])
            return rotation_theta(angle), angle
        if self.head_kind == "rotation-sigmoid":
            angle = 2 * math.pi * torch.sigmoid(out[:, 0])
            return rotation_theta(angle), angle
        theta = out.view(-1, 2, 3)
        return theta, theta

    def extra_repr(self) -> str:
        return f"head={self.head_kind!r}, init={self.init!r}"


class EquivariantLocalizationNet(nn.Module):
    """A localiser whose predicted angle is rotation-equivariant by construction (learned canonicalisation).

    A small ``C_N`` network, ``LiftingConv2d(k, same) -> GroupLayerNorm -> ReLU -> GroupAvgPool2d(2, 2)
    -> GroupConv2d(k, same) -> GroupLayerNorm -> ReLU`` (``disk_mask=True`` filters), gives a group
    feature map ``h [B, C, N, H, W]``, from which an orientation vector ``v [B, 2]`` is read
    (``readout``, both parts can be combined):

    * ``"group"``: the spatial mean ``f [B, C, N]``, a ``Linear(C, 1, bias=False)`` shared over the group
      axis (``score``) giving ``s_r [B, N]``, and ``v_G = sum_r s_r (cos(2 pi r / N), sin(2 pi r / N))``,
      the first circular harmonic of the scores.
    * ``"dipole"`` (default): the mean over the group axis, a rotation-invariant field, mapped to one
      number per pixel by a ``Linear(C, 1, bias=False)`` (``field``), ``t(p) [B, H, W]``, and its
      dipole moment about the image centre ``v_P = mean_p t(p) p`` (``p = (x, y)``, ``y`` up, in units
      of half the map's side).
    * ``"both"``: ``v = v_G + v_P`` with the ``score`` weight initialised to 0 (the sum starts as the
      dipole readout and the group part is learned).

    The input's orientation is ``phi = atan2(v)``; the warp rotates by ``alpha = offset - phi``.

    Why it canonicalises: rotating the input counter-clockwise by ``2 pi k / N`` rolls the group axis of
    every layer by ``k`` and rotates the map, so ``s'_r = s_{r-k}`` turns ``v_G`` by ``2 pi k / N``,
    and the invariant field ``t`` moves with the pixels, which turns its dipole ``v_P`` by the same
    angle: ``phi`` grows by the input's rotation and ``alpha`` falls by it, ``alpha(R x) = alpha(x) -
    angle(R)``. This is exact (to rounding) for the rotations of ``C_N`` that are multiples of 90
    degrees (every quarter turn when ``N`` is divisible by 4) at input sizes where the 2x2/2 pool is
    exact (even sizes, e.g. 28), about the image centre that ``affine_grid`` also rotates about. For
    other angles the image and the filters are resampled bilinearly and it holds up to that
    interpolation, and there the two readouts differ: ``v_G`` depends on the rotated filter copies
    being accurate (they are not, at 45 degrees, for unsmooth 5x5 filters) and on a weak signal, the
    first harmonic of nearly invariant scores; ``v_P`` reads orientation from *where* invariant
    features are, the positions ``p`` turn exactly at any angle, and averaging over the group axis
    makes ``t`` nearly invariant. Measured on MNIST: untrained, the group readout's canonicalisation
    error is about 30 degrees (no better than exactness across quarter turns alone), the dipole's about
    5-20; trained end-to-end (3 epochs on 10,000 rotated digits) the group readout reached 6 degrees
    on one seed and 23 on another, the dipole readout about 1-2 on every seed tried (module docstring).

    The constant learned ``offset`` (1 parameter, 0 at init) turns the canonical pose of every digit by
    the same angle: it keeps ``alpha_i = -theta_i + c(x)`` (only ``c`` changes, by the same amount for
    every ``x``), so it cannot break the canonicalisation, and it lets training choose which way up the
    canonical poses are. No softmax or argmax: ``v`` is linear in the scores and the field, so every
    parameter gets a gradient. ``v`` is normalised with ``max(|v|, eps)`` (``eps`` =
    :data:`EQUIVARIANT_EPS`), which only matters for inputs without an orientation (``v = 0``, e.g. a
    blank image: ``theta`` is then 0 and every output pixel reads the input's centre).

    Unlike :class:`LocalizationNet` it cannot start from the identity warp (an equivariant angle is
    not constant), so it has no ``init``/``head`` choice: the convs get their He init, ``score`` and
    ``field`` PyTorch's default ``Linear`` init (``score`` 0 for ``"both"``).

    Args:
        in_channels: channels of the image it looks at.
        loc_channels: channels (fields, each with ``N`` group slices) of both group convs.
        kernel_size: odd kernel of both convs (``padding="same"``).
        group: a cyclic group ``C_N`` (``"C8"``, ``"C16"``, a :class:`~gconv_ext.groups.Group`), N >= 2.
        readout: ``"dipole"`` (default), ``"group"`` or ``"both"`` (see above).

    ``forward(x)`` returns ``(theta [B, 2, 3], angle [B])`` like the ``"rotation"`` head of
    :class:`LocalizationNet`: ``theta`` a pure rotation by ``alpha``, ``angle = atan2(sin, cos)`` in
    ``[-pi, pi]``; :meth:`orientation` returns ``phi`` (without the offset) as ``(cos, sin)``.
    """

    def __init__(self, in_channels: int, loc_channels: int, kernel_size: int = 5,
                 group: Group | str = DEFAULT_LOC_GROUP, readout: str = DEFAULT_LOC_READOUT) -> None:
        super().__init__()
        check_int("in_channels", in_channels)
        check_int("loc_channels", loc_channels)
        check_int("kernel_size", kernel_size)
        self.group = _check_loc_group(group, "group")
        self.readout = check_choice("readout", readout, _READOUTS)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd for the equivariant localiser (its convs use "
                             f"symmetric 'same' padding), got {kernel_size}")
        n = self.group.order
        self.lift = LiftingConv2d(in_channels, loc_channels, kernel_size, self.group, padding="same",
                                  disk_mask=True)
        self.gconv = GroupConv2d(loc_channels, loc_channels, kernel_size, self.group, padding="same",
                                 disk_mask=True)
        self.norm = GroupLayerNorm()
        self.pool = GroupAvgPool2d(2)
        # No biases: a bias adds the same to every s_r (v_G unchanged) or to every t(p) (a symmetric grid
        # of positions has dipole 0).
        self.score = nn.Linear(loc_channels, 1, bias=False) if readout in ("group", "both") else None
        self.field = nn.Linear(loc_channels, 1, bias=False) if readout in ("dipole", "both") else None
        if readout == "both":
            with torch.no_grad():
                self.score.weight.zero_()
        self.offset = nn.Parameter(torch.zeros(()))
        # (cos, sin) of the N rotation angles (float64, exact at multiples of 90 degrees), cast to the
        # scores' dtype when used; not saved in checkpoints.
        circle = torch.stack([self.group.matrix(r)[:, 0] for r in range(n)])
        self.register_buffer("circle", circle, persistent=False)  # [N, 2]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The group feature map ``h [B, loc_channels, N, H/2, W/2]`` the readouts look at."""
        h = F.relu(self.norm(self.lift(x)))
        h = self.pool(h)
        return F.relu(self.norm(self.gconv(h)))

    def orientation_vector(self, x: torch.Tensor) -> torch.Tensor:
        """``v [B, 2]`` (float32, or float64 for a float64 model), turning with the input."""
        h = self.features(x)
        dtype = torch.promote_types(h.dtype, torch.float32)  # at least float32, also under bf16 autocast
        v = h.new_zeros(h.shape[0], 2, dtype=dtype)
        if self.score is not None:
            s = self.score(h.mean(dim=(-2, -1)).transpose(1, 2)).squeeze(-1).to(dtype)  # [B, N]
            circle = self.circle.to(device=s.device, dtype=dtype)
            v = v + torch.stack(((s * circle[:, 0]).sum(-1), (s * circle[:, 1]).sum(-1)), dim=-1)
        if self.field is not None:
            t = self.field(h.mean(dim=2).movedim(1, -1)).squeeze(-1).to(dtype)  # [B, H, W], invariant
            rows, cols = t.shape[-2:]
            xs = (torch.arange(cols, device=t.device, dtype=dtype) - (cols - 1) / 2) / (cols / 2)
            ys = ((rows - 1) / 2 - torch.arange(rows, device=t.device, dtype=dtype)) / (rows / 2)  # y up
            v = v + torch.stack(((t * xs).mean(dim=(-2, -1)), (t * ys[:, None]).mean(dim=(-2, -1))), dim=-1)
        return v

    def orientation(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cos phi, sin phi)``, each ``[B]``: ``v / max(|v|, eps)``, the input's orientation."""
        u = F.normalize(self.orientation_vector(x), dim=-1, eps=EQUIVARIANT_EPS)
        return u[:, 0], u[:, 1]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cos_phi, sin_phi = self.orientation(x)
        offset = self.offset.to(cos_phi.dtype)
        cos_o, sin_o = torch.cos(offset), torch.sin(offset)
        # alpha = offset - phi
        cos = cos_o * cos_phi + sin_o * sin_phi
        sin = sin_o * cos_phi - cos_o * sin_phi
        return _rotation_theta_cs(cos, sin), torch.atan2(sin, cos)

    def extra_repr(self) -> str:
        return f"group={self.group.name}, readout={self.readout!r}"


class STN(nn.Module):
    """Spatial-transformer CNN: ``layers`` blocks of [localiser -> sampler] -> Conv -> LN -> ReLU.

    Args:
        mode: ``"single"`` (a localiser before the first block only) or ``"multi"`` (before every block).
        head: ``"rotation"`` (default), ``"rotation-tanh"``, ``"rotation-sigmoid"`` (the study's) or
            ``"affine"`` (see :class:`LocalizationNet` and the module docstring).
        channels: channels of every conv block (default 32).
        layers: number of conv blocks (default 5); ``MaxPool2d(2, stride=1)`` between consecutive blocks.
        loc_channels: channels of the localisation nets (default 16).
        kernel_size: kernel of the block convs (no padding) and the localiser convs (``same``); default 5.
        init: ``"identity"`` or ``"random"`` head initialisation (see :class:`LocalizationNet`).
        init_std: head weight std for ``init="random"``.
        in_channels: input channels (1 for MNIST).
        num_classes: outputs (10 for MNIST).
        input_size: side of the square input the layout is checked against (28 for MNIST).
        loc_pool: the localisers' pooling, ``"mean"`` (the study's) or ``"grid"`` (see
            :class:`LocalizationNet`; the registry's ``stn-*-rotation`` models use ``"grid"``).
        loc_kind: ``"cnn"`` (default: :class:`LocalizationNet`, with ``head`` and ``loc_pool``) or
            ``"equivariant"`` (:class:`EquivariantLocalizationNet`, a ``C_N`` network whose angle turns
            with the input; needs ``mode="single"``, ``head="rotation"``, ``loc_pool="mean"`` (the default;
            the grid pool is the CNN localiser's) and an odd ``kernel_size``; ``init`` and ``init_std``
            do not apply to it: its warp is not the identity at init).
        loc_group: the equivariant localiser's cyclic group (default ``"C8"``); ignored for ``"cnn"``.
        loc_readout: the equivariant localiser's orientation readout, ``"dipole"`` (default),
            ``"group"`` or ``"both"`` (see :class:`EquivariantLocalizationNet`); ignored for ``"cnn"``.

    For 28x28 inputs and the defaults the block sizes are 28 -> 24 -> 23 -> 19 -> 18 -> 14 -> 13 -> 9
    -> 8 -> 4. ``STN(head="rotation-sigmoid")`` (or ``"rotation-tanh"``, also one head output) has
    110,539 parameters, as the study's code gives for its "single, 5 convs, 32 channels, 16
    localisation channels" configuration (pools and the affine-free norms hold no parameters, so its
    missing first pool does not change the count); ``STN()`` (single, the two-output ``"rotation"``
    head) has ``loc_channels + 1`` = 17 more, 110,556. ``STN(loc_kind="equivariant", loc_channels=8)``
    has the plain CNN's 103,690 plus 13,025 for the C8 localiser, 116,715.

    ``loc_kind="equivariant"`` requires ``mode="single"``: a later localiser would look at the plain
    convs' feature maps, which do not rotate with the input, so equivariance would buy nothing there.
    """

    def __init__(
        self,
        mode: str = "single",
        head: str = "rotation",
        channels: int = 32,
        layers: int = 5,
        loc_channels: int = 16,
        kernel_size: int = 5,
        init: str = "identity",
        init_std: float = 1e-2,
        in_channels: int = 1,
        num_classes: int = 10,
        input_size: int = 28,
        loc_pool: str = "mean",
        loc_kind: str = "cnn",
        loc_group: Group | str = DEFAULT_LOC_GROUP,
        loc_readout: str = DEFAULT_LOC_READOUT,
    ) -> None:
        super().__init__()
        self.mode = check_choice("mode", mode, _MODES)
        self.loc_pool = check_choice("loc_pool", loc_pool, _POOLS)
        self.head = check_choice("head", head, _HEADS)
        self.loc_kind = check_choice("loc_kind", loc_kind, _LOC_KINDS)
        self.loc_readout = check_choice("loc_readout", loc_readout, _READOUTS)
        self.loc_group = _check_equivariant_args(mode, head, loc_pool, kernel_size, loc_kind, loc_group)
        self.channels = check_int("channels", channels)
        self.layers = check_int("layers", layers)
        self.loc_channels = check_int("loc_channels", loc_channels)
        self.kernel_size = check_int("kernel_size", kernel_size)
        self.init = check_choice("init", init, _INITS)
        self.init_std = check_float("init_std", init_std)
        self.in_channels = check_int("in_channels", in_channels)
        self.num_classes = check_int("num_classes", num_classes)
        self.input_size = check_int("input_size", input_size)

        block_inputs = [input_size]
        for _ in range(layers - 1):
            block_inputs.append(block_inputs[-1] - kernel_size + 1 - 1)
        final = block_inputs[-1] - kernel_size + 1
        if min(block_inputs + [final]) < 1:
            raise ValueError(
                f"layers={layers} with kernel_size={kernel_size} shrinks a {input_size}x{input_size} "
                f"input below 1x1; use fewer layers or a smaller kernel_size"
            )
        n_loc = 1 if mode == "single" else layers
        if min(block_inputs[:n_loc]) < 2:
            raise ValueError(
                f"layers={layers}: a localiser would see a feature map smaller than 2x2 (its "
                f"MaxPool(2, 2) needs 2x2); use fewer layers"
            )
        self.block_input_sizes: tuple[int, ...] = tuple(block_inputs)
        self.output_size = final

        if self.loc_group is not None:
            self.localizers = nn.ModuleList(
                [EquivariantLocalizationNet(in_channels, loc_channels, kernel_size, self.loc_group,
                                            loc_readout)])
        else:
            self.localizers = nn.ModuleList(
                LocalizationNet(in_channels if i == 0 else channels, loc_channels, kernel_size, head,
                                init, init_std, pool=loc_pool)
                for i in range(n_loc)
            )
        self.convs = nn.ModuleList(
            nn.Conv2d(in_channels if i == 0 else channels, channels, kernel_size, padding=0, bias=True)
            for i in range(layers)
        )
        self.classifier = nn.Linear(channels, num_classes)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape [B, {self.in_channels}, H, W], got {list(x.shape)}")

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The ``[B, channels]`` embedding (global average pool of the last block)."""
        self._check_input(x)
        n_loc = len(self.localizers)
        for i, conv in enumerate(self.convs):
            if i > 0:
                x = F.max_pool2d(x, kernel_size=2, stride=1)
            if i < n_loc:
                theta, _ = self.localizers[i](x)
                x = affine_warp(x, theta)
            x = F.relu(layer_norm_chw(conv(x)))
        return x.mean(dim=(-2, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_classes]`` for images ``[B, in_channels, H, W]``."""
        return self.classifier(self.embed(x))

    def transformed_input(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What the first sampler produces, for visualisation.

        Returns ``(warped [B, in_channels, H, W], params)`` with ``params`` the predicted angles ``[B]``
        (radians, counter-clockwise: ``warped`` is ``x`` turned counter-clockwise by them) for the
        rotation heads or ``theta [B, 2, 3]`` for the affine head (its angle:
        :func:`theta_rotation_angle`).
        Gradients are tracked; wrap in ``torch.no_grad()`` when only plotting.
        """
        self._check_input(x)
        theta, params = self.localizers[0](x)
        return affine_warp(x, theta), params

    def localizer_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of all localisation nets."""
        return self.localizers.parameters()

    def extra_repr(self) -> str:
        s = (
            f"mode={self.mode!r}, head={self.head!r}, channels={self.channels}, layers={self.layers}, "
            f"loc_channels={self.loc_channels}, kernel_size={self.kernel_size}, "
        )
        if self.loc_group is not None:
            return s + (f"loc_kind='equivariant', loc_group={self.loc_group.name!r}, "
                        f"loc_readout={self.loc_readout!r}")
        return s + f"init={self.init!r}, loc_pool={self.loc_pool!r}"


def _check_equivariant_args(mode: str, head: str, loc_pool: str, kernel_size: int, loc_kind: str,
                            loc_group: Group | str) -> Group | None:
    """The equivariant localiser's group, or None for ``loc_kind="cnn"``; ``ValueError`` for combinations
    the equivariant localiser does not support (the other arguments are checked by the caller)."""
    check_choice("loc_kind", loc_kind, _LOC_KINDS)
    if loc_kind != "equivariant":
        return None
    group = _check_loc_group(loc_group)
    if mode != "single":
        raise ValueError(f"mode must be 'single' for loc_kind='equivariant' (later localisers would see the "
                         f"plain convs' feature maps, which do not rotate with the input), got {mode!r}")
    if head != "rotation":
        raise ValueError(f"head must be 'rotation' for loc_kind='equivariant' (it predicts a unit-circle "
                         f"rotation by construction), got {head!r}")
    if loc_pool != "mean":
        raise ValueError(f"loc_pool must be 'mean' (the default) for loc_kind='equivariant' (the grid pool "
                         f"belongs to the CNN localiser and is not equivariant), got {loc_pool!r}")
    if isinstance(kernel_size, int) and not isinstance(kernel_size, bool) and kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd for loc_kind='equivariant' (its convs use symmetric "
                         f"'same' padding), got {kernel_size}")
    return group


def _equivariant_localizer_count(in_channels: int, loc_channels: int, k2: int, n: int, readout: str) -> int:
    """Lifting conv + group conv (weights and biases), the readout layers (no biases) and the offset."""
    return (in_channels * loc_channels * k2 + loc_channels
            + loc_channels * loc_channels * n * k2 + loc_channels
            + loc_channels * (2 if readout == "both" else 1) + 1)


def _localizer_count(in_channels: int, loc_channels: int, k2: int, head: str, pool: str = "mean") -> int:
    outputs = _HEAD_OUTPUTS[head]
    convs = (in_channels * loc_channels * k2 + loc_channels
             + loc_channels * loc_channels * k2 + loc_channels)
    if pool == "grid":
        return convs + loc_channels * GRID * GRID * LOC_HIDDEN + LOC_HIDDEN + LOC_HIDDEN * outputs + outputs
    return convs + loc_channels * outputs + outputs


def stn_parameter_count(*args: Any, **kwargs: Any) -> int:
    """Closed-form parameter count of ``STN(*args, **kwargs)`` (equals ``count_parameters(STN(...))``).

    Takes :class:`STN`'s arguments and raises its ``ValueError`` for bad ones (they are checked by
    building the model on the meta device, which allocates nothing). The equivariant localiser
    (``loc_kind="equivariant"``, group ``C_N``, ``C = loc_channels``, ``k^2`` taps, ``in_channels``
    inputs) has ``in_channels*C*k^2 + C`` (lifting conv) ``+ C*C*N*k^2 + C`` (group conv) ``+ C`` (the
    ``"dipole"`` or ``"group"`` readout; ``2C`` for ``"both"``) ``+ 1`` (offset) parameters; the taps
    outside the disk mask are counted, as ``count_parameters`` counts them (they stay 0).
    """
    with torch.device("meta"):
        m = STN(*args, **kwargs)
    k2 = m.kernel_size * m.kernel_size
    body = (m.in_channels * m.channels * k2 + m.channels
            + (m.layers - 1) * (m.channels * m.channels * k2 + m.channels)
            + m.channels * m.num_classes + m.num_classes)
    if m.loc_group is not None:
        return body + _equivariant_localizer_count(m.in_channels, m.loc_channels, k2, m.loc_group.order,
                                                   m.loc_readout)
    loc = _localizer_count(m.in_channels, m.loc_channels, k2, m.head, m.loc_pool)
    if m.mode == "multi":
        loc += (m.layers - 1) * _localizer_count(m.channels, m.loc_channels, k2, m.head, m.loc_pool)
    return body + loc


def stn_for_params(target: int = GCNN_C4_4_16_PARAMS, **kwargs: Any) -> STN:
    """The :class:`STN` whose parameter count is closest to ``target``, searching ``channels`` only;
    ``kwargs`` are :class:`STN`'s other arguments.

    With ``target = 102,970`` (the GCNN C4/4/16), 5 layers and 16 localiser channels:
    single/rotation -> 31 channels, 104,216 parameters (+1.2%); single/rotation-tanh and
    single/rotation-sigmoid -> 31 channels, 104,199 (+1.2%); single/affine -> 31 channels, 104,284
    (+1.3%); multi/rotation -> 20 channels, 105,540 (+2.5%); multi/rotation-tanh and
    multi/rotation-sigmoid -> 20 channels, 105,455 (+2.4%); multi/affine -> 19 channels, 100,340
    (-2.6%). Ties go to fewer channels.
    """
    if "channels" in kwargs:
        raise ValueError("stn_for_params searches channels: do not pass channels")
    return STN(channels=closest_channels(lambda c: stn_parameter_count(channels=c, **kwargs), target), **kwargs)
