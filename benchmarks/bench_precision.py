"""bf16 autocast against fp32: one training step (forward, loss, backward, AdamW) of the study's models,
fp32 and bf16 in the same interleaved rounds (:func:`common.interleaved`: A, B / B, A / ...), the median
of the per-round ratios with its spread (IQR and min-max), plus what ``--precision auto`` picks on this
machine. All in one run, so the ratios do not depend on the machine's load at another time.

    python benchmarks/bench_precision.py                  # default: about a minute on 2 idle threads
    python benchmarks/bench_precision.py --rounds 3       # a quick check
    python benchmarks/bench_precision.py [--threads 2] [--rounds 15] [--batch 32] [--budget 20]
"""
from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import base_parser, interleaved, print_table, setup_run  # noqa: E402

from gconv_ext.train import build_model  # noqa: E402
from gconv_ext.train.precision import autocast_context, resolve_precision  # noqa: E402

MODELS = (("GCNN C4/4/16", "gcnn", "C4/4/16"), ("STN canonical", "stn-single-canonical", "matched"),
          ("CNN", "cnn", "matched"))


def step_fn(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, precision: str):
    def step() -> None:
        with autocast_context(precision, torch.device("cpu")):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def main() -> None:
    p = base_parser(__doc__, rounds=15, device=False, warmup=3, budget=20.0)
    p.add_argument("--batch", type=int, default=32)
    args = p.parse_args()
    setup_run(args.threads, "cpu", f"batch {args.batch}; up to {args.rounds} interleaved fp32/bf16 rounds, "
              f"budget {args.budget:g} s per model")
    rows = []
    for label, name, preset in MODELS:
        torch.manual_seed(0)
        model = build_model(name, preset=preset)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        x, y = torch.randn(args.batch, 1, 28, 28), torch.randint(0, 10, (args.batch,))
        steps = {pr: step_fn(model, opt, x, y, pr) for pr in ("fp32", "bf16")}
        s = interleaved(steps, args.rounds, args.warmup, min_block=args.min_block, warmup_time=args.warmup_time,
                        budget=args.budget)
        speedup = s["fp32"].ratio(s["bf16"])
        auto, _ = resolve_precision("auto", model, x, torch.device("cpu"))
        rows.append([label, f"{1e3 * s['fp32'].median:.1f}", f"{1e3 * s['bf16'].median:.1f}", speedup.fmt(2),
                     f"{speedup.min:.2f}-{speedup.max:.2f}x", str(len(speedup.values)), auto])
    print_table(["model", "fp32 ms/step", "bf16 ms/step", "bf16 speed-up (fp32/bf16 time)", "min-max", "rounds",
                 "auto picks"], rows)


if __name__ == "__main__":
    main()
