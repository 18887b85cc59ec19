"""Training step of the study's GCNN (default C4/4/16, batch 32), every variant timed in the same
interleaved rounds (:func:`common.interleaved`: rotating order, blocks >= 0.25 s), fp32 and under
``torch.autocast("cpu", dtype=torch.bfloat16)``. Ratios are medians of the per-round ratios, with their
interquartile range (IQR) and min-max.

Full training steps (forward, cross-entropy, backward, AdamW step):

* ours:        gconv_ext's GCNN (fused custom ops; filters transformed by the C++ kernels every step)
* study-style: the same architecture written the way the study's code does it: filters expanded with
               affine_grid + grid_sample on every forward, spatial max pool in a Python loop over group slices
* floor:       the same network with the expanded filters as plain parameters (no transform at all):
               convolutions, normalisation and pooling (torch's own max_pool2d)
* compiled:    (``--compile``) ours with the model under ``torch.compile`` (the optimiser step eager)
* channels_last: (``--channels-last``) ours after ``model.to(memory_format=torch.channels_last)``, the input
               images channels_last too
* unfused glue: (``--unfused-glue``) ours with ``model.fuse_glue = False``: LayerNorm, ReLU and max pool as
               three ops (ours fuses each such block into ``group_layer_norm_relu_max_pool2d`` by default)

The model's convolutions alone (forward + backward with a fixed output gradient, weight gradients only,
no norm, ReLU, pooling, head, loss or optimiser; each 2x2/1 pool replaced by a free crop so every conv sees
the model's shapes: 1->C lifting at 28x28 padding 1, then L C->C group convs, no padding):

* convs alone, bare conv2d:  one ``F.conv2d`` per layer with the model's expanded filters precomputed once
                             (the issue's baseline: "the same convolutions alone")
* convs alone, our ops:      the model's own LiftingConv2d / GroupConv2d modules (filter transform included)

Printed: ms per step and images/s per variant, and the **fraction** = time of the convolutions alone /
time of our full step (median of per-round fractions, IQR), for both baselines, fp32 and bf16. A fraction
of 1 means the step costs no more than its convolutions; the issue's target is >= 0.9 against the bare
conv2d baseline.

The default run takes about 1-2 minutes on 2 idle threads (rounds stop early after ``--budget`` seconds,
never below 3). Commands:

    python benchmarks/bench_gcnn_train.py                                  # the default run
    python benchmarks/bench_gcnn_train.py --rounds 3 --budget 10           # a quick check
    python benchmarks/bench_gcnn_train.py --preset C8/4/32 --batch 32 --rounds 11 --budget 300
    python benchmarks/bench_gcnn_train.py --no-study --no-floor            # only ours vs its convolutions
    python benchmarks/bench_gcnn_train.py --compile                        # also ours under torch.compile
    python benchmarks/bench_gcnn_train.py --no-study --no-floor --unfused-glue   # also ours with the glue unfused
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gconv_ext  # noqa: E402
from gconv_ext.models import GCNN, count_parameters, gcnn_preset  # noqa: E402
from gconv_ext.ops import reference  # noqa: E402
from common import add_interleave_flags, interleaved, print_table, setup_run  # noqa: E402

PRECISIONS = ("fp32", "bf16")


def _convs(model: GCNN) -> list[nn.Module]:
    return [m for m in model.features if isinstance(m, (gconv_ext.nn.LiftingConv2d, gconv_ext.nn.GroupConv2d))]


class StudyGCNN(nn.Module):
    """The study's GCNN code path: grid_sample filter expansion each forward, Python-loop pooling."""

    def __init__(self, model: GCNN, expand_on_forward: bool = True) -> None:
        super().__init__()
        self.group = model.group
        self.expand_on_forward = expand_on_forward
        convs = _convs(model)
        self.paddings = [c.padding for c in convs]
        if expand_on_forward:  # base filters, expanded every step
            self.weights = nn.ParameterList([nn.Parameter(c.weight.detach().clone()) for c in convs])
        else:  # the floor: expanded filters as plain parameters
            self.weights = nn.ParameterList([nn.Parameter(c.expanded_weight().detach().clone()) for c in convs])
        self.classifier = nn.Linear(model.classifier.in_features, model.classifier.out_features)
        self.classifier.load_state_dict(model.classifier.state_dict())

    def _filter(self, i: int) -> torch.Tensor:
        w = self.weights[i]
        if not self.expand_on_forward:
            return w
        n = self.group.order
        if i == 0:
            e = reference.lift_filter_grid_sample(w, self.group)
            return e.reshape(w.shape[0] * n, w.shape[1], *w.shape[-2:])
        e = reference.group_filter_grid_sample(w, self.group)
        return e.reshape(w.shape[0] * n, w.shape[1] * n, *w.shape[-2:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.group.order
        last = len(self.weights) - 1
        for i in range(len(self.weights)):
            planar = x if i == 0 else x.flatten(1, 2)
            y = F.conv2d(planar, self._filter(i), None, 1, self.paddings[i])
            x = y.view(y.shape[0], -1, n, *y.shape[-2:])
            x = F.relu(F.layer_norm(x, x.shape[1:]))
            if self.expand_on_forward and 0 < i < last:  # the study: a Python loop over group slices
                x = torch.stack([F.max_pool2d(x[:, :, g], 2, 1) for g in range(n)], dim=2)
            elif 0 < i < last:
                x = F.max_pool2d(x.flatten(1, 2), 2, 1).unflatten(1, (x.shape[1], n))
        return self.classifier(x.mean(dim=(2, 3, 4)))


class ConvsAlone(nn.Module):
    """The model's convolutions in a chain, nothing else: a free crop stands for each 2x2/1 pool.

    ``bare=True``: ``F.conv2d`` on planar maps with the expanded filters precomputed once (leaves);
    ``bare=False``: copies of the model's own LiftingConv2d / GroupConv2d modules."""

    def __init__(self, model: GCNN, bare: bool) -> None:
        super().__init__()
        self.bare, self.n = bare, model.group.order
        convs = _convs(model)
        self.paddings = [c.padding for c in convs]
        if bare:
            self.weights = nn.ParameterList([nn.Parameter(c.expanded_weight().detach().clone()) for c in convs])
        else:
            self.convs = nn.ModuleList([copy.deepcopy(c) for c in convs])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        count = len(self.paddings)
        for i in range(count):
            if self.bare:  # planar maps throughout: [B, C*|G|, H, W]
                x = F.conv2d(x, self.weights[i], None, 1, self.paddings[i])
            else:
                x = self.convs[i](x)
            if 0 < i < count - 1:
                x = x[..., :-1, :-1]  # the shape a 2x2/1 pool gives, at no cost
        return x if self.bare else x.flatten(1, 2)


def autocast(precision: str):
    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()


def model_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, precision: str):
    """One training step: forward + cross-entropy (autocast for bf16), backward, AdamW (torch's fused kernel, as
    gconv_ext's training engine runs it: gconv_ext.train.engine.make_optimizer)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4, fused=True)

    def step() -> None:
        with autocast(precision):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def convs_step(convs: ConvsAlone, x: torch.Tensor, precision: str):
    """Forward (autocast for bf16) + backward with a fixed output gradient; grads reset each call."""
    params = list(convs.parameters())
    grad = {}

    def step() -> None:
        for p in params:
            p.grad = None
        with autocast(precision):
            out = convs(x)
        if out.dtype not in grad:
            grad[out.dtype] = torch.ones_like(out) / out.numel()
        out.backward(grad[out.dtype])
    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="C4/4/16")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--budget", type=float, default=90.0, help="seconds for the rounds before they stop early")
    p.add_argument("--no-study", action="store_true", help="skip the study-style network")
    p.add_argument("--no-floor", action="store_true", help="skip the precomputed-filter network")
    p.add_argument("--channels-last", action="store_true",
                   help="add ours with the model and input in channels_last (model.to(memory_format=...))")
    p.add_argument("--compile", action="store_true",
                   help="add ours under torch.compile (a copy of the model; compiling takes a minute or two)")
    p.add_argument("--unfused-glue", action="store_true",
                   help="add ours with model.fuse_glue = False (LayerNorm, ReLU and max pool as three ops), to "
                        "measure the fused operator ours uses")
    # blocks of >= 0.25 s: 4-8 steps each (one 40-70 ms step per block gave per-round fractions spread over 0.5-1.2)
    add_interleave_flags(p, rounds=15, warmup=2, min_block=0.25)
    args = p.parse_args()
    model = gcnn_preset(args.preset)
    setup_run(args.threads, "cpu", f"GCNN {args.preset} ({count_parameters(model):,} parameters), batch "
              f"{args.batch}; up to {args.rounds} interleaved rounds, budget {args.budget:g} s, "
              f"blocks >= {args.min_block * 1e3:g} ms")
    t_start = time.perf_counter()
    study, floor = StudyGCNN(model, True), StudyGCNN(model, False)
    bare, ops = ConvsAlone(model, bare=True), ConvsAlone(model, bare=False)
    xc = torch.randn(4, 1, 28, 28)
    with torch.no_grad():  # the variants compute the same functions
        ref = model(xc)
        assert torch.allclose(study(xc), ref, atol=1e-4), "study-style model differs"
        assert torch.allclose(floor(xc), ref, atol=1e-4), "floor model differs"
        a, b = bare(xc), ops(xc)
        assert a.shape == b.shape and torch.allclose(a, b, rtol=1e-4, atol=1e-4 * a.abs().max().item()), \
            "the two convolutions-alone chains differ"
    torch.manual_seed(0)
    x = torch.randn(args.batch, 1, 28, 28)
    y = torch.randint(0, 10, (args.batch,))
    compiled = torch.compile(copy.deepcopy(model)) if args.compile else None
    cl = copy.deepcopy(model).to(memory_format=torch.channels_last) if args.channels_last else None
    unfused = None
    if args.unfused_glue:
        unfused = copy.deepcopy(model)
        unfused.fuse_glue = False
    fns = {}
    for pr in PRECISIONS:
        fns[f"ours {pr}"] = model_step(model, x, y, pr)
        if cl is not None:
            fns[f"channels-last {pr}"] = model_step(cl, x.to(memory_format=torch.channels_last), y, pr)
        if compiled is not None:
            fns[f"compiled {pr}"] = model_step(compiled, x, y, pr)
        if unfused is not None:
            fns[f"unfused-glue {pr}"] = model_step(unfused, x, y, pr)
        if not args.no_study:
            fns[f"study {pr}"] = model_step(study, x, y, pr)
        if not args.no_floor:
            fns[f"floor {pr}"] = model_step(floor, x, y, pr)
        fns[f"convs-bare {pr}"] = convs_step(bare, x, pr)
        fns[f"convs-ops {pr}"] = convs_step(ops, x, pr)
    s = interleaved(fns, args.rounds, args.warmup, min_block=args.min_block, warmup_time=args.warmup_time,
                    baseline="ours fp32", budget=args.budget)
    rounds = len(s["ours fp32"].per_round)

    labels = {"ours": "ours (GCNN)", "channels-last": "ours, channels_last model and input",
              "compiled": "ours under torch.compile",
              "unfused-glue": "ours with the glue unfused (LayerNorm, ReLU, max pool)",
              "study": "study-style (grid_sample, Python-loop pool)",
              "floor": "floor: network with precomputed filters",
              "convs-bare": "convolutions alone, bare conv2d, precomputed filters (fwd+bwd)",
              "convs-ops": "convolutions alone, our LiftingConv2d/GroupConv2d (fwd+bwd)"}
    rows = []
    for key, label in labels.items():
        if f"{key} fp32" not in s:
            continue
        row = [label]
        for pr in PRECISIONS:
            t = s[f"{key} {pr}"]
            row += [f"{t.median * 1e3:.2f}", f"{args.batch / t.median:.0f}",
                    t.ratio(s[f"ours {pr}"]).fmt(2) if key != "ours" else "1"]
        row.append(s[f"{key} fp32"].ratio(s[f"{key} bf16"]).fmt(2))
        rows.append(row)
    print(f"\nTraining step, {rounds} interleaved rounds; ratios: median of per-round ratios (IQR)")
    print_table(["variant", "fp32 ms", "fp32 images/s", "fp32 time / ours", "bf16 ms", "bf16 images/s",
                 "bf16 time / ours", "bf16 speed-up (fp32/bf16 time)"], rows)

    print("\nFraction = time of the convolutions alone / time of our full training step "
          "(1 = the step costs only its convolutions; target >= 0.9 against the bare conv2d)")
    f_rows = []
    steps = ["ours"] + (["compiled"] if compiled is not None else [])
    steps += ["unfused-glue"] if unfused is not None else []
    for step in steps:
        for key in ("convs-bare", "convs-ops"):
            row = [labels[step], labels[key]]
            for pr in PRECISIONS:
                f = s[f"{key} {pr}"].ratio(s[f"{step} {pr}"])
                row += [f.fmt(3, ""), f"{f.min:.3f}-{f.max:.3f}"]
            f_rows.append(row)
    print_table(["step", "baseline", "fp32 fraction (IQR)", "fp32 min-max", "bf16 fraction (IQR)", "bf16 min-max"],
                f_rows)
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
