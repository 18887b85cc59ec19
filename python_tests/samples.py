"""Sample generators shared by the op tests: groups, filter shapes and dtypes."""
from __future__ import annotations

import itertools
import random

import torch

from gconv_ext.groups import Group

ALL_GROUPS = [Group(n, refl) for refl in (False, True) for n in range(1, 17)]
EXACT_GROUPS = [Group(4), Group(4, True), Group(2), Group(2, True), Group(1, True)]


def random_filter_cases(count: int, seed: int = 0):
    """(group, c_out, c_in, k, disk) tuples over N in 1..16, C_N and D_N, k in 1..7."""
    rng = random.Random(seed)
    cases = [(g, k) for g, k in itertools.product(ALL_GROUPS, range(1, 8))]
    rng.shuffle(cases)
    for i, (g, k) in enumerate(cases[:count]):
        yield g, rng.randint(1, 3), rng.randint(1, 3), k, bool(i % 2)


def lift_weight(c_out, c_in, k, dtype=torch.float64, device="cpu", requires_grad=False):
    return torch.randn(c_out, c_in, k, k, dtype=dtype, device=device, requires_grad=requires_grad)


def group_weight(c_out, c_in, group, k, dtype=torch.float64, device="cpu", requires_grad=False):
    return torch.randn(c_out, c_in, group.order, k, k, dtype=dtype, device=device, requires_grad=requires_grad)
