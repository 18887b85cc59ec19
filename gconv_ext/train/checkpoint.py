"""Training checkpoints: ``last.pt`` (everything needed to resume) and ``best.pt`` (the best validation
epoch's weights), written atomically; loading with ``weights_only`` unpickling and one-line errors.

Format versions (``"format"``): 1 = the first layout; 2 adds ``"provenance"`` (per epoch) and the
recipe's resolved settings in ``"config"``. Both load: a version-1 config without ``recipe`` was trained
with the study's protocol (:meth:`~gconv_ext.train.config.TrainConfig.from_dict`).
"""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gconv_ext.train.config import TrainConfig

__all__ = ["CHECKPOINT_FORMAT", "CheckpointError", "load_checkpoint", "model_from_checkpoint", "rng_state",
           "set_rng_state", "check_resume_config"]

CHECKPOINT_FORMAT = 2
_READABLE_FORMATS = (1, 2)

#: Config fields that must agree between a checkpoint and a ``resume`` run (the rest may change).
_RESUME_KEYS = (
    "model", "model_kwargs", "preset", "train_rotation", "batch_size", "lr", "weight_decay", "seed",
    "split_seed", "n_val", "val_rotation_seed", "train_limit", "val_limit", "dataset", "ien_beta",
    "ien_transforms", "ien_layers", "optimizer", "lr_schedule", "warmup_epochs", "momentum", "plateau_factor",
    "plateau_patience", "monitor",
)


class CheckpointError(ValueError):
    """A file that is not a readable gconv_ext checkpoint, or one that does not fit the request."""


def rng_state() -> dict[str, Any]:
    """The global RNG states (CPU, and every CUDA device when present)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state` (CUDA states only when the device count matches)."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu",
                    *, need_resume_state: bool = False) -> dict[str, Any]:
    """Load a ``last.pt`` / ``best.pt`` written by training (``weights_only`` unpickling).

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: empty, truncated or corrupt file, a payload that ``weights_only`` refuses, not a
            gconv_ext checkpoint, an unknown format version, or (``need_resume_state``) a ``best.pt``
            that lacks the optimiser state a resume needs. The message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; a cut-off one has no directory
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt (not a complete PyTorch zip archive)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        why = next((ln for ln in lines if "global" in ln.lower() and "weights only load failed" not in ln.lower()),
                   lines[0] if lines else type(exc).__name__)
        raise CheckpointError(f"checkpoint {path} was refused by safe (weights_only) loading: {why}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({first})") from None
    if not isinstance(ckpt, dict) or "config" not in ckpt or "model" not in ckpt:
        raise CheckpointError(f"{path} is not a gconv_ext training checkpoint")
    if ckpt.get("format") not in _READABLE_FORMATS:
        raise CheckpointError(f"{path} has checkpoint format {ckpt.get('format')!r}; this version reads "
                              f"formats {_READABLE_FORMATS}")
    if need_resume_state and "optimizer" not in ckpt:
        raise CheckpointError(f"{path} holds weights only (a best.pt?); resuming needs the last.pt of the run")
    return ckpt


def model_from_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, TrainConfig, dict[str, Any]]:
    """Rebuild the model stored in a checkpoint: ``(model in eval mode, config, checkpoint dict)``."""
    ckpt = load_checkpoint(path, map_location)
    try:
        cfg = TrainConfig.from_dict(ckpt["config"])
        model = cfg.build_model()
        model.load_state_dict(ckpt["model"])
    except (ValueError, TypeError, RuntimeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint {path}: cannot rebuild its model ({first})") from None
    model.eval()
    return model, cfg, ckpt


def _resume_view(d: dict[str, Any]) -> dict[str, Any]:
    """The resume-relevant settings of a config dict (keys an older checkpoint lacks take the values
    its recipe implies, ``n_val`` its effective value)."""
    cfg = TrainConfig.from_dict(d).to_dict()
    view = {k: cfg[k] for k in _RESUME_KEYS}
    if view["n_val"] is None:
        view["n_val"] = TrainConfig.from_dict(d).val_size
    if view["ien_layers"] is not None:
        view["ien_layers"] = list(view["ien_layers"])
    return view


def check_resume_config(saved: dict[str, Any], cfg: TrainConfig, path: Path) -> None:
    """Raise :class:`CheckpointError` naming every setting that differs between the checkpoint and ``cfg``."""
    old, now = _resume_view(saved), _resume_view(cfg.to_dict())
    diffs = [f"{k}: checkpoint {old[k]!r} vs now {now[k]!r}" for k in _RESUME_KEYS if old[k] != now[k]]
    if diffs:
        raise CheckpointError(f"cannot resume from {path}: the config differs ({'; '.join(diffs)})")
