"""Numeric precision of a training run: fp32, bf16/fp16 autocast, fp64, or ``auto``.

* ``fp32``: plain float32.
* ``bf16`` / ``fp16``: ``torch.autocast`` around the forward pass and the loss (the parameters and the
  optimiser stay float32); ``fp16`` on CUDA uses a ``GradScaler``.
* ``fp64``: the model and the inputs in float64, for exact comparisons (DDP against one process).
* ``auto``: bfloat16 where it is measured to be faster, else float32. On CUDA: bf16 when the GPU
  supports it. On a CPU without AVX512-BF16 or AMX: fp32 without measuring. On a CPU with AMX-BF16 that
  oneDNN may use (:func:`onednn_uses_amx`): bf16 without measuring. Otherwise (AVX512-BF16 only) a quick
  measurement (:func:`measure_bf16_speedup`: a few training steps of the run's own model, fp32 and bf16
  interleaved) picks bf16 when it is at least :data:`AUTO_MIN_SPEEDUP` times faster. Measured bf16/fp32
  ratios of one GCNN C4/4/16 step: 2.5-3.4x on an Intel Xeon with AMX, 1.8x on an AMD EPYC with
  AVX512-BF16, 0.8-0.9x on that Intel CPU with oneDNN capped below AMX
  (``ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16``), so the CPU's flags alone cannot decide.
"""
from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

__all__ = ["AUTO_MIN_SPEEDUP", "autocast_context", "cpu_has_bf16", "onednn_uses_amx", "make_grad_scaler",
           "measure_bf16_speedup", "interleaved_step_times", "resolve_precision", "input_dtype"]

#: ``auto`` picks bf16 only when one step is at least this much faster than fp32.
AUTO_MIN_SPEEDUP = 1.15


def _cpu_flags() -> set[str] | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def cpu_has_bf16() -> bool:
    """True when the CPU has native bfloat16 arithmetic (AVX512-BF16 or AMX-BF16 in ``/proc/cpuinfo``'s
    flags); also True where the flags cannot be read (then the measurement decides)."""
    flags = _cpu_flags()
    return True if flags is None else bool(flags & {"avx512_bf16", "amx_bf16"})


def onednn_uses_amx() -> bool:
    """True when the CPU has AMX-BF16 and oneDNN is not capped below it (``ONEDNN_MAX_CPU_ISA`` /
    ``DNNL_MAX_CPU_ISA`` unset, ``ALL``, ``DEFAULT`` or an ``AMX`` level)."""
    flags = _cpu_flags()
    if not flags or "amx_bf16" not in flags:
        return False
    cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").upper()
    return cap in ("", "ALL", "DEFAULT") or "AMX" in cap


def autocast_context(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The context the forward pass and loss run in."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "fp16":
        return torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext()


def input_dtype(precision: str) -> torch.dtype:
    """The dtype of the model's parameters and inputs (float64 for ``fp64``, else float32)."""
    return torch.float64 if precision == "fp64" else torch.float32


def make_grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """A ``GradScaler``, enabled only for fp16 on CUDA (bf16 has float32's range)."""
    return torch.amp.GradScaler(device.type, enabled=(precision == "fp16" and device.type == "cuda"))


def interleaved_step_times(steps: dict[str, Callable[[], None]], repeats: int = 5,
                           warmup: int = 2) -> dict[str, list[float]]:
    """Seconds per call of each of ``steps``, called in turn (A, B, A, B, ...) ``repeats`` times after
    ``warmup`` rounds, so that a change of the machine's load hits every variant alike."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t0)
    return times


def measure_bf16_speedup(
    make_step: Callable[[str], Callable[[], None]], repeats: int = 5, warmup: int = 2
) -> float:
    """fp32 step time / bf16 step time, the median of ``repeats`` interleaved pairs.

    ``make_step(precision)`` returns a function that runs one training step in that precision.
    """
    times = interleaved_step_times({p: make_step(p) for p in ("fp32", "bf16")}, repeats, warmup)
    return statistics.median(a / max(b, 1e-12) for a, b in zip(times["fp32"], times["bf16"]))


def _model_step_factory(model: nn.Module, sample: torch.Tensor, device: torch.device) -> Callable:
    def make_step(precision: str) -> Callable[[], None]:
        def step() -> None:
            with autocast_context(precision, device):
                out = model(sample)
                loss = out.float().square().mean()
            loss.backward()
            model.zero_grad(set_to_none=True)
        return step
    return make_step


def resolve_precision(precision: str, model: nn.Module, sample: torch.Tensor,
                      device: torch.device) -> tuple[str, str]:
    """``(concrete precision, reason)``: ``precision`` itself unless it is ``auto``.

    ``sample`` is one training batch (on ``device``); the model's gradients are left cleared.
    """
    if precision != "auto":
        return precision, "requested"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", "CUDA device supports bfloat16"
        return "fp32", "CUDA device without bfloat16"
    if device.type != "cpu":
        return "fp32", f"no measurement on {device.type}"
    if not cpu_has_bf16():
        return "fp32", "CPU has neither AVX512-BF16 nor AMX"
    if onednn_uses_amx():
        # Measured 2.5-3.4x on such CPUs; a timing on a busy machine could only get this wrong.
        return "bf16", "CPU has AMX-BF16 and oneDNN uses it"
    was_training = model.training
    model.train()
    with torch.random.fork_rng(devices=[]):  # dropout etc. must not move the run's RNG
        ratio = measure_bf16_speedup(_model_step_factory(model, sample, device))
    model.train(was_training)
    choice = "bf16" if ratio >= AUTO_MIN_SPEEDUP else "fp32"
    return choice, f"measured bf16/fp32 step speed {ratio:.2f}x (threshold {AUTO_MIN_SPEEDUP}x)"
