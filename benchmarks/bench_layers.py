"""Layer benchmark: gconv_ext's GroupConv2d against (a) the bare backend conv2d with a precomputed
expanded filter (the floor), (b) the study-style layer (filter expanded with affine_grid + grid_sample
on every forward) and (c) e2cnn's R2Conv with regular fields (only when e2cnn is installed), all
measured in the same run. Training step = forward + backward (input and weight gradients); eval =
forward under no_grad (our module in eval mode uses its cached expanded filter). Also the spatial
max pool (2x2, stride 1) that keeps the group axis against the study's Python loop over group slices,
and our training step under torch.autocast("cpu", dtype=torch.bfloat16) against fp32.

    python benchmarks/bench_layers.py [--batches 1 64] [--channels 16 32] [--orders 4 8 16] [--threads 2]
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import fmt_ms, print_table, setup_run, train_step  # noqa: E402
from common import timeit as _timeit  # noqa: E402

import gconv_ext  # noqa: E402
from gconv_ext.groups import Group  # noqa: E402
from gconv_ext.nn import GroupConv2d, GroupMaxPool2d  # noqa: E402
from gconv_ext.ops import reference  # noqa: E402

try:  # optional comparison
    from e2cnn import gspaces
    from e2cnn import nn as enn
except ImportError:  # pragma: no cover - depends on the machine
    enn = None


def timeit(fn, repeat):
    return _timeit(fn, warmup=1 if repeat <= 3 else 3, repeat=repeat)


def eval_step(fn, *args):
    def run():
        with torch.no_grad():
            fn(*args)
    return run


def repeats_for(batch: int, c: int, n: int) -> int:
    work = batch * (c * n) ** 2
    return 2 if work > 1e8 else 3 if work > 1e7 else 7 if work > 1e6 else 15


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    p.add_argument("--channels", type=int, nargs="+", default=[16, 32])
    p.add_argument("--orders", type=int, nargs="+", default=[4, 8, 16])
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-e2cnn", action="store_true", help="skip the e2cnn comparison")
    args = p.parse_args()
    warnings.simplefilter("ignore")
    use_e2cnn = enn is not None and not args.no_e2cnn
    setup_run(args.threads, "cpu", f"e2cnn={'yes' if use_e2cnn else 'not installed'}; k={args.k}, "
              f"{args.size}x{args.size}, padding k//2")
    k, pad, hw = args.k, args.k // 2, args.size
    rows, pool_rows, bf16_rows = [], [], []
    for batch in args.batches:
        for c in args.channels:
            for n in args.orders:
                g = Group(n)
                torch.manual_seed(0)
                layer = GroupConv2d(c, c, k, g, padding=pad, bias=False)
                x = torch.randn(batch, c, n, hw, hw)
                w_expanded = layer.expanded_weight().detach()
                reps = repeats_for(batch, c, n)

                def ours(xi, wi):
                    return gconv_ext.ops.group_conv2d(xi, wi, None, g, 1, pad)

                def floor(xi, wi):
                    return F.conv2d(xi.flatten(1, 2), wi, None, 1, pad)

                def study(xi, wi):
                    e = reference.group_filter_grid_sample(wi, g)
                    return F.conv2d(xi.flatten(1, 2), e.reshape(c * n, c * n, k, k), None, 1, pad)

                t_ours = timeit(train_step(ours, x, layer.weight), repeat=reps)
                t_floor = timeit(train_step(floor, x, w_expanded), repeat=reps)
                t_study = timeit(train_step(study, x, layer.weight), repeat=reps)
                layer.eval()
                e_ours = timeit(eval_step(layer, x), repeat=reps)
                e_floor = timeit(eval_step(floor, x, w_expanded), repeat=reps)
                layer.train()
                t_e2, e_e2 = float("nan"), float("nan")
                if use_e2cnn:
                    gs = gspaces.Rot2dOnR2(N=n)
                    ft = enn.FieldType(gs, c * [gs.regular_repr])
                    r2 = enn.R2Conv(ft, ft, k, padding=pad, bias=False)
                    xe = x.transpose(1, 2).reshape(batch, c * n, hw, hw)  # e2cnn: field-major channels

                    def e2(xi):
                        return r2(enn.GeometricTensor(xi, ft)).tensor

                    t_e2 = timeit(train_step(e2, xe), repeat=reps)
                    r2.eval()
                    e_e2 = timeit(eval_step(e2, xe), repeat=reps)
                rows.append([str(batch), str(c), f"C{n}", fmt_ms(t_ours), fmt_ms(t_floor), f"{t_ours / t_floor:5.3f}x",
                             fmt_ms(t_study), f"{t_study / t_ours:5.2f}x", fmt_ms(t_e2), f"{t_e2 / t_ours:5.2f}x",
                             fmt_ms(e_ours), fmt_ms(e_floor), f"{e_ours / e_floor:5.3f}x", f"{e_e2 / e_ours:5.2f}x"])
                print("| " + " | ".join(rows[-1]) + " |", file=sys.stderr, flush=True)

                if batch == max(args.batches) or len(args.batches) == 1:
                    pool = GroupMaxPool2d(2, stride=1)

                    def study_pool(xi):
                        return torch.stack([F.max_pool2d(xi[:, :, i], 2, 1) for i in range(n)], dim=2)

                    tp = timeit(train_step(pool, x), repeat=reps)
                    ts = timeit(train_step(study_pool, x), repeat=reps)
                    pool_rows.append([str(batch), str(c), f"C{n}", fmt_ms(tp), fmt_ms(ts), f"{ts / tp:5.2f}x"])
                if batch == min(args.batches):
                    def ours_bf16(xi, wi):
                        with torch.autocast("cpu", dtype=torch.bfloat16):
                            return gconv_ext.ops.group_conv2d(xi, wi, None, g, 1, pad).float()

                    tb = timeit(train_step(ours_bf16, x, layer.weight), repeat=reps)
                    bf16_rows.append([str(batch), str(c), f"C{n}", fmt_ms(t_ours), fmt_ms(tb), f"{t_ours / tb:5.2f}x"])

    print("\nGroupConv2d: training step (fwd+bwd) and eval forward, ms (median)")
    print_table(["batch", "C", "group", "ours train", "floor train", "ours/floor", "study train", "study/ours",
                 "e2cnn train", "e2cnn/ours", "ours eval", "floor eval", "ours/floor", "e2cnn eval/ours"], rows)
    print("\nSpatial max pool 2x2/1 keeping the group axis, fwd+bwd ms")
    print_table(["batch", "C", "group", "GroupMaxPool2d", "study loop", "study/ours"], pool_rows)
    print("\nbfloat16 autocast training step vs fp32, ms")
    print_table(["batch", "C", "group", "fp32", "bf16 autocast", "speed-up"], bf16_rows)


if __name__ == "__main__":
    main()
