"""The study's group-equivariant CNN (GCNN) for 28x28 MNIST, for C_N and D_N.

Architecture (STUDY_NOTES section 1): lifting conv (k=5, padding 1, no bias) -> norm -> ReLU, then L
group convs (k=5, no padding, no bias) each followed by norm and ReLU, with a group-axis-preserving
2x2 stride-1 spatial max pool between them; the invariant projection is the mean over (|G|, H, W),
then ``Linear(C, 10)``. Sizes for L = 4: 28 -> 26 -> 22 -> 21 -> 17 -> 16 -> 12 -> 11 -> 7.
Parameters: ``25C + 25 L |G| C^2 + 10C + 10`` (C4/4/16: 102,970; C8/4/32: 820,330).

No layer subsamples, so the network is exactly invariant to rotations by multiples of 90 degrees
(and to reflections for D_N) at any input size: ``gconv_ext.nn.check_exact`` confirms it.
"""
from __future__ import annotations

import torch
from torch import nn

from ..groups import Group, group_from_name
from ..nn import GroupBatchNorm2d, GroupConv2d, GroupLayerNorm, GroupMaxPool2d, InvariantPool, LiftingConv2d
from ..nn.exactness import warn_if_inexact
from ..ops import group_layer_norm_relu_max_pool2d
from .common import check_choice, check_int

__all__ = ["GCNN", "GCNN_PRESETS", "gcnn_preset", "gcnn_parameter_count"]

# The study's grid: N in {4, 8} x L in {2, 4} x C in {16, 32}.
GCNN_PRESETS: dict[str, dict] = {
    f"C{n}/{layers}/{c}": {"group": f"C{n}", "layers": layers, "channels": c}
    for n in (4, 8) for layers in (2, 4) for c in (16, 32)
}


class GCNN(nn.Module):
    """Group-equivariant CNN with an invariant head.

    Args:
        group: a Group or a name such as ``'C4'``, ``'D4'``, ``'C8'``.
        layers: number of group convolutions L (>= 1).
        channels: channels per layer C (fields of the regular representation).
        kernel_size: filter size k (odd; 5 in the study).
        norm: ``'layer'`` (the study's affine-free LayerNorm over (C, |G|, H, W)) or ``'batch'``
            (GroupBatchNorm2d, statistics shared over the group axis).
        disk_mask: disk-mask the filters (helps equivariance to non-90-degree rotations for N > 4).

    With ``norm='layer'``, on the CPU in float32 / float64 / bfloat16 (autocast included), the forward runs each
    LayerNorm + ReLU + max pool block as one fused operator, :func:`~gconv_ext.ops.group_layer_norm_relu_max_pool2d`:
    the same function in fewer passes over memory, 1.5-2.0x faster per block than LayerNorm, ReLU and our pool
    (``benchmarks/bench_norm_pool.py``), and so does LayerNorm + ReLU without a pool (after the lifting and the
    last convolution: the op's 1x1 window; 1.2-2.1x). Elsewhere the modules
    run as they are (float16 is unmeasured, and the fused CUDA kernels have not been timed on a GPU yet).
    ``model.fuse_glue = False`` runs every module on its own. The modules stay in
    ``features`` either way (the state_dict, printing and :func:`gconv_ext.nn.export` are unchanged), and a
    block whose norm, ReLU or pool module has a forward hook (the per-layer analyses), or any global forward
    hook, runs module by module, so every hook sees its module's output.
    """

    def __init__(self, group: Group | str = "C4", layers: int = 4, channels: int = 16, kernel_size: int = 5,
                 in_channels: int = 1, num_classes: int = 10, norm: str = "layer", disk_mask: bool = False,
                 lift_padding: int = 1) -> None:
        super().__init__()
        self.group = group_from_name(group)
        layers = check_int("layers", layers)
        channels = check_int("channels", channels)
        kernel_size = check_int("kernel_size", kernel_size)
        check_int("in_channels", in_channels)
        check_int("num_classes", num_classes)
        check_int("lift_padding", lift_padding, minimum=0)
        self.norm_kind = check_choice("norm", norm, ("layer", "batch"))
        self.layers, self.channels = layers, channels

        def norm_layer() -> nn.Module:
            return GroupLayerNorm() if norm == "layer" else GroupBatchNorm2d(channels, self.group)

        blocks: list[nn.Module] = [
            LiftingConv2d(in_channels, channels, kernel_size, self.group, padding=lift_padding, bias=False,
                          disk_mask=disk_mask),
            norm_layer(), nn.ReLU(),
        ]
        for i in range(layers):
            blocks += [GroupConv2d(channels, channels, kernel_size, self.group, bias=False, disk_mask=disk_mask),
                       norm_layer(), nn.ReLU()]
            if i < layers - 1:
                blocks.append(GroupMaxPool2d(2, stride=1))
        self.features = nn.Sequential(*blocks)
        self.pool = InvariantPool("mean")
        self.classifier = nn.Linear(channels, num_classes)
        self.fuse_glue = True

    def group_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last group feature map ``[B, C, |G|, H, W]`` (equivariant)."""
        if x.dim() != 4:
            raise ValueError(f"GCNN: input must be [B, C, H, W], got shape {tuple(x.shape)}")
        if not self.fuse_glue or _global_hooks():
            return self.features(x)
        mods = list(self.features)
        i = 0
        while i < len(mods):
            n = _fusable(mods, i) if x.device.type == "cpu" and x.dtype in _FUSED_DTYPES else 0
            if n == 0:
                x = mods[i](x)
            elif n == 2:  # LayerNorm + ReLU without a pool: the fused op's 1x1 window
                x = group_layer_norm_relu_max_pool2d(x, 1, 1, 0, mods[i].eps)
            else:
                pool = mods[i + 2]
                if pool.stride != (1, 1):
                    warn_if_inexact(pool, x)
                x = group_layer_norm_relu_max_pool2d(x, pool.kernel_size, pool.stride, pool.padding, mods[i].eps)
            i += n or 1
        return x

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The invariant embedding ``[B, C]``."""
        return self.pool(self.group_features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


# Where the fused operator runs in a GCNN: where it was measured faster than the unfused ops (on the CPU, per
# block, benchmarks/bench_norm_pool.py: with a pool fp32 1.7-2.0x, bf16 1.5x; LayerNorm + ReLU alone 2.1x / 1.8x
# at 26x26, 1.3x / 1.2x at 7x7; float64 alike). float16 has not been measured, and the CUDA kernels have not been
# timed on a GPU yet.
_FUSED_DTYPES = (torch.float32, torch.float64, torch.bfloat16)


def _hooked(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks)


def _global_hooks() -> bool:
    from torch.nn.modules import module as M
    return bool(M._global_forward_hooks or M._global_forward_pre_hooks)


def _fusable(mods: list[nn.Module], i: int) -> int:
    """How many modules from ``mods[i]`` run as one fused operator: 3 for (GroupLayerNorm, ReLU, GroupMaxPool2d),
    2 for (GroupLayerNorm, ReLU) followed by anything else (the fused op with a 1x1 window), else 0. Only right
    after one of our convolutions (not in an exported model, whose glue must stay standard torch ops), and never
    past a module with a hook."""
    if not (0 < i and isinstance(mods[i - 1], (LiftingConv2d, GroupConv2d))):
        return 0
    block = mods[i:i + 3]
    if len(block) < 2 or type(block[0]) is not GroupLayerNorm or type(block[1]) is not nn.ReLU:
        return 0
    if len(block) == 3 and type(block[2]) is GroupMaxPool2d:
        return 0 if any(_hooked(m) for m in block) else 3
    return 0 if any(_hooked(m) for m in block[:2]) else 2


def gcnn_preset(name: str, **overrides) -> GCNN:
    """A GCNN from the study's grid by name, e.g. ``'C4/4/16'`` (group/layers/channels); ``'D4/4/16'``
    and other groups are accepted too."""
    parts = name.split("/")
    if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
        raise ValueError(f"GCNN preset must look like 'C4/4/16' (group/layers/channels), got {name!r}; "
                         f"the study's grid: {', '.join(GCNN_PRESETS)}")
    kwargs = {"group": group_from_name(parts[0]), "layers": int(parts[1]), "channels": int(parts[2])}
    kwargs.update(overrides)
    return GCNN(**kwargs)


def gcnn_parameter_count(group: Group | str, layers: int, channels: int, kernel_size: int = 5,
                         in_channels: int = 1, num_classes: int = 10) -> int:
    """Closed form: lifting ``C*C_in*k^2`` + L group convs ``C^2*|G|*k^2`` + the linear head."""
    n = group_from_name(group).order
    kk = kernel_size * kernel_size
    return channels * in_channels * kk + layers * channels * channels * n * kk + channels * num_classes + num_classes
