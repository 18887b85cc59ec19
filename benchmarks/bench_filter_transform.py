"""Forward+backward time of the filter transforms against the pure-PyTorch reference and the
study-style grid_sample baseline, all in the same interleaved rounds (:func:`common.interleaved`), with
fp32 and bf16 weights (C_out = C_in = 32, k = 5 by default). Ratios: median of per-round ratios (IQR).

    python benchmarks/bench_filter_transform.py                   # default: well under a minute, 2 idle threads
    python benchmarks/bench_filter_transform.py --rounds 3 --orders 4   # a quick check
    python benchmarks/bench_filter_transform.py [--threads 2] [--device cpu] [--channels 32] [--k 5] [--orders 4 8 16]
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import base_parser, fmt_ms, interleaved, print_table, setup_run, train_step  # noqa: E402

import gconv_ext  # noqa: E402
from gconv_ext.groups import Group  # noqa: E402
from gconv_ext.ops import reference  # noqa: E402

DTYPES = (("fp32", torch.float32), ("bf16", torch.bfloat16))


def main() -> None:
    p = base_parser(__doc__, rounds=7)
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--orders", type=int, nargs="+", default=[4, 8, 16])
    args = p.parse_args()
    setup_run(args.threads, args.device, f"C={args.channels} k={args.k}; up to {args.rounds} interleaved rounds, "
              f"budget {args.budget:g} s per case")
    c, k, dev = args.channels, args.k, torch.device(args.device)
    rows = []
    for n in args.orders:
        g = Group(n)
        for kind in ("lift", "group"):
            if kind == "lift":
                w = torch.randn(c, c, k, k, device=dev)
                fns = (gconv_ext.lift_filter, reference.lift_filter, reference.lift_filter_grid_sample)
            else:
                w = torch.randn(c, c, n, k, k, device=dev)
                fns = (gconv_ext.group_filter, reference.group_filter, reference.group_filter_grid_sample)
            cands = {f"{label} {pr}": train_step(lambda t, f=f, g=g: f(t, g), w.to(dtype))
                     for pr, dtype in DTYPES for label, f in zip(("ours", "reference", "grid_sample"), fns)}
            s = interleaved(cands, args.rounds, args.warmup, min_block=args.min_block, warmup_time=args.warmup_time,
                            budget=args.budget)
            row = [f"C{n}", kind]
            for pr, _ in DTYPES:
                ours = s[f"ours {pr}"]
                row += [fmt_ms(ours.median), fmt_ms(s[f"reference {pr}"].median), fmt_ms(s[f"grid_sample {pr}"].median),
                        s[f"reference {pr}"].ratio(ours).fmt(1), s[f"grid_sample {pr}"].ratio(ours).fmt(1)]
            rows.append(row)
    print_table(["group", "transform"] + [f"{h} {pr}" for pr, _ in DTYPES for h in
                                          ("ours ms", "reference ms", "grid_sample ms", "reference/ours",
                                           "grid_sample/ours")], rows)


if __name__ == "__main__":
    main()
