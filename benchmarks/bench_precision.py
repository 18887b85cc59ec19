"""bf16 autocast against fp32: one training step (forward, loss, backward, AdamW) of the study's models,
fp32 and bf16 interleaved (A, B, A, B, ...), the median ratio and its spread over the repeats, plus what
``--precision auto`` picks on this machine. All in one run, so the ratios do not depend on the machine's
load at another time.

    python benchmarks/bench_precision.py [--threads 2] [--repeats 15] [--batch 32]
"""
from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F

from gconv_ext.provenance import cpu_model
from gconv_ext.train import build_model
from gconv_ext.train.precision import autocast_context, interleaved_step_times, resolve_precision

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
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch", type=int, default=32)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_model()}; {args.threads} threads; torch {torch.__version__}; batch {args.batch}; "
          f"median of {args.repeats} interleaved fp32/bf16 pairs\n")
    print("| model | fp32 ms/step | bf16 ms/step | bf16 speed-up (median) | spread (min-max) | auto picks |")
    print("|---|---:|---:|---:|---:|---|")
    for label, name, preset in MODELS:
        torch.manual_seed(0)
        model = build_model(name, preset=preset)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        x, y = torch.randn(args.batch, 1, 28, 28), torch.randint(0, 10, (args.batch,))
        steps = {pr: step_fn(model, opt, x, y, pr) for pr in ("fp32", "bf16")}
        times = interleaved_step_times(steps, args.repeats, args.warmup)
        ratios = [a / b for a, b in zip(times["fp32"], times["bf16"])]
        auto, _ = resolve_precision("auto", model, x, torch.device("cpu"))
        print(f"| {label} | {1e3 * statistics.median(times['fp32']):.1f} | {1e3 * statistics.median(times['bf16']):.1f} "
              f"| {statistics.median(ratios):.2f}x | {min(ratios):.2f}-{max(ratios):.2f}x | {auto} |")


if __name__ == "__main__":
    main()
