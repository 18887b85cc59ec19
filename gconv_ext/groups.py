"""The planar groups C_N (rotations) and D_N (rotations and reflections).

Conventions (used everywhere in gconv_ext, in Python and in the C++/CUDA kernels):

* The plane has coordinates ``(x, y)`` with ``x`` pointing right (increasing column) and ``y``
  pointing *up* (decreasing row), origin at the centre of the image or filter.
* ``R_r`` is the counter-clockwise rotation by ``2*pi*r/N``. For a square image ``t``,
  ``R_1`` of C4 acts as ``torch.rot90(t, 1, dims=(-2, -1))``.
* ``F`` is the reflection ``(x, y) -> (-x, y)`` across the vertical axis; on an image it is
  ``torch.flip(t, dims=(-1,))``.
* Elements of C_N are indexed ``r = 0..N-1`` (``R_r``). Elements of D_N are indexed
  ``m*N + r`` for ``m in {0, 1}``, ``r = 0..N-1``, and mean ``R_r F^m`` (first reflect, then
  rotate). Element 0 is always the identity.
* Composition: ``(m1, r1)(m2, r2) = (m1 xor m2, r1 + (-1)**m1 * r2 mod N)``.
* A group element ``g`` acts on a function ``f`` on the plane by ``(g f)(p) = f(g^-1 p)``; on a
  feature map with a group axis, ``(g f)(h, p) = f(g^-1 h, g^-1 p)``, which moves slice ``h`` of the
  group axis to slice ``g h``: the regular representation.
"""
from __future__ import annotations

import math
from functools import cached_property

import torch
import torch.nn.functional as F

__all__ = ["Group", "CyclicGroup", "DihedralGroup", "group_from_name", "rotate_images", "rotation_affine_theta"]


class Group:
    """C_N (``reflections=False``) or D_N (``reflections=True``) for ``N >= 1``.

    Instances are immutable and hashable; ``Group(4) == CyclicGroup(4)``.
    """

    def __init__(self, rotations: int, reflections: bool = False) -> None:
        if isinstance(rotations, bool) or not isinstance(rotations, int) or rotations < 1:
            raise ValueError(f"rotations must be an int >= 1, got {rotations!r}")
        if not isinstance(reflections, bool):
            raise ValueError(f"reflections must be a bool, got {reflections!r}")
        self._n = rotations
        self._reflections = reflections

    # -- identity ---------------------------------------------------------------------------
    @property
    def rotations(self) -> int:
        """N: the number of rotations."""
        return self._n

    @property
    def reflections(self) -> bool:
        """True for D_N."""
        return self._reflections

    @property
    def order(self) -> int:
        """|G|: N for C_N, 2N for D_N."""
        return self._n * (2 if self._reflections else 1)

    def __len__(self) -> int:
        return self.order

    @property
    def name(self) -> str:
        return f"{'D' if self._reflections else 'C'}{self._n}"

    def __repr__(self) -> str:
        return f"Group({self.name})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Group) and (self._n, self._reflections) == (other._n, other._reflections)

    def __hash__(self) -> int:
        return hash((self._n, self._reflections))

    def __reduce__(self):
        return (Group, (self._n, self._reflections))

    # -- elements ---------------------------------------------------------------------------
    def _check(self, g: int) -> int:
        if isinstance(g, bool) or not isinstance(g, int) or not 0 <= g < self.order:
            raise ValueError(f"group element must be an int in [0, {self.order}) for {self.name}, got {g!r}")
        return g

    def element(self, g: int) -> tuple[int, int]:
        """``(m, r)``: element ``g`` is ``R_r F^m``."""
        self._check(g)
        return divmod(g, self._n)

    def index(self, reflection: int, rotation: int) -> int:
        """The index of ``R_rotation F^reflection``."""
        if reflection not in (0, 1) or (reflection == 1 and not self._reflections):
            raise ValueError(f"reflection must be 0{' or 1' if self._reflections else ''} for {self.name}, got {reflection!r}")
        return reflection * self._n + rotation % self._n

    def compose(self, g: int, h: int) -> int:
        """The product ``g h`` (apply ``h`` first)."""
        m1, r1 = self.element(g)
        m2, r2 = self.element(h)
        return self.index(m1 ^ m2, r1 + (-r2 if m1 else r2))

    def inverse(self, g: int) -> int:
        m, r = self.element(g)
        return self.index(m, r if m else -r)

    def angle(self, g: int) -> float:
        """The rotation angle of element ``g`` in radians (counter-clockwise)."""
        return 2.0 * math.pi * self.element(g)[1] / self._n

    def is_reflection(self, g: int) -> bool:
        return self.element(g)[0] == 1

    @cached_property
    def cayley_table(self) -> torch.Tensor:
        """``table[g, h] = g h`` as an int64 tensor ``[|G|, |G|]``."""
        n = self.order
        return torch.tensor([[self.compose(g, h) for h in range(n)] for g in range(n)], dtype=torch.int64)

    @cached_property
    def inverses(self) -> torch.Tensor:
        """``inverses[g] = g^-1`` (int64 ``[|G|]``)."""
        return torch.tensor([self.inverse(g) for g in range(self.order)], dtype=torch.int64)

    def matrix(self, g: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """The 2x2 matrix of ``g`` acting on ``(x, y)`` (x right, y up)."""
        m, r = self.element(g)
        c, s = _cos_sin(r, self._n)
        rot = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
        ref = torch.tensor([[-1.0, 0.0], [0.0, 1.0]], dtype=torch.float64) if m else torch.eye(2, dtype=torch.float64)
        return (rot @ ref).to(dtype)

    def regular_permutation(self, g: int) -> torch.Tensor:
        """``perm`` with ``(g f)[..., perm, :, :] == f`` on the group axis, i.e. ``perm[h] = g h``.

        Equivalently the action on a feature map is ``out[:, :, g h] = f[:, :, h]``, or
        ``out = f[:, :, self.cayley_table[self.inverse(g)]]``.
        """
        self._check(g)
        return self.cayley_table[g].clone()

    def act_on_group_axis(self, g: int, x: torch.Tensor, dim: int = 2) -> torch.Tensor:
        """``out[..., h, ...] = x[..., g^-1 h, ...]`` along ``dim`` (the regular representation)."""
        if x.shape[dim] != self.order:
            raise ValueError(f"x.shape[{dim}] must be |G| = {self.order} for {self.name}, got {x.shape[dim]}")
        src = self.cayley_table[self.inverse(g)].to(x.device)
        return x.index_select(dim, src)

    def act_on_plane(self, g: int, x: torch.Tensor) -> torch.Tensor:
        """Transform the last two (square, spatial) dims of ``x`` by ``g``: ``out(p) = x(g^-1 p)``.

        Exact (a permutation of pixels) when the rotation angle is a multiple of 90 degrees;
        otherwise bilinear interpolation about the centre with zero fill.
        """
        m, r = self.element(g)
        if m:
            x = torch.flip(x, dims=(-1,))
        if (4 * r) % self._n == 0:
            return torch.rot90(x, 4 * r // self._n, dims=(-2, -1))
        return rotate_bilinear(x, self.angle(self.index(0, r)))

    def act_on_images(self, elements: torch.Tensor, images: torch.Tensor, inverse: bool = False) -> torch.Tensor:
        """One element per image: ``images[i]`` ``[B, C, H, W]`` transformed by ``elements[i]`` (int64 ``[B]``,
        indices of this group), as data: reflect (elements ``m = 1``), then rotate counter-clockwise by
        ``r * 360 / N`` degrees with :func:`rotate_images` (a permutation of pixels at multiples of 90 degrees,
        bilinear otherwise). ``inverse=True`` applies ``elements[i]^-1``: rotate back, then reflect."""
        if not isinstance(elements, torch.Tensor) or elements.dtype != torch.int64 or elements.dim() != 1:
            raise ValueError(f"elements must be an int64 tensor [B] of element indices of {self.name}, got "
                             f"{getattr(elements, 'dtype', type(elements).__name__)} "
                             f"{tuple(getattr(elements, 'shape', ()))}")
        if elements.numel() and (int(elements.min()) < 0 or int(elements.max()) >= self.order):
            raise ValueError(f"elements must be indices in [0, {self.order}) of {self.name}")
        elements = elements.cpu()
        flips = elements >= self._n
        angles = (elements % self._n).to(torch.float64) * (360.0 / self._n)
        if inverse:
            return _flip_where(rotate_images(images, -angles), flips)
        return rotate_images(_flip_where(images, flips), angles)

    def act(self, g: int, x: torch.Tensor, group_dim: int | None = 2) -> torch.Tensor:
        """The action on a feature map ``[..., |G|, H, W]`` (plane and group axis), or on an image
        ``[..., H, W]`` when ``group_dim`` is None."""
        y = self.act_on_plane(g, x)
        return y if group_dim is None else self.act_on_group_axis(g, y, group_dim)


def _flip_where(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mirror (last dim) the samples of ``x`` where ``mask`` ([B] bool) is set."""
    if not bool(mask.any()):
        return x
    m = mask.to(x.device).view(-1, *([1] * (x.dim() - 1)))
    return torch.where(m, torch.flip(x, dims=(-1,)), x)


def _angles_tensor(angles_deg: torch.Tensor | float | int, batch: int) -> torch.Tensor:
    """Angles as a float64 CPU tensor of shape [batch]."""
    if isinstance(angles_deg, torch.Tensor):
        a = angles_deg.detach().to(device="cpu", dtype=torch.float64)
        if a.dim() == 0:
            a = a.expand(batch)
        elif a.dim() != 1 or a.shape[0] != batch:
            raise ValueError(
                f"angles_deg must be a scalar or have shape [{batch}] (one per image), "
                f"got shape {tuple(a.shape)}"
            )
        return a.contiguous()
    if isinstance(angles_deg, (int, float)):
        return torch.full((batch,), float(angles_deg), dtype=torch.float64)
    raise TypeError(f"angles_deg must be a float or a torch.Tensor, got {type(angles_deg).__name__}")


def rotation_affine_theta(angles_deg: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Affine matrices [B,2,3] (float64) for ``F.affine_grid`` rotating counter-clockwise as displayed.

    In the normalised grid coordinates (x to the right, y *down*), the output
    pixel at (x, y) samples the input at ``(c*x - s*(H/W)*y, s*(W/H)*x + c*y)``,
    i.e. a rotation in pixel units about the centre (the H/W factors keep
    non-square images undistorted). Angles in degrees; not to be confused with the STN's
    :func:`gconv_ext.models.rotation_theta` (radians, square grids, the warp the network applies).
    """
    rad = angles_deg.to(torch.float64) * (math.pi / 180.0)
    c, s = torch.cos(rad), torch.sin(rad)
    zero = torch.zeros_like(c)
    row0 = torch.stack([c, -s * (height / width), zero], dim=-1)
    row1 = torch.stack([s * (width / height), c, zero], dim=-1)
    return torch.stack([row0, row1], dim=-2)


def rotate_images(images: torch.Tensor, angles_deg: torch.Tensor | float | int) -> torch.Tensor:
    """Rotate ``images`` [B,C,H,W] (floating point) counter-clockwise as displayed by ``angles_deg``: the data
    rotation of every experiment (``gconv_ext.data.rotate``), bit for bit what committed results were made with.

    Args:
        images: float tensor [B,C,H,W]; row 0 is the top of the image.
        angles_deg: one angle for all images, or a tensor [B] of per-image angles
            in degrees. Positive = counter-clockwise on screen, i.e. the same
            direction as ``torch.rot90(x, 1, dims=(-2, -1))``.

    Returns:
        A new tensor with the same shape, dtype and device. Images whose angle is
        an exact multiple of 90 degrees are bit-identical to
        ``torch.rot90(x, k, dims=(-2, -1))`` with ``k = angle / 90`` (for odd ``k``
        this needs a square image; non-square images use interpolation). Other
        images are resampled bilinearly with zero fill, same output size.
    """
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"images must have shape [B,C,H,W], got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"images must be floating point (got {images.dtype}); convert e.g. with x.float() / 255")
    batch, _, height, width = images.shape
    angles = _angles_tensor(angles_deg, batch)
    if not torch.isfinite(angles).all():
        raise ValueError("angles_deg contains NaN or infinite values")

    out = torch.empty_like(images, memory_format=torch.contiguous_format)
    if batch == 0:
        return out
    exact = torch.remainder(angles, 90.0) == 0
    k_all = torch.remainder(torch.round(angles / 90.0), 4).to(torch.int64)
    if height != width:
        exact &= k_all % 2 == 0  # a quarter turn would change the shape

    for k in range(4):
        sel = exact & (k_all == k)
        if not bool(sel.any()):
            continue
        idx = sel.nonzero(as_tuple=True)[0].to(images.device)
        part = images.index_select(0, idx)
        out.index_copy_(0, idx, part if k == 0 else torch.rot90(part, k, dims=(-2, -1)))

    interp = ~exact
    if bool(interp.any()):
        idx = interp.nonzero(as_tuple=True)[0]
        theta = rotation_affine_theta(angles[idx], height, width)
        idx = idx.to(images.device)
        part = images.index_select(0, idx)
        theta = theta.to(device=images.device, dtype=images.dtype)
        grid = F.affine_grid(theta, list(part.shape), align_corners=False)
        rotated = F.grid_sample(part, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        out.index_copy_(0, idx, rotated)
    return out


def rotate_bilinear(x: torch.Tensor, angle: float) -> torch.Tensor:
    """Rotate the last two (square) dims counter-clockwise by ``angle`` radians about the centre:
    ``out(p) = x(R^-1 p)``, bilinear, zero fill; the same sampling as the filter transform (the plane
    action of :meth:`Group.act_on_plane` at angles that are not multiples of 90 degrees). In pixel space
    this is the rotation of :func:`gconv_ext.data.transforms.rotate` (``align_corners`` differs, the
    pixel-space map does not; pinned by a test)."""
    h, w = x.shape[-2:]
    if h != w:
        raise ValueError(f"rotate_bilinear needs square spatial dims, got {h}x{w}")
    if h == 1:
        return x.clone()
    lead = x.shape[:-2]
    flat = x.reshape(-1, 1, h, w)
    cos, sin = math.cos(angle), math.sin(angle)
    # grid coordinates are (x right, y down): conjugating R^-1 by the y-flip gives R itself
    theta = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=flat.dtype, device=flat.device)
    grid = F.affine_grid(theta.expand(flat.shape[0], 2, 3), list(flat.shape), align_corners=True)
    out = F.grid_sample(flat, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out.reshape(*lead, h, w)


def _cos_sin(r: int, n: int) -> tuple[float, float]:
    """cos and sin of 2*pi*r/n, exact at multiples of 90 degrees."""
    r %= n
    if (4 * r) % n == 0:
        return [(1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0)][4 * r // n]
    t = 2.0 * math.pi * r / n
    return math.cos(t), math.sin(t)


def CyclicGroup(n: int) -> Group:
    """C_N: the N rotations by multiples of 2*pi/N."""
    return Group(n, False)


def DihedralGroup(n: int) -> Group:
    """D_N: the N rotations and N reflections (order 2N)."""
    return Group(n, True)


def group_from_name(name: str | Group) -> Group:
    """``'C4'``, ``'d8'``, ... -> Group. A Group is returned as is."""
    if isinstance(name, Group):
        return name
    if not isinstance(name, str) or len(name) < 2 or name[0].upper() not in "CD" or not name[1:].isdigit():
        raise ValueError(f"group must be a Group or a name like 'C4' or 'D8', got {name!r}")
    n = int(name[1:])
    if n < 1:
        raise ValueError(f"group {name!r}: N must be >= 1")
    return Group(n, name[0].upper() == "D")
