"""Forward+backward time of spatial max pooling that keeps the group axis, measured in the same run:
ours (gconv_ext.ops.group_max_pool2d) against F.max_pool2d on the flattened NCHW map and F.max_pool2d
on a channels_last copy (the layout conversions of input and gradient included).

    python benchmarks/bench_pool.py [--threads 2] [--device cpu] [--shape 32 64 22 22] [--k 2] [--stride 1]

``--shape`` is [B, C*|G|, H, W] (the default is a GCNN block's pooled map).
"""
from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import base_parser, fmt_ms, print_table, setup_run, timeit  # noqa: E402

from gconv_ext.ops import group_avg_pool2d, group_max_pool2d  # noqa: E402


def fwd_bwd(fn, x, grad):
    def run():
        t = x.detach().requires_grad_()
        fn(t).backward(grad)
    return run


def main() -> None:
    p = base_parser(__doc__, repeat=30)
    p.add_argument("--shape", type=int, nargs=4, default=[32, 64, 22, 22])
    p.add_argument("--k", type=int, default=2)
    p.add_argument("--stride", type=int, default=1)
    p.add_argument("--padding", type=int, default=0)
    args = p.parse_args()
    setup_run(args.threads, args.device, f"shape {args.shape}, k={args.k} s={args.stride} p={args.padding}")
    dev = torch.device(args.device)
    k, s, pad = args.k, args.stride, args.padding
    x = torch.randn(*args.shape, device=dev)
    grad = torch.randn_like(F.max_pool2d(x, k, s, pad))

    def channels_last(fn):
        def run(t):
            return fn(t.contiguous(memory_format=torch.channels_last), k, s, pad).contiguous()
        return run

    cases = [
        ("max", "ours", lambda t: group_max_pool2d(t, k, s, pad)),
        ("max", "F.max_pool2d NCHW", lambda t: F.max_pool2d(t, k, s, pad)),
        ("max", "F.max_pool2d channels_last (+conversion)", channels_last(F.max_pool2d)),
        ("avg", "ours", lambda t: group_avg_pool2d(t, k, s, pad)),
        ("avg", "F.avg_pool2d NCHW", lambda t: F.avg_pool2d(t, k, s, pad)),
        ("avg", "F.avg_pool2d channels_last (+conversion)", channels_last(F.avg_pool2d)),
    ]
    times = {(kind, name): timeit(fwd_bwd(fn, x, grad), repeat=args.repeat) for kind, name, fn in cases}
    rows = []
    for kind, name, _ in cases:
        t, ours = times[(kind, name)], times[(kind, "ours")]
        rows.append([kind, name, fmt_ms(t), f"{t / ours:6.2f}x"])
    print_table(["pool", "implementation", "fwd+bwd ms", "time / ours"], rows)


if __name__ == "__main__":
    main()
