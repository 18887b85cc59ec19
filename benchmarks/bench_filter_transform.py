"""Forward+backward time of the filter transforms against the pure-PyTorch reference and the
study-style grid_sample baseline, measured in the same run (C_out = C_in = 32, k = 5 by default).

    python benchmarks/bench_filter_transform.py [--threads 2] [--device cpu] [--channels 32] [--k 5]
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import base_parser, fmt_ms, print_table, setup_run, timeit, train_step  # noqa: E402

import gconv_ext  # noqa: E402
from gconv_ext.groups import Group  # noqa: E402
from gconv_ext.ops import reference  # noqa: E402


def main() -> None:
    p = base_parser(__doc__, repeat=15)
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--orders", type=int, nargs="+", default=[4, 8, 16])
    args = p.parse_args()
    setup_run(args.threads, args.device)
    c, k, dev = args.channels, args.k, torch.device(args.device)
    rows = []
    for n in args.orders:
        g = Group(n)
        for kind in ("lift", "group"):
            if kind == "lift":
                w = torch.randn(c, c, k, k, device=dev)
                ours, ref, study = gconv_ext.lift_filter, reference.lift_filter, reference.lift_filter_grid_sample
            else:
                w = torch.randn(c, c, n, k, k, device=dev)
                ours, ref, study = gconv_ext.group_filter, reference.group_filter, reference.group_filter_grid_sample
            t_ours = timeit(train_step(lambda t: ours(t, g), w), repeat=args.repeat)
            t_ref = timeit(train_step(lambda t: ref(t, g), w), repeat=args.repeat)
            t_study = timeit(train_step(lambda t: study(t, g), w), repeat=args.repeat)
            rows.append([f"C{n}", kind, fmt_ms(t_ours), fmt_ms(t_ref), fmt_ms(t_study),
                         f"{t_ref / t_ours:6.1f}x", f"{t_study / t_ours:6.1f}x"])
    print_table(["group", "transform", "ours ms", "reference ms", "grid_sample ms", "vs reference", "vs grid_sample"],
                rows)


if __name__ == "__main__":
    main()
