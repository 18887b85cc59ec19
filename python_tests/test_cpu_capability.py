"""The CPU loops' variants (csrc/cpu/cpu_kernels.h): one build per instruction set (default, AVX2, AVX-512),
picked at run time. Every variant must give bit-identical results (same arithmetic, same order, no FP
contraction), the choice must follow the CPU and GCONV_EXT_CPU_CAPABILITY, and wide instructions must appear
only in the variants' own functions (an inline function shared by the variants and compiled for AVX-512 could
otherwise be the copy the linker keeps, and crash a CPU without AVX-512)."""
from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys

import pytest
import torch

from gconv_ext import _extension

pytestmark = pytest.mark.skipif(not _extension.available(), reason="compiled extension not built")
ops = torch.ops.gconv_ext


def _C():
    from gconv_ext import _C  # noqa: PLC0415
    return _C


@pytest.fixture
def restore_capability():
    before = _C().cpu_capability()
    yield
    _C().set_cpu_capability(before)


def test_supported_and_current() -> None:
    supported = _C().supported_cpu_capabilities()
    assert supported[0] == "default"
    assert set(supported) <= {"default", "avx2", "avx512"}
    assert list(supported) == sorted(supported, key=["default", "avx2", "avx512"].index)
    env = os.environ.get("GCONV_EXT_CPU_CAPABILITY", "")
    expected = env if env in supported else supported[-1]
    assert _C().cpu_capability() == expected


def test_set_capability_checks_its_argument(restore_capability) -> None:
    with pytest.raises(ValueError, match=r"name must be a CPU capability .*'default'.*got 'sse9'"):
        _C().set_cpu_capability("sse9")
    with pytest.raises(TypeError):
        _C().set_cpu_capability(2)
    _C().set_cpu_capability("default")
    assert _C().cpu_capability() == "default"


@pytest.mark.parametrize("env, expected", [("default", "default"), ("avx9000", None), ("", None)])
def test_environment_variable_lowers_the_choice(env: str, expected: str | None) -> None:
    """GCONV_EXT_CPU_CAPABILITY picks a lower variant; an unknown or unsupported name keeps the best."""
    code = "from gconv_ext import _C; print(_C.cpu_capability(), _C.supported_cpu_capabilities()[-1])"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "GCONV_EXT_CPU_CAPABILITY": env},
                         capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == (expected or out[1])


def _transform_cases():
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        # C_out * C_in = 21 filters: a full lane block and a partial one, for either lane width
        for rotations, reflections in ((4, False), (8, False), (3, True)):
            order = rotations * (2 if reflections else 1)
            for disk in (False, True):
                lift = torch.randn(3, 7, 5, 5, generator=g).to(dtype)
                grp = torch.randn(3, 7, order, 5, 5, generator=g).to(dtype)
                yield ("lift_filter", lift, rotations, reflections, disk)
                yield ("lift_filter_backward", torch.randn(3, order, 7, 5, 5, generator=g).to(dtype), rotations,
                       reflections, disk)
                yield ("group_filter", grp, rotations, reflections, disk)
                yield ("group_filter_backward", torch.randn(3, order, 7, order, 5, 5, generator=g).to(dtype),
                       rotations, reflections, disk)


def _pool_cases():
    g = torch.Generator().manual_seed(1)
    for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        # with padding (a padded tile), without (the plane is its own tile), strided, and neither
        for k, s, p in (((2, 2), (2, 2), (0, 0)), ((3, 3), (1, 1), (1, 1)), ((5, 3), (2, 1), (2, 1)),
                        ((2, 2), (1, 1), (0, 0)), ((3, 3), (1, 1), (0, 0))):
            x = torch.randn(2, 3, 4, 11, 13, generator=g).to(dtype)
            x[0, 0, 0, 1, 1] = float("nan")
            x[1, 2, 3, 4:6, 4:6] = float("-inf")
            x[1, 1, 1, 2:5, 2:5] = 0.5  # ties
            yield k, s, p, x
        # a 1x1 window: the identity (layer norm + ReLU alone), and strided (the tile leaves out the last row);
        # planes too small for the vector loops
        for k, s, p, shape in (((1, 1), (1, 1), (0, 0), (2, 3, 4, 11, 13)), ((1, 1), (2, 2), (0, 0), (2, 3, 4, 12, 12)),
                               ((2, 2), (1, 1), (0, 0), (2, 3, 4, 3, 5)), ((1, 1), (1, 1), (0, 0), (2, 3, 1, 2, 3))):
            x = torch.randn(*shape, generator=g).to(dtype)
            x[0, 0, 0, 1, 1] = float("nan")
            yield k, s, p, x


def _run_all():
    out = []
    for name, t, rotations, reflections, disk in _transform_cases():
        out.append(getattr(ops, name)(t, rotations, reflections, disk))
    for k, s, p, x in _pool_cases():
        y, idx = ops.group_max_pool2d_with_indices(x, k, s, p)
        go = torch.randn(y.shape, generator=torch.Generator().manual_seed(2)).to(x.dtype)
        out += [y, idx, ops.group_max_pool2d(x, k, s, p),
                ops.group_max_pool2d_backward(go, idx, list(x.shape), k, s, p),
                ops.group_max_pool2d_gather(x * 3, idx, k, s, p)]
        y = ops.group_avg_pool2d(x, k, s, p)
        out += [y, ops.group_avg_pool2d_backward(go, list(x.shape), k, s, p)]
        # the fused layer norm + ReLU + max pool, forward and backward
        y, idx, mean, rstd = ops.group_layer_norm_relu_max_pool2d(x, k, s, p, 1e-5)
        out += [y, idx, mean, rstd,
                ops.group_layer_norm_relu_max_pool2d_backward(go, x, y, idx, mean, rstd, k, s, p)]
    return out


@pytest.mark.skipif(len(_C().supported_cpu_capabilities()) < 2 if _extension.available() else True,
                    reason="this CPU runs only the default variant")
def test_every_variant_is_bit_identical(restore_capability) -> None:
    results = {}
    for cap in _C().supported_cpu_capabilities():
        _C().set_cpu_capability(cap)
        results[cap] = _run_all()
    base = results["default"]
    for cap, res in results.items():
        assert len(res) == len(base)
        for i, (a, b) in enumerate(zip(res, base)):
            torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True,
                                       msg=lambda m, i=i, cap=cap: f"result {i}, {cap} vs default: {m}")


def _functions_using(pattern: str, disassembly: str) -> set[str]:
    names, current = set(), None
    for line in disassembly.splitlines():
        m = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if m:
            current = m.group(1)
        elif current is not None and re.search(pattern, line):
            names.add(current)
    return names


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64") or shutil.which("objdump") is None,
                    reason="needs x86-64 and objdump")
def test_wide_instructions_only_in_the_variants() -> None:
    lib = _C().__file__
    dis = subprocess.run(["objdump", "-d", "--no-show-raw-insn", "-C", lib], capture_output=True, text=True,
                         check=True).stdout
    ymm, zmm = _functions_using(r"%ymm", dis), _functions_using(r"%zmm", dis)
    outside = sorted(f for f in ymm | zmm if "gconv_ext::cpu_avx2::" not in f and "gconv_ext::cpu_avx512::" not in f)
    assert not outside, f"functions outside the AVX variants use ymm/zmm registers: {outside[:10]}"
    assert not any("gconv_ext::cpu_avx2::" in f for f in zmm), "the AVX2 variant uses AVX-512 registers"
    # The variants really are wide (when this build has them: GCC on x86-64)
    if any("gconv_ext::cpu_avx2::" in f for f in dis.split("\n") if f.endswith(">:")):
        assert any("cpu_avx2::" in f and "transform_forward" in f for f in ymm)
        assert any("cpu_avx512::" in f and "transform_forward" in f for f in zmm)
        assert any("cpu_avx512::" in f and "max_flat" in f for f in zmm)
        # the pools' plane loops, bfloat16 conversions included, are the variants' own too
        assert any("cpu_avx512::" in f and "pool_forward<c10::BFloat16" in f for f in zmm)
        assert any("cpu_avx512::" in f and "backward_planes<c10::BFloat16, unsigned char, " in f
                   and "NormPoolHooks" in f for f in zmm)
        # and the vector loops (vec.inc) are lowered to the variant's registers
        assert any("cpu_avx512::" in f and "norm_grad_sums<c10::BFloat16" in f for f in zmm)
        assert any("cpu_avx2::" in f and "norm_grad_sums<c10::BFloat16" in f for f in ymm)
