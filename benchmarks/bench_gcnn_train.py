"""Training throughput (images/s) of the study's GCNN, three ways, measured in the same run:

* ours:        gconv_ext's GCNN (fused custom ops; filters transformed by the C++ kernels every step)
* study-style: the same architecture written the way the study's code does it: filters expanded with
               affine_grid + grid_sample on every forward, spatial max pool in a Python loop over group slices
* floor:       the same network with the expanded filters as plain parameters (no transform at all):
               convolutions, normalisation and pooling (torch's own max_pool2d)
* convs alone: only the convolutions, with precomputed filters (pooling replaced by a free crop that
               keeps the shapes): the issue's floor, "the same convolutions alone"

Also ours under ``torch.autocast("cpu", dtype=torch.bfloat16)``.

    python benchmarks/bench_gcnn_train.py [--preset C4/4/16] [--batch 32] [--threads 2] [--steps 20]
"""
from __future__ import annotations

import argparse
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
from common import setup_run  # noqa: E402


class StudyGCNN(nn.Module):
    """The study's GCNN code path: grid_sample filter expansion each forward, Python-loop pooling."""

    def __init__(self, model: GCNN, expand_on_forward: bool = True, convs_only: bool = False) -> None:
        super().__init__()
        self.convs_only = convs_only
        self.group = model.group
        self.expand_on_forward = expand_on_forward
        convs = [m for m in model.features if isinstance(m, (gconv_ext.nn.LiftingConv2d, gconv_ext.nn.GroupConv2d))]
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
            if self.convs_only:
                if 0 < i < last:
                    x = x[..., :-1, :-1]  # the shape a 2x2/1 pool gives, at no cost
                continue
            x = F.relu(F.layer_norm(x, x.shape[1:]))
            if self.expand_on_forward and 0 < i < last:  # the study: a Python loop over group slices
                x = torch.stack([F.max_pool2d(x[:, :, g], 2, 1) for g in range(n)], dim=2)
            elif 0 < i < last:
                x = F.max_pool2d(x.flatten(1, 2), 2, 1).unflatten(1, (x.shape[1], n))
        return self.classifier(x.mean(dim=(2, 3, 4)))


def images_per_second(model: nn.Module, batch: int, steps: int, autocast: bool = False) -> float:
    torch.manual_seed(0)
    x = torch.randn(batch, 1, 28, 28)
    y = torch.randint(0, 10, (batch,))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-4)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    times.sort()
    return batch / times[len(times) // 2]  # median step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="C4/4/16")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args()
    model = gcnn_preset(args.preset)
    setup_run(args.threads, "cpu", f"GCNN {args.preset} ({count_parameters(model):,} parameters), batch {args.batch}")
    study, floor = StudyGCNN(model, True), StudyGCNN(model, False)
    convs = StudyGCNN(model, False, convs_only=True)
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():  # all three compute the same function
        ref = model(x)
        assert torch.allclose(study(x), ref, atol=1e-4), "study-style model differs"
        assert torch.allclose(floor(x), ref, atol=1e-4), "floor model differs"
    rows = [("ours (fp32)", images_per_second(model, args.batch, args.steps)),
            ("study-style (fp32)", images_per_second(study, args.batch, args.steps)),
            ("floor: precomputed filters (fp32)", images_per_second(floor, args.batch, args.steps)),
            ("convolutions alone, precomputed filters (fp32)", images_per_second(convs, args.batch, args.steps)),
            ("ours (bf16 autocast)", images_per_second(model, args.batch, args.steps, autocast=True))]
    ours, study_ips, floor_ips = rows[0][1], rows[1][1], rows[2][1]
    print("| implementation | images/s | vs study-style | vs floor |")
    print("|---|---:|---:|---:|")
    for name, ips in rows:
        print(f"| {name} | {ips:8.1f} | {ips / study_ips:5.2f}x | {ips / floor_ips:5.2f}x |")
    print(f"ours / study-style = {ours / study_ips:.2f}x, ours / floor = {ours / floor_ips:.2%}, "
          f"ours / convolutions alone = {ours / rows[3][1]:.2%}")


if __name__ == "__main__":
    main()
