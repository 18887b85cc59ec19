"""Implicit equivariance (IEN) on MNIST: a plain CNN trained with the doubled-batch equivariance loss
(beta > 0) against the same CNN trained on the same doubled batches with beta = 0.

Both runs see each upright digit and a copy rotated by a random non-zero multiple of 90 degrees
(``--transforms C4``; ``D4`` adds reflections, ``C8`` eighth turns). The test digits are evaluated upright, at 90/180/
270 degrees and at uniformly random angles; the equivariance MSE of the orbit-pooled features (orbits of 4
consecutive channels by default, or 8:2:1 heterogeneous orbits of 4, 2, 1 with ``--hetero``) is reported per
layer on the test digits.

    python examples/ien_mnist.py --budget smoke --out runs/ien

Budgets: smoke (2000 train / 300 test digits, 2 epochs: seconds), small (5000/1000, 3 epochs).
Writes ien.csv (one row per beta) and summary.md into --out, atomically. Each beta trains through the
project's engine (gconv_ext.train.engine.fit: Adam at a constant rate, the IEN objective of
``TrainConfig.ien_beta``) in --out/beta<beta>/ (metrics.csv with the per-layer training MSEs, last.pt,
best.pt, summary.json); a finished run is reused and an interrupted one resumes on the next call.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from gconv_ext.analysis.report import markdown_table, write_csv, write_text  # noqa: E402
from gconv_ext.data import load_mnist, normalize, rotate  # noqa: E402
from gconv_ext.malloc import tune_malloc  # noqa: E402
from gconv_ext.models import ien_loss  # noqa: E402
from gconv_ext.train import TrainConfig, accuracy, fit  # noqa: E402
from gconv_ext.train.datasets import TrainData  # noqa: E402
from gconv_ext.train.engine import fingerprint  # noqa: E402

BUDGETS = {"smoke": dict(n_train=2000, n_test=300, epochs=2, channels=16, layers=4),
           "small": dict(n_train=5000, n_test=1000, epochs=3, channels=32, layers=4)}


def evaluate(model, loss_fn, x, y, seed: int) -> dict[str, float]:
    """Accuracies (upright, mean over 90/180/270, random angles; :func:`gconv_ext.train.accuracy`) and
    per-layer equivariance MSE on the (normalised) test digits ``x``."""
    acc = {a: accuracy(model, rotate(x, float(a)), y) for a in (0, 90, 180, 270)}
    out: dict[str, float] = {"acc_upright": acc[0], "acc_rot90s": (acc[90] + acc[180] + acc[270]) / 3}
    angles = torch.rand(x.shape[0], generator=torch.Generator().manual_seed(seed)) * 360
    out["acc_random_angle"] = accuracy(model, rotate(x, angles), y)
    model.eval()
    with torch.no_grad():
        loss_fn.generator = torch.Generator().manual_seed(seed)
        res = loss_fn(x, y)
        for name, v in res.mse.items():
            out[f"mse_{name}"] = v
        out["mse_sum"] = sum(res.mse.values())
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", choices=sorted(BUDGETS), default="smoke")
    ap.add_argument("--betas", default="0,1", help="comma-separated beta values (default 0,1)")
    ap.add_argument("--transforms", default="C4", choices=["C4", "D4", "C8"], help="the transform group")
    ap.add_argument("--hetero", action="store_true", help="8:2:1 orbits of sizes 4, 2, 1 instead of 4")
    ap.add_argument("--out", type=Path, default=Path("runs/ien"))
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args(argv)
    tune_malloc()  # reuse freed activations instead of faulting them in every step (gconv_ext/malloc.py)
    torch.set_num_threads(1)
    b = BUDGETS[args.budget]
    xtr, ytr = load_mnist("train", args.data_dir)
    xte, yte = load_mnist("test", args.data_dir)
    perm = torch.randperm(xtr.shape[0], generator=torch.Generator().manual_seed(args.seed))[:b["n_train"]]
    xtr, ytr = xtr[perm].float().div(255).unsqueeze(1), ytr[perm]  # normalised per batch by the engine
    xte, yte = normalize(xte[:b["n_test"]].float().div(255).unsqueeze(1)), yte[:b["n_test"]]
    model_kwargs = (dict(channels=44, layers=b["layers"], orbit_sizes=[4, 2, 1], ratios=[8, 2, 1]) if args.hetero
                    else dict(channels=b["channels"], layers=b["layers"], orbit_sizes=[4]))
    rows = []
    for beta in (float(v) for v in args.betas.split(",")):
        cfg = TrainConfig(model="ien-cnn", model_kwargs=model_kwargs, ien_beta=beta, ien_transforms=args.transforms,
                          optimizer="adam", lr=args.lr, weight_decay=0.0, lr_schedule="constant", warmup_epochs=0.0,
                          patience=0, precision="fp32", epochs=b["epochs"], batch_size=args.batch_size,
                          seed=args.seed, device="cpu", out_dir=str(args.out / f"beta{beta:g}"), resume=True,
                          overwrite=True, quiet=True)
        torch.manual_seed(args.seed)
        model = cfg.build_model()
        t0 = time.perf_counter()
        summary = fit(model, TrainData(xtr, ytr, None, None, None), cfg, prepare=normalize,
                      meta={"experiment": "ien-mnist", "dataset": f"MNIST, {b['n_train']} upright digits",
                            "data": fingerprint(xtr, ytr)})
        last = summary["history"][-1]
        row = {"beta": beta, "train_task": last["train_ce"],
               "train_mse_sum": sum(v for k, v in last.items() if k.startswith("mse_")),
               **evaluate(model, ien_loss(model, beta, args.transforms), xte, yte, args.seed),
               "seconds": summary["train_time_s"] + time.perf_counter() - t0}
        rows.append(row)
        print(f"beta {beta}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items() if k != "beta"))
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / "ien.csv", rows)
    table = markdown_table([{**r, **{k: 100 * r[k] for k in ("acc_upright", "acc_rot90s", "acc_random_angle")}}
                            for r in rows],
                           ["beta", "acc_upright", "acc_rot90s", "acc_random_angle", "mse_sum", "train_task"],
                           ["beta", "upright acc. (%)", "90/180/270 acc. (%)", "random-angle acc. (%)",
                            "test equivariance MSE (sum over layers)", "train CE (last epoch)"])
    orbits = "44 channels, 8:2:1 orbits of 4/2/1" if args.hetero else f"{b['channels']} channels, orbits of 4"
    text = (f"# IEN on MNIST (budget `{args.budget}`)\n\n{b['n_train']} training digits, doubled with "
            f"`{args.transforms}` copies, {b['epochs']} epoch(s), Adam lr {args.lr}, batch {args.batch_size}, "
            f"{orbits}, "
            f"{b['layers']} layers, {b['n_test']} test digits, seed {args.seed}.\n\n{table}")
    write_text(args.out / "summary.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
