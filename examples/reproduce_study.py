"""Reproduce "Group Equivariant CNNs Outperform Spatial Transformers on Tasks Which Require Rotation
Invariance" on MNIST: GCNN, STN and a plain CNN, each trained upright and trained on rotated digits,
evaluated on a FIXED rotated test set and per angle, written as a markdown table (mean ± std over seeds),
CSVs and plots; each run folder also gets the figures of ``python -m gconv_ext visualize`` (filter banks
and group feature maps for the GCNN, canonicalising warps for the STN).

Budgets:
  smoke  seconds: tiny models, 512 training digits, 1 epoch (what the tests run)
  small  within an hour on a 2-core CPU: the study's models (GCNN C4/4/16, STN and CNN of ~103K
         parameters), the 50,000 training digits, 8 epochs, 2,000 validation and 2,000 test digits
  full   the study's data protocol: 50,000/10,000 split, the full 10,000-digit rotated test set, per-angle
         curves every 10 degrees, seeds 0,1,2; the models trained with the recommended recipe
         (``--recipe default``: 12 epochs, warm-up + cosine), plus the GCNN with the study's own recipe
         (``--recipe study``: constant lr 1e-2, 20 epochs max, early stopping) for seed 0

    python examples/reproduce_study.py --budget full --out-dir docs/results/study-full [--data-dir DIR]

A run whose result.json exists is skipped and an interrupted one resumes from its last.pt, so the
reproduction continues where it stopped, on any machine (commit the small files of finished runs:
result.json, summary.json, metrics.csv, per_angle.csv). ``--only PATTERN`` runs only the runs whose
folder name contains PATTERN; ``--summarize`` only rebuilds the tables and plots from finished runs.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

from gconv_ext.analysis.report import markdown_table, mean_std, write_csv, write_text
from gconv_ext.cli import seed_list
from gconv_ext.malloc import tune_malloc
from gconv_ext.train import TrainConfig, train
from gconv_ext.train.evaluate import evaluate_checkpoint, plot_per_angle, write_results_table
from gconv_ext.viz import visualize_checkpoint

# (label, registry name, preset, recipe, seeds: None = all of --seeds, else only these)
MODELS = {
    "smoke": [("GCNN C4 (tiny)", "gcnn", "tiny", "default", None),
              ("STN (tiny)", "stn-single-rotation", "tiny", "default", None),
              ("CNN (tiny)", "cnn", "tiny", "default", None)],
    "small": [("GCNN C4/4/16", "gcnn", "C4/4/16", "study", None),
              ("STN single rotation", "stn-single-rotation", "matched", "study", None),
              ("CNN", "cnn", "matched", "study", None)],
    "full": [("GCNN C4/4/16", "gcnn", "C4/4/16", "default", None),
             ("STN canonical, C8 localiser, 7 fields", "stn-single-canonical", "under103k", "default", None),
             ("CNN", "cnn", "matched", "default", None),
             ("GCNN C4/4/16, study recipe", "gcnn", "C4/4/16", "study", (0,)),
             # The first full STN runs: 8 localiser fields, 104,235 parameters (over the 103K budget).
             ("STN canonical (C8 equivariant localiser)", "stn-single-canonical", "matched", "default", (0,))],
}
BUDGETS = {
    "smoke": dict(epochs=1, train_limit=512, val_limit=256, test_limit=256, angle_step=90),
    "small": dict(epochs=8, train_limit=None, val_limit=2_000, test_limit=2_000, angle_step=10),
    "full": dict(epochs=None, train_limit=None, val_limit=None, test_limit=None, angle_step=10),
}
SETTINGS = {"none": "upright", "uniform": "rotated"}


def slug(label: str) -> str:
    words = "".join(ch if ch.isalnum() else " " for ch in label.lower()).split()
    return "-".join(words)


def planned_runs(budget: str, seeds: list[int]) -> list[tuple[str, str, str, str, str, int]]:
    """``(label, model, preset, recipe, setting, seed)``, seed-major so that a partial reproduction
    covers every model of the first seeds."""
    runs = []
    for seed in seeds:
        for setting in SETTINGS:
            for label, model, preset, recipe, only in MODELS[budget]:
                if only is None or seed in only:
                    runs.append((label, model, preset, recipe, setting, seed))
    return runs


def summarize(results: list[dict], out: Path, budget: str) -> str:
    """``results.md`` (one row per run), ``summary.md`` / ``summary.csv`` (mean ± std over seeds per model
    and setting), ``per_angle.csv`` and the per-angle plots (mean over seeds). Returns summary.md's text."""
    write_results_table(results, out / "results.md")
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in results:
        groups[(r["name"], r["train_rotation"])].append(r)
    rows = []
    for (name, rotation), rs in groups.items():
        row = {"model": name, "trained": SETTINGS[rotation], "params": f"{rs[0]['num_params']:,}",
               "seeds": ",".join(str(r["seed"]) for r in sorted(rs, key=lambda r: r["seed"]))}
        for key, title in (("rotated_test_acc", "rotated test"), ("upright_test_acc", "upright"),
                           ("mean_per_angle_acc", "mean over angles")):
            m, s = mean_std([r[key] for r in rs])
            row[title] = f"{100 * m:.2f} ± {100 * s:.2f}" if len(rs) > 1 else f"{100 * m:.2f}"
        canon = [r["canonicalization"]["median_deg"] for r in rs if r.get("canonicalization")]
        row["canon. error (median)"] = ("-" if not canon else f"{mean_std(canon)[0]:.1f}°" + (
            f" ± {mean_std(canon)[1]:.1f}°" if len(canon) > 1 else ""))
        times = [r["train_time_s"] for r in rs if r.get("train_time_s") is not None]
        row["train time / run"] = f"{mean_std(times)[0] / 60:.1f} min" if times else "-"
        epochs = [r["epoch"] for r in rs]
        row["best epoch"] = ",".join(str(e) for e in epochs)
        provs = [r.get("provenance") or {} for r in sorted(rs, key=lambda r: r["seed"])]
        # every seed's own: runs resume across machines, and a row may mix them
        row["precision"] = ", ".join(dict.fromkeys(p.get("precision") or "-" for p in provs))
        row["machine"] = ", ".join(dict.fromkeys(p.get("device_name") or "-" for p in provs))
        rows.append(row)
    columns = ["model", "trained", "params", "seeds", "rotated test", "upright", "mean over angles",
               "canon. error (median)", "best epoch", "train time / run", "precision", "machine"]
    text = (f"Rotated-MNIST reproduction, {budget} budget: accuracy in % (mean ± sample std where there are several seeds; "
            f"{results[0]['n_rotated_test']:,} rotated test digits).\n\n" + markdown_table(rows, columns))
    write_text(out / "summary.md", text)
    write_csv(out / "summary.csv", rows, columns)

    per_angle_rows = []
    curves: dict[str, dict[str, dict[float, float]]] = {s: {} for s in SETTINGS.values()}
    for (name, rotation), rs in groups.items():
        angles = sorted({float(a) for r in rs for a in r["per_angle"]})
        curves[SETTINGS[rotation]][f"{name} ({len(rs)} seed{'s' if len(rs) > 1 else ''})"] = {
            a: mean_std([r["per_angle"][f"{a:g}"] for r in rs])[0] for a in angles}
        for r in rs:
            for a, acc in r["per_angle"].items():
                per_angle_rows.append({"model": name, "train_setting": SETTINGS[rotation], "seed": r["seed"],
                                       "angle_deg": a, "accuracy": acc})
    write_csv(out / "per_angle.csv", per_angle_rows)
    for setting, curve in curves.items():
        if curve:
            plot_per_angle(curve, out / f"per_angle_trained_{setting}.png",
                           title=f"accuracy per test rotation, trained {setting} ({budget} budget, mean over seeds)")
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", choices=sorted(BUDGETS), default="small")
    p.add_argument("--out-dir", default=None, help="default runs/study-<budget>")
    p.add_argument("--data-dir", default=None, help="MNIST folder (default: ../shared/data or GCONV_EXT_DATA_DIR)")
    p.add_argument("--seeds", type=seed_list, default=None,
                   help="comma-separated seeds (default 0,1,2 for full, 0 otherwise; the study used 3)")
    p.add_argument("--only", default=None, help="run only the runs whose folder name contains this")
    p.add_argument("--summarize", action="store_true", help="only rebuild the tables from finished runs")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    tune_malloc()  # reuse freed activations instead of faulting them in every step (gconv_ext/malloc.py)
    budget = BUDGETS[args.budget]
    seeds = args.seeds or ([0, 1, 2] if args.budget == "full" else [0])
    out = Path(args.out_dir or f"runs/study-{args.budget}")
    out.mkdir(parents=True, exist_ok=True)
    angles = [float(a) for a in range(0, 360, budget["angle_step"])]
    results = []
    runs = planned_runs(args.budget, seeds)
    start = time.perf_counter()
    for i, (label, model, preset, recipe, setting, seed) in enumerate(runs, 1):
        run_dir = out / f"{slug(label)}-{SETTINGS[setting]}-seed{seed}"
        result_path = run_dir / "result.json"
        if not result_path.is_file():
            if args.summarize or (args.only and args.only not in run_dir.name):
                continue
            print(f"[{i}/{len(runs)}] {label}, trained {SETTINGS[setting]}, seed {seed} -> {run_dir} "
                  f"({time.perf_counter() - start:.0f} s elapsed)", file=sys.stderr, flush=True)
            cfg = TrainConfig(model=model, preset=preset, recipe=recipe, train_rotation=setting,
                              epochs=budget["epochs"], train_limit=budget["train_limit"],
                              val_limit=budget["val_limit"], test_limit=budget["test_limit"], seed=seed,
                              device=args.device, threads=args.threads, data_dir=args.data_dir,
                              out_dir=str(run_dir), resume=(run_dir / "last.pt").is_file(), quiet=args.quiet)
            train(cfg)
            evaluate_checkpoint(run_dir / "best.pt", run_dir, args.data_dir, name=label, angles=angles,
                                device="cuda" if args.device.startswith("cuda") else "cpu", progress=not args.quiet)
            visualize_checkpoint(run_dir / "best.pt", run_dir, args.data_dir)
    # every finished run of the plan, including those another invocation finished meanwhile
    for label, _, _, _, setting, seed in runs:
        result_path = out / f"{slug(label)}-{SETTINGS[setting]}-seed{seed}" / "result.json"
        if result_path.is_file():
            results.append(json.loads(result_path.read_text()))
    if not results:
        print("no finished runs yet", file=sys.stderr)
        return 0
    text = summarize(results, out, args.budget)
    print(text)
    print(f"wrote {out / 'summary.md'}, {out / 'results.md'}, {out / 'per_angle.csv'} and the per-angle plots "
          f"in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    torch.set_num_threads(torch.get_num_threads())
    sys.exit(main())
