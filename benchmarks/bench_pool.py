"""Forward+backward time of spatial max / average pooling that keeps the group axis, all in the same
interleaved rounds (:func:`common.interleaved`), with fp32 and bf16 inputs: ours
(gconv_ext.ops.group_max_pool2d / group_avg_pool2d) against F.max_pool2d on the flattened NCHW map and
F.max_pool2d on a channels_last copy (the layout conversions of input and gradient included). Ratios:
median of per-round ratios (IQR).

    python benchmarks/bench_pool.py                     # default: well under a minute on 2 idle threads
    python benchmarks/bench_pool.py --rounds 3          # a quick check
    python benchmarks/bench_pool.py [--threads 2] [--device cpu] [--shape 32 64 22 22] [--k 2] [--stride 1]

``--shape`` is [B, C*|G|, H, W] (the default is a GCNN block's pooled map).
"""
from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import base_parser, fmt_ms, interleaved, print_table, setup_run  # noqa: E402

from gconv_ext.ops import group_avg_pool2d, group_max_pool2d  # noqa: E402

DTYPES = (("fp32", torch.float32), ("bf16", torch.bfloat16))


def fwd_bwd(fn, x, grad):
    def run():
        t = x.detach().requires_grad_()
        fn(t).backward(grad)
    return run


def main() -> None:
    p = base_parser(__doc__, rounds=9)
    p.add_argument("--shape", type=int, nargs=4, default=[32, 64, 22, 22])
    p.add_argument("--k", type=int, default=2)
    p.add_argument("--stride", type=int, default=1)
    p.add_argument("--padding", type=int, default=0)
    args = p.parse_args()
    setup_run(args.threads, args.device, f"shape {args.shape}, k={args.k} s={args.stride} p={args.padding}; up to "
              f"{args.rounds} interleaved rounds, budget {args.budget:g} s per pool")
    dev = torch.device(args.device)
    k, s_, pad = args.k, args.stride, args.padding
    x32 = torch.randn(*args.shape, device=dev)
    grad32 = torch.randn_like(F.max_pool2d(x32, k, s_, pad))

    def channels_last(fn):
        def run(t):
            return fn(t.contiguous(memory_format=torch.channels_last), k, s_, pad).contiguous()
        return run

    cases = {
        "max": [("ours", lambda t: group_max_pool2d(t, k, s_, pad)),
                ("F.max_pool2d NCHW", lambda t: F.max_pool2d(t, k, s_, pad)),
                ("F.max_pool2d channels_last (+conversion)", channels_last(F.max_pool2d))],
        "avg": [("ours", lambda t: group_avg_pool2d(t, k, s_, pad)),
                ("F.avg_pool2d NCHW", lambda t: F.avg_pool2d(t, k, s_, pad)),
                ("F.avg_pool2d channels_last (+conversion)", channels_last(F.avg_pool2d))],
    }
    rows = []
    for kind, impls in cases.items():
        cands = {(name, pr): fwd_bwd(fn, x32.to(dtype), grad32.to(dtype)) for pr, dtype in DTYPES for name, fn in impls}
        s = interleaved({f"{name} {pr}": fn for (name, pr), fn in cands.items()}, args.rounds, args.warmup,
                        min_block=args.min_block, warmup_time=args.warmup_time, budget=args.budget)
        for name, _ in impls:
            row = [kind, name]
            for pr, _ in DTYPES:
                t, ours = s[f"{name} {pr}"], s[f"ours {pr}"]
                row += [fmt_ms(t.median), t.ratio(ours).fmt(2) if name != "ours" else "1"]
            rows.append(row + [s[f"{name} fp32"].ratio(s[f"{name} bf16"]).fmt(2)])
    print_table(["pool", "implementation", "fp32 fwd+bwd ms", "fp32 time / ours", "bf16 fwd+bwd ms",
                 "bf16 time / ours", "bf16 speed-up (fp32/bf16 time)"], rows)


if __name__ == "__main__":
    main()
