"""Beyond the study's grid: the best model with at most 103K parameters trained UPRIGHT and tested on rotated
digits (the study's C8/4/32, 820K parameters, reaches 94.29%).

Stage 1 (``--stage search``, one seed, reduced budget): GCNNs over C4/C8/C16/D4/D8, 2-4 layers, the widest
channel count within the budget, with and without disk-masked filters (``DEFAULT_SEARCH``: ten of them;
``--all``: all thirty), trained upright with the default
recipe on 20,000 digits for 6 epochs and ranked by accuracy on 2,000 fixed rotated validation digits.
Stage 2 (``--stage final``): the winner at the full budget (50,000 digits, 12 epochs) for seeds 0,1,2,
tested on the 10,000 rotated test digits.

    python examples/search_small_models.py --stage search --out-dir docs/results/search-103k
    python examples/search_small_models.py --stage final --out-dir docs/results/search-103k

Finished runs (result.json) are skipped, interrupted ones resume; ``--only`` runs a subset by name.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gconv_ext.analysis.report import markdown_table, mean_std, write_csv, write_text
from gconv_ext.cli import seed_list
from gconv_ext.groups import group_from_name
from gconv_ext.malloc import tune_malloc
from gconv_ext.models import gcnn_parameter_count
from gconv_ext.train import TrainConfig, train
from gconv_ext.train.evaluate import evaluate_checkpoint

#: The default search: the study's C4/4/16 as the baseline, then the finer groups (where the 45-degree
#: interpolation matters, with and without disk masks) at 3-4 layers. ``--all`` searches every candidate.
DEFAULT_SEARCH = ("C4-4-16", "C4-4-16-disk", "C8-4-11", "C8-4-11-disk", "C8-3-13-disk", "C16-4-8",
                  "C16-4-8-disk", "C16-3-9-disk", "D4-4-11-disk", "D8-4-8-disk")
#: The parameter budget: the study's GCNN C4/4/16 has 102,970.
MAX_PARAMS = 103_000
GROUPS = ("C4", "C8", "C16", "D4", "D8")
LAYERS = (2, 3, 4)
STAGES = {
    "smoke": dict(epochs=1, train_limit=256, val_limit=128, test_limit=128, seeds=(0,)),
    "search": dict(epochs=6, train_limit=20_000, val_limit=2_000, test_limit=2_000, seeds=(0,)),
    "final": dict(epochs=None, train_limit=None, val_limit=None, test_limit=None, seeds=(0, 1, 2)),
}


def widest(group: str, layers: int, max_params: int = MAX_PARAMS) -> int:
    """The largest channel count whose GCNN stays within ``max_params``."""
    c = 1
    while gcnn_parameter_count(group, layers, c + 1) <= max_params:
        c += 1
    return c


def candidates(max_params: int = MAX_PARAMS) -> list[dict]:
    """Every (group, layers, widest channels, disk mask) GCNN within the budget."""
    out = []
    for group in GROUPS:
        for layers in LAYERS:
            channels = widest(group, layers, max_params)
            for disk in (False, True):
                name = f"{group}-{layers}-{channels}{'-disk' if disk else ''}"
                out.append({"name": name, "group": group, "layers": layers, "channels": channels,
                            "disk_mask": disk, "params": gcnn_parameter_count(group, layers, channels),
                            "order": group_from_name(group).order})
    return out


def run(c: dict, stage: str, seed: int, out: Path, data_dir: str | None, threads: int) -> dict:
    b = STAGES[stage]
    run_dir = out / stage / f"{c['name']}-seed{seed}"
    result_path = run_dir / "result.json"
    if not result_path.is_file():
        cfg = TrainConfig(model="gcnn", model_kwargs={k: c[k] for k in ("group", "layers", "channels", "disk_mask")},
                          train_rotation="none", epochs=b["epochs"], train_limit=b["train_limit"],
                          val_limit=b["val_limit"], test_limit=b["test_limit"], seed=seed, data_dir=data_dir,
                          threads=threads, out_dir=str(run_dir), resume=(run_dir / "last.pt").is_file())
        train(cfg)
        evaluate_checkpoint(run_dir / "best.pt", run_dir, data_dir, name=c["name"],
                            angles=[float(a) for a in range(0, 360, 10)])
    return json.loads(result_path.read_text())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", choices=tuple(STAGES), default="search")
    p.add_argument("--out-dir", default="runs/search-103k")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--only", default=None, help="comma-separated candidate names (default: all / the winner)")
    p.add_argument("--all", action="store_true", help="search every candidate (default: DEFAULT_SEARCH)")
    p.add_argument("--seeds", type=seed_list, default=None, help="seeds of the final stage (default 0,1,2)")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    tune_malloc()  # reuse freed activations instead of faulting them in every step (gconv_ext/malloc.py)
    out = Path(args.out_dir)
    cands = candidates()
    if args.stage in ("search", "smoke"):
        names = args.only.split(",") if args.only else (None if args.all else DEFAULT_SEARCH)
        chosen = [c for c in cands if names is None or c["name"] in names]
        rows = []
        for i, c in enumerate(chosen, 1):
            print(f"[{i}/{len(chosen)}] {c['name']} ({c['params']:,} params)", file=sys.stderr, flush=True)
            r = run(c, args.stage, 0, out, args.data_dir, args.threads)
            rows.append({**{k: c[k] for k in ("name", "group", "layers", "channels", "disk_mask", "params")},
                         "val_acc": r["val_acc"], "rotated_test_acc": r["rotated_test_acc"],
                         "upright_test_acc": r["upright_test_acc"], "train_time_s": r["train_time_s"]})
        rows.sort(key=lambda r: -r["val_acc"])
        write_csv(out / "search.csv", rows)
        b = STAGES[args.stage]
        text = (f"Upright training, {args.stage} budget ({b['train_limit']:,} digits, {b['epochs']} epochs, seed 0), "
                "ranked by rotated validation accuracy:\n\n" + markdown_table(rows, list(rows[0])))
        write_text(out / "search.md", text)
        print(text)
        return 0
    search = out / "search.csv"
    if args.only is None and not search.is_file():
        p.error("run --stage search first (or name the candidate with --only)")
    name = args.only or search.read_text().splitlines()[1].split(",")[0]
    c = next((c for c in cands if c["name"] == name), None)
    if c is None:
        p.error(f"--only: unknown candidate {name!r}")
    results = [run(c, "final", s, out, args.data_dir, args.threads) for s in (args.seeds or STAGES["final"]["seeds"])]
    m, s = mean_std([r["rotated_test_acc"] for r in results])
    text = (f"{name} ({c['params']:,} parameters), trained upright, full budget, seeds "
            f"{', '.join(str(r['seed']) for r in results)}: rotated-test accuracy {100 * m:.2f} ± {100 * s:.2f}%\n")
    write_text(out / "final.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
