"""Test-set evaluation: fixed rotated-test accuracy, per-angle accuracy curves, results table.

* :func:`evaluate_model` scores a model on the MNIST test digits rotated by fixed, seeded angles
  (:func:`~gconv_ext.data.rotated_test_set`, so every model sees the same rotated set), upright, and
  at each of 0, 5, ..., 355 degrees.
* :func:`evaluate_checkpoint` does that for a ``best.pt`` / ``last.pt`` written by
  :func:`~gconv_ext.train.train` and writes ``per_angle.csv``, ``per_angle.png``,
  ``test_angles.pt`` (the rotated-test angles) and ``result.json`` atomically.
* :func:`write_results_table` writes a markdown table comparing results.

For runs trained with ``dataset="rotated-mnist"`` (the SUBSTITUTE for ``mnist_rotation_new``,
:func:`~gconv_ext.data.make_rotated_mnist`), ``rotated_test_acc`` is the accuracy on the
substitute's 50,000 rotated test digits (each at its own seeded angle; ``test_limit`` takes the first
N), while ``upright_test_acc`` and the per-angle curve still use the 10,000 MNIST test digits at fixed
angles (none of them is a training digit of the substitute, whose training digits all come from the
MNIST train split). ``result.json`` names the test set in ``test_set``.

For an :class:`~gconv_ext.models.STN`, :func:`evaluate_model` also measures how well its first warp
canonicalises rotated digits (:func:`~gconv_ext.analysis.canonicalization_error`: the first
:data:`CANONICALIZATION_DIGITS` MNIST test digits, each at 0, 10, ..., 350 degrees; 0 degrees is a
perfect canonicaliser, 45 a constant warp) and ``result.json`` gets a ``canonicalization`` entry.
"""
from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gconv_ext.analysis.canonicalization import CANONICALIZATION_ANGLES, canonicalization_error
from gconv_ext.data import fixed_angle_test_sets, load_mnist, to_normalized_float
from gconv_ext.data.paths import resolve_data_dir
from gconv_ext.io import atomic_torch_save, atomic_write_bytes, write_csv, write_json
from gconv_ext.models import STN, count_parameters
from gconv_ext.provenance import provenance
from gconv_ext.train.checkpoint import model_from_checkpoint
from gconv_ext.train.datasets import dataset_spec
from gconv_ext.train.engine import _progress, accuracy

__all__ = [
    "DEFAULT_ANGLES",
    "TEST_ROTATION_SEED",
    "evaluate_model",
    "evaluate_checkpoint",
    "write_per_angle_csv",
    "plot_per_angle",
    "write_results_table",
    "load_results",
    "TEST_SET_NAMES",
    "CANONICALIZATION_DIGITS",
]

#: How result files and tables name the rotated test set of each dataset.
TEST_SET_NAMES = {
    "mnist": "MNIST test digits at seeded uniform angles",
    "rotated-mnist": "rotated-MNIST SUBSTITUTE test set (50,000 digits; not mnist_rotation_new)",
}

#: The angles of the per-angle curve: 0, 5, ..., 355 degrees.
DEFAULT_ANGLES: tuple[float, ...] = tuple(float(a) for a in range(0, 360, 5))
#: Seed of the fixed angles of the rotated test set (the validation set uses another seed).
TEST_ROTATION_SEED = 0
#: Default number of test digits (36 rotated copies each) for an STN's canonicalisation error.
CANONICALIZATION_DIGITS = 1000

_TABLE_COLUMNS = (
    ("name", "model"), ("num_params", "params"), ("train_rotation", "train setting"),
    ("rotated_test_acc", "rotated-test acc"), ("upright_test_acc", "upright acc"),
    ("mean_per_angle_acc", "mean per-angle acc"), ("train_time_s", "training time"),
)


def evaluate_model(
    model: nn.Module,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    test_limit: int | None = None,
    test_seed: int = TEST_ROTATION_SEED,
    angles: Sequence[float] = DEFAULT_ANGLES,
    batch_size: int = 2048,
    device: torch.device | str = "cpu",
    dataset: str = "mnist",
    cache_dir: str | os.PathLike[str] | None = None,
    canonicalization_digits: int | None = CANONICALIZATION_DIGITS,
    precision: str = "fp32",
    progress: bool = True,
) -> dict[str, Any]:
    """Accuracy of ``model`` on the (first ``test_limit``) MNIST test digits (``progress``: a bar over the
    test angles on stderr; the full study's 36 angles of 10,000 digits take minutes on a CPU).

    With ``dataset="rotated-mnist"`` the rotated test set is instead the (first ``test_limit`` of the)
    50,000 test digits of the rotated-MNIST substitute, at their own angles (``test_seed`` is then
    unused; ``test_angles`` are the substitute's); the upright and per-angle numbers stay on MNIST test.

    Returns a dict with ``rotated_test_acc`` (each digit at its own fixed angle from ``test_seed``),
    ``upright_test_acc``, ``per_angle`` (``{angle: acc}`` for ``angles``), ``mean_per_angle_acc``,
    ``test_angles`` (the float64 tensor of rotated-test angles), ``test_seed``, ``n_test`` and
    ``num_params``. For an :class:`~gconv_ext.models.STN` it also has ``canonicalization``:
    ``{"median_deg", "mean_deg", "n_digits", "n_angles"}`` from
    :func:`~gconv_ext.analysis.canonicalization_error` on the first ``canonicalization_digits``
    (``None``: all; 0: skip it) of those MNIST test digits at 0, 10, ..., 350 degrees.
    """
    spec = dataset_spec(dataset)
    n_canon = canonicalization_digits
    if n_canon is not None and (isinstance(n_canon, bool) or not isinstance(n_canon, int) or n_canon < 0):
        raise ValueError(f"canonicalization_digits must be an int >= 0 or None, got {n_canon!r}")
    images, labels = load_mnist("test", resolve_data_dir(data_dir))
    if test_limit is not None:
        images, labels = images[:test_limit], labels[:test_limit]
    model = model.to(device)
    rot = spec.load_rotated_test(data_dir, cache_dir, images, labels, test_seed, test_limit)
    n_rotated = int(rot.y.shape[0])
    rotated_acc = accuracy(model, rot.x, rot.y, batch_size, device, precision=precision)
    rot_angles, rot_seed, rot_name = rot.angles, rot.seed, rot.name
    del rot
    upright_acc = accuracy(model, to_normalized_float(images), labels, batch_size, device, precision=precision)
    per_angle: dict[float, float] = {}
    with _progress(len(angles), "test angles", progress, unit="angle") as bar:
        for angle, x, y in fixed_angle_test_sets(images, labels, angles):
            per_angle[angle] = accuracy(model, x, y, batch_size, device, precision=precision)
            bar.set_postfix_str(f"{angle:g} deg: acc {per_angle[angle]:.4f}", refresh=False)
            bar.update(1)
    mean = sum(per_angle.values()) / len(per_angle) if per_angle else float("nan")
    result = {
        "rotated_test_acc": rotated_acc,
        "upright_test_acc": upright_acc,
        "per_angle": per_angle,
        "mean_per_angle_acc": mean,
        "test_angles": rot_angles,
        "test_seed": rot_seed,
        "n_test": int(labels.shape[0]),
        "n_rotated_test": n_rotated,
        "dataset": dataset,
        "test_set": rot_name,
        "precision": precision,
        "num_params": count_parameters(model),
    }
    if isinstance(model, STN) and n_canon != 0:
        canon = canonicalization_error(model, images[:n_canon], angles_deg=CANONICALIZATION_ANGLES,
                                       batch_size=batch_size, device=device)
        result["canonicalization"] = {"median_deg": canon["median_deg"], "mean_deg": canon["mean_deg"],
                                      "n_digits": canon["n_digits"], "n_angles": len(canon["angles_deg"])}
    return result


def write_per_angle_csv(per_angle: Mapping[float, float], path: str | os.PathLike[str]) -> None:
    """Write ``angle_deg,accuracy`` rows atomically."""
    write_csv(path, [[f"{angle:g}", f"{acc:.6f}"] for angle, acc in per_angle.items()], ["angle_deg", "accuracy"])


def plot_per_angle(
    curves: Mapping[str, Mapping[float, float]], path: str | os.PathLike[str], title: str = ""
) -> None:
    """Plot accuracy against rotation angle, one line per entry of ``curves``; PNG written atomically."""
    import matplotlib  # noqa: PLC0415 (imported lazily: only plotting needs it)

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure  # noqa: PLC0415

    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    for label, curve in curves.items():
        xs = list(curve.keys())
        ax.plot(xs, [curve[a] for a in xs], marker=".", label=label)
    ax.set_xlabel("rotation angle (degrees, counter-clockwise)")
    ax.set_ylabel("test accuracy")
    ax.set_xlim(0, 360)
    ax.set_xticks(range(0, 361, 45))
    ax.set_ylim(0, 1.02)
    ax.grid(True, alpha=0.3)
    if title:
        ax.set_title(title)
    if len(curves) > 1 or any(curves):
        ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())


def evaluate_checkpoint(
    checkpoint: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    name: str | None = None,
    test_limit: int | None = None,
    test_seed: int = TEST_ROTATION_SEED,
    angles: Sequence[float] = DEFAULT_ANGLES,
    batch_size: int = 2048,
    device: torch.device | str = "cpu",
    cache_dir: str | os.PathLike[str] | None = None,
    canonicalization_digits: int | None = CANONICALIZATION_DIGITS,
    precision: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate a training checkpoint and write its result files (``progress``: see :func:`evaluate_model`).

    The rotated test set follows the run's ``dataset`` (see the module docstring: for
    ``"rotated-mnist"``, the substitute's 50,000 rotated test digits, cached in ``cache_dir``, default
    the run's ``cache_dir``).

    Files (in ``out_dir``, default the checkpoint's folder): ``per_angle.csv``, ``per_angle.png``,
    ``test_angles.pt`` (``{"seed", "angles"}``) and ``result.json`` (the row for
    :func:`write_results_table`; the training time comes from ``summary.json`` beside the
    checkpoint when present). ``test_limit`` defaults to the run's own ``test_limit``. For an STN
    the result has ``canonicalization`` (see :func:`evaluate_model`; at most
    ``canonicalization_digits`` of the ``test_limit`` digits).

    ``precision`` (default: the precision the run trained in, e.g. bf16 autocast) is the evaluation's.
    ``result.json`` records the training run's ``provenance`` (machine, threads, torch, commit, precision)
    and the evaluation's (``eval_provenance``, with ``eval_time_s``).

    Returns the result dict (as in ``result.json``, with ``per_angle`` keyed by float angles).
    """
    t0 = time.perf_counter()
    checkpoint = Path(checkpoint)
    model, cfg, ckpt = model_from_checkpoint(checkpoint)
    out = Path(out_dir) if out_dir is not None else checkpoint.parent
    if data_dir is None:
        data_dir = cfg.data_dir
    if test_limit is None:
        test_limit = cfg.test_limit
    if cache_dir is None:
        cache_dir = cfg.cache_dir
    if precision is None:
        precision = str(ckpt.get("precision") or "fp32")
    res = evaluate_model(model, data_dir, test_limit=test_limit, test_seed=test_seed, angles=angles,
                         batch_size=batch_size, device=device, dataset=cfg.dataset, cache_dir=cache_dir,
                         canonicalization_digits=canonicalization_digits, precision=precision,
                         progress=progress)
    train_time = None
    summary_path = checkpoint.parent / "summary.json"
    if summary_path.is_file():
        train_time = json.loads(summary_path.read_text()).get("train_time_s")
    label = name or (cfg.model if cfg.preset in (None, "default") else f"{cfg.model} ({cfg.preset})")
    if name is None and cfg.ien_beta is not None:
        label += f", IEN beta={cfg.ien_beta:g}"
    result = {
        "name": label,
        "model": cfg.model,
        "preset": cfg.preset,
        "model_kwargs": cfg.model_kwargs,
        "num_params": res["num_params"],
        "train_rotation": cfg.train_rotation,
        "rotated_test_acc": res["rotated_test_acc"],
        "upright_test_acc": res["upright_test_acc"],
        "mean_per_angle_acc": res["mean_per_angle_acc"],
        "per_angle": res["per_angle"],
        "train_time_s": train_time,
        "epoch": int(ckpt["epoch"]),
        "val_acc": float(ckpt.get("val_acc", float("nan"))),
        "test_seed": res["test_seed"],
        "n_test": res["n_test"],
        "n_rotated_test": res["n_rotated_test"],
        "dataset": cfg.dataset,
        "test_set": res["test_set"],
        "ien_beta": cfg.ien_beta,
        "ien_transforms": cfg.ien_transforms if cfg.ien_beta is not None else None,
        "checkpoint": str(checkpoint),
        "seed": cfg.seed,
        "recipe": cfg.recipe,
        "provenance": ckpt.get("provenance"),
    }
    if "canonicalization" in res:  # STNs only
        result["canonicalization"] = res["canonicalization"]
    atomic_torch_save({"seed": res["test_seed"], "angles": res["test_angles"], "test_set": res["test_set"]},
                      out / "test_angles.pt")
    write_per_angle_csv(res["per_angle"], out / "per_angle.csv")
    plot_per_angle({f"{label}, trained {'rotated' if cfg.train_rotation == 'uniform' else 'upright'}":
                    res["per_angle"]}, out / "per_angle.png", title="accuracy per test rotation")
    result["eval_time_s"] = time.perf_counter() - t0
    result["eval_provenance"] = provenance(device, precision)
    write_json(out / "result.json", dict(result, per_angle={f"{a:g}": v for a, v in res["per_angle"].items()}))
    return result


def load_results(paths: Iterable[str | os.PathLike[str]]) -> list[dict[str, Any]]:
    """Read ``result.json`` files (a folder means ``<folder>/result.json``)."""
    results = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            p = p / "result.json"
        if not p.is_file():
            raise FileNotFoundError(f"result file {p} not found (run `evaluate` first)")
        try:
            result = json.loads(p.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"result file {p} is not valid JSON ({exc})") from None
        if not isinstance(result, dict) or "rotated_test_acc" not in result:
            raise ValueError(f"result file {p} is not a gconv_ext result.json (no rotated_test_acc)")
        results.append(result)
    return results


def _fmt(key: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    if key == "num_params":
        return f"{int(value):,}"
    if key == "train_rotation":
        return {"none": "upright", "uniform": "rotated"}.get(str(value), str(value))
    if key == "canonicalization":
        return f"{float(value['median_deg']):.1f}°"
    if key == "train_time_s":
        seconds = float(value)
        return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value).replace("|", "\\|")


def write_results_table(results: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]) -> str:
    """Write a markdown table (model, params, train setting, rotated-test acc, upright acc, mean
    per-angle acc, training time; plus the median canonicalisation error when a result has one (STNs)
    and the rotated test set when a result is not on plain MNIST) atomically to ``path`` and return
    its text.

    Each result is a dict as returned by :func:`evaluate_checkpoint`; missing entries show as ``-``.
    """
    columns = list(_TABLE_COLUMNS)
    if any(r.get("canonicalization") for r in results):  # STN results (see evaluate_model)
        columns.append(("canonicalization", "canon. error (median)"))
    if any(r.get("dataset", "mnist") != "mnist" for r in results):
        columns.append(("test_set", "rotated test set"))  # never leave a substitute unnamed
    header = "| " + " | ".join(title for _, title in columns) + " |"
    sep = "|" + "|".join("---" if key in ("name", "train_rotation", "test_set") else "---:"
                         for key, _ in columns) + "|"
    lines = [header, sep]
    for r in results:
        row = dict(r)
        row.setdefault("test_set", TEST_SET_NAMES.get(str(r.get("dataset", "mnist"))))
        lines.append("| " + " | ".join(_fmt(key, row.get(key)) for key, _ in columns) + " |")
    text = "\n".join(lines) + "\n"
    atomic_write_bytes(path, text.encode())
    return text
