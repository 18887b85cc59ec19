"""IEN vs plain CNN vs GCNN on the rotated-MNIST SUBSTITUTE (not the mnist_rotation_new benchmark files).

Three runs through the training loop of ``python -m gconv_ext train`` (:func:`gconv_ext.train.train`, the
study's protocol: AdamW lr 1e-2, weight decay 1e-4, batch 32, best checkpoint by validation accuracy):

* ``ien-cnn`` with the IEN objective, beta = 1 (each batch doubled with a random rot90 copy; MSE of the
  orbit-pooled features at every block);
* ``ien-cnn`` with beta = 0: the same plain CNN trained on the same doubled batches (the CNN baseline);
* ``gcnn`` C4/4/16 (the study's GCNN, cross-entropy on the plain batches).

Data: ``--dataset rotated-mnist``, i.e. :func:`gconv_ext.data.make_rotated_mnist`, a substitute built from MNIST
with seeded angles (12,000 training digits, of which 2,000 are held out for validation; 50,000 rotated test
digits). Its digit selection and angles differ from mnist_rotation_new's, so the numbers are not comparable
to published MNIST-rot errors.

    python examples/compare_ien.py --budget smoke --out runs/compare_ien

Budgets:

* ``smoke``: tiny presets (ien-cnn 8 channels x 2 layers, GCNN C4 4 channels x 2 layers), 1,000 training /
  500 validation digits, 1 epoch, the first 2,000 substitute test digits (seconds to a minute).
* ``small``: parameter-matched presets (ien-cnn ``matched``: 60 channels x 4 layers, 99,070 parameters; GCNN
  C4/4/16: 102,970), 2,000 training / 1,000 validation digits, 2 epochs, the first 5,000 test digits (about
  10-15 minutes on 2 CPU cores). Far from the full protocol (10,000 digits, up to 20 epochs, all 50,000 test
  digits): read its numbers as a smoke-level comparison.
* ``medium``: parameter-matched presets, all 10,000 / 2,000 digits, 5 epochs, the first 10,000 test digits
  (about 50 minutes on 2 CPU cores shared with other jobs).
* ``full``: parameter-matched presets, all 10,000 / 2,000 digits, up to 20 epochs (patience 5), all 50,000
  test digits (hours on a CPU; meant for a GPU).

Writes ``compare_ien.md`` and ``compare_ien.json`` into ``--out`` (atomically); each run's folder holds its
``metrics.csv`` (IEN runs: also ``train_ce`` and ``mse_blocks.<i>``), ``summary.json``, checkpoints and
``result.json``. Finished runs are reused on a second call; interrupted ones resume.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from gconv_ext.analysis.report import write_text  # noqa: E402
from gconv_ext.io import write_json  # noqa: E402
from gconv_ext.malloc import tune_malloc  # noqa: E402
from gconv_ext.train import TrainConfig, train  # noqa: E402
from gconv_ext.train.evaluate import evaluate_checkpoint  # noqa: E402

BUDGETS = {
    "smoke": dict(ien_preset="tiny", gcnn_preset="tiny", train_limit=1000, val_limit=500, epochs=1,
                  test_limit=2000, angles=(0.0, 45.0, 90.0)),
    "small": dict(ien_preset="matched", gcnn_preset="C4/4/16", train_limit=2000, val_limit=1000, epochs=2,
                  test_limit=5000, angles=(0.0, 45.0, 90.0)),
    "medium": dict(ien_preset="matched", gcnn_preset="C4/4/16", train_limit=None, val_limit=None, epochs=5,
                   test_limit=10000, angles=(0.0, 45.0, 90.0)),
    "full": dict(ien_preset="matched", gcnn_preset="C4/4/16", train_limit=None, val_limit=None, epochs=20,
                 test_limit=None, angles=tuple(float(a) for a in range(0, 360, 15))),
}


def runs(budget: dict) -> list[tuple[str, str, dict]]:
    """``(folder, label, TrainConfig keyword arguments)`` of the three runs."""
    return [
        ("ien-beta1", f"ien-cnn ({budget['ien_preset']}), IEN beta=1",
         dict(model="ien-cnn", preset=budget["ien_preset"], ien_beta=1.0)),
        ("ien-beta0", f"ien-cnn ({budget['ien_preset']}), beta=0 (plain CNN, same doubled batches)",
         dict(model="ien-cnn", preset=budget["ien_preset"], ien_beta=0.0)),
        ("gcnn", f"gcnn ({budget['gcnn_preset']}), cross-entropy",
         dict(model="gcnn", preset=budget["gcnn_preset"])),
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", choices=sorted(BUDGETS), default="smoke")
    ap.add_argument("--out", type=Path, default=Path("runs/compare_ien"))
    ap.add_argument("--data-dir", default=None, help="MNIST folder (default: the shared data folder)")
    ap.add_argument("--cache-dir", default=None,
                    help="cache of the rotated-MNIST substitute (default: $GCONV_EXT_CACHE_DIR or <repo>/data_cache)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=1e-2, help="AdamW learning rate (the protocol's 1e-2)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    tune_malloc()  # reuse freed activations instead of faulting them in every step (gconv_ext/malloc.py)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    b = BUDGETS[args.budget]
    out = args.out / args.budget
    results = []
    for folder, label, kwargs in runs(b):
        run_dir = out / f"{folder}-seed{args.seed}{'' if args.lr == 1e-2 else f'-lr{args.lr:g}'}"
        cfg = TrainConfig(
            **kwargs, dataset="rotated-mnist", train_rotation="none", epochs=b["epochs"],
            train_limit=b["train_limit"], val_limit=b["val_limit"], test_limit=b["test_limit"], seed=args.seed, lr=args.lr,
            data_dir=args.data_dir, cache_dir=args.cache_dir, out_dir=str(run_dir), device=args.device,
            resume=True, quiet=args.quiet,
        )
        result_path = run_dir / "result.json"
        if result_path.is_file():
            result = json.loads(result_path.read_text())
        else:
            t0 = time.perf_counter()
            summary = train(cfg)
            result = evaluate_checkpoint(run_dir / "best.pt", data_dir=args.data_dir, name=label,
                                         test_limit=b["test_limit"], angles=b["angles"], device=summary["device"],
                                         cache_dir=args.cache_dir)
            result = json.loads(result_path.read_text())  # the serialised form, as on a second call
            if not args.quiet:
                print(f"{label}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        results.append(result)

    first = results[0]
    lines = [
        f"# IEN vs plain CNN vs GCNN on the rotated-MNIST SUBSTITUTE (budget `{args.budget}`)",
        "",
        "Data: `make_rotated_mnist`, a substitute for mnist_rotation_new built from MNIST with seeded uniform "
        "angles (NOT the benchmark files; not comparable to published MNIST-rot numbers). "
        f"Training digits: {b['train_limit'] or 10000} of the substitute's 10,000 training split, validation: "
        f"{b['val_limit'] or 2000} of its 2,000 held-out digits (seed 420), {b['epochs']} epoch(s), AdamW lr {args.lr:g}, "
        f"batch 32, best checkpoint by validation accuracy, seed {args.seed}. "
        f"Rotated-test accuracy: the first {first['n_rotated_test']:,} of the substitute's 50,000 rotated test digits. "
        "Upright accuracy: MNIST test digits unrotated.",
        "",
        "| run | params | rotated-test acc | best val acc (epoch) | upright MNIST acc | training time |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(f"| {r['name']} | {r['num_params']:,} | {r['rotated_test_acc']:.4f} | "
                     f"{r['val_acc']:.4f} ({r['epoch']}) | {r['upright_test_acc']:.4f} | "
                     f"{(r['train_time_s'] or 0):.1f} s |")
    text = "\n".join(lines) + "\n"
    write_text(out / "compare_ien.md", text)
    write_json(out / "compare_ien.json", {"budget": args.budget, "settings": b, "seed": args.seed,
                                          "results": results})
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
