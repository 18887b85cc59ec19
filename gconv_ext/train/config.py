"""The training configuration: one dataclass is the single source of defaults, choices and help.

:class:`TrainConfig` describes a run completely; it is saved in every checkpoint, ``summary.json`` and
``result.json``. The command line's ``train`` options are generated from its fields
(:func:`add_config_arguments`), so no default or help text is typed twice.

Recipes (``recipe``): the settings left as None (learning rate, schedule, warm-up, epochs, early-stopping
patience, weight decay, precision) are filled from :data:`RECIPES`:

* ``"study"``: the study's exact protocol (Boduljak et al., "Group Equivariant CNNs Outperform Spatial
  Transformers on Tasks Which Require Rotation Invariance"): AdamW at a constant lr 1e-2 from the first
  step, weight decay 1e-4, batch 32, at most 20 epochs, early stopping with patience 5, float32.
* ``"default"``: the recipe this project recommends after measuring it (README, "What the recipe
  changed"): AdamW with a linear warm-up over the first half epoch and a cosine decay to zero, peak lr
  5e-3, weight decay 1e-4, batch 32, 12 epochs without early stopping (the best validation checkpoint
  is kept), and ``precision="auto"`` (bfloat16 autocast where it is measured to be faster).

An explicit value always wins over the recipe's.

The same config describes the training protocol of the other experiments, which call
:func:`~gconv_ext.train.engine.fit` with their own model and data and set every recipe field in their own
preset (e.g. radio galaxies: Adam lr 1e-4 with ``lr_schedule="plateau"``; learning unequivariance: SGD with
``momentum``).
"""
from __future__ import annotations

import argparse
import math
import warnings
from collections.abc import Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from gconv_ext.losses.ien import DEPRECATED_TRANSFORM_NAMES, TRANSFORMS
from gconv_ext.train.datasets import DATASETS, dataset_spec

__all__ = [
    "TrainConfig",
    "RECIPES",
    "PRECISIONS",
    "LR_SCHEDULES",
    "OPTIMIZERS",
    "TRAIN_ROTATIONS",
    "add_config_arguments",
    "number_type",
    "config_from_args",
    "config_overrides",
    "MONITORS",
]

TRAIN_ROTATIONS = ("none", "uniform")
PRECISIONS = ("fp32", "bf16", "fp16", "fp64", "auto")
LR_SCHEDULES = ("constant", "cosine", "onecycle", "plateau")
OPTIMIZERS = ("adamw", "adam", "sgd")
IEN_TRANSFORMS = tuple(TRANSFORMS)
#: ``ien_transforms`` before the transforms were named by their group (read as the new names).
_OLD_IEN_TRANSFORMS = DEPRECATED_TRANSFORM_NAMES
MONITORS = ("val_acc", "val_loss")

#: The settings each recipe gives the fields left as None.
RECIPES: dict[str, dict[str, Any]] = {
    "study": dict(optimizer="adamw", lr=1e-2, weight_decay=1e-4, lr_schedule="constant", warmup_epochs=0.0,
                  epochs=20, patience=5, precision="fp32"),
    "default": dict(optimizer="adamw", lr=5e-3, weight_decay=1e-4, lr_schedule="cosine", warmup_epochs=0.5,
                    epochs=12, patience=0, precision="auto"),
}

#: Fields whose None means "take the recipe's value".
_RECIPE_FIELDS = tuple(RECIPES["study"])


def _meta(help: str, *, flag: str | None = None, choices: tuple[str, ...] | None = None,
          cli: bool = True, kind: str | None = None) -> dict[str, Any]:
    return {"help": help, "flag": flag, "choices": choices, "cli": cli, "kind": kind}


@dataclass
class TrainConfig:
    """Everything a training run depends on. See the ``help`` of each field (``--help`` of
    ``python -m gconv_ext train`` prints the same text)."""

    model: str = field(default="gcnn", metadata=_meta(
        "registered model name (gconv_ext.train.available_models()); default gcnn, the study's GCNN", cli=False))
    model_kwargs: dict[str, Any] = field(default_factory=dict, metadata=_meta(
        "keyword arguments of the model factory (override the preset's)", cli=False))
    preset: str | None = field(default=None, metadata=_meta(
        "model preset: default, matched (~102,970 params, as GCNN C4/4/16), tiny, C4/4/16, ...", cli=False))
    recipe: str = field(default="default", metadata=_meta(
        "training recipe: default (warm-up + cosine AdamW, 12 epochs, bf16 where faster) or study (the "
        "study's constant AdamW lr 1e-2, 20 epochs, early stopping)", choices=tuple(RECIPES)))
    train_rotation: str = field(default="none", metadata=_meta(
        "none: upright training; uniform: every training digit rotated by a fresh uniform angle "
        "(validation is rotated in both)", choices=TRAIN_ROTATIONS))
    dataset: str = field(default="mnist", metadata=_meta(
        "training data: mnist (50,000/10,000 split) or rotated-mnist (a SUBSTITUTE for "
        "mnist_rotation_new built from MNIST: 12,000 digits at seeded angles minus --n-val for "
        "validation, tested on its 50,000 rotated test digits; not comparable to published MNIST-rot numbers)",
        choices=DATASETS))
    epochs: int | None = field(default=None, metadata=_meta("maximum epochs (recipe: 12 default, 20 study)"))
    batch_size: int = field(default=32, metadata=_meta("global batch size, split across DDP ranks"))
    eval_batch_size: int = field(default=2048, metadata=_meta("validation/test batch size", cli=False))
    optimizer: str | None = field(default=None, metadata=_meta(
        "optimizer (recipe: adamw)", choices=OPTIMIZERS))
    lr: float | None = field(default=None, metadata=_meta(
        "peak learning rate (recipe: 5e-3 default, 1e-2 study)"))
    weight_decay: float | None = field(default=None, metadata=_meta("weight decay (recipe: 1e-4)"))
    lr_schedule: str | None = field(default=None, metadata=_meta(
        "learning-rate schedule after the warm-up, stepped every batch (recipe: cosine default, constant "
        "study); onecycle = torch's OneCycleLR shape with the warm-up as its rising phase; plateau = torch's "
        "ReduceLROnPlateau on the validation loss, stepped once per epoch after the warm-up "
        "(--plateau-factor, --plateau-patience)", choices=LR_SCHEDULES))
    warmup_epochs: float | None = field(default=None, metadata=_meta(
        "linear warm-up from 0 to lr over this many epochs (fractions allowed; recipe: 0.5 default, 0 study)"))
    patience: int | None = field(default=None, metadata=_meta(
        "early stopping after this many epochs without a better validation accuracy; 0 = never "
        "(recipe: 0 default, 5 study)"))
    precision: str | None = field(default=None, metadata=_meta(
        "fp32; bf16 / fp16 autocast (fp16 with a GradScaler on CUDA); fp64 for exact comparisons; auto: "
        "bf16 where a quick measurement finds it faster than fp32, else fp32 (recipe: auto default, fp32 study)",
        choices=PRECISIONS))
    compile: bool = field(default=False, metadata=_meta("torch.compile the model for training"))
    seed: int = field(default=0, metadata=_meta("initialisation/shuffle/augmentation seed"))
    split_seed: int = field(default=420, metadata=_meta("seed of the train/validation split (study: 420)"))
    n_val: int | None = field(default=None, metadata=_meta(
        "validation digits held out of the training split (10,000 for mnist, 2,000 for rotated-mnist)"))
    val_rotation_seed: int = field(default=1, metadata=_meta("seed of the fixed validation angles", cli=False))
    device: str = field(default="auto", metadata=_meta("auto (CUDA if available), cpu, cuda or cuda:N", cli=False))
    threads: int = field(default=0, metadata=_meta("torch CPU threads (0: torch's default)", cli=False))
    data_dir: str | None = field(default=None, metadata=_meta("MNIST folder", cli=False))
    cache_dir: str | None = field(default=None, metadata=_meta("rotated-MNIST cache folder", cli=False))
    out_dir: str | None = field(default="runs/train", metadata=_meta(
        "output folder (None, for engine.fit only: write no files, so no checkpoints and no resume)", cli=False))
    train_limit: int | None = field(default=None, metadata=_meta("use only the first N training digits"))
    val_limit: int | None = field(default=None, metadata=_meta("use only the first N validation digits"))
    test_limit: int | None = field(default=None, metadata=_meta("use only the first N test digits", cli=False))
    resume: bool = field(default=False, metadata=_meta("continue from <out-dir>/last.pt"))
    overwrite: bool = field(default=False, metadata=_meta(
        "start again in an out-dir that holds a run (with --resume: only when that run cannot be resumed, "
        "i.e. its checkpoint is unreadable or was made with other settings)"))
    stop_after: int | None = field(default=None, metadata=_meta(
        "end this invocation after this many completed epochs (simulates an interruption)", cli=False))
    download: bool = field(default=False, metadata=_meta("download MNIST with torchvision if missing"))
    deterministic: bool = field(default=False, metadata=_meta("torch.use_deterministic_algorithms(True)"))
    quiet: bool = field(default=False, metadata=_meta("no progress output", cli=False))
    ien_beta: float | None = field(default=None, metadata=_meta(
        "train with the implicit-equivariance (IEN) loss: each batch doubled with a transformed copy, plus "
        "BETA x the orbit-pooled feature MSE at the monitored layers; 0 = plain CNN on the same doubled "
        "batches (needs a model with orbits, e.g. --model ien-cnn)"))
    ien_transforms: str = field(default="C4", metadata=_meta(
        "IEN transform group (with --ien-beta): C4 (quarter turns), D4 (and reflections), C8 (eighth turns; "
        "the old names rot90, rot90+flip, rot45 still work)", choices=IEN_TRANSFORMS + tuple(_OLD_IEN_TRANSFORMS)))
    ien_layers: list[str] | None = field(default=None, metadata=_meta(
        "IEN monitored layers, comma-separated (with --ien-beta; default: the model's)", kind="names"))
    momentum: float = field(default=0.9, metadata=_meta("SGD momentum (with --optimizer sgd)"))
    plateau_factor: float = field(default=0.1, metadata=_meta(
        "with --lr-schedule plateau: multiply the learning rate by this factor (0 < f < 1) when the validation "
        "loss has not improved for --plateau-patience epochs (torch's defaults: 0.1, 10)"))
    plateau_patience: int = field(default=10, metadata=_meta(
        "with --lr-schedule plateau: epochs without a better validation loss before the rate is reduced"))
    monitor: str = field(default="val_acc", metadata=_meta(
        "what picks best.pt and drives early stopping: val_acc (highest) or val_loss (lowest); without "
        "validation data (engine.fit) the training loss", choices=MONITORS))
    save_every: int = field(default=1, metadata=_meta(
        "write last.pt, best.pt and metrics.csv every N epochs and when the run ends (a resume restarts from "
        "the last write; for runs of many very short epochs)"))

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {tuple(RECIPES)}, got {self.recipe!r}")
        for name, value in RECIPES[self.recipe].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.ien_transforms in _OLD_IEN_TRANSFORMS:
            new = _OLD_IEN_TRANSFORMS[self.ien_transforms]
            warnings.warn(f"ien_transforms {self.ien_transforms!r} is now called {new!r} (the group name)",
                          DeprecationWarning, stacklevel=3)
            self.ien_transforms = new
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first invalid field."""
        for name, choices in (("train_rotation", TRAIN_ROTATIONS), ("dataset", DATASETS),
                              ("optimizer", OPTIMIZERS), ("lr_schedule", LR_SCHEDULES),
                              ("precision", PRECISIONS), ("ien_transforms", IEN_TRANSFORMS),
                              ("monitor", MONITORS)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {getattr(self, name)!r}")
        for name in ("epochs", "batch_size", "eval_batch_size", "save_every"):
            _check_int(name, getattr(self, name), 1)
        _check_int("patience", self.patience, 0)
        _check_int("plateau_patience", self.plateau_patience, 0)
        for name in ("train_limit", "val_limit", "test_limit", "stop_after", "n_val"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 1, "None or ")
        for name in ("seed", "split_seed", "val_rotation_seed", "threads"):
            _check_int(name, getattr(self, name), 0)
        _check_float("lr", self.lr, strict=True)
        _check_float("weight_decay", self.weight_decay)
        _check_float("warmup_epochs", self.warmup_epochs)
        _check_float("momentum", self.momentum)
        _check_float("plateau_factor", self.plateau_factor, strict=True)
        if self.plateau_factor >= 1:
            raise ValueError(f"plateau_factor must be < 1, got {self.plateau_factor!r}")
        if not isinstance(self.model_kwargs, dict):
            raise ValueError(f"model_kwargs must be a dict, got {type(self.model_kwargs).__name__}")
        if self.ien_beta is not None:
            _check_float("ien_beta", self.ien_beta, prefix="None or ")
        if self.ien_layers is not None:
            if isinstance(self.ien_layers, str):
                raise ValueError(f"ien_layers must be a list of layer names, got the string {self.ien_layers!r}")
            self.ien_layers = list(self.ien_layers)
            if not self.ien_layers or not all(isinstance(n, str) and n for n in self.ien_layers):
                raise ValueError(f"ien_layers must be None or a non-empty list of layer names, got {self.ien_layers!r}")

    @property
    def val_size(self) -> int:
        """``n_val``, or the dataset's default when it is None."""
        return dataset_spec(self.dataset).default_n_val if self.n_val is None else self.n_val

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy (the recipe's settings resolved)."""
        d = asdict(self)
        d["model_kwargs"] = dict(self.model_kwargs)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys are ignored. A config saved before recipes existed
        (no ``recipe`` key) was trained with the study's protocol and is read as ``recipe="study"``."""
        names = {f.name for f in fields(cls)}
        d = dict(d)
        d.setdefault("recipe", "study")
        if d.get("ien_transforms") in _OLD_IEN_TRANSFORMS:  # saved before the group names
            d["ien_transforms"] = _OLD_IEN_TRANSFORMS[d["ien_transforms"]]
        return cls(**{k: v for k, v in d.items() if k in names})

    def build_model(self):
        """The (freshly initialised) model this config describes."""
        from gconv_ext.train.registry import build_model  # noqa: PLC0415

        return build_model(self.model, preset=self.preset, **self.model_kwargs)


def _check_int(name: str, value: Any, minimum: int, prefix: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be {prefix}an int >= {minimum}, got {value!r}")


def _check_float(name: str, value: Any, strict: bool = False, prefix: str = "") -> None:
    ok = (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
          and (value > 0 if strict else value >= 0))
    if not ok:
        raise ValueError(f"{name} must be {prefix}a finite number {'>' if strict else '>='} 0, got {value!r}")


# ------------------------------------------------------------------------------ command line


def number_type(cast: type, minimum: float, strict: bool, what: str):
    """An argparse type: ``cast(text)``, finite, and > (``strict``) or >= ``minimum``."""
    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not (value > minimum if strict else value >= minimum) or not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value
    return parse


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return names


#: argparse types by field (the rest follow the field's type).
_TYPES = {
    "lr": number_type(float, 0.0, True, "a finite positive number"),
    "weight_decay": number_type(float, 0.0, False, "a finite number >= 0"),
    "warmup_epochs": number_type(float, 0.0, False, "a finite number >= 0"),
    "ien_beta": number_type(float, 0.0, False, "a finite number >= 0"),
    "patience": number_type(int, 0, False, "an integer >= 0"),
    "seed": number_type(int, 0, False, "an integer >= 0"),
    "split_seed": number_type(int, 0, False, "an integer >= 0"),
    "momentum": number_type(float, 0.0, False, "a finite number >= 0"),
    "plateau_factor": number_type(float, 0.0, True, "a finite number > 0 (and < 1)"),
    "plateau_patience": number_type(int, 0, False, "an integer >= 0"),
}
_POSITIVE_INT = number_type(int, 0, True, "a positive integer")


def _default_text(f) -> str:
    default = f.default if f.default is not MISSING else None
    if default is None and f.name in _RECIPE_FIELDS:
        return ""
    return f" (default {default})" if default not in (None, False) else ""


def add_config_arguments(parser: argparse.ArgumentParser, only: Sequence[str] | None = None) -> None:
    """Add one ``--flag`` per command-line field of :class:`TrainConfig` (dest = the field name).

    Every option defaults to None (booleans to False), meaning "the config's own default"; pass the parsed
    namespace to :func:`config_from_args`. ``only``: add just these fields (command-line fields or not,
    e.g. ``("device", "precision", "compile")`` for an experiment's script; read them back with
    :func:`config_overrides`)."""
    for f in fields(TrainConfig):
        meta = f.metadata
        if not (meta.get("cli") if only is None else f.name in only):
            continue
        flag = meta.get("flag") or "--" + f.name.replace("_", "-")
        help_text = meta["help"] + (_default_text(f) if only is None else "")  # (an experiment's preset decides)
        if f.type in ("bool",) or isinstance(f.default, bool):
            parser.add_argument(flag, dest=f.name, action="store_true", help=meta["help"])
            continue
        kwargs: dict[str, Any] = {"dest": f.name, "default": None, "help": help_text}
        if meta.get("choices"):
            kwargs["choices"] = meta["choices"]
        elif meta.get("kind") == "names":
            kwargs["type"], kwargs["metavar"] = _names, "NAME[,NAME...]"
        elif f.name in _TYPES:
            kwargs["type"] = _TYPES[f.name]
        elif "int" in str(f.type):
            kwargs["type"] = _POSITIVE_INT
        parser.add_argument(flag, **kwargs)


def config_from_args(args: argparse.Namespace, **overrides: Any) -> TrainConfig:
    """The :class:`TrainConfig` of a namespace parsed with :func:`add_config_arguments` (options left
    unset keep the config's defaults) plus ``overrides`` (the fields the command line sets otherwise)."""
    values = config_overrides(args, [f.name for f in fields(TrainConfig) if f.metadata.get("cli")])
    values.update(overrides)
    return TrainConfig(**values)


def config_overrides(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    """The fields among ``names`` that were set on a command line parsed with :func:`add_config_arguments`
    (options left unset are left out), as keyword arguments of :class:`TrainConfig`."""
    values: dict[str, Any] = {}
    for name in names:
        value = getattr(args, name, None)
        if value is not None and value is not False:
            values[name] = value
    return values
