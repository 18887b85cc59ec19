"""The study's training protocol: AdamW, early stopping on rotated validation accuracy, exact resume, DDP.

Protocol (``/work/shared/STUDY_NOTES.md`` section 1): AdamW (lr 1e-2, weight decay 1e-4, no
schedule), cross-entropy, batch 32, evaluation batch 2048, at most 20 epochs, early stopping on
validation accuracy with patience 5, best checkpoint kept; MNIST train split into 50,000 training /
10,000 validation digits with seed 420. ``train_rotation="none"`` trains on upright digits,
``"uniform"`` rotates every training digit by a fresh uniform angle in [0, 360); in both settings the
validation digits are rotated by *fixed*, seeded angles (:func:`~gconv_ext.data.rotated_test_set`),
so every epoch and every model sees the same validation set.

Reproducibility:

* The shuffle and the augmentation angles of epoch ``e`` come from one CPU ``torch.Generator``
  seeded from ``(seed, e)``; the model is initialised under ``torch.manual_seed(seed)``.
* ``last.pt`` (written atomically after every epoch) holds the model, optimiser, epoch, RNG states,
  best-so-far and early-stopping counters and the config; ``resume=True`` continues from it and ends
  with the same weights as an uninterrupted run (bit-identical on CPU).
* Under ``torchrun`` (``WORLD_SIZE > 1``) the process group is initialised (gloo on CPU, nccl on
  GPU) and the model wrapped in DDP. Every rank draws the same global batch and the same angles and
  takes its ``tensor_split`` slice; the loss is ``sum(local CE) * world_size / global_batch`` so that
  DDP's gradient average equals the single-process mean over the global batch. Validation is
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
    normalize,
    rotate,
    rotated_test_set,
    split_train_val,
    to_float01,
)
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
    "CHECKPOINT_FORMAT",
]

TRAIN_ROTATIONS = ("none", "uniform")
CHECKPOINT_FORMAT = 1

#: Config fields that must agree between a checkpoint and a ``resume`` run (the rest may change).
_RESUME_KEYS = (
    "model", "model_kwargs", "preset", "train_rotation", "batch_size", "lr", "weight_decay", "seed",
    "split_seed", "n_val", "val_rotation_seed", "train_limit", "val_limit",
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
        split_seed, n_val: the train/validation split (study: 420, 10,000).
        val_rotation_seed: seed of the fixed validation angles.
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        threads: ``torch.set_num_threads`` value (0: leave as is).
        data_dir: MNIST folder (None: :func:`~gconv_ext.data.default_data_dir`).
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
    n_val: int = 10000
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
    """Load MNIST train, split it (``split_seed``, ``n_val``), apply the limits, rotate validation."""
    data_dir = _data_dir(cfg)
    images, labels = load_mnist("train", data_dir, download=cfg.download)
    train_idx, val_idx = split_train_val(images.shape[0], cfg.n_val, cfg.split_seed)
    if cfg.train_limit is not None:
        train_idx = train_idx[: cfg.train_limit]
    if cfg.val_limit is not None:
        val_idx = val_idx[: cfg.val_limit]
    if train_idx.numel() == 0 or val_idx.numel() == 0:
        raise ValueError("the training and validation sets must not be empty (check n_val and the limits)")
    train_x = to_float01(images[train_idx]).unsqueeze(1)
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
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(_CSV_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: row[k] for k in _CSV_COLUMNS})
    atomic_write_bytes(out_dir / "metrics.csv", buf.getvalue().encode())


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def _check_resume_config(saved: dict[str, Any], cfg: TrainConfig, path: Path) -> None:
    now = cfg.to_dict()
    diffs = [f"{k}: checkpoint {saved.get(k)!r} vs now {now[k]!r}" for k in _RESUME_KEYS
             if saved.get(k) != now[k]]
    if diffs:
        raise ValueError(f"cannot resume from {path}: the config differs ({'; '.join(diffs)})")


def _train_epoch(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    data: TrainData,
    cfg: TrainConfig,
    ctx: DistContext,
    epoch: int,
) -> tuple[float, float]:
    """One epoch; returns ``(mean training loss, training accuracy)`` over all ranks."""
    model.train()
    n = data.train_x.shape[0]
    gen = epoch_generator(cfg.seed, epoch)
    perm = torch.randperm(n, generator=gen)
    n_batches = (n + cfg.batch_size - 1) // cfg.batch_size
    loss_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)
    correct = torch.zeros((), dtype=torch.int64, device=ctx.device)
    bar = ProgressBar(n_batches, f"epoch {epoch + 1}/{cfg.epochs}", enabled=ctx.is_main and not cfg.quiet)
    for b in range(n_batches):
        idx = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
        global_size = idx.numel()
        angles = None
        if cfg.train_rotation == "uniform":
            # Same draw on every rank (same generator state), then each rank takes its slice.
            angles = torch.remainder(torch.rand(global_size, generator=gen, dtype=torch.float64) * 360.0, 360.0)
        local = torch.tensor_split(torch.arange(global_size), ctx.world_size)[ctx.rank]
        x = data.train_x[idx[local]].to(ctx.device, non_blocking=True)
        y = data.train_y[idx[local]].to(ctx.device, non_blocking=True)
        if angles is not None:
            x = rotate(x, angles[local])
        x = normalize(x)
        logits = model(x)
        batch_loss = F.cross_entropy(logits, y, reduction="sum")
        loss = batch_loss * (ctx.world_size / global_size)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_sum += batch_loss.detach().to(torch.float64)
        correct += (logits.detach().argmax(dim=1) == y).sum()
        bar.update(1)
    if ctx.distributed:
        dist.all_reduce(loss_sum)
        dist.all_reduce(correct)
    mean_loss = float(loss_sum.item()) / n
    acc = float(correct.item()) / n
    bar.close(f"loss {mean_loss:.4f} acc {acc:.4f}")
    return mean_loss, acc


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

    data = load_train_data(cfg)
    train_model = model
    if ctx.distributed:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    _log(ctx, cfg, f"{cfg.model}: {n_params:,} parameters; {data.train_x.shape[0]} training / "
                   f"{data.val_x.shape[0]} validation digits; train_rotation={cfg.train_rotation}; "
                   f"device {ctx.device}, world size {ctx.world_size}")
    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)

    epoch = start_epoch
    while epoch < cfg.epochs and not stopped_early:
        if cfg.stop_after is not None and epoch >= cfg.stop_after:
            break
        t0 = time.perf_counter()
        train_loss, train_acc = _train_epoch(train_model, opt, data, cfg, ctx, epoch)
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
        }
        history.append(row)
        _log(ctx, cfg, f"epoch {epoch}: train loss {train_loss:.4f} acc {train_acc:.4f}, "
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
