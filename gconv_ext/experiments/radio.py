"""Config-file-driven FRI/FRII radio-galaxy runs with the (equivariant) LeNets, after E2CNNRadGal.

INI configuration (:mod:`configparser`); every key is optional and defaults to the value shown. Unknown
sections or keys and malformed values raise :class:`ConfigError` naming the section and key.

.. code-block:: ini

    [model]
    group = vanilla         ; vanilla (the plain LeNet) or a group name C<N> / D<N>: C4, D16, ...

    [data]
    dataset = frdeep-f      ; frdeep-f | frdeep-n | mirabest-early
    datadir =               ; folder of the data sets (empty: gconv_ext's default data folder)
    datamean = 0.0031       ; normalisation of the [0, 1] pixels: (x - datamean) / datastd
    datastd = 0.0350

    [training]
    batch_size = 50
    frac_val = 0.2          ; fraction of the training images held out for validation (seeded split)
    epochs = 600
    imsize = 150            ; images are centre-cropped to imsize (<= 150), then padded to imsize + 1
    pad_to_odd = true       ; the paper's 150 -> 151 padding (false keeps 150: exact 90-degree equivariance)
    num_classes = 2
    lr0 = 1e-4              ; Adam learning rate
    decay = 1e-6            ; Adam weight decay
    seed = 0
    augment_rotation = true ; random rotation of every training image by a uniform angle in [0, 360)
    lr_factor = 0.9         ; ReduceLROnPlateau on the validation loss: factor and patience
    lr_patience = 2
    max_train = 0           ; use a seeded random subset of max_train training images (0: all; smoke runs)
    max_test = 0            ; likewise for the test images

    [output]
    directory = runs/radio  ; everything below goes into this folder
    csvfile = log.csv       ; per-epoch metrics (the engine's metrics.csv columns)
    modfile = model.pt      ; the model with the lowest validation loss (the engine's best checkpoint)

The former ``[model]`` keys ``base = vanilla | CN | DN`` and ``nrot = N`` are still read (``base = CN`` with
``nrot = 4`` is ``group = C4``; ``nrot`` alone, or with ``base = vanilla``, is ``group = vanilla``), with a
FutureWarning naming the ``group`` line to write instead; giving ``group`` together with them is a
:class:`ConfigError`.

Training goes through the project's engine (:func:`gconv_ext.train.engine.fit`) with this experiment's
preset (:data:`RADIO_PROTOCOL`, :func:`radio_train_config`): Adam(lr0, weight_decay=decay), cross-entropy,
``ReduceLROnPlateau`` on the validation loss (``lr_factor``, ``lr_patience``; stepped once per epoch), the
model with the lowest validation loss is kept and evaluated on the test set (test error = fraction
misclassified). The training images are rotated (``augment_rotation``) in [0, 1], then padded and normalised.
Without validation images (``frac_val = 0``) the training loss takes the validation loss's place.

Files in ``directory``: ``csvfile`` (per epoch: training and validation loss and accuracy, learning rate,
times, provenance), ``modfile`` (a checkpoint readable with :func:`gconv_ext.train.load_checkpoint`:
``"model"`` the state dict, ``"experiment"`` this configuration's values under ``"settings"``,
``"config"`` the training protocol as a :class:`~gconv_ext.train.config.TrainConfig` dict, ``"epoch"``),
``last.pt`` (written after every epoch: an interrupted run resumes from it, bit-identically on a CPU),
``summary.json``, ``config.ini`` and, once the run is finished and tested, ``result.json`` (its configuration
and result). Running the same configuration into that directory again reuses ``result.json`` instead of
training (so an interrupted sweep restarts where it stopped, and a sweep can be extended, e.g. to C16 and
D16, without redoing the others); a larger ``epochs`` continues the run from ``last.pt``. A run with another
configuration trains again and overwrites it. Configurations are compared by value, so the ``result.json`` and
``last.pt`` of runs made with the former ``base``/``nrot`` keys are reused and resumed by the equivalent
``group`` configuration.
"""
from __future__ import annotations

import configparser
import copy
import dataclasses
import functools
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..analysis.report import markdown_table, mean_std, save_figure, write_csv, write_text
from ..data import load_frdeep_splits, load_mirabest_early_splits
from ..groups import Group, group_from_name
from ..io import write_json
from ..models.common import count_parameters
from ..models.lenet import group_name_from_base, lenet, lenet_group_name, pad_to_odd
from ..train.checkpoint import CheckpointError, load_checkpoint
from ..train.config import TrainConfig
from ..train.datasets import TrainData
from ..train.engine import RunFiles, evaluate, fit

__all__ = ["ConfigError", "RadioConfig", "parse_config", "load_config", "config_to_ini", "load_radio_data",
           "run_config", "run_sweep", "run_seeds", "summarize_seeds", "SCHEMA", "RADIO_PROTOCOL",
           "radio_train_config", "SWEEP_GROUPS", "LEGACY_MODEL_KEYS"]

#: The equivariant LeNets of a sweep by default (the vanilla LeNet always runs first).
SWEEP_GROUPS: tuple[str, ...] = ("C2", "C4", "C8", "C16", "D2", "D4", "D8", "D16")


class ConfigError(ValueError):
    """A bad configuration file: the message names the section and key."""


def _bool(text: str) -> bool:
    t = text.strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true/false")


def _choice(*options: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in options:
            raise ValueError(f"expected one of {', '.join(options)}")
        return text
    return parse


def _num(kind: type, minimum: float | None = None, maximum: float | None = None, strict: bool = False
         ) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            v = kind(text)
        except ValueError:
            raise ValueError(f"expected {'an int' if kind is int else 'a float'}") from None
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError("expected a finite number")
        if minimum is not None and (v <= minimum if strict else v < minimum):
            raise ValueError(f"expected a value {'>' if strict else '>='} {minimum}")
        if maximum is not None and v > maximum:
            raise ValueError(f"expected a value <= {maximum}")
        return v
    return parse


def _group(text: str) -> str:
    """``vanilla`` or a C_N / D_N group name, canonical (``c4`` -> ``C4``)."""
    try:
        return lenet_group_name(text)
    except ValueError:
        raise ValueError("expected vanilla or a group name C<N> / D<N> with N >= 1 (e.g. C4, D16)") from None


#: section -> key -> (parser, default): the documented keys (see the module docstring).
SCHEMA: dict[str, dict[str, tuple[Callable[[str], Any], Any]]] = {
    "model": {"group": (_group, "vanilla")},
    "data": {"dataset": (_choice("frdeep-f", "frdeep-n", "mirabest-early"), "frdeep-f"), "datadir": (str, ""),
             "datamean": (_num(float), 0.0031), "datastd": (_num(float, 0.0, strict=True), 0.0350)},
    "training": {"batch_size": (_num(int, 1), 50), "frac_val": (_num(float, 0.0, 0.9), 0.2),
                 "epochs": (_num(int, 1), 600), "imsize": (_num(int, 8, 150), 150), "pad_to_odd": (_bool, True),
                 "num_classes": (_num(int, 2), 2), "lr0": (_num(float, 0.0, strict=True), 1e-4),
                 "decay": (_num(float, 0.0), 1e-6), "seed": (_num(int, 0), 0), "augment_rotation": (_bool, True),
                 "lr_factor": (_num(float, 0.0, 1.0, strict=True), 0.9), "lr_patience": (_num(int, 0), 2),
                 "max_train": (_num(int, 0), 0), "max_test": (_num(int, 0), 0)},
    "output": {"directory": (str, "runs/radio"), "csvfile": (str, "log.csv"), "modfile": (str, "model.pt")},
}

#: The former ``[model]`` keys, read as ``group`` with a FutureWarning: key -> (parser, default).
LEGACY_MODEL_KEYS: dict[str, tuple[Callable[[str], Any], Any]] = {
    "base": (_choice("vanilla", "CN", "DN"), "vanilla"), "nrot": (_num(int, 1), 4)}


def _known_keys(section: str) -> str:
    known = ", ".join(SCHEMA[section])
    return known + (f"; deprecated: {', '.join(LEGACY_MODEL_KEYS)}" if section == "model" else "")


def _legacy_model(given: Mapping[str, Any], current: str = "vanilla") -> str:
    """The ``group`` of the former ``[model]`` keys ``given`` (parsed values), the others taken from the
    ``current`` group (``nrot`` 4 when that is vanilla, the former default)."""
    if current == "vanilla":
        base, nrot = "vanilla", LEGACY_MODEL_KEYS["nrot"][1]
    else:
        g = group_from_name(current)
        base, nrot = "DN" if g.reflections else "CN", g.rotations
    return group_name_from_base(given.get("base", base), given.get("nrot", nrot))


def _legacy_text(given: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} = {v}" for k, v in given.items())


@dataclasses.dataclass
class RadioConfig:
    """A parsed configuration: ``values[section][key]`` with every documented key present."""

    values: dict[str, dict[str, Any]]

    def __getitem__(self, section: str) -> dict[str, Any]:
        return self.values[section]

    @property
    def run_name(self) -> str:
        """``vanilla``, ``C4``, ``D16``, ...: the ``[model] group``."""
        return self.values["model"]["group"]

    @property
    def input_size(self) -> int:
        t = self.values["training"]
        return t["imsize"] + (1 if t["pad_to_odd"] else 0)

    def replace(self, **sections: Mapping[str, Any]) -> "RadioConfig":
        """A copy with some keys changed: ``cfg.replace(model={"group": "D8"})`` (validated; ``group`` may
        also be a :class:`~gconv_ext.groups.Group`). Deprecated: ``model={"base": "CN", "nrot": 8}`` (a key
        left out keeps the current group's value), with a FutureWarning."""
        values = copy.deepcopy(self.values)
        for section, kv in sections.items():
            if section not in SCHEMA:
                raise ConfigError(f"unknown section [{section}] (known: {', '.join(SCHEMA)})")
            legacy = {}
            for k, v in kv.items():
                if isinstance(v, Group):
                    v = v.name
                text = str(v).lower() if isinstance(v, bool) else str(v)
                if section == "model" and k in LEGACY_MODEL_KEYS:
                    legacy[k] = _parse_value(section, k, text, LEGACY_MODEL_KEYS)
                    continue
                if k not in SCHEMA[section]:
                    raise ConfigError(f"[{section}] unknown key {k!r} (known: {_known_keys(section)})")
                values[section][k] = _parse_value(section, k, text)
            if legacy:
                if "group" in kv:
                    raise ConfigError("[model] give group or the deprecated base/nrot, not both")
                group = _legacy_model(legacy, self.values["model"]["group"])
                warnings.warn(f"RadioConfig.replace(model={dict(legacy)!r}) is deprecated; use "
                              f"replace(model={{'group': {group!r}}})", FutureWarning, stacklevel=2)
                values["model"]["group"] = group
        return RadioConfig(values)


def _parse_value(section: str, key: str, text: str,
                 schema: Mapping[str, tuple[Callable[[str], Any], Any]] | None = None) -> Any:
    parser, _ = (SCHEMA[section] if schema is None else schema)[key]
    try:
        return parser(text.strip())
    except ValueError as exc:
        raise ConfigError(f"[{section}] {key} = {text!r}: {exc}") from None


def parse_config(text: str, source: str = "<config>") -> RadioConfig:
    """Parse INI text (see the module docstring); unknown sections/keys and bad values raise ConfigError.
    The former ``[model]`` keys ``base``/``nrot`` are read as ``group``, with a FutureWarning."""
    cp = configparser.ConfigParser(inline_comment_prefixes=(";", "#"), interpolation=None)
    try:
        cp.read_string(text, source=source)
    except configparser.Error as exc:
        raise ConfigError(f"{source}: {exc}") from None
    values = {s: {k: d for k, (_, d) in keys.items()} for s, keys in SCHEMA.items()}
    legacy: dict[str, Any] = {}
    for section in cp.sections():
        if section not in SCHEMA:
            raise ConfigError(f"{source}: unknown section [{section}] (known: {', '.join(SCHEMA)})")
        for key, text_value in cp.items(section):
            legacy_key = section == "model" and key in LEGACY_MODEL_KEYS
            if key not in SCHEMA[section] and not legacy_key:
                raise ConfigError(f"{source}: [{section}] unknown key {key!r} (known: {_known_keys(section)})")
            try:
                if legacy_key:
                    legacy[key] = _parse_value(section, key, text_value, LEGACY_MODEL_KEYS)
                else:
                    values[section][key] = _parse_value(section, key, text_value)
            except ConfigError as exc:
                raise ConfigError(f"{source}: {exc}") from None
    if legacy:
        if cp.has_option("model", "group"):
            raise ConfigError(f"{source}: [model] group and the deprecated {' and '.join(legacy)} are both given; "
                              f"keep only group")
        try:
            values["model"]["group"] = _legacy_model(legacy)
        except ValueError as exc:
            raise ConfigError(f"{source}: [model] {exc}") from None
        warnings.warn(f"{source}: [model] {_legacy_text(legacy)} is deprecated; write "
                      f"group = {values['model']['group']} instead", FutureWarning, stacklevel=2)
    return RadioConfig(values)


def load_config(path: str | os.PathLike[str]) -> RadioConfig:
    """Read and parse an INI file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    return parse_config(p.read_text(), str(p))


def config_to_ini(cfg: RadioConfig) -> str:
    """The configuration as INI text (every key; parses back to the same values)."""
    lines = []
    for section, keys in cfg.values.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {str(v).lower() if isinstance(v, bool) else v}" for k, v in keys.items()]
        lines.append("")
    return "\n".join(lines)


def _center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    h = images.shape[-1]
    if size >= h:
        return images
    a = (h - size) // 2
    return images[..., a:a + size, a:a + size]


def load_radio_data(cfg: RadioConfig) -> dict[str, torch.Tensor]:
    """``{"train_x", "train_y", "test_x", "test_y"}``: float images in [0, 1] ``[N, 1, imsize, imsize]``
    (centre-cropped, not yet padded or normalised), int64 labels; ``max_train``/``max_test`` pick a random
    subset drawn with ``seed`` (the archives are ordered by class, so the first images would be one class)."""
    d, t = cfg["data"], cfg["training"]
    datadir = d["datadir"] or None
    if d["dataset"] == "mirabest-early":
        train, test = load_mirabest_early_splits(datadir)
    else:
        survey = "FIRST" if d["dataset"] == "frdeep-f" else "NVSS"
        train, test = load_frdeep_splits(datadir, survey)
    out = {}
    for name, (x, y), limit in (("train", train, t["max_train"]), ("test", test, t["max_test"])):
        if limit and limit < x.shape[0]:
            keep = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(t["seed"]))[:limit]
            x, y = x[keep], y[keep]
        out[f"{name}_x"] = _center_crop(x.float().div(255).unsqueeze(1), t["imsize"])
        out[f"{name}_y"] = y
    return out


def _prepare(cfg: RadioConfig, x: torch.Tensor) -> torch.Tensor:
    """Pad (150 -> 151 when ``pad_to_odd``) and normalise images in [0, 1]."""
    if cfg["training"]["pad_to_odd"]:
        x = pad_to_odd(x)
    return (x - cfg["data"]["datamean"]) / cfg["data"]["datastd"]


#: The radio galaxies' training protocol (:class:`~gconv_ext.train.config.TrainConfig` fields); the
#: ``[training]`` section gives the rest (:func:`radio_train_config`).
RADIO_PROTOCOL: dict[str, Any] = dict(optimizer="adam", lr_schedule="plateau", warmup_epochs=0.0, monitor="val_loss",
                                      patience=0, precision="fp32")


def radio_train_config(cfg: RadioConfig, **train_options: Any) -> TrainConfig:
    """The engine's :class:`~gconv_ext.train.config.TrainConfig` of a configuration: :data:`RADIO_PROTOCOL`
    with the ``[training]`` values (``lr0``, ``decay``, ``lr_factor``, ``lr_patience``, ``batch_size`` (also
    the evaluation batch), ``epochs``, ``seed``, ``augment_rotation``) and ``[output] directory``, updated
    by ``train_options`` (other fields: ``device``, ``precision``, ``compile``, ``quiet``, ``stop_after``, ...).
    A run found in the directory resumes when it was made with the same settings, else it is replaced."""
    t, m = cfg["training"], cfg["model"]
    try:
        return TrainConfig(**{
            **RADIO_PROTOCOL, "model": "lenet",
            "model_kwargs": {"group": m["group"], "num_classes": t["num_classes"],
                             "input_size": cfg.input_size},
            "epochs": t["epochs"], "batch_size": t["batch_size"], "eval_batch_size": t["batch_size"],
            "lr": t["lr0"], "weight_decay": t["decay"], "plateau_factor": t["lr_factor"],
            "plateau_patience": t["lr_patience"], "seed": t["seed"],
            "train_rotation": "uniform" if t["augment_rotation"] else "none",
            "out_dir": cfg["output"]["directory"], "resume": True, "overwrite": True, **train_options})
    except ValueError as exc:
        raise ConfigError(f"[training]: {exc}") from None


def _row_group(row: Mapping[str, Any]) -> str:
    """The ``group`` of a result row; rows written before it existed give ``base`` and ``nrot``."""
    if row.get("group"):
        return str(row["group"])
    return group_name_from_base(row["base"], int(row["nrot"]))


def _group_fields(group: str) -> dict[str, Any]:
    """``group`` and, for reading beside the results written before it, the former ``base`` and ``nrot``."""
    if group == "vanilla":
        return {"group": group, "base": "vanilla", "nrot": 1}
    g = group_from_name(group)
    return {"group": group, "base": "DN" if g.reflections else "CN", "nrot": g.rotations}


def _with_group(row: Mapping[str, Any]) -> dict[str, Any]:
    """A result row with ``name``, ``group``, ``base``, ``nrot`` first (adds ``group`` to an older row)."""
    return {"name": row["name"], **_group_fields(_row_group(row)),
            **{k: v for k, v in row.items() if k not in ("name", "group", "base", "nrot")}}


def _same_config(saved_ini: str, cfg: RadioConfig) -> bool:
    """Whether the INI text of a finished run (``result.json``) is ``cfg``'s configuration, compared by value:
    a run written with the former ``base``/``nrot`` keys matches the equivalent ``group``."""
    if saved_ini == config_to_ini(cfg):
        return True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return parse_config(saved_ini, "result.json").values == cfg.values
    except ConfigError:
        return False


def _legacy_checkpoint_model(path: Path, group: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """For a ``last.pt`` written with the former ``[model] base``/``nrot`` of the same ``group``: its
    ``[model]`` settings and ``model_kwargs``' ``base``/``nrot``, so that the engine, which compares these
    with the checkpoint's before it resumes, continues that run. None for anything else."""
    if not path.is_file():
        return None
    try:
        ckpt = load_checkpoint(path)
        model = ckpt["experiment"]["settings"]["model"]
        kwargs = ckpt["config"]["model_kwargs"]
        if "group" in model or "base" not in model or "base" not in kwargs:
            return None
        if _legacy_model(model) != group or group_name_from_base(kwargs["base"], kwargs.get("nrot")) != group:
            return None
    except (OSError, CheckpointError, KeyError, TypeError, ValueError):
        return None
    return dict(model), {k: kwargs[k] for k in ("base", "nrot") if k in kwargs}


def _error(accuracy: float, n: int) -> float:
    """The fraction misclassified, as the exact ratio of counts."""
    return round((1.0 - accuracy) * n) / n if n else math.nan


def run_config(cfg: RadioConfig, data: dict[str, torch.Tensor] | None = None, log: Callable[[str], None] = print,
               **train_options: Any) -> dict[str, Any]:
    """Train and test one configuration; writes ``csvfile``, ``modfile``, ``config.ini``, ``last.pt``,
    ``summary.json`` and ``result.json`` into ``[output] directory`` atomically. Returns ``{"name", "group",
    "base", "nrot", "params", "epochs", "best_epoch", "best_val_loss", "val_error", "test_error", "seconds"}``
    (``group``: the group name or ``"vanilla"``, as ``name``; ``base``/``nrot``: the former spelling of it,
    ``'vanilla'``/1, ``'CN'``/N or ``'DN'``/N, kept for reading beside older results; ``seconds``: training,
    validation and test time, over all the invocations that trained the run).
    Reuses a finished run of the same configuration found in the directory (``result.json``, also one written
    with the former ``base``/``nrot`` keys) and resumes an unfinished one (``last.pt``).
    ``train_options``: see :func:`radio_train_config`."""
    t_cfg, o_cfg = cfg["training"], cfg["output"]
    out_dir = Path(o_cfg["directory"])
    try:
        saved = json.loads((out_dir / "result.json").read_text())
        if _same_config(saved["config"], cfg) and (out_dir / o_cfg["modfile"]).is_file():
            log(f"{cfg.run_name}: reusing the finished run in {out_dir}")
            return _with_group(saved["result"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    train_cfg = radio_train_config(cfg, **train_options)
    settings = copy.deepcopy(cfg.values)
    del settings["training"]["epochs"]  # more epochs continue the run
    del settings["data"]["datadir"]  # where the files are is not what they are
    legacy = _legacy_checkpoint_model(out_dir / "last.pt", cfg.run_name) if train_cfg.resume else None
    if legacy is not None:  # a run begun with [model] base/nrot: resume it under the names it was saved with
        settings["model"] = legacy[0]
        kwargs = {k: v for k, v in train_cfg.model_kwargs.items() if k != "group"}
        train_cfg = dataclasses.replace(train_cfg, model_kwargs={**legacy[1], **kwargs})
    data = load_radio_data(cfg) if data is None else data
    torch.manual_seed(t_cfg["seed"])
    gen = torch.Generator().manual_seed(t_cfg["seed"])
    n = data["train_x"].shape[0]
    perm = torch.randperm(n, generator=gen)
    n_val = int(round(t_cfg["frac_val"] * n))
    val_idx, tr_idx = perm[:n_val], perm[n_val:]
    if len(tr_idx) == 0:
        raise ConfigError(f"[training] frac_val = {t_cfg['frac_val']} leaves no training image out of {n}")
    train_data = TrainData(data["train_x"][tr_idx], data["train_y"][tr_idx],
                           _prepare(cfg, data["train_x"][val_idx]) if n_val else None,
                           data["train_y"][val_idx] if n_val else None, None)
    xte, yte = _prepare(cfg, data["test_x"]), data["test_y"]

    model = lenet(cfg.run_name, 1, t_cfg["num_classes"], cfg.input_size)
    (out_dir / "result.json").unlink(missing_ok=True)
    write_text(out_dir / "config.ini", config_to_ini(cfg))
    summary = fit(model, train_data, train_cfg, prepare=functools.partial(_prepare, cfg),
                  meta={"experiment": "radio", "dataset": cfg["data"]["dataset"], "settings": settings},
                  files=RunFiles(metrics=o_cfg["csvfile"], best=o_cfg["modfile"]),
                  log=lambda msg: log(f"{cfg.run_name} {msg}"))
    t0 = time.perf_counter()
    model.load_state_dict(load_checkpoint(out_dir / o_cfg["modfile"])["model"])
    _, test_acc = evaluate(model, xte, yte, t_cfg["batch_size"], summary["device"], precision=summary["precision"])
    result = {"name": cfg.run_name, **_group_fields(cfg.run_name), "params": count_parameters(model),
              "epochs": summary["epochs_completed"],
              "best_epoch": summary["best_epoch"], "best_val_loss": summary["best_metric"],
              "val_error": _error(summary["best_val_acc"], n_val) if n_val else math.nan,
              "test_error": _error(test_acc, xte.shape[0]),
              "seconds": summary["train_time_s"] + time.perf_counter() - t0}
    if summary["finished"]:
        write_json(out_dir / "result.json", {"config": config_to_ini(cfg), "result": result})
    return result


def _sweep_groups(function: str, groups: Sequence[str | Group] | None, nrots: Sequence[int] | None,
                  bases: Sequence[str] | None, stacklevel: int = 3) -> tuple[str, ...]:
    """The canonical group names of a sweep: ``groups`` (default :data:`SWEEP_GROUPS`), or the deprecated
    ``bases`` x ``nrots`` (defaults ``('CN', 'DN')`` and ``(2, 4, 8, 16)``) with a FutureWarning."""
    if nrots is not None or bases is not None:
        if groups is not None and groups is not SWEEP_GROUPS:
            raise ValueError(f"{function}: give groups or the deprecated nrots/bases, not both")
        nrots_ = tuple((2, 4, 8, 16) if nrots is None else nrots)
        bases_ = tuple(("CN", "DN") if bases is None else bases)
        groups = tuple(group_name_from_base(b, n, "bases") for b in bases_ if b != "vanilla" for n in nrots_)
        old = ", ".join(f"{k}={v!r}" for k, v in (("nrots", nrots), ("bases", bases)) if v is not None)
        warnings.warn(f"{function}({old}) is deprecated; use groups={groups!r}", FutureWarning,
                      stacklevel=stacklevel)
    if groups is None:
        return SWEEP_GROUPS
    if isinstance(groups, (str, Group)):
        groups = [groups]
    names = []
    for g in groups:
        if isinstance(g, str) and g.strip().lower() == "vanilla":
            raise ValueError(f"{function}: groups lists the equivariant LeNets; the vanilla one always runs first")
        try:
            names.append(group_from_name(g.strip() if isinstance(g, str) else g).name)
        except ValueError:
            hint = " (N values were the deprecated nrots=)" if isinstance(g, int) else ""
            raise ValueError(f"{function}: groups must be group names like 'C4' or 'D16' (or Groups), "
                             f"got {g!r}{hint}") from None
    if len(set(names)) != len(names):
        raise ValueError(f"{function}: groups has duplicates: {names}")
    return tuple(names)


def run_sweep(cfg: RadioConfig, groups: Sequence[str | Group] = SWEEP_GROUPS, log: Callable[[str], None] = print, *,
              nrots: Sequence[int] | None = None, bases: Sequence[str] | None = None,
              **train_options: Any) -> list[dict[str, Any]]:
    """The vanilla LeNet and the LeNets of ``groups`` (group names, default :data:`SWEEP_GROUPS`: C2, C4, C8,
    C16, D2, D4, D8, D16) from one base configuration, each in its own folder ``<directory>/<name>``; writes
    ``results.csv``, ``results.md`` and ``test_error_vs_N.png`` into ``<directory>`` (atomically, updated
    after every run). Returns the result rows. ``train_options``: the engine's options for every run
    (:func:`radio_train_config`). Deprecated: ``nrots=``/``bases=`` (``bases`` x ``nrots``, e.g.
    ``bases=("CN",), nrots=(2, 4)`` is ``groups=("C2", "C4")``), with a FutureWarning."""
    groups = _sweep_groups("run_sweep", groups, nrots, bases)
    data = load_radio_data(cfg)
    root = Path(cfg["output"]["directory"])
    runs = [cfg.replace(model={"group": g}) for g in ("vanilla", *groups)]
    results: list[dict[str, Any]] = []
    for run in runs:
        run = run.replace(output={"directory": str(root / run.run_name)})
        results.append(run_config(run, data, log, **train_options))
        log(f"{results[-1]['name']}: test error {results[-1]['test_error']:.3f} ({results[-1]['seconds']:.0f}s)")
        _write_sweep(cfg, results, root)
    return results


def _settings_line(cfg: RadioConfig, seed_text: str) -> str:
    """The training settings of a sweep, for the heading of its markdown table."""
    t = cfg["training"]
    return (f"{t['epochs']} epoch(s), batch {t['batch_size']}, Adam lr {t['lr0']} (weight decay {t['decay']}), "
            f"imsize {t['imsize']} -> input {cfg.input_size}, rotation augmentation "
            f"{'on' if t['augment_rotation'] else 'off'}, {seed_text}"
            f"{', max_train ' + str(t['max_train']) if t['max_train'] else ''}"
            f"{', max_test ' + str(t['max_test']) if t['max_test'] else ''}")


def _write_sweep(cfg: RadioConfig, results: list[dict[str, Any]], root: Path) -> None:
    write_csv(root / "results.csv", results)
    t, d = cfg["training"], cfg["data"]
    table = markdown_table(results, ["name", "params", "epochs", "best_epoch", "val_error", "test_error", "seconds"],
                           ["model", "parameters", "epochs", "best epoch (val loss)", "val error", "test error",
                            "seconds"], fmt="{:.3f}")
    write_text(root / "results.md", f"# Radio galaxies: LeNet sweep ({d['dataset']})\n\n"
               f"{_settings_line(cfg, 'seed ' + str(t['seed']))}.\n\n{table}")
    _plot_vs_n(results, root / "test_error_vs_N.png", f"{d['dataset']}, {t['epochs']} epoch(s)")


def _plot_vs_n(rows: list[dict[str, Any]], path: Path, title: str, std_key: str | None = None) -> None:
    """Test error vs N for C_N and D_N (error bars from ``std_key`` when given), vanilla as a line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    groups = [_row_group(r) for r in rows]
    ns = sorted({group_from_name(g).rotations for g in groups if g != "vanilla"})
    for reflections, marker in ((False, "o"), (True, "s")):
        pts = sorted((group_from_name(g).rotations, r["test_error"], r[std_key] if std_key else 0.0)
                     for g, r in zip(groups, rows) if g != "vanilla" and group_from_name(g).reflections == reflections)
        if pts:
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts] if std_key else None,
                        marker=marker, capsize=3, label=f"{'D' if reflections else 'C'}_N")
    for g, r in zip(groups, rows):
        if g == "vanilla":
            ax.axhline(r["test_error"], color="grey", ls="--", label="vanilla" + (" (± std)" if std_key else ""))
            if std_key:
                ax.axhspan(r["test_error"] - r[std_key], r["test_error"] + r[std_key], color="grey", alpha=0.15)
    ax.set_xscale("log", base=2)
    if ns:
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.minorticks_off()
    ax.set_xlabel("N")
    ax.set_ylabel("test error" + (" (mean ± std over seeds)" if std_key else ""))
    ax.set_title(title)
    ax.legend()
    save_figure(fig, path)


def summarize_seeds(results: Mapping[int, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per model from the sweep results of several seeds (``{seed: run_sweep(...) rows}``): the
    per-seed test errors (``test_error_seed<k>``), and mean and sample std over seeds (``<key>``, ``<key>_std``)
    of the test error, the validation error, the best epoch and the seconds. Every seed must have run the same
    models. Rows without ``group`` (written before it existed) give it by ``base`` and ``nrot``."""
    if not results:
        raise ValueError("summarize_seeds: results is empty")
    names = [[r["name"] for r in rows] for rows in results.values()]
    if any(n != names[0] for n in names):
        raise ValueError(f"summarize_seeds: the seeds ran different models: {names}")
    summary = []
    for i, name in enumerate(names[0]):
        per_seed = {seed: rows[i] for seed, rows in results.items()}
        first = next(iter(per_seed.values()))
        row: dict[str, Any] = {"name": name, **_group_fields(_row_group(first)), "params": first["params"],
                               "seeds": len(per_seed)}
        row.update({f"test_error_seed{seed}": r["test_error"] for seed, r in per_seed.items()})
        for key in ("test_error", "val_error", "best_epoch", "seconds"):
            row[key], row[f"{key}_std"] = mean_std([r[key] for r in per_seed.values()])
        summary.append(row)
    return summary


def run_seeds(cfg: RadioConfig, seeds: tuple[int, ...], groups: Sequence[str | Group] = SWEEP_GROUPS,
              log: Callable[[str], None] = print, *, nrots: Sequence[int] | None = None,
              bases: Sequence[str] | None = None, **train_options: Any) -> list[dict[str, Any]]:
    """:func:`run_sweep` of ``groups`` once per seed (``[training] seed`` replaced) into ``<directory>/seed<k>``,
    then ``summary.csv``, ``summary.md`` (mean ± std over seeds) and ``test_error_vs_N.png`` into
    ``<directory>``. Finished runs are reused as in :func:`run_sweep`. Returns :func:`summarize_seeds` of the
    results. Deprecated: ``nrots=``/``bases=`` as in :func:`run_sweep`."""
    groups = _sweep_groups("run_seeds", groups, nrots, bases)
    if not seeds or len(set(seeds)) != len(seeds) or any(int(s) < 0 for s in seeds):
        raise ConfigError(f"seeds: expected distinct integers >= 0, got {list(seeds)}")
    root = Path(cfg["output"]["directory"])
    results = {}
    for seed in seeds:
        log(f"== seed {seed}")
        results[seed] = run_sweep(cfg.replace(training={"seed": seed}, output={"directory": str(root / f"seed{seed}")}),
                                  groups, log, **train_options)
    summary = summarize_seeds(results)
    write_csv(root / "summary.csv", summary)
    t, d = cfg["training"], cfg["data"]
    cols = ["name", "params"] + [f"test_error_seed{s}" for s in seeds]
    table_rows = [{**r, "params": f"{r['params']:,}",
                   "test": f"{r['test_error']:.3f} ± {r['test_error_std']:.3f}",
                   "val": f"{r['val_error']:.3f} ± {r['val_error_std']:.3f}",
                   "epoch": f"{r['best_epoch']:.1f}", "sec": f"{r['seconds']:.0f}"} for r in summary]
    table = markdown_table(table_rows, cols + ["test", "val", "epoch", "sec"],
                           ["model", "parameters"] + [f"test error, seed {s}" for s in seeds]
                           + ["test error (mean ± std)", "val error (mean ± std)", "best epoch (mean)",
                              "seconds (mean)"], fmt="{:.3f}")
    seeds_text = (f"seeds {','.join(map(str, seeds))} (each seed: its own validation split, initialisation and "
                  f"augmentation)")
    write_text(root / "summary.md", f"# Radio galaxies: LeNet sweep over {len(seeds)} seeds ({d['dataset']})\n\n"
               f"{_settings_line(cfg, seeds_text)}; mean ± sample std over seeds.\n\n{table}")
    _plot_vs_n(summary, root / "test_error_vs_N.png",
               f"{d['dataset']}, {t['epochs']} epoch(s), {len(seeds)} seeds", std_key="test_error_std")
    return summary
