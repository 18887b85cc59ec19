""""Learning unequivariance" (Using and Abusing Equivariance, section 4): a single strided P4 convolution at
an inexact input size can learn to tell an image from its own 90-degree rotation, which an exactly
equivariant network with an invariant head cannot do.

The network: ``LiftingConv2d(C_in, C, 3, C4, stride=2, padding=1)`` -> ReLU -> mean over (|G|, H, W) ->
``Linear(C, 2)``. The task: label 0 for an image, 1 for the same image rotated by 90 degrees, on a fixed set
of images (full-batch SGD). The stride-2 layer is exact when ``(n + 2 - 3) mod 2 == 0``, i.e. at odd sizes:
at 33x33 both images give identical invariant features, so the loss cannot fall below ln 2 = 0.693; at
32x32 the sampling grid of the rotated image is shifted by one pixel and the loss falls (the paper: 0.70 ->
0.09 in 400 steps).

Training goes through the project's engine (:func:`gconv_ext.train.engine.fit`) with the preset
:data:`UNEQUIVARIANCE_PROTOCOL`: SGD with momentum at a constant rate, full batch, so one engine epoch is one
SGD step (with an ``out_dir``: one ``metrics.csv`` row per step, ``last.pt`` every 50 steps, and resume).
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models.common import check_int
from ..nn import EquivarianceWarning, InvariantPool, LiftingConv2d
from ..train.config import TrainConfig
from ..train.datasets import TrainData
from ..train.engine import fingerprint, fit
from .parity import fit_size

__all__ = ["UnequivarianceNet", "learn_unequivariance", "LN2", "UNEQUIVARIANCE_PROTOCOL"]

LN2 = math.log(2.0)

#: The training protocol (:class:`~gconv_ext.train.config.TrainConfig` fields; :func:`learn_unequivariance`
#: sets the rate, momentum, steps and the full batch): SGD at a constant rate without weight decay; the
#: checkpoints and metrics are written every 50 steps (an epoch is one step).
UNEQUIVARIANCE_PROTOCOL: dict[str, Any] = dict(optimizer="sgd", weight_decay=0.0, lr_schedule="constant",
                                               warmup_epochs=0.0, patience=0, precision="fp32", device="cpu",
                                               save_every=50)


class UnequivarianceNet(nn.Module):
    """One P4 conv (3x3, stride 2, padding 1) -> ReLU -> invariant mean pool -> Linear(C, 2)."""

    def __init__(self, channels: int = 16, in_channels: int = 1) -> None:
        super().__init__()
        self.conv = LiftingConv2d(check_int("in_channels", in_channels), check_int("channels", channels), 3, "C4",
                                  stride=2, padding=1)
        self.pool = InvariantPool("mean")
        self.head = nn.Linear(channels, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(torch.relu(self.conv(x))))


def learn_unequivariance(size: int, steps: int = 400, n_images: int = 1, channels: int = 16, lr: float = 0.1,
                         momentum: float = 0.9, images: torch.Tensor | None = None, seed: int = 0, *,
                         out_dir: str | Path | None = None, log: Callable[[str], None] | None = None,
                         **train_options: Any) -> list[float]:
    """Train :class:`UnequivarianceNet` to separate ``n_images`` images (default one, as in the paper) from
    their 90-degree rotations;
    returns the loss of every step (the first is the loss at initialisation).

    ``images`` ``[N, C, H, W]`` (square, any size; centre-cropped or zero-padded to ``size``) or None for
    standard-normal noise images of ``size x size``, drawn with ``seed``.

    ``out_dir``: the engine's outputs (``metrics.csv`` with one row per step, ``last.pt``, ``best.pt``,
    ``summary.json``); a run there with the same settings resumes, one with others is replaced. ``log``:
    progress lines (none by default). ``train_options``: other
    :class:`~gconv_ext.train.config.TrainConfig` fields (``device``, ``precision``, ``stop_after``, ...).
    """
    check_int("size", size)
    check_int("steps", steps)
    gen = torch.Generator().manual_seed(seed)
    if images is None:
        images = torch.randn(n_images, 1, size, size, generator=gen)
    else:
        images = fit_size(images.float(), size)
    x = torch.cat([images, torch.rot90(images, 1, dims=(-2, -1))])
    y = torch.cat([torch.zeros(len(images), dtype=torch.long), torch.ones(len(images), dtype=torch.long)])
    torch.manual_seed(seed)
    model = UnequivarianceNet(channels, images.shape[1])
    cfg = TrainConfig(**{**UNEQUIVARIANCE_PROTOCOL, "model": "UnequivarianceNet",
                         "model_kwargs": {"channels": channels, "in_channels": int(images.shape[1])},
                         "lr": lr, "momentum": momentum, "epochs": steps, "batch_size": int(x.shape[0]),
                         "seed": seed, "quiet": log is None, "out_dir": None if out_dir is None else str(out_dir),
                         "resume": True, "overwrite": True, **train_options})
    meta = {"experiment": "learning-unequivariance", "dataset": "images vs their 90-degree rotations",
            "input_size": size, "data": fingerprint(x, y)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EquivarianceWarning)  # 32x32 is inexact on purpose
        summary = fit(model, TrainData(x, y, None, None, None), cfg, meta=meta, log=log)
    return [row["train_loss"] for row in summary["history"]][:steps]  # (a longer run found in out_dir)
