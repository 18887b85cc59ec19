"""Forward+backward time of the fused lifting / group convolutions against the unfused composition
over the same transform ops (transform op + F.conv2d + bias add: three autograd nodes) and the
pure-PyTorch reference, all in the same interleaved rounds (:func:`common.interleaved`), fp32 and under
``torch.autocast("cpu", dtype=torch.bfloat16)``. Ratios: median of per-round ratios (IQR).

    python benchmarks/bench_conv.py                       # default: about half a minute on 2 idle threads
    python benchmarks/bench_conv.py --rounds 3 --groups C4   # a quick check
    python benchmarks/bench_conv.py [--threads 2] [--device cpu] [--batch 8] [--channels 16] [--size 32] [--k 5]
"""
from __future__ import annotations

import contextlib
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import base_parser, fmt_ms, interleaved, print_table, setup_run  # noqa: E402
from common import train_step  # noqa: E402

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


def autocast(device: torch.device, precision: str):
    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def main() -> None:
    p = base_parser(__doc__, rounds=7)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--groups", nargs="+", default=["C4", "D4", "C8"])
    args = p.parse_args()
    setup_run(args.threads, args.device, f"B={args.batch} C={args.channels} H=W={args.size} k={args.k}; up to "
              f"{args.rounds} interleaved rounds, budget {args.budget:g} s per case")
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
            cands = {}
            for pr in ("fp32", "bf16"):
                for label, f in zip(("fused", "unfused", "reference"), fns):
                    def run(xs, ws, bs, f=f, pr=pr, g=g):
                        with autocast(dev, pr):
                            return f(xs, ws, bs, g, padding=pad)
                    cands[f"{label} {pr}"] = train_step(run, x, w, b)
            s = interleaved(cands, args.rounds, args.warmup, min_block=args.min_block, warmup_time=args.warmup_time,
                            budget=args.budget)
            row = [name, kind]
            for pr in ("fp32", "bf16"):
                fused = s[f"fused {pr}"]
                row += [fmt_ms(fused.median), fmt_ms(s[f"unfused {pr}"].median), fmt_ms(s[f"reference {pr}"].median),
                        s[f"unfused {pr}"].ratio(fused).fmt(2), s[f"reference {pr}"].ratio(fused).fmt(2)]
            rows.append(row + [s["fused fp32"].ratio(s["fused bf16"]).fmt(2)])
            print(f"{name} {kind} done ({len(s['fused fp32'].per_round)} rounds)", file=sys.stderr, flush=True)
    print_table(["group", "conv"] + [f"{h} {pr}" for pr in ("fp32", "bf16") for h in
                                     ("fused ms", "unfused ms", "reference ms", "unfused/fused", "reference/fused")]
                + ["fused bf16 speed-up (fp32/bf16 time)"], rows)


if __name__ == "__main__":
    main()
