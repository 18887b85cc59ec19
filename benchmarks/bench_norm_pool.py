"""The GCNN block's glue: layer norm + ReLU + 2x2 stride-1 max pool of a group map, forward + backward, as the
GCNN runs it (one fused operator, :func:`gconv_ext.ops.group_layer_norm_relu_max_pool2d`) against the same three
steps one after another (``F.layer_norm``, ``F.relu``, our ``group_max_pool2d``) and against torch's own ops
throughout (``F.max_pool2d`` on the ``[B, C |G|, H, W]`` view), all in the same interleaved rounds
(:func:`common.interleaved`). Ratios: the unfused time over the fused (a speed-up), median of per-round ratios
(IQR). Also the first and the last block's layer norm + ReLU without a pool (the fused op with a 1x1 window).

Shapes: the GCNN C4/4/16's maps at batch 32 (``[32, 16, 4, 26, 26]``, ``[32, 16, 4, 22, 22]``, ...), fp32 and
bf16 (bf16 accumulates in fp32).

    python benchmarks/bench_norm_pool.py                      # about a minute on 2 idle threads
    python benchmarks/bench_norm_pool.py --rounds 3 --budget 2   # a quick check
"""
from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import base_parser, fmt_ms, interleaved, print_table, setup_run, train_step  # noqa: E402

from gconv_ext.ops import group_layer_norm_relu_max_pool2d, group_max_pool2d  # noqa: E402

DTYPES = (("fp32", torch.float32), ("bf16", torch.bfloat16))


def fused(k):
    return lambda x: group_layer_norm_relu_max_pool2d(x, k, 1)


def unfused(k):
    def f(x):
        y = F.relu(F.layer_norm(x, x.shape[1:]))
        return group_max_pool2d(y, k, 1) if k > 1 else y
    return f


def torch_only(k):
    def f(x):
        y = F.relu(F.layer_norm(x, x.shape[1:]))
        if k == 1:
            return y
        b, c, g, h, w = y.shape
        return F.max_pool2d(y.reshape(b, c * g, h, w), k, 1).reshape(b, c, g, h - k + 1, w - k + 1)
    return f


def main() -> None:
    p = base_parser(__doc__, rounds=7, device=False)
    p.add_argument("--batch", type=int, default=32)
    args = p.parse_args()
    setup_run(args.threads, "cpu", f"up to {args.rounds} interleaved rounds, budget {args.budget:g} s per case")
    # the C4/4/16 blocks (size of the conv output, window): LN+ReLU after the lifting, three pooled blocks, LN+ReLU
    cases = [(26, 1), (22, 2), (17, 2), (12, 2), (7, 1)]
    rows = []
    for size, k in cases:
        row = [f"[{args.batch}, 16, 4, {size}, {size}], " + ("LN+ReLU+pool 2x2/1" if k > 1 else "LN+ReLU")]
        for _, dtype in DTYPES:
            x = torch.randn(args.batch, 16, 4, size, size).to(dtype)
            s = interleaved({"fused": train_step(fused(k), x), "unfused": train_step(unfused(k), x),
                             "torch": train_step(torch_only(k), x)}, args.rounds, args.warmup,
                            min_block=args.min_block, warmup_time=args.warmup_time, budget=args.budget)
            row += [fmt_ms(s["fused"].median), fmt_ms(s["unfused"].median), fmt_ms(s["torch"].median),
                    s["unfused"].ratio(s["fused"]).fmt(2), s["torch"].ratio(s["fused"]).fmt(2)]
        rows.append(row)
        print(f"{row[0]}: done", file=sys.stderr)
    header = ["map, glue"]
    for pr, _ in DTYPES:
        header += [f"fused {pr} ms", f"unfused {pr} ms", f"torch {pr} ms", f"unfused/fused {pr}", f"torch/fused {pr}"]
    print("forward + backward, ms per call (median of rounds); x/fused = speed-up of the fused op over x")
    print_table(header, rows)


if __name__ == "__main__":
    main()
