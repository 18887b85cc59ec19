"""The CPU loops per instruction set: the same ops run by each variant this CPU supports (default = the
compiler's baseline, SSE2 on x86-64; avx2; avx512), all in the same interleaved rounds (:func:`common.interleaved`).
Every variant gives bit-identical results (python_tests/test_cpu_capability.py), so only the time differs.
Ratios: the default variant's time over the variant's (a speed-up), median of per-round ratios (IQR).

Cases (fp32 and bf16 inputs; bf16 accumulates in fp32): the filter transforms forward + backward (the raw ops,
C_out = C_in = --channels, k = 5, C4 / C8 / C16) and the spatial pools forward + backward on a GCNN-sized map
[64, 16, 4, 28, 28] (max 2x2 stride 1, max 3x3 stride 2 padding 1, avg 2x2 stride 2).

    python benchmarks/bench_cpu_capability.py                 # about a minute on 2 idle threads
    python benchmarks/bench_cpu_capability.py --rounds 3 --budget 2   # a quick check
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import base_parser, fmt_ms, interleaved, print_table, setup_run  # noqa: E402

from gconv_ext import _C  # noqa: E402

ops = torch.ops.gconv_ext
DTYPES = (("fp32", torch.float32), ("bf16", torch.bfloat16))


def transform_case(kind: str, order: int, c: int, dtype: torch.dtype):
    w = torch.randn((c, c, 5, 5) if kind == "lift" else (c, c, order, 5, 5)).to(dtype)
    fwd, bwd = (ops.lift_filter, ops.lift_filter_backward) if kind == "lift" else (ops.group_filter,
                                                                                    ops.group_filter_backward)
    go = fwd(w, order, False, False).clone()

    def run():
        fwd(w, order, False, False)
        bwd(go, order, False, False)
    return run


def pool_case(mode: str, k: int, s: int, p: int, dtype: torch.dtype):
    x = torch.randn(64, 16, 4, 28, 28).to(dtype)
    args = ([k, k], [s, s], [p, p])

    def run():  # a training step's calls: the max forward stores its argmax taps, the backward reads them
        if mode == "max":
            out, idx = ops.group_max_pool2d_with_indices(x, *args)
            ops.group_max_pool2d_backward(out, idx, list(x.shape), *args)
        else:
            out = ops.group_avg_pool2d(x, *args)
            ops.group_avg_pool2d_backward(out, list(x.shape), *args)
    return run


def with_capability(cap: str, fn):
    def run():
        _C.set_cpu_capability(cap)
        fn()
    return run


def main() -> None:
    p = base_parser(__doc__, rounds=7, device=False)
    p.add_argument("--channels", type=int, default=32)
    args = p.parse_args()
    caps = list(_C.supported_cpu_capabilities())
    before = _C.cpu_capability()
    setup_run(args.threads, "cpu", f"variants {', '.join(caps)} (in use: {before}); up to {args.rounds} "
              f"interleaved rounds, budget {args.budget:g} s per case")
    cases = [(f"{kind} filter C{n}, C={args.channels}",
              lambda dt, kind=kind, n=n: transform_case(kind, n, args.channels, dt))
             for n in (4, 8, 16) for kind in ("lift", "group")]
    cases += [(f"{mode} pool {k}x{k}/{s} pad {pad}",
               lambda dt, mode=mode, k=k, s=s, pad=pad: pool_case(mode, k, s, pad, dt))
              for mode, k, s, pad in (("max", 2, 1, 0), ("max", 3, 2, 1), ("avg", 2, 2, 0))]
    rows = []
    try:
        for label, make in cases:
            row = [label]
            for pr, dtype in DTYPES:
                fn = make(dtype)
                s = interleaved({cap: with_capability(cap, fn) for cap in caps}, args.rounds, args.warmup,
                                min_block=args.min_block, warmup_time=args.warmup_time, budget=args.budget)
                row += [fmt_ms(s[cap].median) for cap in caps]
                row += [s["default"].ratio(s[cap]).fmt(2) for cap in caps[1:]]
            rows.append(row)
            print(f"{label}: done", file=sys.stderr)
    finally:
        _C.set_cpu_capability(before)
    header = ["case"]
    for pr, _ in DTYPES:
        header += [f"{cap} {pr} ms" for cap in caps] + [f"default/{cap} {pr}" for cap in caps[1:]]
    print("forward + backward, ms per call (median of rounds); default/variant = speed-up of the variant")
    print_table(header, rows)


if __name__ == "__main__":
    main()
