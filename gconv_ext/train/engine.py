"""The training engine: epochs, validation, early stopping, checkpoints, resume, DDP, precision, compile.

Two entry points:

* :func:`fit` trains a given model on given tensors (:class:`~gconv_ext.train.datasets.TrainData`) with the
  protocol of a :class:`~gconv_ext.train.config.TrainConfig` (optimiser, learning-rate schedule, batch
  size, epochs, early stopping, precision, ``torch.compile``, augmentation by rotation, the IEN objective).
  Every experiment trains through it with its own preset: the MNIST study (:func:`train`), the input-size
  parity experiment, the radio galaxies, learning unequivariance and the IEN examples.
* :func:`train` builds the model and the data set named by the config (the registries) and calls
  :func:`fit`.

Protocol of the study this project reproduces (Boduljak et al., "Group Equivariant CNNs Outperform Spatial
Transformers on Tasks Which Require Rotation Invariance"): cross-entropy, batch 32, evaluation batch 2048,
early stopping on validation accuracy, best checkpoint kept; MNIST split into 50,000 training / 10,000
validation digits with seed 420. ``train_rotation="none"`` trains on upright digits, ``"uniform"``
rotates every training digit by a fresh uniform angle in [0, 360); in both settings the validation digits
are rotated by *fixed*, seeded angles, so every epoch and every model sees the same validation set. The
optimiser, schedule and budget come from the config's recipe (:mod:`gconv_ext.train.config`).

Data: the training inputs are kept as they are before augmentation (MNIST: floats in [0, 1], so a rotation
fills with black); ``prepare`` maps a (rotated) batch to the model's input (MNIST: :func:`normalize`); the
validation inputs are already prepared. ``val_x`` None (or empty) means no validation: then the training
loss takes the validation's place in choosing ``best.pt`` and in the ``plateau`` schedule.

Which epoch is best: ``cfg.monitor`` (highest ``val_acc``, the default, or lowest ``val_loss``); it also
drives early stopping (``patience``). ``lr_schedule="plateau"`` steps torch's ``ReduceLROnPlateau`` on the
validation loss once per epoch after the warm-up (the other schedules are pure functions of the step).

Reproducibility:

* The shuffle and the augmentation angles of epoch ``e`` come from one CPU ``torch.Generator`` seeded from
  ``(seed, e)``; :func:`train` initialises the model under ``torch.manual_seed(seed)`` (:func:`fit`'s
  caller initialises its own). The learning rate is a pure function of the global step
  (:func:`~gconv_ext.train.schedule.lr_factor`), or for ``plateau`` the scheduler's saved state.
* ``last.pt`` (written atomically after every epoch, or every ``save_every`` epochs) holds the model,
  optimiser, scheduler, epoch, RNG states, best-so-far and early-stopping counters, the config, the
  experiment's own settings (``meta``) and the resolved precision; ``resume=True`` continues from it and
  ends with the same weights as an uninterrupted run (bit-identical on CPU). ``resume`` together with
  ``overwrite`` starts again instead of failing when the checkpoint cannot be resumed (other settings,
  unreadable).
* Under ``torchrun`` (``WORLD_SIZE > 1``) the model is wrapped in DDP. Every rank draws the same global
  batch and the same angles and takes its ``tensor_split`` slice; the loss is
  ``sum(local CE) * world_size / global_batch`` (IEN: ``local mean objective * local_batch * world_size /
  global_batch``) so that DDP's gradient average equals the single-process mean over the global batch.
  (BatchNorm, as in ``ien-cnn``, still uses per-rank batch statistics.) Validation is sharded and the
  correct counts and losses summed. Only rank 0 writes files. In ``precision="fp64"`` a 2-process run
  equals one process to about 1e-12 (tested at 1e-9).
"""
from __future__ import annotations

import contextlib

import hashlib
import json
import math
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from gconv_ext.data import normalize, rotate
from gconv_ext.io import atomic_torch_save, write_csv, write_json
from gconv_ext.losses.ien import sample_transforms
from gconv_ext.models import count_parameters
from gconv_ext.provenance import provenance
from gconv_ext.train.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    check_resume_config,
    load_checkpoint,
    rng_state,
    set_rng_state,
)
from gconv_ext.train.config import TrainConfig
from gconv_ext.train.datasets import TrainData, dataset_spec, epoch_generator, load_train_data
from gconv_ext.train.distributed import (
    DistContext,
    is_communication_error,
    lost_peer_error,
    setup_distributed,
)
from gconv_ext.train.objective import Objective, build_objective
from gconv_ext.train.precision import (
    autocast_context,
    input_dtype,
    make_grad_scaler,
    resolve_precision,
)
from gconv_ext.train.schedule import lr_factor

__all__ = ["train", "fit", "RunFiles", "accuracy", "evaluate", "make_optimizer", "make_scheduler",
           "fingerprint", "ConfigError"]

_CSV_COLUMNS = (
    "epoch", "train_loss", "train_acc", "val_acc", "val_loss", "best_val_acc", "lr", "epoch_time_s",
    "train_time_s", "images_per_s",
)
_PROVENANCE_COLUMNS = ("precision", "device_name", "threads", "torch", "git_commit")

#: A function that maps a batch of training inputs (after augmentation) to the model's input.
Prepare = Callable[[Tensor], Tensor]


class ConfigError(ValueError):
    """A config the run cannot start with (e.g. model arguments its factory rejects)."""


@dataclass(frozen=True)
class RunFiles:
    """The names of a run's files inside ``cfg.out_dir`` (an experiment may keep its documented names,
    e.g. the radio galaxies' ``log.csv`` and ``model.pt``)."""

    metrics: str = "metrics.csv"
    last: str = "last.pt"
    best: str = "best.pt"
    summary: str = "summary.json"


def make_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    """The optimiser of ``cfg`` (its lr is then set every step by the schedule). Adam / AdamW run torch's fused
    kernel (one pass over all the parameters) where every parameter is a floating-point tensor on the CPU or a
    CUDA device: for the GCNN C4/4/16 on 2 CPU threads 0.07 ms a step against 0.24 ms for the per-tensor loop."""
    params = list(params)
    if cfg.optimizer in ("adamw", "adam"):
        cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=_fused_optimizer_ok(params) or None)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def _fused_optimizer_ok(params) -> bool:
    return bool(params) and all(isinstance(p, torch.Tensor) and p.is_floating_point() and not p.is_sparse
                                and p.device.type in ("cpu", "cuda") for p in params)


def make_scheduler(cfg: TrainConfig, opt: torch.optim.Optimizer):
    """The per-epoch scheduler of ``cfg`` (``ReduceLROnPlateau`` for ``lr_schedule="plateau"``), else None."""
    if cfg.lr_schedule != "plateau":
        return None
    return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=cfg.plateau_factor,
                                                      patience=cfg.plateau_patience)


def fingerprint(*tensors: Tensor | None) -> str:
    """A short hash of the tensors' values (an experiment's ``meta`` names its data with it, so that a
    resume refuses a checkpoint made with other data)."""
    h = hashlib.sha1()
    for t in tensors:
        if t is None:
            h.update(b"none")
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    batch_size: int = 2048,
    device: torch.device | str = "cpu",
    ctx: DistContext | None = None,
    precision: str = "fp32",
) -> tuple[float, float]:
    """``(mean cross-entropy, accuracy)`` of ``model`` on ``images`` (the model's inputs, [N, C, H, W]).

    The model is evaluated in eval mode (its mode is restored). With a distributed ``ctx`` every rank
    evaluates its ``tensor_split`` share and the sums are all-reduced, so all ranks return the same values.
    ``precision`` as in training (bf16/fp16 autocast, fp64 inputs).
    """
    device = torch.device(device)
    n = images.shape[0]
    idx = torch.arange(n)
    if ctx is not None and ctx.distributed:
        idx = torch.tensor_split(idx, ctx.world_size)[ctx.rank]
    was_training = model.training
    model.eval()
    dtype = input_dtype(precision)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    loss = torch.zeros((), dtype=torch.float64, device=device)
    for start in range(0, idx.numel(), batch_size):
        sel = idx[start:start + batch_size]
        x = images[sel].to(device, dtype=dtype, non_blocking=True)
        y = labels[sel].to(device, non_blocking=True)
        with autocast_context(precision, device):
            logits = model(x)
        logits = logits if logits.dtype == torch.float64 else logits.float()
        correct += (logits.argmax(dim=1) == y).sum()
        loss += F.cross_entropy(logits, y, reduction="sum").to(torch.float64)
    model.train(was_training)
    if ctx is not None and ctx.distributed:
        dist.all_reduce(correct)
        dist.all_reduce(loss)
    return float(loss.item()) / max(n, 1), float(correct.item()) / max(n, 1)


def accuracy(model: nn.Module, images: Tensor, labels: Tensor, *args: Any, **kwargs: Any) -> float:
    """Fraction of ``images`` (the model's inputs, e.g. normalised [N,1,H,W]) classified as ``labels``:
    :func:`evaluate`'s accuracy (the same arguments: ``batch_size``, ``device``, ``ctx``, ``precision``)."""
    return evaluate(model, images, labels, *args, **kwargs)[1]


def _progress(total: int, desc: str, enabled: bool, unit: str = "batch") -> tqdm:
    tty = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, disable=not enabled, file=sys.stderr, leave=tty, dynamic_ncols=True,
                mininterval=0.5 if tty else 30.0, unit=unit)


def _logger(ctx: DistContext, cfg: TrainConfig, log: Callable[[str], None] | None) -> Callable[[str], None]:
    """Rank 0's progress lines: ``log`` (default: stderr, between the progress bars); none when quiet."""
    if not ctx.is_main or cfg.quiet:
        return lambda msg: None
    if log is not None:
        return log
    return lambda msg: tqdm.write(msg, file=sys.stderr)


class _Run:
    """State shared by the epochs of one run."""

    def __init__(self, cfg: TrainConfig, ctx: DistContext, model: nn.Module, train_model: nn.Module,
                 opt: torch.optim.Optimizer, data: TrainData, objective: Objective | None, precision: str,
                 prepare: Prepare | None = None):
        self.cfg, self.ctx, self.model, self.train_model = cfg, ctx, model, train_model
        self.opt, self.data, self.objective, self.precision = opt, data, objective, precision
        self.prepare = prepare if prepare is not None else (lambda x: x)
        self.scaler = make_grad_scaler(precision, ctx.device)
        self.dtype = input_dtype(precision)
        n = data.train_x.shape[0]
        self.n_batches = (n + cfg.batch_size - 1) // cfg.batch_size
        self.total_steps = self.n_batches * cfg.epochs
        self.warmup_steps = int(round(cfg.warmup_epochs * self.n_batches))

    def set_lr(self, step: int) -> float:
        if self.cfg.lr_schedule == "plateau" and step >= self.warmup_steps:
            return float(self.opt.param_groups[0]["lr"])  # ReduceLROnPlateau owns it after the warm-up
        lr = self.cfg.lr * lr_factor(self.cfg.lr_schedule, step, self.total_steps, self.warmup_steps)
        for group in self.opt.param_groups:
            group["lr"] = lr
        return lr

    def batch(self, gen: torch.Generator, perm: Tensor, b: int):
        """The local slice of global batch ``b``: ``(x, y, global size, local indices, IEN elements)``."""
        cfg, ctx, data = self.cfg, self.ctx, self.data
        idx = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
        global_size = idx.numel()
        angles = None
        if cfg.train_rotation == "uniform":
            # Same draw on every rank (same generator state), then each rank takes its slice.
            angles = torch.remainder(torch.rand(global_size, generator=gen, dtype=torch.float64) * 360.0, 360.0)
        elements = None
        if self.objective is not None:  # likewise the IEN transforms of the whole global batch
            elements = sample_transforms(global_size, cfg.ien_transforms, gen)
        local = torch.tensor_split(torch.arange(global_size), ctx.world_size)[ctx.rank]
        x = data.train_x[idx[local]].to(ctx.device, non_blocking=True)
        y = data.train_y[idx[local]].to(ctx.device, non_blocking=True)
        if angles is not None:
            x = rotate(x, angles[local])
        x = self.prepare(x).to(self.dtype)
        return x, y, global_size, local, (elements[local] if elements is not None else None)

    def epoch(self, epoch: int) -> dict[str, float]:
        """One epoch; returns ``{"train_loss", "train_acc", "lr"}`` (IEN: also ``train_ce`` and
        ``mse_<layer>``) averaged over all ranks.

        Cross-entropy: ``train_loss`` is the mean CE per example. IEN: ``train_loss`` is the mean objective per
        batch weighted by batch size, ``train_ce`` its cross-entropy part (over the doubled batch), the MSEs
        likewise, and ``train_acc`` the accuracy over the doubled batch.
        """
        cfg, ctx, objective = self.cfg, self.ctx, self.objective
        self.train_model.train()
        n = self.data.train_x.shape[0]
        gen = epoch_generator(cfg.seed, epoch)
        perm = torch.randperm(n, generator=gen)
        loss_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)
        correct = torch.zeros((), dtype=torch.int64, device=ctx.device)
        ien_sums = torch.zeros(1 + (len(objective.layers) if objective else 0), dtype=torch.float64)
        bar = _progress(self.n_batches, f"epoch {epoch + 1}/{cfg.epochs}", ctx.is_main and not cfg.quiet)
        lr = self.cfg.lr
        for b in range(self.n_batches):
            lr = self.set_lr(epoch * self.n_batches + b)
            x, y, global_size, local, elements = self.batch(gen, perm, b)
            with autocast_context(self.precision, ctx.device):
                if objective is None:
                    logits = self.train_model(x)
                    batch_loss = F.cross_entropy(logits.float(), y, reduction="sum")
                    loss = batch_loss * (ctx.world_size / global_size)
                elif local.numel() == 0:
                    # A DDP rank without examples in the last batch still joins the gradient all-reduce.
                    logits = self.train_model(x)
                    batch_loss = logits.sum() * 0.0
                    loss = batch_loss
                else:
                    out = objective.loss_fn(x, y, elements)
                    lb = local.numel()
                    batch_loss = out.loss * lb  # the local objective summed over the local pairs
                    loss = batch_loss * (ctx.world_size / global_size)
                    logits = out.logits
                    y = torch.cat([y, y])
                    ien_sums += torch.tensor([out.task] + [out.mse[h] for h in objective.hook_names],
                                             dtype=torch.float64) * lb
            self.opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
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
                 "train_acc": float(correct.item()) / (n * (2 if objective is not None else 1)), "lr": lr}
        if objective is not None:
            means = (ien_sums.cpu() / n).tolist()
            stats["train_ce"] = means[0]
            stats.update(zip(objective.metric_names, means[1:]))
        bar.set_postfix_str(f"loss {stats['train_loss']:.4f} acc {stats['train_acc']:.4f}")
        bar.close()
        return stats


def train(cfg: TrainConfig, ctx: DistContext | None = None) -> dict[str, Any]:
    """Train the registered model ``cfg.model`` on the registered data set ``cfg.dataset`` (:func:`fit`);
    returns the summary (also written to ``out_dir/summary.json``) plus ``history`` (the metrics rows).

    Writes (rank 0 only) ``metrics.csv``, ``summary.json``, ``last.pt`` and ``best.pt`` into ``cfg.out_dir``.
    Set up the process group first with :func:`~gconv_ext.train.distributed.setup_distributed` for DDP, or
    leave ``ctx`` None: then one is set up (and torn down) here from the environment.

    Raises:
        ConfigError: the model cannot be built from the config, or the IEN settings do not fit the model.
        FileExistsError: ``out_dir`` holds a run and neither ``resume`` nor ``overwrite`` is set.
        CheckpointError: ``resume`` from a checkpoint that is unreadable or was made with another config.
        DistributedError: under DDP, another rank died or did not answer within the process-group timeout.
    """
    cfg.validate()
    own_ctx = ctx is None
    if ctx is None:
        ctx = setup_distributed(cfg.device)
    try:
        _check_out_dir(cfg, RunFiles())  # before the data are loaded
        model = _build(cfg)
        try:
            build_objective(cfg, model)  # fail on a bad IEN setting before loading any data
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        return fit(model, load_train_data(cfg), cfg, ctx=ctx, prepare=normalize)
    finally:
        if own_ctx:
            ctx.close()


def _build(cfg: TrainConfig) -> nn.Module:
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            return cfg.build_model()
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"model {cfg.model!r}: {exc}") from None


def _check_forward(cfg: TrainConfig, model: nn.Module, data: TrainData, prepare: Prepare | None,
                   device: torch.device) -> None:
    """One eval-mode forward of one training example, so that a model that does not fit the data (e.g. a
    kernel larger than the image) fails with a :class:`ConfigError` before training starts."""
    x = data.train_x[:1].to(device)
    x = prepare(x) if prepare is not None else x
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    except (RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"model {cfg.model!r} does not fit inputs of shape {list(x.shape[1:])}: {first}") from None
    finally:
        model.train(was_training)


def _check_out_dir(cfg: TrainConfig, files: RunFiles) -> None:
    if cfg.out_dir is None:
        return
    last_path = Path(cfg.out_dir) / files.last
    if last_path.exists() and not cfg.resume and not cfg.overwrite:
        raise FileExistsError(
            f"{cfg.out_dir} already holds a run ({last_path.name}); pass --resume to continue it, "
            "--overwrite to start again, or choose another --out-dir"
        )


def _resume_checkpoint(cfg: TrainConfig, files: RunFiles, meta: dict[str, Any],
                       say: Callable[[str], None]) -> dict[str, Any] | None:
    """The ``last.pt`` to resume from, or None for a new run (see :func:`fit`)."""
    _check_out_dir(cfg, files)
    if cfg.out_dir is None or not cfg.resume:
        return None
    last_path = Path(cfg.out_dir) / files.last
    if not last_path.is_file():
        say(f"no checkpoint at {last_path}; starting a new run")
        return None
    try:
        ckpt = load_checkpoint(last_path, map_location="cpu", need_resume_state=True)
        check_resume_config(ckpt["config"], cfg, last_path)
        saved = ckpt.get("experiment") or {}
        if saved != meta:
            diffs = [f"{k}: checkpoint {saved.get(k)!r} vs now {meta.get(k)!r}"
                     for k in sorted(set(saved) | set(meta)) if saved.get(k) != meta.get(k)]
            raise CheckpointError(f"cannot resume from {last_path}: the experiment differs ({'; '.join(diffs)})")
    except CheckpointError as exc:
        if not cfg.overwrite:
            raise
        say(f"{exc}; starting again (overwrite)")
        return None
    return ckpt


def fit(
    model: nn.Module,
    data: TrainData,
    cfg: TrainConfig,
    *,
    ctx: DistContext | None = None,
    prepare: Prepare | None = None,
    meta: Mapping[str, Any] | None = None,
    files: RunFiles = RunFiles(),
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train ``model`` (initialised by the caller) on ``data`` with the protocol of ``cfg``; returns the
    summary (also written to ``<out_dir>/summary.json``) plus ``history``, the per-epoch metrics rows.

    ``data``: any object with ``train_x``, ``train_y`` (inputs before augmentation and ``prepare``) and
    ``val_x``, ``val_y`` (prepared inputs; ``val_x`` None or empty: no validation, see the module
    docstring). ``prepare``: maps a training batch after the rotation augmentation to the model's input
    (default: unchanged). ``meta``: the experiment's own settings that ``cfg`` does not describe (its model,
    data, input size, ``fingerprint`` of its tensors; JSON-serialisable); saved in the checkpoints
    (``"experiment"``) and the summary, and a resume must match it. The config's model and data fields
    (``model``, ``dataset``, limits, ...) are not read here; an experiment names what it trains in
    ``cfg.model``/``model_kwargs`` and ``meta`` (``meta["dataset"]`` names the data in the summary and log).
    ``files``: the names of the outputs in ``cfg.out_dir``; ``cfg.out_dir`` None writes nothing.
    ``log``: where rank 0's progress lines go (default stderr; none when ``cfg.quiet``).

    Raises:
        ConfigError: the IEN settings do not fit the model.
        FileExistsError: ``out_dir`` holds a run and neither ``resume`` nor ``overwrite`` is set.
        CheckpointError: ``resume`` from a checkpoint that is unreadable or was made with other settings
            (unless ``overwrite`` is set too: then the run starts again).
        DistributedError: under DDP, another rank died or did not answer within the process-group timeout
            (:func:`~gconv_ext.train.distributed.lost_peer_error`: the message names the rank, the timeout and
            the checkpoint to ``--resume`` from).
    """
    cfg.validate()
    own_ctx = ctx is None
    if ctx is None:
        ctx = setup_distributed(cfg.device)
    try:
        with _process_settings(cfg):
            return _fit(model, data, cfg, ctx, prepare, json.loads(json.dumps(dict(meta or {}))), files,
                        _logger(ctx, cfg, log))
    except RuntimeError as exc:
        if ctx.distributed and is_communication_error(exc):
            last = None if cfg.out_dir is None else Path(cfg.out_dir) / files.last
            raise lost_peer_error(exc, ctx, last) from exc
        raise
    finally:
        if own_ctx:
            ctx.close()


@contextlib.contextmanager
def _process_settings(cfg: TrainConfig):
    """Apply the config's process-wide settings (``threads``, ``deterministic``) for the duration of a fit,
    then restore the caller's: a library call must not leave the process changed (a later
    ``torch.compile`` in the same process would, for example, generate single-threaded kernels)."""
    threads = torch.get_num_threads()
    deterministic = (torch.are_deterministic_algorithms_enabled(),
                     torch.is_deterministic_algorithms_warn_only_enabled())
    benchmark = torch.backends.cudnn.benchmark
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
        torch.backends.cudnn.benchmark = benchmark


def _fit(model: nn.Module, data: TrainData, cfg: TrainConfig, ctx: DistContext, prepare: Prepare | None,
         meta: dict[str, Any], files: RunFiles, say: Callable[[str], None]) -> dict[str, Any]:
    out_dir = None if cfg.out_dir is None else Path(cfg.out_dir)
    ckpt = _resume_checkpoint(cfg, files, meta, say)
    n_params = count_parameters(model)
    has_val = data.val_x is not None and data.val_x.shape[0] > 0
    n_train, n_val = int(data.train_x.shape[0]), (int(data.val_x.shape[0]) if has_val else 0)
    monitor = cfg.monitor if has_val else "train_loss"
    maximize = monitor == "val_acc"

    model.to(ctx.device)
    _check_forward(cfg, model, data, prepare, ctx.device)
    precision, reason = _choose_precision(cfg, ctx, model, data, ckpt, prepare)
    if precision == "fp64":
        model.double()
    opt = make_optimizer(cfg, model.parameters())
    sched = make_scheduler(cfg, opt)

    history: list[dict[str, Any]] = []
    start_epoch, best_epoch, since_best, train_time = 0, -1, 0, 0.0
    best_metric = -math.inf if maximize else math.inf
    best_val_acc: float | None = -1.0 if has_val else None
    best_val_loss: float | None = None
    stopped_early = False
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        if sched is not None and ckpt.get("scheduler") is not None:
            sched.load_state_dict(ckpt["scheduler"])
        set_rng_state(ckpt["rng"])
        start_epoch = int(ckpt["epoch"])
        best_val_acc, best_val_loss = ckpt["best_val_acc"], ckpt.get("best_val_loss")
        best_metric = float(ckpt.get("best_metric", best_val_acc))  # format 2 before fit(): val_acc
        best_epoch, since_best = int(ckpt["best_epoch"]), int(ckpt["epochs_since_best"])
        train_time, stopped_early = float(ckpt["train_time_s"]), bool(ckpt["stopped_early"])
        history = list(ckpt["history"])
        say(f"resuming {out_dir / files.last} after epoch {start_epoch}")

    train_model: nn.Module = model
    if ctx.distributed:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    try:
        objective = build_objective(cfg, model, train_model)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if cfg.compile:
        train_model = torch.compile(train_model)
    run = _Run(cfg, ctx, model, train_model, opt, data, objective, precision, prepare)
    prov = provenance(ctx.device, precision)
    data_name = meta.get("dataset") or dataset_spec(cfg.dataset).title
    ien = ("" if objective is None else
           f"; IEN objective beta={cfg.ien_beta:g}, {cfg.ien_transforms}, layers {', '.join(objective.layers)}")
    say(f"{cfg.model}: {n_params:,} parameters; {data_name}: {n_train} training / {n_val} validation examples; "
        f"train_rotation={cfg.train_rotation}{ien}; {cfg.optimizer} lr {cfg.lr:g} ({cfg.lr_schedule}, warm-up "
        f"{cfg.warmup_epochs:g} epochs{'' if meta else ', recipe ' + cfg.recipe}), best by {monitor}; "
        f"precision {precision} ({reason})"
        f"{', compiled' if cfg.compile else ''}; {prov['device_name']}, {prov['threads']} threads, "
        f"world size {ctx.world_size}")
    if ctx.is_main and out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)

    epoch, best_state = start_epoch, None
    while epoch < cfg.epochs and not stopped_early:
        if cfg.stop_after is not None and epoch >= cfg.stop_after:
            break
        t0 = time.perf_counter()
        stats = run.epoch(epoch)
        t_train = time.perf_counter() - t0
        val_loss = val_acc = None
        if has_val:
            val_loss, val_acc = evaluate(model, data.val_x, data.val_y, cfg.eval_batch_size, ctx.device, ctx,
                                         precision)
        epoch_time = time.perf_counter() - t0
        train_time += epoch_time
        epoch += 1
        value = {"val_acc": val_acc, "val_loss": val_loss, "train_loss": stats["train_loss"]}[monitor]
        improved = value > best_metric if maximize else value < best_metric
        if improved:
            best_metric, best_epoch, since_best = value, epoch, 0
            best_val_acc, best_val_loss = val_acc, val_loss
        else:
            since_best += 1
        stopped_early = cfg.patience > 0 and since_best >= cfg.patience
        if sched is not None and epoch * run.n_batches >= run.warmup_steps:
            sched.step(val_loss if has_val else stats["train_loss"])
        row = {
            "epoch": epoch, "train_loss": stats["train_loss"], "train_acc": stats["train_acc"],
            "val_acc": val_acc, "val_loss": val_loss, "best_val_acc": best_val_acc, "lr": stats["lr"],
            "epoch_time_s": epoch_time, "train_time_s": train_time, "images_per_s": n_train / max(t_train, 1e-9),
            **{k: v for k, v in stats.items() if k not in ("train_loss", "train_acc", "lr")},
            **{k: prov[k] for k in _PROVENANCE_COLUMNS},
        }
        history.append(row)
        mse_text = "".join(f", {k} {v:.4g}" for k, v in stats.items() if k.startswith("mse_"))
        val_text = f", val loss {val_loss:.4f} acc {val_acc:.4f}" if has_val else ""
        say(f"epoch {epoch}: train loss {stats['train_loss']:.4f} acc {stats['train_acc']:.4f}{mse_text}"
            f"{val_text} (best {monitor} {best_metric:.4f} @ {best_epoch}), lr {stats['lr']:.3g}, "
            f"{epoch_time:.1f}s" + (", early stop" if stopped_early else ""))
        if ctx.is_main and out_dir is not None:
            ends = (epoch >= cfg.epochs or stopped_early or (cfg.stop_after is not None and epoch >= cfg.stop_after))
            due = ends or epoch % cfg.save_every == 0
            state = {
                "format": CHECKPOINT_FORMAT, "config": cfg.to_dict(), "experiment": meta,
                "model": model.state_dict(), "epoch": epoch, "val_acc": val_acc, "val_loss": val_loss,
                "num_params": n_params, "precision": precision, "provenance": prov,
            }
            if improved:  # written now, or kept (copied) until the next write
                best_state = state if due else {**state, "model": {k: v.detach().clone()
                                                                   for k, v in state["model"].items()}}
            if due:
                if best_state is not None:
                    atomic_torch_save(best_state, out_dir / files.best)
                    best_state = None
                atomic_torch_save({
                    **state, "optimizer": opt.state_dict(),
                    "scheduler": None if sched is None else sched.state_dict(), "rng": rng_state(),
                    "best_val_acc": best_val_acc, "best_val_loss": best_val_loss, "best_metric": best_metric,
                    "best_epoch": best_epoch, "epochs_since_best": since_best, "train_time_s": train_time,
                    "stopped_early": stopped_early, "history": history,
                }, out_dir / files.last)
                _write_metrics(out_dir / files.metrics, history)
        if ctx.distributed:
            dist.barrier()

    summary = {
        "model": cfg.model, "num_params": n_params, "train_rotation": cfg.train_rotation,
        "dataset": meta.get("dataset", cfg.dataset), "ien_beta": cfg.ien_beta, "recipe": cfg.recipe,
        "precision": precision, "precision_reason": reason, "compile": cfg.compile,
        "final_train_mse": ({k: v for k, v in history[-1].items() if k.startswith("mse_")}
                            if history and objective is not None else None),
        "epochs_completed": epoch, "finished": stopped_early or epoch >= cfg.epochs,
        "stopped_early": stopped_early, "monitor": monitor,
        "best_metric": best_metric if best_epoch > 0 else None, "best_epoch": best_epoch,
        "best_val_acc": best_val_acc, "best_val_loss": best_val_loss,
        "train_time_s": train_time, "world_size": ctx.world_size, "device": str(ctx.device),
        "n_train": n_train, "n_val": n_val,
        "final_train_loss": history[-1]["train_loss"] if history else None,
        "mean_images_per_s": (sum(r["images_per_s"] for r in history) / len(history)) if history else None,
        "provenance": prov, "config": cfg.to_dict(), "experiment": meta,
        "out_dir": None if out_dir is None else str(out_dir),
    }
    if ctx.is_main and out_dir is not None:
        write_json(out_dir / files.summary, summary, sort_keys=True)
    return {**summary, "history": history}


def _choose_precision(cfg: TrainConfig, ctx: DistContext, model: nn.Module, data: TrainData,
                      ckpt: dict[str, Any] | None, prepare: Prepare | None) -> tuple[str, str]:
    """The concrete precision: ``cfg.precision``, or for ``auto`` the checkpoint's choice when resuming on
    the same kind of machine, else a measurement on rank 0 broadcast to every rank."""
    if cfg.precision != "auto":
        return cfg.precision, "requested"
    if ckpt is not None and ckpt.get("precision") and (ckpt.get("provenance") or {}).get(
            "device_name") == provenance(ctx.device)["device_name"]:
        return str(ckpt["precision"]), "auto choice of the resumed run on this kind of machine"
    sample = data.train_x[: cfg.batch_size].to(ctx.device)
    sample = prepare(sample) if prepare is not None else sample
    choice, reason = resolve_precision("auto", model, sample, ctx.device)
    if ctx.distributed:
        flag = torch.tensor([1 if choice == "bf16" else 0], device=ctx.device)
        dist.broadcast(flag, 0)
        choice = "bf16" if int(flag.item()) else "fp32"
        reason += " (rank 0's measurement)"
    return choice, reason


def _write_metrics(path: Path, history: list[dict[str, Any]]) -> None:
    # IEN runs add train_ce and mse_<layer> columns; provenance columns come last. Rows of a run resumed
    # from an older checkpoint lack the columns added since (provenance, val_loss): they are left empty, as
    # are the validation columns of a run without validation data.
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    extra = [k for k in keys if k not in _CSV_COLUMNS and k not in _PROVENANCE_COLUMNS]
    columns = list(_CSV_COLUMNS) + extra + list(_PROVENANCE_COLUMNS)
    write_csv(path, [{k: ("" if row.get(k) is None else row[k]) for k in columns} for row in history], columns)
