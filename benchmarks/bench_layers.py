"""Layer benchmark: gconv_ext's LiftingConv2d / GroupConv2d against the bare backend ``F.conv2d`` with a
precomputed expanded filter (the floor), every ratio measured with :func:`common.interleaved`: per case
(batch, layer, group, mode) one run of interleaved rounds (rotating order) over all candidates in fp32 and
under ``torch.autocast("cpu", dtype=torch.bfloat16)``; a ratio is the median of the per-round ratios,
printed as ``ratio (IQR lo-hi)``.

Candidates (all in the same rounds, each in fp32 and bf16 autocast):

* ours:   the nn module (LiftingConv2d 1->16 C8 / GroupConv2d 16->16 C4, C8, C16 by default, k=5, padding
          k//2, no bias, 28x28). Train mode: the fused op (filter transform every step); eval mode under
          no_grad: the module's cached expanded filter.
* floor:  one ``F.conv2d`` on the planar input (``[B, C_in(*|G|), H, W]``, made once) with the expanded filter
          precomputed once (``layer.expanded_weight()``), a leaf like the layer's weight.
* nn.Conv2d: torch's own ``nn.Conv2d`` module holding the same expanded filter as its weight: what a module
          call costs over the bare function in torch itself (the floor for any ``nn.Module`` layer).
* study:  (``--study``) the study's layer: filter expanded with affine_grid + grid_sample on every forward,
          then ``F.conv2d``.
* e2cnn:  e2cnn's ``R2Conv`` with regular fields (lifting: trivial input fields), only when e2cnn is
          installed (``--no-e2cnn`` skips it). Eval mode: its cached filter.

Train step = forward + backward with a fixed output gradient (weight gradient always; input gradient for
the group conv, not for the lifting conv, whose input is the image in a network); ``.grad`` is reset before
each step for every candidate. Eval = forward under ``torch.no_grad()``.
Also the spatial max pool (2x2, stride 1) keeping the group axis against the study's Python loop over group
slices (fwd+bwd, the largest batch, group-conv cases).

A case's rounds stop early (never below 3) once ``--budget`` seconds are spent. The default run (batch 1:
lifting C8 and group C4/C8/C16; batch 64: lifting C8 and group C4) takes about 1-2 minutes on 2 idle
threads. Commands:

    python benchmarks/bench_layers.py                                   # the default run
    python benchmarks/bench_layers.py --rounds 3 --budget 2 --no-e2cnn  # a quick check
    python benchmarks/bench_layers.py --batches 64 --orders-large 4 8 16 --budget 60  # batch 64, all groups
    python benchmarks/bench_layers.py --study --threads 2 --rounds 11   # with the study-style layer
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import add_interleave_flags, interleaved, print_table, setup_run  # noqa: E402

from gconv_ext.groups import Group  # noqa: E402
from gconv_ext.nn import GroupConv2d, GroupMaxPool2d, LiftingConv2d  # noqa: E402
from gconv_ext.ops import reference  # noqa: E402

try:  # optional comparison
    from e2cnn import gspaces
    from e2cnn import nn as enn
except ImportError:  # pragma: no cover - depends on the machine
    enn = None

PRECISIONS = ("fp32", "bf16")
# The targets (ours / floor, fp32): (layer kind, batch or None for any, mode) -> bound
TARGETS = [("lifting conv, batch 1, train", "lift", 1, "train", 1.3),
           ("lifting conv, batch 1, eval", "lift", 1, "eval", 1.05),
           ("group conv, batch 1, train", "group", 1, "train", 1.1),
           ("group conv, batch 64, train", "group", 64, "train", 1.05)]


def autocast(precision: str):
    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()


def train_fn(forward, x, params, precision):
    """One training step: reset the leaves' grads, forward (under autocast for bf16), backward with a fixed
    output gradient (made on the first call, in the output's dtype)."""
    grad = {}

    def run():
        for p in params:
            p.grad = None
        with autocast(precision):
            out = forward(x)
        if out.dtype not in grad:
            grad[out.dtype] = torch.ones_like(out)
        out.backward(grad[out.dtype])
    return run


def eval_fn(forward, x, precision):
    def run():
        with torch.no_grad(), autocast(precision):
            forward(x)
    return run


class Case:
    """One layer: ours, its planar input and precomputed expanded filter, the study's and e2cnn's layer."""

    def __init__(self, kind: str, cin: int, cout: int, n: int, k: int, hw: int, use_e2cnn: bool,
                 e2cache: dict) -> None:
        self.kind, self.cin, self.cout, self.n, self.k, self.hw = kind, cin, cout, n, k, hw
        self.pad = k // 2
        g = self.group = Group(n)
        torch.manual_seed(0)
        cls = LiftingConv2d if kind == "lift" else GroupConv2d
        self.layer = cls(cin, cout, k, g, padding=self.pad, bias=False)
        self.w_exp = self.layer.expanded_weight().detach().clone().requires_grad_()
        self.w_base = self.layer.weight.detach().clone().requires_grad_()
        self.torch_conv = nn.Conv2d(self.w_exp.shape[1], self.w_exp.shape[0], k, padding=self.pad, bias=False)
        with torch.no_grad():
            self.torch_conv.weight.copy_(self.w_exp)
        self.r2 = None
        if use_e2cnn:
            key = (kind, cin, cout, n, k)
            if key not in e2cache:
                gs = gspaces.Rot2dOnR2(N=n)
                fin = enn.FieldType(gs, cin * [gs.trivial_repr if kind == "lift" else gs.regular_repr])
                fout = enn.FieldType(gs, cout * [gs.regular_repr])
                e2cache[key] = (fin, enn.R2Conv(fin, fout, k, padding=self.pad, bias=False))
            self.e2_in, self.r2 = e2cache[key]

    @property
    def name(self) -> str:
        return f"lift {self.cin}->{self.cout}" if self.kind == "lift" else f"group {self.cin}->{self.cout}"

    def inputs(self, batch: int):
        torch.manual_seed(1)
        if self.kind == "lift":
            x = torch.randn(batch, self.cin, self.hw, self.hw)
            return x, x  # the image: no input gradient
        x = torch.randn(batch, self.cin, self.n, self.hw, self.hw, requires_grad=True)
        planar = x.detach().flatten(1, 2).contiguous().requires_grad_()  # e2cnn's channel order too
        return x, planar

    def floor(self, xp):
        return F.conv2d(xp, self.w_exp, None, 1, self.pad)

    def study(self, xp):
        w = self.w_base
        if self.kind == "lift":
            e = reference.lift_filter_grid_sample(w, self.group)
        else:
            e = reference.group_filter_grid_sample(w, self.group)
        return F.conv2d(xp, e.reshape(self.w_exp.shape), None, 1, self.pad)

    def e2(self, xp):
        return self.r2(enn.GeometricTensor(xp, self.e2_in)).tensor

    def candidates(self, batch: int, mode: str, study: bool) -> dict:
        x, xp = self.inputs(batch)
        group_input = [x] if self.kind == "group" else []
        group_planar = [xp] if self.kind == "group" else []
        fns = {}
        for pr in PRECISIONS:
            if mode == "train":
                fns[f"ours {pr}"] = train_fn(self.layer, x, [self.layer.weight, *group_input], pr)
                fns[f"floor {pr}"] = train_fn(self.floor, xp, [self.w_exp, *group_planar], pr)
                fns[f"nn.Conv2d {pr}"] = train_fn(self.torch_conv, xp, [self.torch_conv.weight, *group_planar], pr)
                if study:
                    fns[f"study {pr}"] = train_fn(self.study, xp, [self.w_base, *group_planar], pr)
                if self.r2 is not None:
                    fns[f"e2cnn {pr}"] = train_fn(self.e2, xp, [*self.r2.parameters(), *group_planar], pr)
            else:
                fns[f"ours {pr}"] = eval_fn(self.layer, x, pr)
                fns[f"floor {pr}"] = eval_fn(self.floor, xp, pr)
                fns[f"nn.Conv2d {pr}"] = eval_fn(self.torch_conv, xp, pr)
                if study:
                    fns[f"study {pr}"] = eval_fn(self.study, xp, pr)
                if self.r2 is not None:
                    fns[f"e2cnn {pr}"] = eval_fn(self.e2, xp, pr)
        return fns

    def set_mode(self, mode: str) -> None:
        self.layer.train(mode == "train")
        self.torch_conv.train(mode == "train")
        if self.r2 is not None:
            self.r2.train(mode == "train")


def ms(stats) -> str:
    return f"{stats.median * 1e3:.3f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    p.add_argument("--channels", type=int, default=16, help="C_out (and C_in of the group conv)")
    p.add_argument("--lift-in", type=int, default=1, help="C_in of the lifting conv")
    p.add_argument("--lift-orders", type=int, nargs="*", default=[8], help="groups C_N of the lifting conv")
    p.add_argument("--orders", type=int, nargs="*", default=[4, 8, 16], help="group conv groups C_N, batch < 64")
    p.add_argument("--orders-large", type=int, nargs="*", default=[4],
                   help="group conv groups C_N at batch >= 64 (C16 at batch 64 takes ~10 s a step on 2 threads)")
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--budget", type=float, default=6.0, help="seconds per case before rounds stop early (>= 3)")
    p.add_argument("--modes", nargs="+", default=["train", "eval"], choices=["train", "eval"])
    p.add_argument("--study", action="store_true", help="add the study's grid_sample layer")
    p.add_argument("--no-e2cnn", action="store_true", help="skip the e2cnn comparison")
    p.add_argument("--no-pool", action="store_true", help="skip the pooling comparison")
    add_interleave_flags(p, rounds=7)
    args = p.parse_args()
    warnings.simplefilter("ignore")
    use_e2cnn = enn is not None and not args.no_e2cnn
    setup_run(args.threads, "cpu", f"e2cnn={'yes' if use_e2cnn else 'no' if enn is not None else 'not installed'}; "
              f"k={args.k}, {args.size}x{args.size}, padding k//2; up to {args.rounds} interleaved rounds, "
              f"budget {args.budget:g} s per case, blocks >= {args.min_block * 1e3:g} ms")
    t_start = time.perf_counter()
    e2cache: dict = {}
    results = {}  # (batch, kind, n, mode) -> stats
    cases = {}
    for batch in args.batches:
        specs = [("lift", args.lift_in, n) for n in args.lift_orders]
        specs += [("group", args.channels, n) for n in (args.orders_large if batch >= 64 else args.orders)]
        for kind, cin, n in specs:
            key = (kind, n)
            if key not in cases:
                cases[key] = Case(kind, cin, args.channels, n, args.k, args.size, use_e2cnn, e2cache)
            case = cases[key]
            for mode in args.modes:
                case.set_mode(mode)
                stats = interleaved(case.candidates(batch, mode, args.study), args.rounds, args.warmup,
                                    min_block=args.min_block, warmup_time=args.warmup_time, baseline="ours fp32",
                                    budget=args.budget)
                results[(batch, kind, n, mode)] = stats
                r = stats["floor fp32"]
                print(f"[{time.perf_counter() - t_start:6.1f} s] batch {batch} {case.name} C{n} {mode}: "
                      f"ours/floor fp32 {stats['ours fp32'].ratio(r).fmt()}, "
                      f"bf16 {stats['ours bf16'].ratio(stats['floor bf16']).fmt()} "
                      f"({len(r.per_round)} rounds)", file=sys.stderr, flush=True)
            case.set_mode("train")

    for mode in args.modes:
        rows, cmp_rows = [], []
        for (batch, kind, n, m), s in results.items():
            if m != mode:
                continue
            label = [str(batch), cases[(kind, n)].name, f"C{n}"]
            row = list(label)
            for pr in PRECISIONS:
                ours, floor = s[f"ours {pr}"], s[f"floor {pr}"]
                row += [ms(ours), ms(floor), ours.ratio(floor).fmt()]
            row += [s["ours fp32"].ratio(s["ours bf16"]).fmt(2), str(len(s["ours fp32"].per_round))]
            rows.append(row)
            extra = [name.split()[0] for name in s if name.split()[0] not in ("ours", "floor")]
            if extra:
                cmp = list(label)
                for other in dict.fromkeys(extra):
                    for pr in PRECISIONS:
                        cmp += [ms(s[f"{other} {pr}"]), s[f"{other} {pr}"].ratio(s[f"ours {pr}"]).fmt(2)]
                cmp_rows.append((list(dict.fromkeys(extra)), cmp))
        what = ("training step (forward + backward)" if mode == "train"
                else "eval forward (no_grad; ours: cached expanded filter)")
        print(f"\n{what}: ours vs the bare F.conv2d with a precomputed filter, ms per call (median) and "
              f"ours/floor = median of per-round ratios (IQR)")
        print_table(["batch", "layer", "group", "ours fp32", "floor fp32", "ours/floor fp32", "ours bf16",
                     "floor bf16", "ours/floor bf16", "ours fp32/bf16 (bf16 speed-up)", "rounds"], rows)
        if cmp_rows:
            names = cmp_rows[0][0]
            header = ["batch", "layer", "group"]
            for other in names:
                header += [f"{other} fp32 ms", f"{other}/ours fp32", f"{other} bf16 ms", f"{other}/ours bf16"]
            print(f"\n{what}: comparisons, time / ours (same rounds)")
            print_table(header, [c for _, c in cmp_rows])

    print("\nThe issue's targets, ours / floor (fp32; bf16 alongside)")
    t_rows = []
    for label, kind, batch, mode, bound in TARGETS:
        for (b, k_, n, m), s in results.items():
            if k_ == kind and b == batch and m == mode:
                r32 = s["ours fp32"].ratio(s["floor fp32"])
                r16 = s["ours bf16"].ratio(s["floor bf16"])
                module32 = s["nn.Conv2d fp32"].ratio(s["floor fp32"])
                t_rows.append([label, f"C{n}", f"<= {bound}x", r32.fmt(), "yes" if r32.median <= bound else "NO",
                               r16.fmt(), module32.fmt()])
    print_table(["case", "group", "target", "fp32", "met (fp32)", "bf16", "torch nn.Conv2d / floor, fp32"], t_rows)

    if not args.no_pool:
        batch = max(args.batches)
        pool_rows = []
        pool = GroupMaxPool2d(2, stride=1)
        for n in (args.orders_large if batch >= 64 else args.orders):
            torch.manual_seed(0)
            x = torch.randn(batch, args.channels, n, args.size, args.size, requires_grad=True)

            def study_pool(xi, n=n):
                return torch.stack([F.max_pool2d(xi[:, :, i], 2, 1) for i in range(n)], dim=2)

            xb = x.detach().bfloat16().requires_grad_()  # bf16: the activations of a bf16 network
            fns = {f"{name} {pr}": train_fn(fn, xi, [xi], "fp32") for pr, xi in (("fp32", x), ("bf16", xb))
                   for name, fn in (("ours", pool), ("study", study_pool))}
            s = interleaved(fns, args.rounds, args.warmup, min_block=args.min_block, warmup_time=args.warmup_time,
                            budget=args.budget)
            pool_rows.append([str(batch), str(args.channels), f"C{n}"]
                             + [v for pr in PRECISIONS for v in (ms(s[f"ours {pr}"]), ms(s[f"study {pr}"]),
                                                                 s[f"study {pr}"].ratio(s[f"ours {pr}"]).fmt(2))])
        print("\nSpatial max pool 2x2/1 keeping the group axis, fwd+bwd ms (bf16: a bf16 input); "
              "study loop / GroupMaxPool2d")
        print_table(["batch", "C", "group", "ours fp32", "study fp32", "study/ours fp32", "ours bf16", "study bf16",
                     "study/ours bf16"], pool_rows)
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
