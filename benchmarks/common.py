"""Timing helpers for the benchmark scripts.

* :func:`interleaved`: the way to measure a **ratio**. Every candidate is timed once per round (a block of
  calls lasting at least ``min_block`` seconds), the order rotating from round to round (A, B, C / B, C, A /
  C, A, B / ...), so that a change of the machine's load or clock hits every candidate alike; a ratio is the
  median over the rounds of the per-round ratio, given with its spread (interquartile range and min-max).
  Single runs on the project's machines vary by about 10%; a ratio of two separately timed medians does not
  cancel that, a median of per-round ratios mostly does.
* :func:`timeit`: median seconds per call of one function (absolute figures only).
"""
from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

import gconv_ext
from gconv_ext.provenance import cpu_model


def timeit(fn: Callable[[], object], *, warmup: int = 3, repeat: int = 15, min_time: float = 0.0) -> float:
    """Median seconds per call of ``fn`` (CUDA-synchronised when a GPU is in use)."""
    sync = _default_sync()
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


def _quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    """(first quartile, median, third quartile); all three the value itself for a single value."""
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, med, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, med, q3


@dataclass(frozen=True)
class Spread:
    """The median of per-round values with its spread: ``q1``-``q3`` (interquartile range) and min-max."""

    median: float
    q1: float
    q3: float
    min: float
    max: float
    values: tuple[float, ...] = field(repr=False)

    @classmethod
    def of(cls, values: Sequence[float]) -> "Spread":
        if not values:
            raise ValueError("Spread.of needs at least one value")
        q1, med, q3 = _quartiles(list(values))
        return cls(med, q1, q3, min(values), max(values), tuple(values))

    def fmt(self, digits: int = 3, unit: str = "x") -> str:
        """``'1.042x (IQR 1.010-1.071)'``."""
        return f"{self.median:.{digits}f}{unit} (IQR {self.q1:.{digits}f}-{self.q3:.{digits}f})"


@dataclass(frozen=True)
class Stats:
    """One candidate of :func:`interleaved`: seconds per call in each round (``per_round``, a block of
    ``inner`` calls divided by ``inner``), their median and spread (``time``), and ``vs_baseline``: this
    candidate's time over the baseline's, the per-round ratio's median and spread."""

    name: str
    inner: int
    per_round: tuple[float, ...]
    time: Spread
    vs_baseline: Spread | None = None

    @property
    def median(self) -> float:
        return self.time.median

    def ratio(self, other: "Stats") -> Spread:
        """This candidate's time over ``other``'s, round by round (both from the same :func:`interleaved`)."""
        return ratio(self, other)


def ratio(num: Stats, den: Stats) -> Spread:
    """``num / den`` per round (the rounds of one :func:`interleaved` call line up), as a :class:`Spread`."""
    if len(num.per_round) != len(den.per_round):
        raise ValueError(f"{num.name} and {den.name} have different round counts: not from the same run")
    return Spread.of([a / b for a, b in zip(num.per_round, den.per_round)])


def _default_sync() -> Callable[[], None]:
    return torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)


def calibrate_inner(fn: Callable[[], object], min_block: float, *, clock: Callable[[], float] = time.perf_counter,
                    sync: Callable[[], None] | None = None, max_inner: int = 100_000) -> int:
    """Calls per timed block so that a block lasts at least ``min_block`` seconds (1 for slow functions):
    time 1, 2, 4, ... calls until a batch takes >= ``min_block / 4``, then scale up."""
    sync = sync or _default_sync()
    n = 1
    while True:
        t0 = clock()
        for _ in range(n):
            fn()
        sync()
        elapsed = clock() - t0
        if elapsed >= min_block:
            return n
        if elapsed >= min_block / 4 or n >= max_inner:
            return max(1, min(max_inner, math.ceil(n * min_block / max(elapsed, 1e-12))))
        n *= 2


def rotation(names: Sequence[str], round_index: int) -> list[str]:
    """The order of round ``round_index``: ``names`` rotated left by ``round_index`` (A,B,C / B,C,A / ...)."""
    k = round_index % len(names)
    return list(names[k:]) + list(names[:k])


def interleaved(fns: dict[str, Callable[[], object]], rounds: int = 7, warmup: int = 1, *,
                inner: int | dict[str, int] | None = None, min_block: float = 0.02, warmup_time: float = 0.0,
                baseline: str | None = None, budget: float | None = None, min_rounds: int = 3,
                clock: Callable[[], float] = time.perf_counter,
                sync: Callable[[], None] | None = None) -> dict[str, Stats]:
    """Time the candidates ``fns`` in interleaved rounds and return a :class:`Stats` per candidate.

    ``warmup`` untimed rounds (one call of each) come first. Then ``inner`` (an int, a dict per candidate,
    or ``None``: :func:`calibrate_inner` per candidate, so a block lasts >= ``min_block`` seconds; 1 without
    calibrating when ``warmup >= 2`` and the candidate's call in the last warm-up round took that long
    already) is fixed;
    then untimed rounds of whole blocks run until ``warmup_time`` seconds have passed (0: none; a process's
    first case can run 2x slow for the first half second: allocator, thread pool and kernel caches warming
    up), and each of ``rounds`` rounds times one block of every candidate, in the order :func:`rotation` gives.
    ``baseline`` (default: the first candidate) is the denominator of every ``Stats.vs_baseline``; any other
    pair: :func:`ratio`. ``budget`` (seconds, optional) caps the timed rounds: after ``min_rounds`` rounds,
    no round starts that would end past it (judged by the slowest round so far), so slow cases get fewer
    rounds; ``len(Stats.per_round)`` says how many ran. ``clock`` and ``sync`` are for tests and GPUs
    (default: perf_counter, and a CUDA synchronise when CUDA is available).
    """
    if not fns:
        raise ValueError("interleaved needs at least one candidate")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    names = list(fns)
    baseline = names[0] if baseline is None else baseline
    if baseline not in fns:
        raise ValueError(f"baseline {baseline!r} is not one of {names}")
    sync = sync or _default_sync()
    last_warmup: dict[str, float] = {}
    for w in range(warmup):
        for name in names:
            t0 = clock()
            fns[name]()
            sync()
            if w == warmup - 1:
                last_warmup[name] = clock() - t0
    if inner is None:
        # A call of the last warm-up round that lasted a block already needs no calibration, but only when
        # that was not the candidate's first call: a first call pays one-off costs (oneDNN's primitive
        # creation, the allocator, lazy initialisation) and once made a 0.2 ms step look like a 20 ms one,
        # which then ran one call per block, each after the other candidates had cooled the caches and the
        # thread pool (a 2.4x "ratio" that was 1.2x with blocks of 100 calls).
        trust_warmup = warmup >= 2
        inners = {name: 1 if trust_warmup and last_warmup.get(name, 0.0) >= min_block
                  else calibrate_inner(fns[name], min_block, clock=clock, sync=sync) for name in names}
    elif isinstance(inner, int):
        inners = dict.fromkeys(names, inner)
    else:
        inners = {name: inner.get(name, 1) for name in names}
    warm_start = clock()
    r = 0
    while clock() - warm_start < warmup_time:
        for name in rotation(names, r):
            for _ in range(inners[name]):
                fns[name]()
        sync()
        r += 1
    times: dict[str, list[float]] = {name: [] for name in names}
    start, longest = clock(), 0.0
    for r in range(rounds):
        if budget is not None and r >= min_rounds and clock() - start + longest > budget:
            break
        round_start = clock()
        for name in rotation(names, r):
            fn, n = fns[name], inners[name]
            t0 = clock()
            for _ in range(n):
                fn()
            sync()
            times[name].append((clock() - t0) / n)
        longest = max(longest, clock() - round_start)
    stats = {name: Stats(name, inners[name], tuple(times[name]), Spread.of(times[name])) for name in names}
    base = stats[baseline]
    return {name: Stats(s.name, s.inner, s.per_round, s.time, ratio(s, base)) for name, s in stats.items()}


def add_interleave_flags(p: argparse.ArgumentParser, rounds: int, warmup: int = 1,
                         min_block: float = 0.02) -> argparse.ArgumentParser:
    """``--rounds`` (interleaved rounds per case), ``--warmup`` (untimed rounds) and ``--min-block``
    (seconds a timed block lasts at least: fast calls are repeated inside it)."""
    p.add_argument("--rounds", "--repeats", dest="rounds", type=int, default=rounds,
                   help="interleaved rounds per case (default %(default)s; --repeats: the old name)")
    p.add_argument("--warmup", type=int, default=warmup, help="untimed rounds first (default %(default)s)")
    p.add_argument("--warmup-time", type=float, default=0.5,
                   help="then untimed rounds of whole blocks for this many seconds per case (default %(default)s)")
    p.add_argument("--min-block", type=float, default=min_block,
                   help="seconds a timed block lasts at least (default %(default)s)")
    return p


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


def base_parser(description: str | None, rounds: int, device: bool = True, warmup: int = 1,
                budget: float = 5.0) -> argparse.ArgumentParser:
    """The flags every kernel benchmark takes: ``--threads`` (2, the project machines' cores), ``--device``,
    ``--budget`` (seconds per case before its rounds stop early) and those of :func:`add_interleave_flags`."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    if device:
        p.add_argument("--device", default="cpu")
    p.add_argument("--budget", type=float, default=budget,
                   help="seconds per case before its rounds stop early, never below 3 (default %(default)s)")
    return add_interleave_flags(p, rounds, warmup)


def setup_run(threads: int, device: str = "cpu", details: str = "") -> None:
    """Set the thread count, tune glibc's malloc as the CLI does (:func:`gconv_ext.tune_malloc`), and print what
    every figure must be read with: the CPU (or GPU) model, threads, torch version, whether the compiled
    extension is in use, whether malloc is tuned, and the run's own settings."""
    torch.set_num_threads(threads)
    tuned = gconv_ext.tune_malloc()  # as the CLI does (GCONV_EXT_TUNE_MALLOC=0: glibc's defaults)
    where = torch.cuda.get_device_name() if device.startswith("cuda") and torch.cuda.is_available() else cpu_model()
    info = gconv_ext.build_info()
    print(f"{where}; {threads} threads; device {device}; torch {torch.__version__}; "
          f"compiled={info['compiled']}" + (f" (CPU loops: {info['cpu_capability']})" if info["compiled"] else "")
          + f"; malloc tuned={'yes' if tuned else 'no'}" + (f"; {details}" if details else ""))
