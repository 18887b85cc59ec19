"""Timing helpers for the benchmark scripts: median of repeated runs after warm-up."""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

import gconv_ext
from gconv_ext.provenance import cpu_model


def timeit(fn: Callable[[], object], *, warmup: int = 3, repeat: int = 15, min_time: float = 0.0) -> float:
    """Median seconds per call of ``fn`` (CUDA-synchronised when a GPU is in use)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    start_all = time.perf_counter()
    while len(times) < repeat or time.perf_counter() - start_all < min_time:
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def train_step(fn: Callable[..., torch.Tensor], *leaves: torch.Tensor) -> Callable[[], None]:
    """A closure running ``fn`` on fresh leaves that require grad, then backward with ones."""
    def run() -> None:
        out = fn(*(t.detach().requires_grad_() for t in leaves))
        out.backward(torch.ones_like(out))
    return run


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1e3:9.3f}"


def print_table(header: list[str], rows: list[list[str]]) -> None:
    """A markdown table."""
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def base_parser(description: str | None, repeat: int, device: bool = True) -> argparse.ArgumentParser:
    """The flags every kernel benchmark takes: ``--threads`` (2, the project machines' cores), ``--device``
    and ``--repeat`` (timed calls per figure)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    if device:
        p.add_argument("--device", default="cpu")
    p.add_argument("--repeat", type=int, default=repeat)
    return p


def setup_run(threads: int, device: str = "cpu", details: str = "") -> None:
    """Set the thread count and print what every figure must be read with: the CPU (or GPU) model, threads,
    torch version, whether the compiled extension is in use, and the run's own settings."""
    torch.set_num_threads(threads)
    where = torch.cuda.get_device_name() if device.startswith("cuda") and torch.cuda.is_available() else cpu_model()
    print(f"{where}; {threads} threads; device {device}; torch {torch.__version__}; "
          f"compiled={gconv_ext.build_info()['compiled']}" + (f"; {details}" if details else ""))
