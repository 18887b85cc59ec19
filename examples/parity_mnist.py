"""Input-size parity on MNIST ("Using and Abusing Equivariance", Edixhoven et al. 2023).

A C4 GCNN with one 2x2/2 max pool (gconv_ext.analysis.ParityGCNN) is exactly equivariant at even input
sizes (26, 28, 30) and not at odd ones (27, 29). Each model is trained on upright digits and evaluated on
the test digits rotated by 0, 10, ..., 350 degrees; a plain CNN of the same layout (Z2) is the baseline.
Digits are cropped/padded to each size as documented in gconv_ext.analysis.parity.fit_size.

    python examples/parity_mnist.py --budget smoke --out runs/parity
    python examples/parity_mnist.py --budget full --seeds 0,1,2,3,4 --jobs 2 --out runs/parity-full

Budgets: smoke (2000 train / 200 test digits, 2 epochs, sizes 28 and 27: seconds), small (4000/500, 3 epochs,
sizes 26..30), full (8000/2000, 10 epochs, sizes 26..30; the paper trained on 10k digits, 8k/2k split; about
5 minutes per seed on one CPU core). Each seed draws its own training subset and initialisation.

--seeds runs several seeds (--jobs of them at once, one process and --threads threads each). Each seed's
rows go to <out>/seed<k>/parity.csv with a run.json; a finished seed with the same budget is reused on the
next call. Every model trains through the project's engine (gconv_ext.train.engine.fit) in
<out>/seed<k>/<model>-<size>/ (metrics.csv, last.pt, best.pt, summary.json), so an interrupted seed resumes
where it stopped; --device, --precision and --compile are the engine's options (default: CPU, float32).
The top level gets parity.csv (every row, with its seed), parity_summary.csv (per model and size: mean and
std over seeds of the mean accuracy, the upright accuracy, the accuracy at 90/180/270 degrees and
the drop from upright to those), parity.png (accuracy vs angle, averaged over seeds) and summary.md, all
written atomically. The paper's means over the 36 angles: 87.3% exact, about 66% inexact, 42.7% Z2 CNN.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import csv
import dataclasses
import io
import json
import multiprocessing
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from gconv_ext.analysis import ANGLES, PARITY_BUDGETS, run_parity, summarize_parity  # noqa: E402
from gconv_ext.analysis.report import markdown_table, save_figure, write_csv, write_text  # noqa: E402
from gconv_ext.cli import positive_int, seed_list  # noqa: E402
from gconv_ext.data import load_mnist  # noqa: E402
from gconv_ext.io import write_json  # noqa: E402
from gconv_ext.malloc import tune_malloc  # noqa: E402
from gconv_ext.train.config import add_config_arguments, config_overrides  # noqa: E402

#: The engine's options this script takes (gconv_ext.train.config.TrainConfig fields).
ENGINE_OPTIONS = ("device", "precision", "compile")

COLUMNS = ["seed", "model", "size", "exact", "mean_acc", "train_loss", "seconds"] + [f"acc_{a}" for a in ANGLES]


def run_meta(budget_name: str, seed: int) -> dict:
    return {"budget": budget_name, "settings": dataclasses.asdict(PARITY_BUDGETS[budget_name]), "seed": seed}


def load_finished(folder: Path, meta: dict) -> list[dict] | None:
    """The rows of a finished seed run in ``folder`` if it was run with the same settings, else None."""
    try:
        saved = json.loads((folder / "run.json").read_text())
        rows = list(csv.DictReader(io.StringIO((folder / "parity.csv").read_text())))
    except (OSError, ValueError):
        return None
    if saved != json.loads(json.dumps(meta)):
        return None
    for r in rows:
        r["seed"] = int(r["seed"])
        r["size"] = int(r["size"])
        r["exact"] = r["exact"] == "True"
        for k in COLUMNS[4:]:
            r[k] = float(r[k])
    return rows


def run_seed(budget_name: str, seed: int, data_dir: str | None, threads: int, folder: Path,
             train_options: dict[str, Any] | None = None) -> list[dict]:
    """Train and evaluate every model of the budget for one seed (each in folder/<model>-<size>); writes
    folder/parity.csv and run.json."""
    torch.set_num_threads(threads)
    budget = PARITY_BUDGETS[budget_name]
    train = load_mnist("train", data_dir)
    test = load_mnist("test", data_dir)
    # a seeded random subset of the training digits (the first N are not class-balanced enough for tiny N)
    perm = torch.randperm(train[0].shape[0], generator=torch.Generator().manual_seed(seed))
    train = (train[0][perm], train[1][perm])
    rows = run_parity(train, test, budget, seed=seed, log=lambda m: print(f"[seed {seed}] {m}", flush=True),
                      out_dir=folder, **(train_options or {}))
    rows = [{"seed": seed, **r} for r in rows]
    write_csv(folder / "parity.csv", rows, COLUMNS)
    write_json(folder / "run.json", run_meta(budget_name, seed))
    return rows


def write_outputs(out: Path, budget_name: str, seeds: list[int], rows: list[dict]) -> str:
    budget = PARITY_BUDGETS[budget_name]
    per_model, groups = summarize_parity(rows)
    write_csv(out / "parity.csv", rows, COLUMNS)
    write_csv(out / "parity_summary.csv", per_model)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    for m in per_model:
        sel = [r for r in rows if r["model"] == m["model"] and r["size"] == m["size"]]
        curve = [sum(r[f"acc_{a}"] for r in sel) / len(sel) for a in ANGLES]
        label = (f"C4 GCNN {m['size']} ({'exact' if m['exact'] else 'inexact'})" if m["model"] == "gcnn_c4"
                 else f"Z2 CNN {m['size']}")
        ax.plot(ANGLES, curve, marker=".", label=f"{label}: {m['mean_acc']:.3f}")
    ax.set_xlabel("test rotation (degrees)")
    ax.set_ylabel(f"accuracy (mean of {len(seeds)} seed(s))")
    ax.set_title(f"MNIST trained upright, budget {budget_name}")
    ax.set_xticks(range(0, 361, 45))
    ax.legend(fontsize=8)
    save_figure(fig, out / "parity.png")

    def pm(mean: float, std: float) -> str:
        # round first so that a float-noise -1e-17 prints as 0.0, not -0.0
        return f"{round(100 * mean, 1) + 0.0:.1f}" + (f" ± {round(100 * std, 1) + 0.0:.1f}" if len(seeds) > 1 else "")

    table = markdown_table(
        [{"model": m["model"], "size": m["size"],
          "exact": "n/a (Z2)" if m["model"] == "cnn_z2" else ("yes" if m["exact"] else "no"),
          "mean": pm(m["mean_acc"], m["mean_acc_std"]), "up": pm(m["acc_0"], m["acc_0_std"]),
          "right": pm(m["right"], m["right_std"]), "drop": pm(m["drop"], m["drop_std"])} for m in per_model],
        ["model", "size", "exact", "mean", "up", "right", "drop"],
        ["model", "input size", "exact (check_exact)", "mean acc. over 36 angles (%)", "acc. at 0 deg (%)",
         "mean acc. at 90/180/270 (%)", "drop 0 -> 90/180/270 (points)"])
    names = {"exact": "C4 GCNN, exact sizes", "inexact": "C4 GCNN, inexact sizes", "z2": "Z2 CNN"}
    group_lines = "\n".join(f"- {names[g]}: {pm(m, s)}% (per-seed mean over its sizes; {n} seed(s))"
                             for g, (m, s, n) in groups.items())
    text = (f"# Input-size parity on MNIST (budget `{budget_name}`)\n\n"
            f"{budget.n_train} training digits (upright), {budget.n_test} test digits at 0..350 degrees in "
            f"10-degree steps, {budget.epochs} epoch(s), Adam lr {budget.lr}, {budget.channels} C4 channels "
            f"(Z2 CNN: {2 * budget.channels} channels), seeds {','.join(map(str, seeds))} "
            f"(mean ± sample std over seeds).\n\n{table}\nMeans over the 36 angles:\n{group_lines}\n\n"
            "Paper (10k digits, one run): 87.3% exact (28), about 66% inexact (27/29), 42.7% Z2 CNN.\n")
    write_text(out / "summary.md", text)
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", choices=sorted(PARITY_BUDGETS), default="smoke")
    ap.add_argument("--out", type=Path, default=Path("runs/parity"))
    ap.add_argument("--data-dir", default=None, help="folder with the MNIST IDX files (default: shared data)")
    ap.add_argument("--seeds", "--seed", type=seed_list, default=[0],
                    help="comma-separated seeds (default 0); each draws its own training subset")
    ap.add_argument("--jobs", type=positive_int, default=1, help="seeds run at once, one process each")
    ap.add_argument("--threads", type=positive_int, default=1,
                    help="torch CPU threads per process (1 is fastest for these tiny models)")
    add_config_arguments(ap, only=ENGINE_OPTIONS)
    args = ap.parse_args(argv)
    tune_malloc()  # reuse freed activations instead of faulting them in every step (gconv_ext/malloc.py)
    options = config_overrides(args, ENGINE_OPTIONS)

    rows_by_seed: dict[int, list[dict]] = {}
    todo = []
    for seed in args.seeds:
        done = load_finished(args.out / f"seed{seed}", run_meta(args.budget, seed))
        if done is not None:
            print(f"[seed {seed}] reusing the finished run in {args.out / f'seed{seed}'}")
            rows_by_seed[seed] = done
        else:
            todo.append(seed)
    if args.jobs == 1 or len(todo) <= 1:
        for seed in todo:
            rows_by_seed[seed] = run_seed(args.budget, seed, args.data_dir, args.threads, args.out / f"seed{seed}",
                                          options)
    else:
        ctx = multiprocessing.get_context("spawn")  # no fork of a process holding OpenMP threads
        with concurrent.futures.ProcessPoolExecutor(min(args.jobs, len(todo)), mp_context=ctx) as pool:
            futures = {pool.submit(run_seed, args.budget, seed, args.data_dir, args.threads,
                                   args.out / f"seed{seed}", options): seed for seed in todo}
            for fut in concurrent.futures.as_completed(futures):
                rows_by_seed[futures[fut]] = fut.result()
    rows = [r for seed in args.seeds for r in rows_by_seed[seed]]
    print(write_outputs(args.out, args.budget, args.seeds, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
