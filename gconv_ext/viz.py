"""Visualisations (PNG, written atomically): the rotated filter bank of an equivariant layer, GCNN
feature maps of a digit rotated by 0/90/180/270 degrees (the group-axis shift), and how an STN's sampler
canonicalises a digit shown at several rotations."""
from __future__ import annotations

import io
import os

import torch
from torch import nn

from .data.paths import atomic_write_bytes
from .nn import GroupConv2d, LiftingConv2d

__all__ = ["STN_FIGURE_ANGLES", "plot_filter_bank", "plot_group_feature_maps", "plot_stn_transforms",
           "visualize_checkpoint"]

#: Counter-clockwise rotations (degrees) of every digit in the STN canonicalisation figure.
STN_FIGURE_ANGLES: tuple[float, ...] = (0.0, 60.0, 120.0, 180.0, 240.0, 300.0)


def _figure(rows: int, cols: int, cell: float = 1.1):
    import matplotlib  # noqa: PLC0415 (only plotting needs it)

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure  # noqa: PLC0415

    fig = Figure(figsize=(max(2.0, cols * cell), max(1.5, rows * cell)), dpi=100)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig, axes


def _save(fig, path: str | os.PathLike[str]) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def plot_filter_bank(layer: LiftingConv2d | GroupConv2d, path: str | os.PathLike[str], channels: int = 4) -> None:
    """One row per output channel (the first ``channels``), one column per group element: the filter
    the layer actually applies for that element (input channel 0; for group convs, input slice 0 of
    element g, i.e. the base slice ``g^-1`` transformed by g)."""
    if not isinstance(layer, (LiftingConv2d, GroupConv2d)):
        raise TypeError(f"plot_filter_bank: layer must be a LiftingConv2d or GroupConv2d, got {type(layer).__name__}")
    group = layer.group
    with torch.no_grad():
        w = layer.expanded_weight().float().cpu()  # [C_out * G, C_in (* G), k, k]
    rows = min(channels, layer.out_channels)
    fig, axes = _figure(rows, group.order)
    vmax = w[: rows * group.order, 0].abs().max().item() or 1.0
    for c in range(rows):
        for g in range(group.order):
            axes[c, g].imshow(w[c * group.order + g, 0].numpy(), cmap="RdBu_r", vmin=-vmax, vmax=vmax)
            if c == 0:
                m, r = group.element(g)
                axes[c, g].set_title(f"{'F' if m else ''}R{r}", fontsize=8)
        axes[c, 0].set_ylabel(f"out {c}", fontsize=8)
    fig.suptitle(f"{type(layer).__name__} filters, {group.name}", fontsize=9)
    _save(fig, path)


def plot_group_feature_maps(model: nn.Module, image: torch.Tensor, path: str | os.PathLike[str],
                            channel: int = 0) -> None:
    """For a digit rotated by 0, 90, 180 and 270 degrees (rows), the first column is the input and the
    others the group slices of one channel of the model's last group feature map
    (``model.group_features``). Rotating the input rotates each slice and shifts the group axis by one
    slice per quarter turn (C4): the same pictures move one column to the right."""
    if not hasattr(model, "group_features"):
        raise TypeError("plot_group_feature_maps: the model must have a group_features(x) method (e.g. GCNN)")
    if image.dim() == 2:
        image = image[None, None]
    elif image.dim() == 3:
        image = image[None]
    model.eval()
    with torch.no_grad():
        feats = [model.group_features(torch.rot90(image, r, dims=(-2, -1)))[0, channel] for r in range(4)]
    n = feats[0].shape[0]
    fig, axes = _figure(4, n + 1)
    vmax = max(f.abs().max().item() for f in feats) or 1.0
    for r in range(4):
        axes[r, 0].imshow(torch.rot90(image[0, 0], r).cpu().numpy(), cmap="gray")
        axes[r, 0].set_ylabel(f"{90 * r} deg", fontsize=8)
        for g in range(n):
            axes[r, g + 1].imshow(feats[r][g].cpu().numpy(), cmap="viridis", vmin=-vmax, vmax=vmax)
            if r == 0:
                axes[r, g + 1].set_title(f"slice {g}", fontsize=8)
    fig.suptitle(f"group feature maps of channel {channel}: rotation shifts the group axis", fontsize=9)
    _save(fig, path)


def plot_stn_transforms(model: nn.Module, digits: torch.Tensor, path: str | os.PathLike[str],
                        angles_deg=STN_FIGURE_ANGLES) -> None:
    """Does the STN canonicalise? Each digit is shown at every rotation of ``angles_deg`` (columns): a
    row of inputs above a row of what the STN's first sampler makes of them, each warped panel titled
    with the warp's counter-clockwise angle (the rotation head's angle; for the affine head the
    rotation of ``theta``, :func:`~gconv_ext.models.stn.theta_rotation_angle`). A canonicaliser turns
    every copy of a digit into the same orientation (for 0, 1 and 8 possibly up to a half turn), so its
    warped rows look constant and its angles go down in steps of the input's; an identity-like warp
    leaves the rotations as they are.

    Args:
        model: an STN (anything with ``transformed_input(x) -> (warped, params)``).
        digits: upright digits, float ``[D, 1, H, W]`` or ``[D, H, W]`` in ``[0, 1]`` (or uint8 pixels);
            they are rotated counter-clockwise in ``[0, 1]`` and then normalised, as the models are fed.
        path: the PNG to write.
        angles_deg: the rotations (degrees, counter-clockwise), one column each.
    """
    from .analysis.canonicalization import warp_angles_deg  # noqa: PLC0415
    from .data.mnist import normalize, to_float01  # noqa: PLC0415
    from .data.transforms import rotate  # noqa: PLC0415

    if not hasattr(model, "transformed_input"):
        raise TypeError("plot_stn_transforms: the model must be an STN (transformed_input(x))")
    if digits.dim() == 3:
        digits = digits.unsqueeze(1)
    if digits.dim() != 4 or digits.shape[1] != 1:
        raise ValueError(f"digits must have shape [D, 1, H, W] or [D, H, W], got {list(digits.shape)}")
    if digits.dtype == torch.uint8:
        digits = to_float01(digits)
    angles = [float(a) for a in angles_deg]
    if not angles:
        raise ValueError("angles_deg must contain at least one angle")
    n, m = digits.shape[0], len(angles)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    inputs01 = rotate(digits.float().repeat_interleave(m, dim=0),
                      torch.tensor(angles, dtype=torch.float64).repeat(n))
    model.eval()
    with torch.no_grad():
        warped, params = model.transformed_input(normalize(inputs01).to(device))
    alpha = warp_angles_deg(params)
    lo, hi = normalize(torch.tensor(0.0)).item(), normalize(torch.tensor(1.0)).item()
    fig, axes = _figure(2 * n, m, cell=1.3)
    for d in range(n):
        for j in range(m):
            k = d * m + j
            axes[2 * d, j].imshow(inputs01[k, 0].cpu().numpy(), cmap="gray", vmin=0.0, vmax=1.0)
            axes[2 * d + 1, j].imshow(warped[k, 0].cpu().numpy(), cmap="gray", vmin=lo, vmax=hi)
            axes[2 * d, j].set_title(f"input {angles[j]:g}°", fontsize=7)
            axes[2 * d + 1, j].set_title(f"warp {round(alpha[k].item()):+d}°", fontsize=7)
        axes[2 * d, 0].set_ylabel("input", fontsize=8)
        axes[2 * d + 1, 0].set_ylabel("warped", fontsize=8)
    fig.suptitle("STN canonicalisation: rotated inputs and the first sampler's output "
                 "(angles counter-clockwise)", fontsize=9)
    _save(fig, path)


def visualize_checkpoint(checkpoint: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None,
                         data_dir: str | os.PathLike[str] | None = None, seed: int = 0) -> list[str]:
    """Write the visualisations that fit the checkpoint's model; returns the written paths.

    GCNN: ``filters_lifting.png``, ``filters_group.png`` and ``group_feature_maps.png`` (a test digit
    rotated by 0/90/180/270 degrees); STN: ``stn_transforms.png`` (:func:`plot_stn_transforms`: 4 test
    digits chosen with ``seed``, each at 0, 60, ..., 300 degrees, above what the STN makes of them).
    """
    from pathlib import Path  # noqa: PLC0415

    from .data.mnist import load_mnist, normalize, to_float01  # noqa: PLC0415
    from .train.loop import model_from_checkpoint  # noqa: PLC0415

    checkpoint = Path(checkpoint)
    out = Path(out_dir) if out_dir is not None else checkpoint.parent
    out.mkdir(parents=True, exist_ok=True)
    model, cfg, _ = model_from_checkpoint(checkpoint)
    images, _labels = load_mnist("test", data_dir if data_dir is not None else cfg.data_dir)
    digit = normalize(to_float01(images[:1]).unsqueeze(1))[0]
    written = []
    convs = [m for m in model.modules() if isinstance(m, (LiftingConv2d, GroupConv2d))]
    if convs:
        plot_filter_bank(convs[0], out / "filters_lifting.png")
        written.append(str(out / "filters_lifting.png"))
        if len(convs) > 1:
            plot_filter_bank(convs[1], out / "filters_group.png")
            written.append(str(out / "filters_group.png"))
    if hasattr(model, "group_features"):
        plot_group_feature_maps(model, digit, out / "group_feature_maps.png")
        written.append(str(out / "group_feature_maps.png"))
    if hasattr(model, "transformed_input"):
        gen = torch.Generator().manual_seed(seed)
        pick = torch.randperm(images.shape[0], generator=gen)[:4]
        plot_stn_transforms(model, to_float01(images[pick]).unsqueeze(1), out / "stn_transforms.png")
        written.append(str(out / "stn_transforms.png"))
    return written
