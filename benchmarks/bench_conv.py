"""Forward+backward time of the fused lifting / group convolutions against the unfused composition
over the same transform ops (transform op + F.conv2d + bias add: three autograd nodes) and the
pure-PyTorch reference, measured in the same run.

    python benchmarks/bench_conv.py [--threads 2] [--device cpu] [--batch 8] [--channels 16] [--size 32] [--k 5]
"""
from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import base_parser, fmt_ms, print_table, setup_run, timeit, train_step  # noqa: E402

import gconv_ext  # noqa: E402
from gconv_ext.ops import group_conv2d, lifting_conv2d, reference  # noqa: E402


def unfused_lifting(x, w, b, g, padding=0):
    lifted = gconv_ext.lift_filter(w, g)
    co, n, ci, k, _ = lifted.shape
    out = F.conv2d(x, lifted.reshape(co * n, ci, k, k), None, 1, padding)
    return out.view(out.shape[0], co, n, *out.shape[-2:]) + b.view(1, co, 1, 1, 1)


def unfused_group(x, w, b, g, padding=0):
    expanded = gconv_ext.group_filter(w, g)
    co, n, ci, _, k, _ = expanded.shape
    out = F.conv2d(x.flatten(1, 2), expanded.reshape(co * n, ci * n, k, k), None, 1, padding)
    return out.view(out.shape[0], co, n, *out.shape[-2:]) + b.view(1, co, 1, 1, 1)


def main() -> None:
    p = base_parser(__doc__, repeat=10)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--groups", nargs="+", default=["C4", "D4", "C8"])
    args = p.parse_args()
    setup_run(args.threads, args.device, f"B={args.batch} C={args.channels} H=W={args.size} k={args.k}")
    dev, c, k, pad = torch.device(args.device), args.channels, args.k, args.k // 2
    rows = []
    for name in args.groups:
        g = gconv_ext.group_from_name(name)
        for kind in ("lift", "group"):
            b = torch.randn(c, device=dev)
            if kind == "lift":
                x = torch.randn(args.batch, c, args.size, args.size, device=dev)
                w = torch.randn(c, c, k, k, device=dev)
                fns = (lifting_conv2d, unfused_lifting, reference.lifting_conv2d)
            else:
                x = torch.randn(args.batch, c, g.order, args.size, args.size, device=dev)
                w = torch.randn(c, c, g.order, k, k, device=dev)
                fns = (group_conv2d, unfused_group, reference.group_conv2d)
            times = [timeit(train_step(lambda xs, ws, bs, f=f: f(xs, ws, bs, g, padding=pad), x, w, b),
                            repeat=args.repeat) for f in fns]
            rows.append([name, kind, *(fmt_ms(t) for t in times), f"{times[1] / times[0]:5.2f}x",
                         f"{times[2] / times[0]:5.2f}x"])
    print_table(["group", "conv", "fused ms", "unfused ms", "reference ms", "vs unfused", "vs reference"], rows)


if __name__ == "__main__":
    main()
