"""FRI/FRII radio-galaxy classification with the vanilla and C_N / D_N LeNets (E2CNNRadGal).

    python examples/radio_galaxies.py --config examples/configs/frdeep_c4.ini          # one run
    python examples/radio_galaxies.py --config examples/configs/frdeep_sweep.ini --sweep  # vanilla + C_N, D_N

The configuration keys are documented in gconv_ext.experiments.radio. A sweep runs the vanilla LeNet and
the groups in --groups (default C2,C4,C8,C16,D2,D4,D8,D16), each in <directory>/<name>/, and writes results.csv,
results.md (table) and test_error_vs_N.png into <directory>, atomically. --epochs, --max-train,
--max-test and --seed override the config (quick runs, repeats with other seeds). Finished runs of the same
configuration are reused, so an interrupted or extended sweep only trains what is missing; every run trains
through the project's engine (gconv_ext.train.engine.fit): progress bars, last.pt after every epoch (an
interrupted run resumes, a larger --epochs continues a run), summary.json. --device, --precision,
--compile and --quiet are the engine's options (default: CUDA if available, float32).

    python examples/radio_galaxies.py --config examples/configs/frdeep_sweep.ini --sweep --groups C4,D4 \
        --epochs 20 --seeds 0,1,2 --out runs/radio20

--seeds runs the sweep once per seed (each its own validation split, initialisation and augmentation) into
<directory>/seed<k>/ and writes summary.csv, summary.md (per-seed test errors, mean ± std over seeds) and
test_error_vs_N.png (with error bars) into <directory>.

Deprecated: --nrots N,... and --bases CN,DN (the sweep was bases x nrots) still work, with a warning naming
the --groups value they mean (--nrots 2,4 --bases CN is --groups C2,C4); they cannot be combined with --groups.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from gconv_ext.cli import seed_list  # noqa: E402
from gconv_ext.experiments.radio import (SWEEP_GROUPS, ConfigError, load_config, run_config,  # noqa: E402
                                         run_seeds, run_sweep)
from gconv_ext.malloc import tune_malloc  # noqa: E402
from gconv_ext.models.lenet import group_name_from_base, lenet_group_name  # noqa: E402
from gconv_ext.train.config import add_config_arguments, config_overrides  # noqa: E402

#: The engine's options this script takes (gconv_ext.train.config.TrainConfig fields).
ENGINE_OPTIONS = ("device", "precision", "compile", "quiet")


def group_list(text: str) -> tuple[str, ...]:
    """argparse type: comma-separated distinct group names (``"C2,C4,D4"``), canonical (``c4`` -> ``C4``)."""
    names = []
    for item in text.split(","):
        try:
            name = lenet_group_name(item)
        except ValueError:
            name = None
        if name is None or name == "vanilla":
            raise argparse.ArgumentTypeError(f"expected comma-separated group names C<N> / D<N> with N >= 1 "
                                             f"(e.g. C4,D16; the vanilla LeNet always runs), got {item.strip()!r}")
        names.append(name)
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"expected distinct group names, got {text!r}")
    return tuple(names)


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 1, got {text!r}")
    return values


def _base_list(text: str) -> tuple[str, ...]:
    bases = tuple(v.strip() for v in text.split(","))
    if any(b not in ("CN", "DN") for b in bases):
        raise argparse.ArgumentTypeError(f"expected CN, DN or CN,DN, got {text!r}")
    return bases


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, type=Path)
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--groups", type=group_list, default=None,
                    help=f"groups of the sweep besides the vanilla LeNet (comma-separated; default "
                         f"{','.join(SWEEP_GROUPS)})")
    ap.add_argument("--nrots", type=_int_list, default=None, help="deprecated: use --groups (N values of the sweep)")
    ap.add_argument("--bases", type=_base_list, default=None, help="deprecated: use --groups (CN, DN or both)")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--max-train", type=int, default=None)
    ap.add_argument("--max-test", type=int, default=None)
    ap.add_argument("--seed", type=int, default=None, help="override [training] seed (split, init, augmentation)")
    ap.add_argument("--seeds", type=seed_list, default=None,
                    help="with --sweep: one sweep per seed into <out>/seed<k>, then summary.md/csv (mean ± std)")
    ap.add_argument("--out", default=None, help="override [output] directory")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    add_config_arguments(ap, only=ENGINE_OPTIONS)
    return ap


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The parsed command line; ``args.groups`` is the sweep's groups, from --groups (default the full sweep)
    or from the deprecated --nrots/--bases (bases x nrots, with a FutureWarning)."""
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.seeds is not None and (args.seed is not None or not args.sweep):
        ap.error("--seeds needs --sweep and replaces --seed")
    legacy = [flag for flag, value in (("--nrots", args.nrots), ("--bases", args.bases)) if value is not None]
    if legacy:
        if args.groups is not None:
            ap.error(f"--groups replaces {'/'.join(legacy)}: give only --groups")
        args.groups = tuple(group_name_from_base(b, n) for b in (args.bases or ("CN", "DN"))
                            for n in (args.nrots or (2, 4, 8, 16)))
        if len(set(args.groups)) != len(args.groups):
            ap.error(f"{'/'.join(legacy)}: repeated values")
        given = " ".join(f"{flag} {','.join(map(str, getattr(args, flag[2:])))}" for flag in legacy)
        warnings.warn(f"{given} is deprecated; use --groups {','.join(args.groups)}", FutureWarning, stacklevel=2)
    elif args.groups is not None and not args.sweep:
        ap.error("--groups needs --sweep")
    if args.groups is None:
        args.groups = SWEEP_GROUPS
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tune_malloc()  # reuse freed activations instead of faulting them in every step (gconv_ext/malloc.py)
    options = config_overrides(args, ENGINE_OPTIONS)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        cfg = load_config(args.config)
        over = {k: v for k, v in (("epochs", args.epochs), ("max_train", args.max_train),
                                  ("max_test", args.max_test),
                                  ("seed", args.seed)) if v is not None}
        cfg = cfg.replace(training=over, **({"output": {"directory": args.out}} if args.out else {}))
        if args.sweep:
            if args.seeds is not None:
                run_seeds(cfg, tuple(args.seeds), args.groups, **options)
                print((Path(cfg["output"]["directory"]) / "summary.md").read_text())
            else:
                run_sweep(cfg, args.groups, **options)
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
