"""The study's training protocol: AdamW, early stopping on rotated validation accuracy, exact resume, DDP.

Protocol (``/work/shared/STUDY_NOTES.md`` section 1): AdamW (lr 1e-2, weight decay 1e-4, no
schedule), cross-entropy, batch 32, evaluation batch 2048, at most 20 epochs, early stopping on
validation accuracy with patience 5, best checkpoint kept; MNIST train split into 50,000 training /
10,000 validation digits with seed 420. ``train_rotation="none"`` trains on upright digits,
``"uniform"`` rotates every training digit by a fresh uniform angle in [0, 360); in both settings the
validation digits are rotated by *fixed*, seeded angles (:func:`~gconv_ext.data.rotated_test_set`),
so every epoch and every model sees the same validation set.

Data sets (``dataset``): ``"mnist"`` (above) or ``"rotated-mnist"``, a SUBSTITUTE for the
``mnist_rotation_new`` benchmark (:func:`~gconv_ext.data.make_rotated_mnist`: 12,000 training digits
each rotated by a seeded uniform angle, cached; *not* the benchmark files). Its training digits are
split into ``12,000 - n_val`` training and ``n_val`` (default 2,000) validation digits with
``split_seed``; both keep the substitute's own fixed angles (``train_rotation="uniform"`` rotates the
training digits once more, by fresh angles). Its 50,000 rotated test digits are the test set
(:func:`~gconv_ext.train.evaluate.evaluate_checkpoint`).

Objective: cross-entropy, or with ``ien_beta`` set the implicit-equivariance loss
(:class:`~gconv_ext.losses.EquivarianceLoss`): every batch is doubled with ``T x`` (a random
non-identity element of ``ien_transforms`` per digit) and ``ien_beta`` times the orbit-pooled feature
MSE at the monitored layers is added; ``ien_beta=0`` is the plain CNN trained on the same doubled
batches. The transforms are drawn from the epoch generator (below) for the whole global batch, so
``beta=0`` and ``beta>0`` runs with one seed see identical batches, DDP ranks see slices of the same
draw, and resume needs no extra generator state. ``metrics.csv`` then also holds ``train_ce`` (the
cross-entropy over the doubled batch) and ``mse_<layer>`` (epoch means of the per-layer MSEs).

Reproducibility:

* The shuffle and the augmentation angles of epoch ``e`` come from one CPU ``torch.Generator``
  seeded from ``(seed, e)``; the model is initialised under ``torch.manual_seed(seed)``.
* ``last.pt`` (written atomically after every epoch) holds the model, optimiser, epoch, RNG states,
  best-so-far and early-stopping counters and the config; ``resume=True`` continues from it and ends
  with the same weights as an uninterrupted run (bit-identical on CPU).
* Under ``torchrun`` (``WORLD_SIZE > 1``) the process group is initialised (gloo on CPU, nccl on
  GPU) and the model wrapped in DDP. Every rank draws the same global batch and the same angles and
  takes its ``tensor_split`` slice; the loss is ``sum(local CE) * world_size / global_batch`` (IEN:
  ``local mean objective * local_batch * world_size / global_batch``) so that DDP's gradient average
  equals the single-process mean over the global batch. (BatchNorm, as in ``ien-cnn``, still uses
  per-rank batch statistics.) Validation is
  sharded and the correct counts summed. Only rank 0 writes files.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from gconv_ext.data import (
    atomic_torch_save,
    atomic_write_bytes,
    load_mnist,
    make_rotated_mnist,
    normalize,
    rotate,
    rotated_test_set,
    split_train_val,
    to_float01,
)
from gconv_ext.losses.ien import TRANSFORMS, EquivarianceLoss, OrbitSpec, sample_transforms
from gconv_ext.data.paths import resolve_data_dir
from gconv_ext.models import count_parameters
from gconv_ext.train.progress import ProgressBar
from gconv_ext.train.registry import build_model

__all__ = [
    "TrainConfig",
    "DistContext",
    "TrainData",
    "setup_distributed",
    "resolve_device",
    "load_train_data",
    "epoch_generator",
    "accuracy",
    "model_from_checkpoint",
    "load_checkpoint",
    "train",
    "TRAIN_ROTATIONS",
    "DATASETS",
    "DEFAULT_N_VAL",
    "CHECKPOINT_FORMAT",
    "build_objective",
]

TRAIN_ROTATIONS = ("none", "uniform")
#: ``"mnist"``: MNIST IDX files; ``"rotated-mnist"``: the cached SUBSTITUTE for mnist_rotation_new.
DATASETS = ("mnist", "rotated-mnist")
#: Validation digits held out of the training split when ``n_val`` is None.
DEFAULT_N_VAL = {"mnist": 10000, "rotated-mnist": 2000}
#: Seed of the rotated-MNIST substitute (:func:`~gconv_ext.data.make_rotated_mnist`).
ROTATED_MNIST_SEED = 0
CHECKPOINT_FORMAT = 1

#: Config fields that must agree between a checkpoint and a ``resume`` run (the rest may change).
_RESUME_KEYS = (
    "model", "model_kwargs", "preset", "train_rotation", "batch_size", "lr", "weight_decay", "seed",
    "split_seed", "n_val", "val_rotation_seed", "train_limit", "val_limit", "dataset", "ien_beta",
    "ien_transforms", "ien_layers",
)

_CSV_COLUMNS = (
    "epoch", "train_loss", "train_acc", "val_acc", "best_val_acc", "lr", "epoch_time_s",
    "train_time_s", "images_per_s",
)


@dataclass
class TrainConfig:
    """Everything a training run depends on (saved in every checkpoint and in ``summary.json``).

    Attributes:
        model: registered model name (:func:`~gconv_ext.train.registry.available_models`).
        model_kwargs: keyword arguments for the model factory (override the preset's).
        preset: a named preset of the model (``"default"``, ``"matched"``, ``"tiny"``, ...) or None.
        train_rotation: ``"none"`` (upright training) or ``"uniform"`` (rotated training).
        epochs: maximum number of epochs.
        batch_size: global batch size (split across DDP ranks).
        eval_batch_size: batch size for validation/test.
        lr, weight_decay: AdamW settings.
        patience: stop after this many epochs without a better validation accuracy.
        seed: model-initialisation, shuffle and augmentation seed.
        split_seed, n_val: the train/validation split (study: 420, 10,000); ``n_val=None`` means
            :data:`DEFAULT_N_VAL` of the dataset (10,000 for MNIST, 2,000 for rotated-mnist).
        val_rotation_seed: seed of the fixed validation angles.
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        threads: ``torch.set_num_threads`` value (0: leave as is).
        data_dir: MNIST folder (None: :func:`~gconv_ext.data.default_data_dir`).
        dataset: ``"mnist"`` or ``"rotated-mnist"`` (the SUBSTITUTE for mnist_rotation_new, see the
            module docstring).
        cache_dir: where the rotated-MNIST substitute is cached (None:
            :func:`~gconv_ext.data.default_cache_dir`, i.e. ``GCONV_EXT_CACHE_DIR`` or ``data_cache``).
        ien_beta: None trains with cross-entropy; a float >= 0 trains with the IEN objective
            (doubled batch, ``beta`` times the equivariance MSE; 0 = plain CNN on the doubled batches).
        ien_transforms: the IEN transform family: ``"rot90"``, ``"rot90+flip"`` or ``"rot45"``.
        ien_layers: monitored layer names (None: the model's ``monitored_layers``); the model's
            ``orbit_spec`` groups the channels of each.
        out_dir: where metrics and checkpoints go.
        train_limit, val_limit, test_limit: use only the first N digits (smoke runs); None = all.
        resume: continue from ``out_dir/last.pt`` if it exists.
        overwrite: allow starting a fresh run in an ``out_dir`` that already holds one.
        stop_after: end this invocation after this many completed epochs (simulates an interruption).
        download: let torchvision fetch MNIST if the files are missing.
        deterministic: ``torch.use_deterministic_algorithms(True)`` (and no cuDNN benchmarking).
        quiet: no progress output.
    """

    model: str = "cnn"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    preset: str | None = None
    train_rotation: str = "none"
    epochs: int = 20
    batch_size: int = 32
    eval_batch_size: int = 2048
    lr: float = 1e-2
    weight_decay: float = 1e-4
    patience: int = 5
    seed: int = 0
    split_seed: int = 420
    n_val: int | None = None
    val_rotation_seed: int = 1
    device: str = "auto"
    threads: int = 0
    data_dir: str | None = None
    out_dir: str = "runs/train"
    train_limit: int | None = None
    val_limit: int | None = None
    test_limit: int | None = None
    resume: bool = False
    overwrite: bool = False
    stop_after: int | None = None
    download: bool = False
    deterministic: bool = False
    quiet: bool = False
    dataset: str = "mnist"
    cache_dir: str | None = None
    ien_beta: float | None = None
    ien_transforms: str = "rot90"
    ien_layers: list[str] | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first invalid field."""
        if self.train_rotation not in TRAIN_ROTATIONS:
            raise ValueError(f"train_rotation must be one of {TRAIN_ROTATIONS}, got {self.train_rotation!r}")
        for name in ("epochs", "batch_size", "eval_batch_size", "patience"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        for name in ("train_limit", "val_limit", "test_limit", "stop_after"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be None or an int >= 1, got {value!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        if not (isinstance(self.weight_decay, (int, float)) and math.isfinite(self.weight_decay)
                and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay!r}")
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 0:
            raise ValueError(f"threads must be an int >= 0, got {self.threads!r}")
        if not isinstance(self.model_kwargs, dict):
            raise ValueError(f"model_kwargs must be a dict, got {type(self.model_kwargs).__name__}")
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, got {self.dataset!r}")
        if self.n_val is not None and (isinstance(self.n_val, bool) or not isinstance(self.n_val, int)
                                       or self.n_val < 1):
            raise ValueError(f"n_val must be None or an int >= 1, got {self.n_val!r}")
        if self.ien_beta is not None and (isinstance(self.ien_beta, bool)
                                          or not isinstance(self.ien_beta, (int, float))
                                          or not math.isfinite(self.ien_beta) or self.ien_beta < 0):
            raise ValueError(f"ien_beta must be None or a finite number >= 0, got {self.ien_beta!r}")
        if self.ien_transforms not in TRANSFORMS:
            raise ValueError(f"ien_transforms must be one of {tuple(TRANSFORMS)}, got {self.ien_transforms!r}")
        if self.ien_layers is not None:
            if isinstance(self.ien_layers, str):
                raise ValueError(f"ien_layers must be a list of layer names, got the string {self.ien_layers!r}")
            self.ien_layers = list(self.ien_layers)
            if not self.ien_layers or not all(isinstance(n, str) and n for n in self.ien_layers):
                raise ValueError(f"ien_layers must be None or a non-empty list of layer names, got {self.ien_layers!r}")

    @property
    def val_size(self) -> int:
        """``n_val``, or the dataset's default (:data:`DEFAULT_N_VAL`) when it is None."""
        return DEFAULT_N_VAL[self.dataset] if self.n_val is None else self.n_val

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy."""
        d = asdict(self)
        d["model_kwargs"] = dict(self.model_kwargs)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys are ignored (older/newer checkpoints)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def build_model(self) -> nn.Module:
        """The (freshly initialised) model this config describes."""
        return build_model(self.model, preset=self.preset, **self.model_kwargs)


# ---------------------------------------------------------------------------- distributed


@dataclass
class DistContext:
    """Where this process runs: its rank among ``world_size`` processes and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        """True on rank 0, the only rank that writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1

    def close(self) -> None:
        """Destroy the process group if :func:`setup_distributed` created it."""
        if self.initialized_here and dist.is_initialized():
            dist.destroy_process_group()
            self.initialized_here = False


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``"auto"`` -> CUDA if available else CPU; a bare ``"cuda"`` -> ``cuda:<local_rank>``.

    Raises:
        ValueError: CUDA requested but not available.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available")
        if dev.index is None:
            dev = torch.device("cuda", local_rank % torch.cuda.device_count())
    return dev


def setup_distributed(device: str = "auto") -> DistContext:
    """Initialise the process group when launched by ``torchrun`` with ``WORLD_SIZE > 1``.

    Uses gloo on CPU and nccl on CUDA (``env://`` rendezvous: ``MASTER_ADDR``/``MASTER_PORT``).
    Without ``WORLD_SIZE`` (or with 1) it returns a single-process context.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world <= 1:
        return DistContext(0, 1, 0, dev)
    created = False
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend, init_method="env://", world_size=world, rank=rank)
        created = True
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, dev, created)


# ------------------------------------------------------------------------------------ data


@dataclass
class TrainData:
    """Training digits (float in [0, 1], not normalised, so rotation fills with black) and the
    fixed rotated validation set (normalised)."""

    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    val_angles: Tensor


def load_train_data(cfg: TrainConfig) -> TrainData:
    """Load the training split of ``cfg.dataset``, split it (``split_seed``, ``n_val``), apply the
    limits and rotate validation (MNIST: fixed seeded angles; rotated-mnist: already rotated)."""
    data_dir = _data_dir(cfg)
    if cfg.dataset == "rotated-mnist":
        rot = make_rotated_mnist(data_dir, cfg.cache_dir, seed=ROTATED_MNIST_SEED)
        images, labels = rot.train_images, rot.train_labels
    else:
        images, labels = load_mnist("train", data_dir, download=cfg.download)
    if cfg.val_size >= images.shape[0]:
        raise ValueError(f"n_val ({cfg.val_size}) must be smaller than the {images.shape[0]} training digits "
                         f"of {cfg.dataset}")
    train_idx, val_idx = split_train_val(images.shape[0], cfg.val_size, cfg.split_seed)
    if cfg.train_limit is not None:
        train_idx = train_idx[: cfg.train_limit]
    if cfg.val_limit is not None:
        val_idx = val_idx[: cfg.val_limit]
    if train_idx.numel() == 0 or val_idx.numel() == 0:
        raise ValueError("the training and validation sets must not be empty (check n_val and the limits)")
    train_x = to_float01(images[train_idx]).unsqueeze(1)
    if cfg.dataset == "rotated-mnist":
        val_x = normalize(to_float01(images[val_idx]).unsqueeze(1))
        return TrainData(train_x, labels[train_idx].clone(), val_x, labels[val_idx].clone(),
                         rot.train_angles[val_idx].clone())
    val_x, val_y, val_angles = rotated_test_set(images[val_idx], labels[val_idx], seed=cfg.val_rotation_seed)
    return TrainData(train_x, labels[train_idx].clone(), val_x, val_y, val_angles)


def _data_dir(cfg: TrainConfig) -> Path:
    if cfg.data_dir is not None and cfg.download:
        Path(cfg.data_dir).expanduser().mkdir(parents=True, exist_ok=True)
    return resolve_data_dir(cfg.data_dir)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The CPU generator for the shuffle and augmentation of ``epoch`` (0-based) of run ``seed``."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(epoch) * 7919 + 12345) % (2**63))


# ------------------------------------------------------------------------------ evaluation


@torch.no_grad()
def accuracy(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    batch_size: int = 2048,
    device: torch.device | str = "cpu",
    ctx: DistContext | None = None,
) -> float:
    """Fraction of ``images`` (normalised [N,1,H,W]) classified as ``labels``.

    With a distributed ``ctx`` every rank evaluates its ``tensor_split`` share and the counts are
    summed, so all ranks return the same value.
    """
    n = images.shape[0]
    idx = torch.arange(n)
    if ctx is not None and ctx.distributed:
        idx = torch.tensor_split(idx, ctx.world_size)[ctx.rank]
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=device)
    for start in range(0, idx.numel(), batch_size):
        sel = idx[start:start + batch_size]
        x = images[sel].to(device, non_blocking=True)
        y = labels[sel].to(device, non_blocking=True)
        correct += (model(x).argmax(dim=1) == y).sum()
    model.train(was_training)
    if ctx is not None and ctx.distributed:
        dist.all_reduce(correct)
    return float(correct.item()) / max(n, 1)


# ----------------------------------------------------------------------------- checkpoints


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a ``last.pt`` / ``best.pt`` written by :func:`train` (``weights_only`` unpickling)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT or "config" not in ckpt:
        raise ValueError(f"{path} is not a gconv_ext training checkpoint (format {CHECKPOINT_FORMAT})")
    return ckpt


def model_from_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, TrainConfig, dict[str, Any]]:
    """Rebuild the model stored in a checkpoint: ``(model in eval mode, config, checkpoint dict)``."""
    ckpt = load_checkpoint(path, map_location)
    cfg = TrainConfig.from_dict(ckpt["config"])
    model = cfg.build_model()
    model.load_state_dict(ckpt["model"])
    model.eval()
    return model, cfg, ckpt


# ------------------------------------------------------------------------------- training


def _log(ctx: DistContext, cfg: TrainConfig, msg: str) -> None:
    if ctx.is_main and not cfg.quiet:
        print(msg, file=sys.stderr, flush=True)


def _write_metrics(out_dir: Path, history: list[dict[str, Any]]) -> None:
    # IEN runs add train_ce and mse_<layer> columns after the standard ones.
    extra = [k for k in (history[0] if history else {}) if k not in _CSV_COLUMNS]
    columns = list(_CSV_COLUMNS) + extra
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: row[k] for k in columns})
    atomic_write_bytes(out_dir / "metrics.csv", buf.getvalue().encode())


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def _resume_view(d: dict[str, Any]) -> dict[str, Any]:
    """The resume-relevant settings of a config dict; keys older checkpoints lack take their defaults
    and ``n_val`` its effective value."""
    defaults = TrainConfig().to_dict()
    view = {k: d.get(k, defaults[k]) for k in _RESUME_KEYS}
    view["n_val"] = DEFAULT_N_VAL.get(view["dataset"]) if view["n_val"] is None else view["n_val"]
    if view["ien_layers"] is not None:
        view["ien_layers"] = list(view["ien_layers"])
    return view


def _check_resume_config(saved: dict[str, Any], cfg: TrainConfig, path: Path) -> None:
    old, now = _resume_view(saved), _resume_view(cfg.to_dict())
    diffs = [f"{k}: checkpoint {old[k]!r} vs now {now[k]!r}" for k in _RESUME_KEYS if old[k] != now[k]]
    if diffs:
        raise ValueError(f"cannot resume from {path}: the config differs ({'; '.join(diffs)})")


@dataclass
class Objective:
    """The IEN objective of a run: the loss around the (possibly DDP-wrapped) model and the monitored
    layers by their names in the unwrapped model (``metric_names``: the ``mse_<layer>`` columns)."""

    loss_fn: EquivarianceLoss
    layers: list[str]
    hook_names: list[str]

    @property
    def metric_names(self) -> list[str]:
        return [f"mse_{n}" for n in self.layers]


def build_objective(cfg: TrainConfig, model: nn.Module, train_model: nn.Module | None = None) -> Objective | None:
    """The IEN objective for ``cfg`` (None when ``cfg.ien_beta`` is None).

    ``model`` is the bare model (its ``monitored_layers`` and ``orbit_spec`` are used); ``train_model``
    the module the loss calls (a DDP wrapper of ``model``; default ``model``).

    Raises:
        ValueError: the model has no ``orbit_spec`` / ``monitored_layers`` (only ``ien-cnn`` has them)
            or a layer name is unknown.
    """
    if cfg.ien_beta is None:
        return None
    train_model = model if train_model is None else train_model
    spec = getattr(model, "orbit_spec", None)
    if not isinstance(spec, OrbitSpec):
        raise ValueError(f"ien_beta needs a model whose channels are grouped into orbits (an orbit_spec, "
                         f"e.g. model 'ien-cnn'); model {cfg.model!r} has none")
    layers = cfg.ien_layers
    if layers is None:
        layers = list(getattr(model, "monitored_layers", None) or [])
        if not layers:
            raise ValueError(f"model {cfg.model!r} documents no monitored_layers; give ien_layers")
    known = dict(model.named_modules())
    unknown = [n for n in layers if n not in known]
    if unknown:
        raise ValueError(f"ien_layers: unknown layer name(s) {unknown} in model {cfg.model!r}; monitored "
                         f"layers: {list(getattr(model, 'monitored_layers', []))}")
    prefix = "module." if train_model is not model else ""
    hook_names = [prefix + n for n in layers]
    loss_fn = EquivarianceLoss(train_model, hook_names, spec, cfg.ien_transforms, float(cfg.ien_beta))
    return Objective(loss_fn, list(layers), hook_names)


def _train_epoch(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    data: TrainData,
    cfg: TrainConfig,
    ctx: DistContext,
    epoch: int,
    objective: Objective | None = None,
) -> dict[str, float]:
    """One epoch; returns ``{"train_loss", "train_acc"}`` (IEN: also ``train_ce`` and ``mse_<layer>``)
    averaged over all ranks.

    Cross-entropy: ``train_loss`` is the mean CE per digit. IEN: ``train_loss`` is the mean objective
    per batch weighted by batch size, ``train_ce`` its cross-entropy part (over the doubled batch), the
    MSEs likewise, and ``train_acc`` the accuracy over the doubled batch.
    """
    model.train()
    n = data.train_x.shape[0]
    gen = epoch_generator(cfg.seed, epoch)
    perm = torch.randperm(n, generator=gen)
    n_batches = (n + cfg.batch_size - 1) // cfg.batch_size
    loss_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)
    correct = torch.zeros((), dtype=torch.int64, device=ctx.device)
    # IEN: [CE over the doubled batch, MSE of each layer], each summed weighted by the local batch size
    ien_sums = torch.zeros(1 + (len(objective.layers) if objective else 0), dtype=torch.float64)
    bar = ProgressBar(n_batches, f"epoch {epoch + 1}/{cfg.epochs}", enabled=ctx.is_main and not cfg.quiet)
    for b in range(n_batches):
        idx = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
        global_size = idx.numel()
        angles = None
        if cfg.train_rotation == "uniform":
            # Same draw on every rank (same generator state), then each rank takes its slice.
            angles = torch.remainder(torch.rand(global_size, generator=gen, dtype=torch.float64) * 360.0, 360.0)
        elements = None
        if objective is not None:  # likewise the IEN transforms of the whole global batch
            elements = sample_transforms(global_size, cfg.ien_transforms, gen)
        local = torch.tensor_split(torch.arange(global_size), ctx.world_size)[ctx.rank]
        x = data.train_x[idx[local]].to(ctx.device, non_blocking=True)
        y = data.train_y[idx[local]].to(ctx.device, non_blocking=True)
        if angles is not None:
            x = rotate(x, angles[local])
        x = normalize(x)
        if objective is None:
            logits = model(x)
            batch_loss = F.cross_entropy(logits, y, reduction="sum")
            loss = batch_loss * (ctx.world_size / global_size)
        elif local.numel() == 0:
            # A DDP rank without digits in the last batch still joins the gradient all-reduce.
            logits = model(x)
            batch_loss = logits.sum() * 0.0
            loss = batch_loss
        else:
            out = objective.loss_fn(x, y, elements[local])
            lb = local.numel()
            batch_loss = out.loss * lb  # the local objective summed over the local pairs
            loss = batch_loss * (ctx.world_size / global_size)
            logits = out.logits
            y = torch.cat([y, y])
            ien_sums += torch.tensor([out.task] + [out.mse[h] for h in objective.hook_names],
                                     dtype=torch.float64) * lb
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_sum += batch_loss.detach().to(torch.float64)
        correct += (logits.detach().argmax(dim=1) == y).sum()
        bar.update(1)
    ien_sums = ien_sums.to(ctx.device)
    if ctx.distributed:
        dist.all_reduce(loss_sum)
        dist.all_reduce(correct)
        if objective is not None:
            dist.all_reduce(ien_sums)
    stats = {"train_loss": float(loss_sum.item()) / n,
             "train_acc": float(correct.item()) / (n * (2 if objective is not None else 1))}
    if objective is not None:
        means = (ien_sums.cpu() / n).tolist()
        stats["train_ce"] = means[0]
        stats.update(zip(objective.metric_names, means[1:]))
    bar.close(f"loss {stats['train_loss']:.4f} acc {stats['train_acc']:.4f}")
    return stats


def train(cfg: TrainConfig, ctx: DistContext | None = None) -> dict[str, Any]:
    """Train according to ``cfg``; returns the summary (also written to ``out_dir/summary.json``).

    Writes (rank 0 only) ``metrics.csv``, ``summary.json``, ``last.pt`` and ``best.pt`` into
    ``cfg.out_dir``. Set up the process group first with :func:`setup_distributed` for DDP, or
    leave ``ctx`` None: then one is set up (and torn down) here from the environment.
    """
    cfg.validate()
    own_ctx = ctx is None
    if ctx is None:
        ctx = setup_distributed(cfg.device)
    try:
        return _train(cfg, ctx)
    finally:
        if own_ctx:
            ctx.close()


def _train(cfg: TrainConfig, ctx: DistContext) -> dict[str, Any]:
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    out_dir = Path(cfg.out_dir)
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    resuming = cfg.resume and last_path.is_file()
    if last_path.exists() and not cfg.resume and not cfg.overwrite:
        raise FileExistsError(
            f"{out_dir} already holds a run ({last_path.name}); pass --resume to continue it, "
            "--overwrite to start again, or choose another --out-dir"
        )

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = cfg.build_model()
    n_params = count_parameters(model)
    model.to(ctx.device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    history: list[dict[str, Any]] = []
    start_epoch, best_val, best_epoch, since_best, train_time = 0, -1.0, -1, 0, 0.0
    stopped_early = False
    if resuming:
        ckpt = load_checkpoint(last_path, map_location="cpu")
        _check_resume_config(ckpt["config"], cfg, last_path)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        _set_rng_state(ckpt["rng"])
        start_epoch = int(ckpt["epoch"])
        best_val, best_epoch = float(ckpt["best_val_acc"]), int(ckpt["best_epoch"])
        since_best, train_time = int(ckpt["epochs_since_best"]), float(ckpt["train_time_s"])
        stopped_early = bool(ckpt["stopped_early"])
        history = list(ckpt["history"])
        _log(ctx, cfg, f"resuming {last_path} after epoch {start_epoch}")
    elif cfg.resume:
        _log(ctx, cfg, f"no checkpoint at {last_path}; starting a new run")

    build_objective(cfg, model)  # fail on a bad IEN setting before loading any data
    data = load_train_data(cfg)
    train_model = model
    if ctx.distributed:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    objective = build_objective(cfg, model, train_model)
    data_name = "MNIST" if cfg.dataset == "mnist" else "rotated-MNIST SUBSTITUTE (not mnist_rotation_new)"
    ien = ("" if objective is None else
           f"; IEN objective beta={cfg.ien_beta:g}, {cfg.ien_transforms}, layers {', '.join(objective.layers)}")
    _log(ctx, cfg, f"{cfg.model}: {n_params:,} parameters; {data_name}: {data.train_x.shape[0]} training / "
                   f"{data.val_x.shape[0]} validation digits; train_rotation={cfg.train_rotation}{ien}; "
                   f"device {ctx.device}, world size {ctx.world_size}")
    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)

    epoch = start_epoch
    while epoch < cfg.epochs and not stopped_early:
        if cfg.stop_after is not None and epoch >= cfg.stop_after:
            break
        t0 = time.perf_counter()
        stats = _train_epoch(train_model, opt, data, cfg, ctx, epoch, objective)
        train_loss, train_acc = stats["train_loss"], stats["train_acc"]
        t_train = time.perf_counter() - t0
        val_acc = accuracy(model, data.val_x, data.val_y, cfg.eval_batch_size, ctx.device, ctx)
        epoch_time = time.perf_counter() - t0
        train_time += epoch_time
        epoch += 1
        improved = val_acc > best_val
        if improved:
            best_val, best_epoch, since_best = val_acc, epoch, 0
        else:
            since_best += 1
        stopped_early = since_best >= cfg.patience
        row = {
            "epoch": epoch, "train_loss": train_loss, "train_acc": train_acc, "val_acc": val_acc,
            "best_val_acc": best_val, "lr": opt.param_groups[0]["lr"], "epoch_time_s": epoch_time,
            "train_time_s": train_time, "images_per_s": data.train_x.shape[0] / max(t_train, 1e-9),
            **{k: v for k, v in stats.items() if k not in ("train_loss", "train_acc")},
        }
        history.append(row)
        mse_text = "".join(f", {k} {v:.4g}" for k, v in stats.items() if k.startswith("mse_"))
        _log(ctx, cfg, f"epoch {epoch}: train loss {train_loss:.4f} acc {train_acc:.4f}{mse_text}, "
                       f"val acc {val_acc:.4f} (best {best_val:.4f} @ {best_epoch}), {epoch_time:.1f}s"
                       + (", early stop" if stopped_early else ""))
        if ctx.is_main:
            state = {
                "format": CHECKPOINT_FORMAT, "config": cfg.to_dict(), "model": model.state_dict(),
                "epoch": epoch, "val_acc": val_acc, "num_params": n_params,
            }
            if improved:
                atomic_torch_save(state, best_path)
            atomic_torch_save({
                **state, "optimizer": opt.state_dict(), "rng": _rng_state(), "best_val_acc": best_val,
                "best_epoch": best_epoch, "epochs_since_best": since_best, "train_time_s": train_time,
                "stopped_early": stopped_early, "history": history,
            }, last_path)
            _write_metrics(out_dir, history)
        if ctx.distributed:
            dist.barrier()

    summary = {
        "model": cfg.model, "num_params": n_params, "train_rotation": cfg.train_rotation,
        "dataset": cfg.dataset, "ien_beta": cfg.ien_beta,
        "final_train_mse": ({k: v for k, v in history[-1].items() if k.startswith("mse_")}
                            if history and objective is not None else None),
        "epochs_completed": epoch, "finished": stopped_early or epoch >= cfg.epochs,
        "stopped_early": stopped_early, "best_epoch": best_epoch, "best_val_acc": best_val,
        "train_time_s": train_time, "world_size": ctx.world_size, "device": str(ctx.device),
        "n_train": int(data.train_x.shape[0]), "n_val": int(data.val_x.shape[0]),
        "final_train_loss": history[-1]["train_loss"] if history else None,
        "mean_images_per_s": (sum(r["images_per_s"] for r in history) / len(history)) if history else None,
        "config": cfg.to_dict(), "out_dir": str(out_dir),
    }
    if ctx.is_main:
        _write_json(out_dir / "summary.json", summary)
    return summary
