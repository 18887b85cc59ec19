"""Command line: ``python -m gconv_ext {train,evaluate,table} ...``.

Examples::

    python -m gconv_ext train --model cnn --preset matched --train-rotation uniform --out-dir runs/cnn-rot
    python -m gconv_ext train --model cnn --preset tiny --epochs 2 --train-limit 512 --val-limit 256
    torchrun --nproc_per_node 2 -m gconv_ext train --model stn-single-rotation --device cpu
    python -m gconv_ext train --model cnn --out-dir runs/cnn-rot --resume
    python -m gconv_ext train --model ien-cnn --preset matched --ien-beta 1 --dataset rotated-mnist
    python -m gconv_ext evaluate runs/cnn-rot/best.pt
    python -m gconv_ext table runs/*/result.json -o results.md

Errors in arguments name the option (argparse, exit code 2); a missing data folder or a bad data
file gives a one-line ``error: ...`` on stderr and exit code 2, without a traceback. Under ``torchrun``, a
rank that loses its peers (one was killed, or hung past the process-group timeout, ``GCONV_EXT_DIST_TIMEOUT``
seconds, default 600) ends with a one-line ``error: rank R of W lost contact ...`` naming the checkpoint to
``--resume`` from, exit code 1.
"""
from __future__ import annotations

import argparse
import ast
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gconv_ext.data.paths import DataFileError, DataFileNotFoundError, default_data_dir
from gconv_ext.train.config import add_config_arguments, number_type
from gconv_ext.train.registry import available_models

__all__ = ["main", "build_parser", "seed_list", "positive_int"]


_positive_int = number_type(int, 0, True, "a positive integer")
_nonneg_int = number_type(int, 0, False, "an integer >= 0")

positive_int = _positive_int  # argparse types shared with the example scripts


def seed_list(text: str) -> list[int]:
    """argparse type: comma-separated distinct integers >= 0 (``"0,1,2"``)."""
    try:
        seeds = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 0, got {text!r}") from None
    if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"expected distinct comma-separated integers >= 0, got {text!r}")
    return seeds


def _model_arg(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE with KEY a Python identifier, got {text!r}")
    try:
        value: Any = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return key, value


def _device(text: str) -> str:
    if text == "auto" or text == "cpu" or text == "cuda" or (text.startswith("cuda:") and text[5:].isdigit()):
        return text
    raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=None,
                   help="folder with the MNIST IDX files (default: gconv_ext.data.default_data_dir())")
    p.add_argument("--device", type=_device, default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--threads", type=_nonneg_int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--eval-batch-size", type=_positive_int, default=2048, help="evaluation batch size (2048)")
    p.add_argument("--test-limit", type=_positive_int, default=None, help="use only the first N test digits")
    p.add_argument("--cache-dir", default=None,
                   help="cache folder of the rotated-MNIST substitute (default: $GCONV_EXT_CACHE_DIR or "
                        "<repo>/data_cache)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--no-tune-malloc", action="store_true",
                   help="keep glibc's malloc defaults (by default the command sets mallopt thresholds so that "
                        "freed activations are reused instead of mapped afresh every step: gconv_ext.tune_malloc)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m gconv_ext``."""
    parser = argparse.ArgumentParser(prog="python -m gconv_ext",
                                     description="Train and evaluate rotation-invariant MNIST models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,evaluate,visualize,table}")

    t = sub.add_parser("train", help="train a model with the study's protocol")
    t.add_argument("--model", choices=available_models(), default="gcnn", help="model name (default gcnn: the study's C4/4/16 GCNN)")
    t.add_argument("--preset", default=None,
                   help="model preset: default, matched (~102,970 params, as GCNN C4/4/16), tiny, ...")
    t.add_argument("--group", default=None, help="symmetry group for group-equivariant models, e.g. C4, D4")
    t.add_argument("--channels", type=_positive_int, default=None, help="channels per layer")
    t.add_argument("--layers", type=_positive_int, default=None, help="number of conv layers")
    t.add_argument("--kernel-size", type=_positive_int, default=None, help="conv kernel size")
    t.add_argument("--params", type=_positive_int, default=None,
                   help="target parameter count (picks the closest channel count)")
    t.add_argument("--model-arg", type=_model_arg, action="append", default=[], metavar="KEY=VALUE",
                   help="extra model keyword argument (repeatable), e.g. --model-arg loc_channels=8")
    t.add_argument("--out-dir", default=None, help="output folder (default runs/<model>-<rotation>-seed<seed>)")
    add_config_arguments(t)
    t.add_argument("--no-test", action="store_true", help="skip the test evaluation of best.pt at the end")
    _add_common(t)

    e = sub.add_parser("evaluate", help="evaluate a checkpoint on the fixed rotated test set")
    e.add_argument("checkpoint", help="a best.pt / last.pt written by train, or the name of shipped weights "
                                      "(gconv_ext.models.available_pretrained(), e.g. gcnn-c4-rotated)")
    e.add_argument("--out-dir", default=None, help="where to write results (default: the checkpoint's folder)")
    e.add_argument("--name", default=None, help="model name for the results table")
    e.add_argument("--test-seed", type=_nonneg_int, default=0, help="seed of the fixed test angles (0)")
    e.add_argument("--angle-step", type=_positive_int, default=5, help="per-angle curve step in degrees (5)")
    _add_common(e)

    v = sub.add_parser("visualize", help="PNG figures of a checkpoint: filter banks, group feature maps, STN warps")
    v.add_argument("checkpoint", help="a best.pt / last.pt written by train")
    v.add_argument("--out-dir", default=None, help="where to write the PNGs (default: the checkpoint's folder)")
    v.add_argument("--data-dir", default=None, help="MNIST folder (default: the run's, else ../shared/data)")

    tb = sub.add_parser("table", help="markdown table of result.json files")
    tb.add_argument("results", nargs="+", help="result.json files or run folders")
    tb.add_argument("-o", "--output", default="results.md", help="markdown file to write (results.md)")
    return parser


def _model_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    for name in ("group", "channels", "layers", "kernel_size", "params"):
        value = getattr(args, name)
        if value is not None:
            kwargs[name] = value
    for key, value in args.model_arg:
        kwargs[key] = value
    return kwargs


def _check_data_dir(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """One-line error (exit 2) if the data folder does not exist."""
    if args.data_dir is not None:
        path = Path(args.data_dir).expanduser()
        if not path.is_dir() and not getattr(args, "download", False):
            parser.exit(2, f"error: data folder {path} does not exist; pass --data-dir pointing at the "
                           "MNIST files (or --download)\n")
    else:
        try:
            default_data_dir()
        except DataFileNotFoundError as exc:
            parser.exit(2, f"error: {exc}\n")


def _cmd_train(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from gconv_ext.train.checkpoint import CheckpointError  # noqa: PLC0415
    from gconv_ext.train.config import config_from_args  # noqa: PLC0415
    from gconv_ext.train.engine import ConfigError, train  # noqa: PLC0415
    from gconv_ext.train.evaluate import evaluate_checkpoint  # noqa: PLC0415
    from gconv_ext.train.distributed import DistributedError, process_group_timeout, resolve_device  # noqa: PLC0415

    try:
        resolve_device(args.device)
    except ValueError as exc:
        parser.error(f"--device: {exc}")
    try:
        process_group_timeout()
    except ValueError as exc:
        parser.exit(2, f"error: {exc}\n")
    if args.ien_beta is None:
        for flag, value in (("--ien-transforms", args.ien_transforms), ("--ien-layers", args.ien_layers)):
            if value is not None:
                parser.error(f"{flag} needs --ien-beta (the IEN objective is off without it)")
    dataset = args.dataset or "mnist"
    rotation = args.train_rotation or "none"
    seed = args.seed or 0
    tag = "" if dataset == "mnist" else f"-{dataset}"
    tag += "" if args.ien_beta is None else f"-ien{args.ien_beta:g}"
    out_dir = args.out_dir or f"runs/{args.model}{tag}-{rotation}-seed{seed}"
    try:
        cfg = config_from_args(args, model=args.model, model_kwargs=_model_kwargs(args), preset=args.preset,
                               eval_batch_size=args.eval_batch_size, device=args.device, threads=args.threads,
                               data_dir=args.data_dir, out_dir=out_dir, test_limit=args.test_limit,
                               quiet=args.quiet, cache_dir=args.cache_dir)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        summary = train(cfg)
    except ConfigError as exc:
        flag = "--ien-layers" if args.ien_layers and "ien_layers" in str(exc) else (
            "--ien-beta" if "ien" in str(exc) or "orbit" in str(exc) else f"--model {args.model}")
        parser.error(f"{flag}: {exc}")
    except (FileExistsError, CheckpointError) as exc:
        parser.exit(2, f"error: {exc}\n")
    except DistributedError as exc:  # a DDP peer died or hung: one line, exit code 1 (torchrun names the rank)
        parser.exit(1, f"error: {exc}\n")
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    if not args.quiet:
        print(f"best validation accuracy {summary['best_val_acc']:.4f} (epoch {summary['best_epoch']}); "
              f"outputs in {out_dir}", file=sys.stderr)
    if not args.no_test and summary["best_epoch"] > 0:
        result = evaluate_checkpoint(Path(out_dir) / "best.pt", data_dir=args.data_dir,
                                     test_limit=args.test_limit, batch_size=args.eval_batch_size,
                                     device=summary["device"], cache_dir=args.cache_dir, progress=not args.quiet)
        print(f"rotated-test accuracy {result['rotated_test_acc']:.4f} ({result['test_set']}, "
              f"{result['n_rotated_test']} digits), upright {result['upright_test_acc']:.4f}, "
              f"mean per-angle {result['mean_per_angle_acc']:.4f}")
    return 0


def _cmd_evaluate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    import torch  # noqa: PLC0415

    from gconv_ext.train.evaluate import evaluate_checkpoint  # noqa: PLC0415
    from gconv_ext.train.distributed import resolve_device  # noqa: PLC0415

    from gconv_ext.models.weights import available_pretrained, pretrained_path  # noqa: PLC0415

    checkpoint, out_dir = args.checkpoint, args.out_dir
    if not Path(checkpoint).is_file():
        if checkpoint not in available_pretrained():
            names = ", ".join(available_pretrained()) or "none"
            parser.exit(2, f"error: checkpoint {checkpoint} not found (nor a pretrained name: {names})\n")
        try:
            checkpoint = pretrained_path(checkpoint)
        except (ValueError, FileNotFoundError) as exc:
            parser.exit(2, f"error: {exc}\n")
        out_dir = out_dir or f"runs/pretrained-{args.checkpoint}"
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        parser.error(f"--device: {exc}")
    try:
        result = evaluate_checkpoint(checkpoint, out_dir, args.data_dir, name=args.name,
                                     test_limit=args.test_limit, test_seed=args.test_seed,
                                     angles=[float(a) for a in range(0, 360, args.angle_step)],
                                     batch_size=args.eval_batch_size, device=device, cache_dir=args.cache_dir)
    except ValueError as exc:
        parser.exit(2, f"error: {exc}\n")
    print(f"{result['name']}: rotated-test accuracy {result['rotated_test_acc']:.4f} "
          f"({result['test_set']}, {result['n_rotated_test']} digits), upright "
          f"{result['upright_test_acc']:.4f}, mean per-angle {result['mean_per_angle_acc']:.4f}")
    return 0


def _cmd_table(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from gconv_ext.train.evaluate import load_results, write_results_table  # noqa: PLC0415

    try:
        results = load_results(args.results)
    except (FileNotFoundError, ValueError) as exc:
        parser.exit(2, f"error: {exc}\n")
    text = write_results_table(results, args.output)
    print(text, end="")
    return 0


def _cmd_visualize(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from gconv_ext.viz import visualize_checkpoint  # noqa: PLC0415

    if not Path(args.checkpoint).is_file():
        parser.exit(2, f"error: checkpoint {args.checkpoint} not found\n")
    for path in visualize_checkpoint(args.checkpoint, args.out_dir, args.data_dir):
        print(f"wrote {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (argparse errors raise ``SystemExit(2)``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "table":
        return _cmd_table(parser, args)
    _check_data_dir(parser, args)
    if not getattr(args, "no_tune_malloc", False):  # (the commands without _add_common: tuned)
        from gconv_ext.malloc import tune_malloc  # noqa: PLC0415

        tune_malloc()
    try:
        if args.command == "train":
            return _cmd_train(parser, args)
        if args.command == "visualize":
            return _cmd_visualize(parser, args)
        return _cmd_evaluate(parser, args)
    except (DataFileNotFoundError, DataFileError) as exc:
        parser.exit(2, f"error: {exc}\n")
    return 2


if __name__ == "__main__":
    sys.exit(main())
