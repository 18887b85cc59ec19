"""The input-size parity experiment of "Using and Abusing Equivariance" on MNIST.

A C4 GCNN with one 2x2/2 max pool (:class:`ParityGCNN`) is exactly equivariant to 90-degree rotations only
when the pool's input size is even: with a 3x3 unpadded lifting conv that means even input sizes (26, 28, 30
are exact, 27 and 29 are not, :func:`gconv_ext.nn.check_exact` confirms). Trained on upright digits and tested
on digits rotated by 0, 10, ..., 350 degrees, the paper's exact network generalised to the rotated digits far
better than the inexact one, which did better than a plain CNN (87.3% vs about 66% vs 42.7%, 10k digits).

Input sizes (:func:`fit_size`): the 28x28 digit is cropped or zero-padded, symmetrically when the
difference is even (26: one pixel off every side; 30: one pixel of padding on every side) and with the odd
pixel at the bottom/right otherwise (27: the last row and column dropped; 29: one row/column of zeros added
at the bottom/right). The test digits are fitted first and then rotated about the centre of the fitted
image (``gconv_ext.data.rotate``: exact for multiples of 90 degrees, bilinear with zero fill otherwise).
Pixels are in [0, 1] (no mean subtraction, so padding, zero fill and background agree).

Training goes through the project's engine (:func:`gconv_ext.train.engine.fit`) with this experiment's
preset :data:`PARITY_PROTOCOL` (Adam, constant learning rate, no weight decay, float32, no validation set: the
model after the last epoch is evaluated); with an ``out_dir`` each model's run gets ``metrics.csv``,
``last.pt``/``best.pt`` and ``summary.json`` and an interrupted run resumes.
"""
from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data import rotate
from ..groups import Group, group_from_name
from ..models.common import check_int
from ..nn import EquivarianceWarning, GroupBatchNorm2d, GroupConv2d, GroupMaxPool2d, InvariantPool, LiftingConv2d
from ..train.config import TrainConfig
from ..train.datasets import TrainData
from ..train.engine import accuracy, fingerprint, fit
from .report import mean_std

__all__ = ["ParityGCNN", "ParityCNN", "fit_size", "train_classifier", "rotated_accuracy", "ParityBudget",
           "PARITY_BUDGETS", "PARITY_PROTOCOL", "ANGLES", "mean_accuracy", "run_parity", "summarize_parity"]

#: The evaluation angles (degrees): 0, 10, ..., 350.
ANGLES: tuple[int, ...] = tuple(range(0, 360, 10))


class ParityGCNN(nn.Module):
    """C_N/D_N GCNN with one 2x2/2 max pool: lifting conv (k=3) -> BN -> ReLU -> GroupMaxPool2d(2, 2) ->
    ``depth`` x [group conv (k=3) -> BN -> ReLU] -> mean over (|G|, H, W) -> Linear.

    Batch norm is :class:`gconv_ext.nn.GroupBatchNorm2d` (statistics shared over the group axis, so exactly
    equivariant in eval mode). At 28x28: 28 -> 26 -> 13 -> 11 -> 9 -> 7 -> 5 for ``depth=4``. Exact at
    input size ``n`` iff the pool's input ``n - 2`` is even, i.e. at even ``n``."""

    def __init__(self, channels: int = 8, group: Group | str = "C4", depth: int = 4, in_channels: int = 1,
                 num_classes: int = 10) -> None:
        super().__init__()
        self.group = group_from_name(group)
        channels = check_int("channels", channels)
        depth = check_int("depth", depth)
        blocks: list[nn.Module] = [LiftingConv2d(check_int("in_channels", in_channels), channels, 3, self.group),
                                   GroupBatchNorm2d(channels, self.group), nn.ReLU(), GroupMaxPool2d(2, 2)]
        for _ in range(depth):
            blocks += [GroupConv2d(channels, channels, 3, self.group), GroupBatchNorm2d(channels, self.group),
                       nn.ReLU()]
        self.features = nn.Sequential(*blocks)
        self.pool = InvariantPool("mean")
        self.classifier = nn.Linear(channels, check_int("num_classes", num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


class ParityCNN(nn.Module):
    """The plain (Z2) CNN of the same layout: conv (k=3) -> BN -> ReLU -> MaxPool2d(2, 2) -> ``depth`` x
    [conv (k=3) -> BN -> ReLU] -> global mean -> Linear. With ``channels = 2 C`` its convolutions have the
    weight count of ``ParityGCNN(C, 'C4')`` (``9 * 4 C^2`` per group conv)."""

    def __init__(self, channels: int = 16, depth: int = 4, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        channels = check_int("channels", channels)
        blocks: list[nn.Module] = [nn.Conv2d(check_int("in_channels", in_channels), channels, 3),
                                   nn.BatchNorm2d(channels), nn.ReLU(), nn.MaxPool2d(2, 2)]
        for _ in range(check_int("depth", depth)):
            blocks += [nn.Conv2d(channels, channels, 3), nn.BatchNorm2d(channels), nn.ReLU()]
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Linear(channels, check_int("num_classes", num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean(dim=(-2, -1)))


def fit_size(images: torch.Tensor, size: int) -> torch.Tensor:
    """Crop or zero-pad ``[..., H, W]`` square images to ``size`` (symmetric; the odd pixel goes to the
    bottom/right, see the module docstring)."""
    check_int("size", size)
    n = images.shape[-1]
    if images.shape[-2] != n:
        raise ValueError(f"fit_size: images must be square, got {tuple(images.shape[-2:])}")
    d = size - n
    if d == 0:
        return images
    before = abs(d) // 2
    after = abs(d) - before
    if d > 0:
        return F.pad(images, (before, after, before, after))
    return images[..., before:n - after, before:n - after]


@dataclasses.dataclass(frozen=True)
class ParityBudget:
    """How much of MNIST and how many epochs one run of the parity experiment uses."""

    n_train: int
    n_test: int
    epochs: int
    channels: int
    sizes: tuple[int, ...]
    batch_size: int = 64
    lr: float = 1e-3


PARITY_BUDGETS: dict[str, ParityBudget] = {
    # seconds on a 2-core CPU: 2000 digits, two epochs; exact 28 vs inexact 27
    "smoke": ParityBudget(n_train=2000, n_test=200, epochs=2, channels=8, sizes=(28, 27), batch_size=32,
                          lr=3e-3),
    # minutes: every size of the paper
    "small": ParityBudget(n_train=4000, n_test=500, epochs=3, channels=8, sizes=(26, 27, 28, 29, 30),
                          batch_size=32, lr=3e-3),
    # the paper's 10k digits (8k train / 2k validation); here 8k train and 2k test digits
    "full": ParityBudget(n_train=8000, n_test=2000, epochs=10, channels=10, sizes=(26, 27, 28, 29, 30),
                         batch_size=32, lr=3e-3),
}


#: The training protocol of the parity experiment (:class:`~gconv_ext.train.config.TrainConfig` fields; the
#: budget gives the epochs, batch size and learning rate): Adam on cross-entropy at a constant rate.
PARITY_PROTOCOL: dict[str, Any] = dict(optimizer="adam", weight_decay=0.0, lr_schedule="constant", warmup_epochs=0.0,
                                       patience=0, precision="fp32", device="cpu", eval_batch_size=500)


def train_classifier(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, epochs: int,
                     batch_size: int = 64, lr: float = 1e-3, seed: int = 0, log: Callable[[str], None] | None = None,
                     *, out_dir: str | Path | None = None, **train_options: Any) -> list[float]:
    """Adam on cross-entropy (:data:`PARITY_PROTOCOL`, through :func:`gconv_ext.train.engine.fit`); returns
    the mean training loss of each epoch. ``images`` ``[N, C, H, W]`` as the model takes them. ``log`` (e.g.
    ``print``), if given, gets one progress line per epoch (and a progress bar goes to stderr).

    ``out_dir``: where the run writes ``metrics.csv``, ``last.pt``, ``best.pt`` and ``summary.json``; a run
    found there with the same settings and data resumes (a finished one is not trained again), one with
    other settings is replaced. None: nothing is written. ``train_options``: other
    :class:`~gconv_ext.train.config.TrainConfig` fields (``device``, ``precision``, ``compile``,
    ``stop_after``, ...)."""
    cfg = TrainConfig(**{**PARITY_PROTOCOL, "model": type(model).__name__, "epochs": epochs,
                         "batch_size": batch_size, "lr": lr, "seed": seed, "quiet": log is None,
                         "out_dir": None if out_dir is None else str(out_dir), "resume": True, "overwrite": True,
                         **train_options})
    meta = {"experiment": "parity", "dataset": "MNIST (upright, fitted to the input size)",
            "input_size": int(images.shape[-1]), "data": fingerprint(images, labels)}
    summary = fit(model, TrainData(images, labels, None, None, None), cfg, meta=meta, log=log)
    return [row["train_loss"] for row in summary["history"]]


def rotated_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                     angles: tuple[int, ...] = ANGLES, batch_size: int = 500) -> dict[int, float]:
    """``{angle: accuracy}`` of ``model`` on ``images`` ``[N, C, H, W]`` rotated by each angle (degrees),
    on the model's device (:func:`gconv_ext.train.engine.accuracy`)."""
    device = next(model.parameters()).device
    return {int(a): accuracy(model, rotate(images, float(a)), labels, batch_size, device) for a in angles}


def mean_accuracy(per_angle: dict[int, float]) -> float:
    """The mean over the angles."""
    return math.fsum(per_angle.values()) / len(per_angle)


def run_parity(train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
               budget: ParityBudget, seed: int = 0, log=print, *, out_dir: str | Path | None = None,
               **train_options: Any) -> list[dict]:
    """Train a C4 ParityGCNN at every size of ``budget`` and a ParityCNN at 28 on upright digits (uint8
    ``[N, 28, 28]``), evaluate at :data:`ANGLES`. Returns one row per model: ``model``, ``size``, ``exact``,
    ``mean_acc``, ``acc_<angle>`` for each angle, ``train_loss``, ``seconds`` (wall time of this call: a
    resumed run counts only what it did).

    ``out_dir``: each model trains in ``<out_dir>/<model>-<size>`` (checkpoints, metrics, resume; see
    :func:`train_classifier`, which also takes the ``train_options``)."""
    from .equivariance import exact_input_sizes

    xtr = train[0][:budget.n_train].float().div(255).unsqueeze(1)
    ytr = train[1][:budget.n_train]
    xte = test[0][:budget.n_test].float().div(255).unsqueeze(1)
    yte = test[1][:budget.n_test]
    rows = []
    runs: list[tuple[str, int]] = [("gcnn_c4", s) for s in budget.sizes] + [("cnn_z2", 28)]
    for name, size in runs:
        torch.manual_seed(seed)
        model = (ParityGCNN(budget.channels, "C4") if name == "gcnn_c4" else ParityCNN(2 * budget.channels))
        exact = exact_input_sizes(model, "C4", [size])[size] if name == "gcnn_c4" else False
        t0 = time.perf_counter()
        with warnings.catch_warnings():  # the inexact sizes are inexact on purpose
            warnings.simplefilter("ignore", EquivarianceWarning)
            losses = train_classifier(model, fit_size(xtr, size), ytr, budget.epochs, budget.batch_size,
                                      budget.lr, seed, log=log,
                                      out_dir=None if out_dir is None else Path(out_dir) / f"{name}-{size}",
                                      **train_options)
            acc = rotated_accuracy(model, fit_size(xte, size), yte)
        row = {"model": name, "size": size, "exact": exact, "mean_acc": mean_accuracy(acc),
               "train_loss": losses[-1], "seconds": time.perf_counter() - t0}
        row.update({f"acc_{a}": v for a, v in acc.items()})
        rows.append(row)
        log(f"{name} size {size} ({'exact' if exact else 'inexact'}): mean accuracy over {len(acc)} angles "
            f"{row['mean_acc']:.4f} (upright {acc[0]:.4f}), {row['seconds']:.1f}s")
    return rows


def summarize_parity(rows: list[dict]) -> tuple[list[dict], dict[str, tuple[float, float, int]]]:
    """Aggregate :func:`run_parity` rows from one or more seeds (each row with a ``seed`` key).

    Returns ``(per_model, groups)``. ``per_model`` has one row per (model, size) with the number of seeds
    ``n`` and, as mean and sample std over seeds (``<key>`` and ``<key>_std``): ``mean_acc`` (over the 36
    angles), ``acc_0``, ``right`` (the mean accuracy at 90, 180 and 270 degrees) and ``drop = acc_0 - right``
    (exactly 0 for an exact network). ``groups`` maps ``"exact"``, ``"inexact"`` (C4 GCNNs at exact and
    inexact sizes) and ``"z2"`` to ``(mean, std, n_seeds)`` of the per-seed mean of ``mean_acc`` over the
    group's sizes: the paper's three numbers."""
    if not rows:
        raise ValueError("summarize_parity: rows is empty")
    for r in rows:
        if "seed" not in r:
            raise ValueError("summarize_parity: every row needs a 'seed' key")
    keys = list(dict.fromkeys((r["model"], int(r["size"])) for r in rows))
    per_model = []
    for model, size in keys:
        sel = [r for r in rows if r["model"] == model and int(r["size"]) == size]
        out: dict = {"model": model, "size": size, "exact": sel[0]["exact"], "n": len(sel)}
        series = {
            "mean_acc": [float(r["mean_acc"]) for r in sel],
            "acc_0": [float(r["acc_0"]) for r in sel],
            "right": [(float(r["acc_90"]) + float(r["acc_180"]) + float(r["acc_270"])) / 3 for r in sel],
        }
        series["drop"] = [a - b for a, b in zip(series["acc_0"], series["right"])]
        for k, v in series.items():
            out[k], out[f"{k}_std"] = mean_std(v)
        per_model.append(out)

    def group_of(r: dict) -> str:
        if r["model"] != "gcnn_c4":
            return "z2"
        return "exact" if str(r["exact"]) in ("True", "true", "1") or r["exact"] is True else "inexact"

    groups: dict[str, tuple[float, float, int]] = {}
    seeds = list(dict.fromkeys(r["seed"] for r in rows))
    for g in ("exact", "inexact", "z2"):
        per_seed = []
        for sd in seeds:
            vals = [float(r["mean_acc"]) for r in rows if r["seed"] == sd and group_of(r) == g]
            if vals:
                per_seed.append(math.fsum(vals) / len(vals))
        if per_seed:
            groups[g] = (*mean_std(per_seed), len(per_seed))
    return per_model, groups
