"""Does training in bfloat16 cost accuracy? The GCNN C4/4/16 trained on rotated MNIST digits with the default
recipe, the same seeds in ``--precision fp32`` and ``--precision bf16`` (autocast), each evaluated in its own
precision on the full 10,000-digit rotated test set (the fixed seeded angles of every other result here) and
upright. The summary gives mean ± sample std over the seeds per precision, the per-seed difference bf16 - fp32,
and the training throughput of each.

A reduced budget, so that 3 seeds of both fit in well under an hour of a 2-core CPU: 20,000 training digits,
2,000 validation digits, 3 epochs (the recipe's warm-up + cosine schedule over those 3 epochs).

    python examples/precision_accuracy.py --out-dir docs/results/precision-accuracy [--seeds 0,1,2] [--threads 1]

A run whose result.json exists is skipped and an interrupted one resumes from its last.pt (commit the small
files of finished runs: result.json, summary.json, metrics.csv); ``--only PATTERN`` runs only the runs whose
folder name contains PATTERN; ``--summarize`` only rebuilds the summary from finished runs.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gconv_ext.analysis.report import markdown_table, mean_std, write_csv, write_text
from gconv_ext.cli import seed_list
from gconv_ext.malloc import tune_malloc
from gconv_ext.train import TrainConfig, train
from gconv_ext.train.evaluate import evaluate_checkpoint

PRECISIONS = ("fp32", "bf16")


def run_name(precision: str, seed: int) -> str:
    return f"gcnn-c4-4-16-rotated-{precision}-seed{seed}"


def summarize(out: Path, seeds: list[int], budget: str) -> str | None:
    results = {}
    for precision in PRECISIONS:
        for seed in seeds:
            path = out / run_name(precision, seed) / "result.json"
            if path.is_file():
                r = json.loads(path.read_text())
                metrics = (out / run_name(precision, seed) / "metrics.csv").read_text().splitlines()
                header, rows = metrics[0].split(","), [line.split(",") for line in metrics[1:]]
                ips = [float(row[header.index("images_per_s")]) for row in rows]
                r["images_per_s"] = sum(ips) / len(ips)
                results[precision, seed] = r
    if not results:
        return None
    rows = []
    for precision in PRECISIONS:
        rs = [results[precision, s] for s in seeds if (precision, s) in results]
        if not rs:
            continue
        row = {"precision": precision, "seeds": ",".join(str(r["seed"]) for r in rs)}
        for key, title in (("rotated_test_acc", "rotated test"), ("upright_test_acc", "upright")):
            m, sd = mean_std([r[key] for r in rs])
            row[title] = f"{100 * m:.2f} ± {100 * sd:.2f}" if len(rs) > 1 else f"{100 * m:.2f}"
        row["per seed (rotated test)"] = ", ".join(f"{100 * r['rotated_test_acc']:.2f}" for r in rs)
        row["training images/s"] = f"{mean_std([r['images_per_s'] for r in rs])[0]:.0f}"
        provs = [r.get("provenance") or {} for r in rs]
        row["machine, threads"] = ", ".join(dict.fromkeys(f"{p.get('device_name')}, {p.get('threads')}"
                                                          for p in provs))
        rows.append(row)
    diffs = [results["bf16", s]["rotated_test_acc"] - results["fp32", s]["rotated_test_acc"]
             for s in seeds if ("bf16", s) in results and ("fp32", s) in results]
    columns = ["precision", "seeds", "rotated test", "upright", "per seed (rotated test)", "training images/s",
               "machine, threads"]
    text = (f"GCNN C4/4/16 trained on rotated digits, default recipe at a reduced budget ({budget}); accuracy in % "
            f"on the {next(iter(results.values()))['n_rotated_test']:,}-digit rotated test set (fixed seeded angles) "
            f"and upright (mean ± sample std over seeds), each model "
            f"evaluated in its training precision.\n\n" + markdown_table(rows, columns))
    if diffs:
        m, sd = mean_std(diffs)
        text += (f"\nbf16 - fp32, rotated test, per seed: {', '.join(f'{100 * d:+.2f}' for d in diffs)} points "
                 f"(mean {100 * m:+.2f}" + (f" ± {100 * sd:.2f}" if len(diffs) > 1 else "") + ").\n")
    write_text(out / "summary.md", text)
    write_csv(out / "summary.csv", rows, columns)
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", default="runs/precision-accuracy")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--seeds", type=seed_list, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--train-limit", type=int, default=20_000)
    p.add_argument("--val-limit", type=int, default=2_000)
    p.add_argument("--test-limit", type=int, default=None, help="test on the first N digits only (smoke tests)")
    p.add_argument("--only", default=None, help="run only the runs whose folder name contains this")
    p.add_argument("--summarize", action="store_true", help="only rebuild the summary from finished runs")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    tune_malloc()  # reuse freed activations instead of faulting them in every step (gconv_ext/malloc.py)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    budget = f"{args.train_limit:,} training digits, {args.epochs} epochs"
    if args.test_limit is not None:
        budget += f"; only the first {args.test_limit:,} test digits"
    for seed in args.seeds:
        for precision in PRECISIONS:
            run_dir = out / run_name(precision, seed)
            if (run_dir / "result.json").is_file() or args.summarize or (args.only and args.only not in run_dir.name):
                continue
            print(f"{run_dir.name} -> {run_dir}", file=sys.stderr, flush=True)
            cfg = TrainConfig(model="gcnn", preset="C4/4/16", recipe="default", train_rotation="uniform",
                              epochs=args.epochs, train_limit=args.train_limit, val_limit=args.val_limit,
                              precision=precision, seed=seed, threads=args.threads, data_dir=args.data_dir,
                              out_dir=str(run_dir), resume=(run_dir / "last.pt").is_file(), quiet=args.quiet)
            train(cfg)
            # the full rotated test set and upright; two angles stand in for the per-angle curve
            evaluate_checkpoint(run_dir / "best.pt", run_dir, args.data_dir, name=f"GCNN C4/4/16 {precision}",
                                test_limit=args.test_limit, angles=(0.0, 45.0), progress=not args.quiet)
    text = summarize(out, args.seeds, budget)
    print(text or "no finished runs yet")
    return 0


if __name__ == "__main__":
    sys.exit(main())
