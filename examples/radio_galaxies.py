"""FRI/FRII radio-galaxy classification with the vanilla and C_N / D_N LeNets (E2CNNRadGal).

    python examples/radio_galaxies.py --config examples/configs/frdeep_c4.ini          # one run
    python examples/radio_galaxies.py --config examples/configs/frdeep_sweep.ini --sweep  # vanilla + C_N, D_N

The configuration keys are documented in gconv_ext.experiments.radio. A sweep runs the vanilla LeNet and
C_N, D_N for N in --nrots (default 2,4,8,16), each in <directory>/<name>/, and writes results.csv,
results.md (table) and test_error_vs_N.png into <directory>, atomically. --epochs, --max-train,
--max-test and --seed override the config (quick runs, repeats with other seeds). Finished runs of the same
configuration are reused, so an interrupted or extended sweep only trains what is missing; every run trains
through the project's engine (gconv_ext.train.engine.fit): progress bars, last.pt after every epoch (an
interrupted run resumes, a larger --epochs continues a run), summary.json. --device, --precision,
--compile and --quiet are the engine's options (default: CUDA if available, float32).

    python examples/radio_galaxies.py --config examples/configs/frdeep_sweep.ini --sweep --nrots 4 \
        --epochs 20 --seeds 0,1,2 --out runs/radio20

--seeds runs the sweep once per seed (each its own validation split, initialisation and augmentation) into
<directory>/seed<k>/ and writes summary.csv, summary.md (per-seed test errors, mean ± std over seeds) and
test_error_vs_N.png (with error bars) into <directory>.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from gconv_ext.cli import seed_list  # noqa: E402
from gconv_ext.experiments.radio import (ConfigError, load_config, run_config, run_seeds,  # noqa: E402
                                         run_sweep)
from gconv_ext.train.config import add_config_arguments, config_overrides  # noqa: E402

#: The engine's options this script takes (gconv_ext.train.config.TrainConfig fields).
ENGINE_OPTIONS = ("device", "precision", "compile", "quiet")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, type=Path)
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--nrots", default="2,4,8,16", help="N values of the sweep (comma-separated)")
    ap.add_argument("--bases", default="CN,DN", help="equivariant bases of the sweep (CN, DN or both)")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--max-train", type=int, default=None)
    ap.add_argument("--max-test", type=int, default=None)
    ap.add_argument("--seed", type=int, default=None, help="override [training] seed (split, init, augmentation)")
    ap.add_argument("--seeds", type=seed_list, default=None,
                    help="with --sweep: one sweep per seed into <out>/seed<k>, then summary.md/csv (mean ± std)")
    ap.add_argument("--out", default=None, help="override [output] directory")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    add_config_arguments(ap, only=ENGINE_OPTIONS)
    args = ap.parse_args(argv)
    options = config_overrides(args, ENGINE_OPTIONS)
    if args.seeds is not None and (args.seed is not None or not args.sweep):
        ap.error("--seeds needs --sweep and replaces --seed")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        cfg = load_config(args.config)
        over = {k: v for k, v in (("epochs", args.epochs), ("max_train", args.max_train),
                                  ("max_test", args.max_test),
                                  ("seed", args.seed)) if v is not None}
        cfg = cfg.replace(training=over, **({"output": {"directory": args.out}} if args.out else {}))
        if args.sweep:
            nrots = tuple(int(v) for v in args.nrots.split(","))
            if args.seeds is not None:
                run_seeds(cfg, tuple(args.seeds), nrots, tuple(args.bases.split(",")), **options)
                print((Path(cfg["output"]["directory"]) / "summary.md").read_text())
            else:
                run_sweep(cfg, nrots, tuple(args.bases.split(",")), **options)
                print((Path(cfg["output"]["directory"]) / "results.md").read_text())
        else:
            results = [run_config(cfg, **options)]
            print(results[0])
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
