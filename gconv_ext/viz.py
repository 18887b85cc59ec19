"""Visualisations (PNG, written atomically): the rotated filter bank of an equivariant layer, GCNN
feature maps of a digit rotated by 0/90/180/270 degrees (the group-axis shift), and STN inputs next to
what their sampler makes of them."""
from __future__ import annotations

import io
import os

import torch
from torch import nn

from .data.paths import atomic_write_bytes
from .nn import GroupConv2d, LiftingConv2d

__all__ = ["plot_filter_bank", "plot_group_feature_maps", "plot_stn_transforms", "visualize_checkpoint"]


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


def plot_stn_transforms(model: nn.Module, images: torch.Tensor, path: str | os.PathLike[str]) -> None:
    """Inputs (top row) next to what the STN's first sampler makes of them (bottom row), with the
    predicted angle for the rotation head."""
    if not hasattr(model, "transformed_input"):
        raise TypeError("plot_stn_transforms: the model must be an STN (transformed_input(x))")
    model.eval()
    with torch.no_grad():
        warped, params = model.transformed_input(images)
    cols = images.shape[0]
    fig, axes = _figure(2, cols)
    for i in range(cols):
        axes[0, i].imshow(images[i, 0].cpu().numpy(), cmap="gray")
        axes[1, i].imshow(warped[i, 0].cpu().numpy(), cmap="gray")
        if params.dim() == 1:
            axes[1, i].set_title(f"{torch.rad2deg(params[i]).item():.0f} deg", fontsize=8)
    axes[0, 0].set_ylabel("input", fontsize=8)
    axes[1, 0].set_ylabel("sampled", fontsize=8)
    _save(fig, path)


def visualize_checkpoint(checkpoint: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None,
                         data_dir: str | os.PathLike[str] | None = None, seed: int = 0) -> list[str]:
    """Write the visualisations that fit the checkpoint's model; returns the written paths.

    GCNN: ``filters_lifting.png``, ``filters_group.png`` and ``group_feature_maps.png`` (a test digit
    rotated by 0/90/180/270 degrees); STN: ``stn_transforms.png`` (8 rotated test digits).
    """
    from pathlib import Path  # noqa: PLC0415

    from .data.mnist import load_mnist, normalize, to_float01  # noqa: PLC0415
    from .data.transforms import rotate  # noqa: PLC0415
    from .train.loop import model_from_checkpoint  # noqa: PLC0415

    checkpoint = Path(checkpoint)
    out = Path(out_dir) if out_dir is not None else checkpoint.parent
    out.mkdir(parents=True, exist_ok=True)
    model, cfg, _ = model_from_checkpoint(checkpoint)
    images, _labels = load_mnist("test", data_dir if data_dir is not None else cfg.data_dir)
    digits01 = to_float01(images[:8]).unsqueeze(1)  # rotate in [0, 1] so the fill is background
    digits = normalize(digits01)
    written = []
    convs = [m for m in model.modules() if isinstance(m, (LiftingConv2d, GroupConv2d))]
    if convs:
        plot_filter_bank(convs[0], out / "filters_lifting.png")
        written.append(str(out / "filters_lifting.png"))
        if len(convs) > 1:
            plot_filter_bank(convs[1], out / "filters_group.png")
            written.append(str(out / "filters_group.png"))
    if hasattr(model, "group_features"):
        plot_group_feature_maps(model, digits[0], out / "group_feature_maps.png")
        written.append(str(out / "group_feature_maps.png"))
    if hasattr(model, "transformed_input"):
        gen = torch.Generator().manual_seed(seed)
        angles = torch.rand(digits.shape[0], generator=gen, dtype=torch.float64) * 360
        plot_stn_transforms(model, normalize(rotate(digits01, angles)), out / "stn_transforms.png")
        written.append(str(out / "stn_transforms.png"))
    return written
