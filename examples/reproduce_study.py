"""Reproduce "Group Equivariant CNNs Outperform Spatial Transformers on Tasks Which Require Rotation
Invariance" on MNIST: GCNN, STN and a plain CNN, each trained upright and trained on rotated digits,
evaluated on a FIXED rotated test set and per angle (0..355 degrees), written as a markdown table,
CSVs and plots; each run folder also gets the figures of ``python -m gconv_ext visualize`` (filter
banks and group feature maps for the GCNN, input warps for the STN).

Budgets:
  smoke  seconds: tiny models, 512 training digits, 1 epoch (what the tests run)
  small  within an hour on a 2-core CPU: the study's models (GCNN C4/4/16, STN and CNN of ~103K
         parameters), the 50,000 training digits, 8 epochs, 2,000 validation and 2,000 test digits,
         per-angle curves every 10 degrees
  full   the study's protocol: 50,000/10,000 split, 20 epochs max, early stopping (patience 5), the
         10,000 test digits, every 5 degrees, and the study's grid of GCNNs (C4/C8, L 2/4, C 16/32)

    python examples/reproduce_study.py --budget small --out-dir runs/study-small [--data-dir DIR]

Runs whose result.json exists are skipped, so an interrupted reproduction continues where it stopped
(each training run also resumes from its own last.pt).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from gconv_ext.data.paths import atomic_write_bytes
from gconv_ext.train.evaluate import evaluate_checkpoint, plot_per_angle, write_results_table
from gconv_ext.train.loop import TrainConfig, train
from gconv_ext.viz import visualize_checkpoint

# (label, registry name, preset)
MODELS = {
    "smoke": [("GCNN C4 (tiny)", "gcnn", "tiny"), ("STN (tiny)", "stn-single-rotation", "tiny"),
              ("CNN (tiny)", "cnn", "tiny")],
    "small": [("GCNN C4/4/16", "gcnn", "C4/4/16"), ("STN single rotation", "stn-single-rotation", "matched"),
              ("CNN", "cnn", "matched")],
    "full": [*((f"GCNN {p}", "gcnn", p) for p in ("C4/2/16", "C4/4/16", "C4/4/32", "C8/4/16", "C8/4/32")),
             ("STN single rotation", "stn-single-rotation", "matched"),
             ("STN multi rotation", "stn-multi-rotation", "matched"),
             ("STN single affine", "stn-single-affine", "matched"), ("CNN", "cnn", "matched")],
}
BUDGETS = {
    "smoke": dict(epochs=1, train_limit=512, val_limit=256, test_limit=256, angle_step=90),
    "small": dict(epochs=8, train_limit=None, val_limit=2_000, test_limit=2_000, angle_step=10),
    "full": dict(epochs=20, train_limit=None, val_limit=None, test_limit=None, angle_step=5),
}
SETTINGS = {"none": "upright", "uniform": "rotated"}


def slug(label: str) -> str:
    words = "".join(ch if ch.isalnum() else " " for ch in label.lower()).split()
    return "-".join(words)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", choices=sorted(BUDGETS), default="small")
    p.add_argument("--out-dir", default=None, help="default runs/study-<budget>")
    p.add_argument("--data-dir", default=None, help="MNIST folder (default: ../shared/data or GCONV_EXT_DATA_DIR)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run per seed (the study used 3)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    budget = BUDGETS[args.budget]
    out = Path(args.out_dir or f"runs/study-{args.budget}")
    out.mkdir(parents=True, exist_ok=True)
    angles = list(range(0, 360, budget["angle_step"]))
    results, curves = [], {s: {} for s in SETTINGS}
    runs = [(m, s, seed) for m in MODELS[args.budget] for s in SETTINGS for seed in args.seeds]
    start = time.perf_counter()
    for i, ((label, model, preset), setting, seed) in enumerate(runs, 1):
        run_dir = out / f"{slug(label)}-{SETTINGS[setting]}-seed{seed}"
        print(f"[{i}/{len(runs)}] {label}, trained {SETTINGS[setting]}, seed {seed} -> {run_dir} "
              f"({time.perf_counter() - start:.0f} s elapsed)", file=sys.stderr, flush=True)
        result_path = run_dir / "result.json"
        if not result_path.is_file():
            cfg = TrainConfig(model=model, preset=preset, train_rotation=setting, epochs=budget["epochs"],
                              train_limit=budget["train_limit"], val_limit=budget["val_limit"],
                              test_limit=budget["test_limit"], seed=seed, device=args.device,
                              threads=args.threads, data_dir=args.data_dir, out_dir=str(run_dir),
                              resume=(run_dir / "last.pt").is_file(), quiet=args.quiet)
            train(cfg)
            evaluate_checkpoint(run_dir / "best.pt", run_dir, args.data_dir, name=label, angles=angles,
                                device="cuda" if args.device.startswith("cuda") else "cpu")
            visualize_checkpoint(run_dir / "best.pt", run_dir, args.data_dir)
        result = json.loads(result_path.read_text())
        results.append(result)
        curve = {float(a): v for a, v in result["per_angle"].items()}
        curves[setting][f"{label} (seed {seed})" if len(args.seeds) > 1 else label] = curve

    table = write_results_table(results, out / "results.md")
    for setting, name in SETTINGS.items():
        plot_per_angle(curves[setting], out / f"per_angle_trained_{name}.png",
                       title=f"accuracy per test rotation, trained {name} ({args.budget} budget)")
    rows = ["model,train_setting,seed,angle_deg,accuracy"]
    for r in results:
        for a, acc in r["per_angle"].items():
            rows.append(f"{r['name']},{SETTINGS[r['train_rotation']]},{r['seed']},{a},{acc:.6f}")
    atomic_write_bytes(out / "per_angle.csv", ("\n".join(rows) + "\n").encode())
    print(table)
    print(f"wrote {out / 'results.md'}, {out / 'per_angle.csv'} and the per-angle plots "
          f"in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    torch.set_num_threads(torch.get_num_threads())
    sys.exit(main())
