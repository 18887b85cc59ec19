#!/usr/bin/env python
"""One-shot validation of gconv_ext's CUDA path on a GPU machine: build, tests, CPU-vs-CUDA parity of
every op, compute-sanitizer, timings; one markdown report. Meant to finish in under 8 minutes on one GPU.

    python benchmarks/gpu_check.py --build --out gpu_check_report.md   # build in place, then check everything
    python benchmarks/gpu_check.py                                     # check the extension already built
    python benchmarks/gpu_check.py --quick                             # fewer parity cases and timing rounds
    python benchmarks/gpu_check.py --skip memcheck,initcheck           # leave stages out (reported SKIPPED)

Without a CUDA device it prints "no CUDA device: nothing to check" (with the torch version and the
extension's build_info()), writes a report saying so and exits 0. ``--device cpu`` is a developer's dry
run: the stages run against the CPU instead of CUDA (CPU-vs-CPU parity, perf_counter timings, the
sanitizer script run without the sanitizer; no build, no pytest), to check this script's own code paths
on a machine without a GPU.

Stages, in order (each one time-boxed; each catches its own failure, records it and the run goes on):

  build              (--build only) ``python setup.py build_ext --inplace`` against the torch already
                     installed, with GCONV_EXT_CUDA=1, TORCH_CUDA_ARCH_LIST = the present GPUs' compute
                     capabilities only (9.0 on an H100/H200) and MAX_JOBS = the CPU count
  extension          gconv_ext._C loads, was built with CUDA for this torch and this GPU, and runs an op
  parity             every op of csrc/library.cpp (forward ops, explicit backward ops, gradients and double
                     backward through the Python wrappers) on the CPU and on CUDA from the same inputs, in
                     float64, float32 (cuDNN TF32 off), float16 and bfloat16; bounds in ``Parity``'s docstring
                     (pools bit-exact)
  pytest             ``pytest -m cuda python_tests``
  memcheck,          ``compute-sanitizer --tool memcheck`` / ``--tool initcheck`` on a generated script that
  initcheck          runs every CUDA kernel of the extension (transforms, pools; forward, backward, gather;
                     all four dtypes); SKIPPED when the tool is absent or refuses the device
  timing-conv        fused lifting/group conv vs the cuDNN floor (F.conv2d on the pre-expanded filter), in
                     fp32 (TF32 off), TF32, fp16 and channels_last; forward and forward+backward
  timing-transforms  filter transforms and their adjoints vs a device copy moving the same bytes
  timing-pools       group spatial pools vs F.max_pool2d / F.avg_pool2d, group pooling vs amax / mean
  timing-train       one training step of the GCNN (C4/4/16, batch 128, AdamW) in fp32 and with AMP (fp16)

pytest, memcheck and initcheck run at the same time (correctness only); the timings run afterwards on an
idle GPU, timed with CUDA events as medians of interleaved rounds (each candidate once per round, the order
rotating), ratios as medians of the per-round ratios against a baseline timed in the same rounds.

The whole run has a global deadline (``--budget``, 480 s); a stage gets at most its own cap and leaves the
minimum time of the stages after it. Statuses: PASSED; FAILED; SKIPPED (not applicable: no
compute-sanitizer, the sanitizer refused the device, pytest not installed, ``--skip``, or the extension is
unusable, which its own stage reports as FAILED); TIMEOUT (the stage ran out of its time box, or never
started before the deadline). The exit code is 1 when any stage FAILED or TIMED OUT, else 0. The report
(``--out``, default gpu_check_report.md) is rewritten atomically after every stage, so a killed run
still leaves the stages done so far.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import copy
import datetime
import json
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

SCRIPT = Path(__file__).resolve()
REPO = SCRIPT.parents[1]
LIBRARY_CPP = REPO / "csrc" / "library.cpp"

DEFAULT_BUDGET_S = 480.0  # the 8 minutes, build included
REPORT_RESERVE_S = 10.0   # kept back from the budget for the last report write
CHILD_GRACE_S = 5.0       # a child process stops on its own this long before its time box kills it

PASSED, FAILED, SKIPPED, TIMEOUT = "PASSED", "FAILED", "SKIPPED", "TIMEOUT"
BAD_STATUSES = (FAILED, TIMEOUT)


# -- results, deadline, stage plan (pure Python: unit-tested without a GPU) -----------------------------

@dataclass
class StageResult:
    """One stage's outcome: ``status`` (PASSED / FAILED / SKIPPED / TIMEOUT), wall ``seconds``, a one-line
    ``summary``, markdown ``details`` (tables, output tails) and machine-readable ``data``."""

    name: str
    status: str
    seconds: float = 0.0
    summary: str = ""
    details: list[str] = field(default_factory=list)
    data: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> StageResult:
        return cls(name=d["name"], status=d["status"], seconds=float(d.get("seconds", 0.0)),
                   summary=d.get("summary", ""), details=list(d.get("details", [])), data=dict(d.get("data", {})))


class Deadline:
    """An absolute end time on ``clock`` (wall time by default, so that a child process can be handed the
    same deadline as a number)."""

    def __init__(self, end: float, clock: Callable[[], float] = time.time) -> None:
        self.end = float(end)
        self.clock = clock

    @classmethod
    def after(cls, seconds: float, clock: Callable[[], float] = time.time) -> Deadline:
        return cls(clock() + seconds, clock)

    def remaining(self) -> float:
        return self.end - self.clock()

    def expired(self) -> bool:
        return self.remaining() <= 0


class OutOfTime(Exception):
    """Raised inside a stage when its deadline passed: the stage ends as TIMEOUT with what it has."""


@dataclass(frozen=True)
class Spec:
    """A stage: ``cap`` seconds at most, never started with less than ``floor`` seconds."""

    name: str
    cap: float
    floor: float


# Each step runs its stages at the same time; steps run in order.
STEPS: tuple[tuple[Spec, ...], ...] = (
    (Spec("build", 330, 30),),
    (Spec("extension", 60, 10),),
    (Spec("parity", 150, 20),),
    (Spec("pytest", 240, 30), Spec("memcheck", 200, 30), Spec("initcheck", 200, 30)),
    (Spec("timing-conv", 120, 20),),
    (Spec("timing-transforms", 60, 15),),
    (Spec("timing-pools", 60, 15),),
    (Spec("timing-train", 90, 20),),
)
STAGE_NAMES = tuple(s.name for step in STEPS for s in step)


def reserve_after(steps: Sequence[Sequence[Spec]], index: int) -> float:
    """Seconds to keep for the steps after ``steps[index]``: the largest floor of each."""
    return float(sum(max(s.floor for s in step) for step in steps[index + 1:]))


def stage_timeout(remaining: float, cap: float, floor: float, reserve: float) -> float | None:
    """Seconds a stage may run: at most ``cap``, leaving ``reserve`` for the later stages; None when that is
    below ``floor`` (the stage is not started)."""
    t = min(cap, remaining - reserve)
    return t if t >= floor else None


def exit_code(results: Sequence[StageResult]) -> int:
    """1 when any stage FAILED or TIMED OUT; skips are not failures."""
    return 1 if any(r.status in BAD_STATUSES for r in results) else 0


def arch_list(capabilities: Sequence[tuple[int, int]]) -> str:
    """TORCH_CUDA_ARCH_LIST for the given compute capabilities only: ``[(9, 0)] -> '9.0'``,
    ``[(9, 0), (8, 6), (8, 6)] -> '8.6;9.0'``."""
    if not capabilities:
        raise ValueError("arch_list needs at least one compute capability")
    return ";".join(f"{major}.{minor}" for major, minor in sorted({(int(a), int(b)) for a, b in capabilities}))


def _parse_arch(entry: str) -> tuple[int, int, bool, bool] | None:
    """``'9.0'`` / ``'9.0a'`` / ``'8.6+PTX'`` -> (major, minor, arch_specific, ptx); None if unreadable."""
    m = re.fullmatch(r"\s*(\d+)\.(\d+)([a-z]?)(\+PTX)?\s*", entry, flags=re.IGNORECASE)
    if not m:
        return None
    return int(m.group(1)), int(m.group(2)), bool(m.group(3)), bool(m.group(4))


def arch_runs_on(built: Sequence[str], capability: tuple[int, int]) -> bool:
    """Whether code built for the TORCH_CUDA_ARCH_LIST entries ``built`` runs on a GPU of ``capability``:
    SASS for sm_XY runs on sm_XZ with Z >= Y (an arch-specific 'a' build only on its own sm), PTX for
    compute_XY is JIT-compiled on any newer GPU."""
    for entry in built:
        parsed = _parse_arch(entry)
        if parsed is None:
            continue
        major, minor, specific, ptx = parsed
        if (major, minor) == tuple(capability):
            return True
        if not specific and major == capability[0] and minor <= capability[1]:
            return True
        if ptx and (major, minor) <= tuple(capability):
            return True
    return False


def parse_library_ops(text: str) -> list[str]:
    """The operator names defined (``m.def("name(...``) in csrc/library.cpp, in order."""
    return re.findall(r'm\.def\(\s*"([A-Za-z_][A-Za-z_0-9]*)\(', text)


def library_ops() -> list[str]:
    return parse_library_ops(LIBRARY_CPP.read_text())


def parse_pytest_summary(output: str) -> dict[str, int]:
    """Counts from pytest's last summary line (``3 failed, 95 passed, 12 skipped, 900 deselected in 41.2s``)."""
    counts: dict[str, int] = {}
    for line in reversed(output.strip().splitlines()):
        found = re.findall(r"(\d+) (passed|failed|errors?|skipped|deselected|xfailed|xpassed|warnings?)", line)
        if found and re.search(r"\bin [\d.]+s", line):
            for n, kind in found:
                kind = {"error": "errors", "warning": "warnings"}.get(kind, kind)
                counts[kind] = counts.get(kind, 0) + int(n)
            break
    return counts


# What compute-sanitizer prints when it cannot work on the device (a sandbox, a driver without the
# debugger interface, missing permissions): the stage is SKIPPED with that line, not FAILED.
SANITIZER_REFUSALS = (
    r"device (is )?not supported",
    r"not supported on this (device|platform|system)",
    r"unsupported (device|gpu|platform)",
    r"insufficient (permissions|privileges)",
    r"permission denied",
    r"ERR_NVGPUCTRPERM",
    r"unable to (attach|access|open|create|find|load|initialize)",
    r"could not (attach|initialize|find|load|access)",
    r"failed to (initialize|attach|create|load)",
    r"Sanitizer API returned",
    r"Internal Sanitizer Error",
    r"injection",
)
SANITIZER_OK = "GPU_CHECK_SANITIZER_SCRIPT_OK"
SANITIZER_NO_CUDA = "GPU_CHECK_NO_CUDA"
SANITIZER_EXITCODE = 86


def classify_sanitizer(output: str, returncode: int | None) -> tuple[str, str]:
    """(status, one-line reason) of a compute-sanitizer run of the generated script."""
    m = re.search(r"ERROR SUMMARY:\s*(\d+) error", output)
    errors = int(m.group(1)) if m else None
    if errors:
        return FAILED, f"{errors} error(s) reported"
    if returncode == 0 and SANITIZER_OK in output:
        return PASSED, "0 errors" if errors == 0 else "the script ran clean (no error summary printed)"
    # the sanitizer's own lines ("========= Error: ..."), not the script's (a traceback is the script failing)
    own = [ln.strip() for ln in output.splitlines()
           if ln.lstrip().startswith(("=", "Error", "error", "ERROR")) or "anitizer" in ln]
    for pattern in SANITIZER_REFUSALS:
        line = next((ln for ln in own if re.search(pattern, ln, flags=re.IGNORECASE)), None)
        if line is not None:
            return SKIPPED, f"the sanitizer refused to run here: {line[:300]}"
    if SANITIZER_NO_CUDA in output:
        return SKIPPED, "no CUDA device visible to the script under the sanitizer"
    if returncode == SANITIZER_EXITCODE:
        return FAILED, "the sanitizer reported errors (exit code)"
    return FAILED, f"the run ended with exit code {returncode} without a clean summary"


# -- timing helpers --------------------------------------------------------------------------------------

def rotation(names: Sequence[str], round_index: int) -> list[str]:
    """Round ``round_index``'s order: ``names`` rotated left by it (A,B,C / B,C,A / C,A,B / ...)."""
    k = round_index % len(names)
    return list(names[k:]) + list(names[:k])


def interleaved(fns: dict[str, Callable[[], object]], rounds: int,
                block_timer: Callable[[Callable[[], object], int], float], *, min_block: float = 2e-3,
                warmup: int = 2, max_inner: int = 2000, deadline: Deadline | None = None,
                min_rounds: int = 3) -> dict[str, list[float]]:
    """Seconds per call of every candidate in each round. ``block_timer(fn, n)`` times ``n`` calls of ``fn``
    and returns seconds per call (CUDA events on the GPU). After ``warmup`` untimed calls each, the calls
    per block are fixed so that a block lasts about ``min_block``; then every round times one block of
    every candidate, in the order :func:`rotation` gives. After ``min_rounds`` rounds, an expired
    ``deadline`` ends the rounds early."""
    names = list(fns)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    inner = {}
    for name, fn in fns.items():
        one = block_timer(fn, 1)
        inner[name] = max(1, min(max_inner, math.ceil(min_block / max(one, 1e-9))))
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        if deadline is not None and r >= min_rounds and deadline.expired():
            break
        for name in rotation(names, r):
            times[name].append(block_timer(fns[name], inner[name]))
    return times


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, med, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, med, q3


def round_ratios(times: dict[str, list[float]], name: str, baseline: str) -> list[float]:
    """``name``'s time over ``baseline``'s, round by round."""
    return [a / b for a, b in zip(times[name], times[baseline])]


def fmt_ratio(values: Sequence[float]) -> str:
    q1, med, q3 = quartiles(list(values))
    return f"{med:.2f}x ({q1:.2f}-{q3:.2f})"


def fmt_us(seconds: float) -> str:
    return f"{seconds * 1e6:,.1f}"


def md_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    def cell(v: object) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return lines


def tail(text: str, lines: int = 30) -> list[str]:
    """The last ``lines`` lines of ``text`` as a fenced block."""
    body = text.rstrip().splitlines()[-lines:] if text.strip() else ["(no output)"]
    return ["```", *[ln.replace("```", "'''") for ln in body], "```"]


# -- the report ------------------------------------------------------------------------------------------

def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and os.replace: a reader
    sees the old or the new file, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600; a report is an ordinary file
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def overall(results: Sequence[StageResult], finished: bool = True) -> str:
    counts = {s: sum(r.status == s for r in results) for s in (PASSED, FAILED, SKIPPED, TIMEOUT)}
    parts = ", ".join(f"{n} {s.lower()}" for s, n in counts.items() if n)
    if not finished:
        return f"IN PROGRESS ({parts or 'no stage done yet'})"
    return f"{'FAILED' if exit_code(results) else 'PASSED'} ({len(results)} stages: {parts})"


def render_report(*, title_note: str, environment: Sequence[tuple[str, str]], results: Sequence[StageResult],
                  command: str, started: str, elapsed: float, budget: float, finished: bool = True,
                  notes: Sequence[str] = ()) -> str:
    lines = ["# gconv_ext GPU check", ""]
    lines += [f"**Result: {title_note or overall(results, finished)}**", ""]
    lines += [f"Command: `{command}`; started {started}; {elapsed:.0f} s of a {budget:.0f} s budget.", ""]
    lines += list(notes) + ([""] if notes else [])
    lines += ["## Environment", ""] + md_table(["", ""], [(k, v) for k, v in environment]) + [""]
    if results:
        lines += ["## Stages", ""]
        lines += md_table(["stage", "status", "seconds", "summary"],
                          [(r.name, r.status, f"{r.seconds:.1f}", r.summary) for r in results])
        lines.append("")
        for r in results:
            if r.details:
                lines += [f"## {r.name}: {r.status}", "", *r.details, ""]
    return "\n".join(lines).rstrip() + "\n"


# -- subprocesses ----------------------------------------------------------------------------------------

@dataclass
class CmdResult:
    returncode: int | None
    output: str
    timed_out: bool
    seconds: float
    start_error: str | None = None


def run_cmd(cmd: Sequence[str], timeout: float, *, cwd: Path = REPO, env: dict | None = None) -> CmdResult:
    """Run ``cmd`` (stdout and stderr together) in its own process group; on timeout kill that group."""
    t0 = time.time()
    try:
        proc = subprocess.Popen(list(cmd), cwd=str(cwd), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace", start_new_session=True)
    except OSError as exc:
        return CmdResult(None, "", False, time.time() - t0, start_error=f"could not start {cmd[0]}: {exc}")
    try:
        out, _ = proc.communicate(timeout=max(timeout, 0.1))
        return CmdResult(proc.returncode, out or "", False, time.time() - t0)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the group of the process we started (sanitizer + its target)
        except (ProcessLookupError, PermissionError):
            proc.kill()
        out, _ = proc.communicate()
        return CmdResult(proc.returncode, out or "", True, time.time() - t0)


def child_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


# -- environment -----------------------------------------------------------------------------------------

def find_cuda_home() -> str | None:
    """The CUDA toolkit: $CUDA_HOME / $CUDA_PATH, /usr/local/cuda, or the folder above the nvcc on PATH."""
    for key in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(key):
            return os.environ[key]
    if os.path.exists("/usr/local/cuda/bin/nvcc"):
        return "/usr/local/cuda"
    nvcc = shutil.which("nvcc")
    return str(Path(nvcc).resolve().parents[1]) if nvcc else None


def find_sanitizer() -> str | None:
    home = find_cuda_home()
    candidates = []
    if home:
        candidates += [Path(home) / "bin" / "compute-sanitizer", Path(home) / "compute-sanitizer" / "compute-sanitizer"]
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    return shutil.which("compute-sanitizer")


def _first_line(cmd: Sequence[str], pick_last: bool = False, timeout: float = 15) -> str:
    try:
        res = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"n/a ({type(exc).__name__})"
    lines = [ln.strip() for ln in (res.stdout or res.stderr).splitlines() if ln.strip()]
    if res.returncode != 0 or not lines:
        return "n/a"
    return lines[-1] if pick_last else lines[0]


def environment(device: str) -> list[tuple[str, str]]:
    import torch

    env = [("python", f"{platform.python_version()} ({sys.executable})"),
           ("host", f"{platform.node()}, {platform.platform()}, {os.cpu_count()} CPUs"),
           ("torch", f"{torch.__version__} (CUDA {torch.version.cuda}, cuDNN "
                     f"{torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else 'n/a'})")]
    if device == "cuda":
        i = torch.cuda.current_device()
        p = torch.cuda.get_device_properties(i)
        cap = torch.cuda.get_device_capability(i)
        env.append(("device", f"{p.name} (cuda:{i} of {torch.cuda.device_count()}), compute capability "
                              f"{cap[0]}.{cap[1]}, {p.multi_processor_count} SMs, {p.total_memory / 2**30:.1f} GiB"))
        env.append(("driver", _first_line(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])))
    home = find_cuda_home()
    env.append(("CUDA toolkit", f"{home}: {_first_line([str(Path(home) / 'bin' / 'nvcc'), '--version'], True)}"
                if home else "not found"))
    env.append(("compute-sanitizer", find_sanitizer() or "not found"))
    env.append(("git", _first_line(["git", "-C", str(REPO), "describe", "--always", "--dirty"])))
    return env


# == stages run in child processes ========================================================================

@dataclass
class Ctx:
    device: str       # "cuda", or "cpu" for the dry run
    quick: bool
    deadline: Deadline

    @property
    def dry(self) -> bool:
        return self.device != "cuda"

    def check_time(self) -> None:
        if self.deadline.expired():
            raise OutOfTime()


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def block_timer_for(device: str) -> Callable[[Callable[[], object], int], float]:
    """Seconds per call over a block of n calls: CUDA events on the GPU, perf_counter on the CPU."""
    import torch

    if device == "cuda":
        def cuda_timer(fn: Callable[[], object], n: int) -> float:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(n):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3 / n
        return cuda_timer

    def cpu_timer(fn: Callable[[], object], n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t0) / n
    return cpu_timer


# -- extension ----------------------------------------------------------------------------------------

def stage_extension(ctx: Ctx) -> StageResult:
    import torch

    import gconv_ext

    info = gconv_ext.build_info()
    res = StageResult("extension", PASSED, data={"build_info": info})
    problems = []
    if not info["compiled"]:
        problems.append(f"gconv_ext._C is not loaded: {info['error']}")
    elif info["error"]:
        problems.append(str(info["error"]))
    if ctx.device == "cuda" and info["compiled"]:
        cap = torch.cuda.get_device_capability()
        if not info["with_cuda"]:
            problems.append("gconv_ext._C was built without its CUDA kernels: run with --build (GCONV_EXT_CUDA=1)")
        elif not arch_runs_on(info["cuda_archs"], cap):
            problems.append(f"gconv_ext._C was built for {info['cuda_archs']}, none of which runs on this "
                            f"sm_{cap[0]}{cap[1]} GPU: run with --build")
    if not problems:
        # The identity element's slice of a transformed filter is the filter itself, bit for bit.
        w = torch.randn(2, 3, 3, 3, dtype=torch.float64)
        out = torch.ops.gconv_ext.lift_filter(w.to(ctx.device), 4, False, False)
        _sync(ctx.device)
        if not torch.equal(out[:, 0].cpu(), w):
            problems.append("lift_filter's identity slice differs from its input")
    if problems:
        res.status, res.summary = FAILED, "; ".join(problems)
    else:
        res.summary = (f"loaded; built against torch {info['torch_version_built']}, CUDA {info['cuda_version']}, "
                       f"archs {';'.join(info['cuda_archs']) or '-'}; an op ran on {ctx.device}")
    res.details = ["```", json.dumps(info, indent=2), "```"]
    return res


# -- parity -------------------------------------------------------------------------------------------

@dataclass
class Check:
    op: str          # the torch.ops.gconv_ext operator exercised
    path: str        # "op", "backward op", "wrapper grad", "double backward", ...
    dtype: str
    case: str
    max_err: float
    ratio: float     # max over elements of |cuda - cpu| / allowed (0 when exact)
    exact: bool
    ok: bool
    bound: str


def _dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


class Parity:
    """CPU vs CUDA on identical inputs (generated in float64 on the CPU, rounded to the dtype, copied).

    Bounds (``allowed = atol + rtol * |cpu|`` element by element; python_tests/tolerances.py where it has one):

    * pools (group_pool, group_max/avg_pool2d, their backward ops, the gather, wrapper gradients and double
      backward): **bit-exact** in every dtype. Both backends run the same per-element source
      (csrc/include/gconv_ext/group_pool.h, spatial_pool.h) in the same accumulation type (opmath) and the
      same order: max and argmax are comparisons, the avg sums the window taps in scan order and the
      backward gathers the covering windows in increasing (oy, ox) order on both, then one division; no
      FMA contraction (-ffp-contract=off, --fmad=false).
    * filter transforms and their adjoints: the same plan and per-element source, so bitwise equality is
      expected and reported, but the bound is the tests' (test_filter_transform.test_cuda_matches_cpu):
      ``sum_atol(5, max|w|)`` forward and ``sum_atol(9|G|, 9|G| max|grad|)`` backward in the opmath
      type, ``rtol = 2 u(dtype)``.
    * convolutions (cuDNN vs oneDNN: different algorithms and summation orders), float64 and float32 with
      cuDNN's TF32 off: tolerances.conv_atol / conv_grad_atols, ``2 gamma_n sum |x| |W_g|`` (any summation
      order; in float64 about 1e-14 of the magnitude, well inside the issue's 1e-12).
    * convolutions in float16 / bfloat16 (loose): each side rounds the transformed filter and its output
      to the dtype and accumulates in float32, so two sides differ by at most
      ``2 (2 u sum|x||W_g| + gamma_n(fp32) sum|x||W_g|) + 2 u |out|``; the atol part is multiplied by
      LOW_PRECISION_SLACK = 4 for kernels that keep split-K partial sums in the dtype.
    * double backward of the convolutions (float64): ``1e-10 * max|cpu|`` per gradient (chains of two
      convolutions; rounding is ~1e-13 of that scale), exactness reported.
    * the fused layer norm + ReLU + max pool (group_layer_norm_relu_max_pool2d and its backward): the same
      per-element source (norm_pool.h, spatial_pool.h) and the same taps (exact), but the per-sample sums
      (statistics; s1, s2) run in another order (SIMD lanes against a block tree). Bound, with M the
      sample size and y the normalised values: ``2 (rstd gamma_M mean|x| + max|y| gamma_{M+8})`` in the opmath
      type, plus ``2 u(dtype) max|y|`` for the rounding to the dtype; the backward
      ``2 rstd (max|G| + (1 + 2 max|y|) mean|grad_out|) gamma_{2M+16}`` plus ``2 u(dtype)`` of its magnitude.
    """

    LOW_PRECISION_SLACK = 4.0
    DOUBLE_BACKWARD_RTOL = 1e-10

    def __init__(self, ctx: Ctx) -> None:
        import torch

        sys.path.insert(0, str(REPO / "python_tests"))
        import tolerances  # python_tests/tolerances.py: the test suite's error bounds

        import gconv_ext
        from gconv_ext.groups import Group

        self.torch, self.tol, self.gconv_ext, self.Group = torch, tolerances, gconv_ext, Group
        self.ops = torch.ops.gconv_ext
        self.ctx = ctx
        self.dev = ctx.device
        self.gen = torch.Generator().manual_seed(0)
        self.checks: list[Check] = []

    # helpers
    def rand(self, shape, dtype):
        torch = self.torch
        return torch.randn(tuple(shape), generator=self.gen, dtype=torch.float64).to(dtype)

    def to_dev(self, t, requires_grad: bool = False):
        if t is None:
            return None
        out = t.detach().to(self.dev, copy=True)  # keeps the memory format; a copy even on the CPU
        return out.requires_grad_() if requires_grad else out

    def leaf(self, t):
        return None if t is None else t.detach().clone(memory_format=self.torch.preserve_format).requires_grad_()

    def u(self, dtype) -> float:
        return self.torch.finfo(dtype).eps / 2

    def acc(self, dtype):
        torch = self.torch
        return torch.float64 if dtype == torch.float64 else torch.float32

    def low(self, dtype) -> bool:
        return dtype in (self.torch.float16, self.torch.bfloat16)

    def compare(self, op: str, path: str, dtype, case: str, got, want, atol: float = 0.0, rtol: float = 0.0,
                exact_required: bool = False) -> None:
        torch = self.torch
        if got is None or want is None:
            ok = got is None and want is None
            self.checks.append(Check(op, path, _dtype_name(dtype), case, 0.0, 0.0, ok, ok, "both None"))
            return
        got = got.detach().cpu()
        want = want.detach()
        if got.shape != want.shape or got.dtype != want.dtype:
            self.checks.append(Check(op, path, _dtype_name(dtype), case, math.inf, math.inf, False, False,
                                     f"shape/dtype {tuple(got.shape)} {got.dtype} vs {tuple(want.shape)} {want.dtype}"))
            return
        exact = bool(torch.equal(got, want))
        if want.numel() == 0:
            max_err, ratio = 0.0, 0.0
        else:
            err = (got.double() - want.double()).abs()
            allowed = atol + rtol * want.double().abs()
            max_err = float(err.max())
            with torch.no_grad():
                r = torch.where(err == 0, torch.zeros_like(err), err / allowed)  # x/0 -> inf, nan stays nan
            ratio = float(r.max()) if not torch.isnan(r).any() else math.nan
        ok = exact if exact_required else (exact or (ratio <= 1.0))
        bound = "exact" if exact_required else f"atol {atol:.2e}, rtol {rtol:.2e}"
        self.checks.append(Check(op, path, _dtype_name(dtype), case, max_err, 0.0 if exact else ratio, exact, ok,
                                 bound))

    # -- filter transforms ------------------------------------------------------------------------
    def transforms(self, dtype, group, k: int, disk: bool) -> None:
        torch, tol = self.torch, self.tol
        r, refl, n = group.rotations, group.reflections, group.order
        case = f"{group.name} k{k}{' disk' if disk else ''}"
        acc, rtol = self.acc(dtype), 2 * self.u(dtype)
        for lifting in (True, False):
            name = "lift_filter" if lifting else "group_filter"
            op, bop = getattr(self.ops, name), getattr(self.ops, name + "_backward")
            wrapper = getattr(self.gconv_ext.ops, name)
            w = self.rand((4, 3, k, k) if lifting else (4, 3, n, k, k), dtype)
            want = op(w, r, refl, disk)
            got = op(self.to_dev(w), r, refl, disk)
            self.compare(name, "op", dtype, case, got, want, tol.sum_atol(5, float(w.abs().max()), acc), rtol)
            g = self.rand(want.shape, dtype)
            b_atol = tol.sum_atol(9 * n, float(g.abs().max()) * 9 * n, acc)
            self.compare(name + "_backward", "op", dtype, case, bop(self.to_dev(g), r, refl, disk),
                         bop(g, r, refl, disk), b_atol, rtol)
            wl, wd = self.leaf(w), self.to_dev(w, True)
            (want_g,) = torch.autograd.grad(wrapper(wl, group, disk), wl, g)
            (got_g,) = torch.autograd.grad(wrapper(wd, group, disk), wd, self.to_dev(g))
            self.compare(name, "wrapper grad", dtype, case, got_g, want_g, b_atol, rtol)

    # -- convolutions ---------------------------------------------------------------------------
    def conv_bounds(self, lifting, x, w, b, group, s, p, d, disk, dtype, go):
        """((atol, rtol) of the output, [(atol, rtol)] of grad x, w, b)."""
        tol = self.tol
        torch = self.torch
        b = b if b is not None else torch.zeros(w.shape[0], dtype=w.dtype)
        if not self.low(dtype):
            fwd = (tol.conv_atol(lifting, x, w, b, group, s, p, d, disk, dtype=dtype), 0.0)
            grads = [(a, 0.0) for a in tol.conv_grad_atols(lifting, x, w, b, group, go, s, p, d, disk, dtype=dtype)]
            return fwd, grads
        u, slack = self.u(dtype), self.LOW_PRECISION_SLACK
        mag = float(tol.conv_magnitude(lifting, x, w, b, group, s, p, d, disk).max())
        base = tol.conv_atol(lifting, x, w, b, group, s, p, d, disk, dtype=torch.float32)
        fwd = (slack * (base + 4 * u * mag), 2 * u)
        grads = []
        for n_terms, gmag, pos in tol.conv_grad_magnitudes(lifting, x, w, b, group, go, s, p, d, disk):
            grads.append((slack * (2 * (tol.gamma(n_terms, torch.float32) * gmag + pos) + 4 * u * gmag), 2 * u))
        return fwd, grads

    def conv(self, dtype, group, lifting: bool, cfg: dict, double_backward: bool) -> None:
        torch = self.torch
        r, refl, n = group.rotations, group.reflections, group.order
        B, ci, co, H, k = cfg["B"], cfg["ci"], cfg["co"], cfg["H"] + (2 if lifting else 0), cfg["k"]
        s, p, d, disk = cfg["stride"], cfg["padding"], cfg["dilation"], cfg["disk"]
        name = "lifting_conv2d" if lifting else "group_conv2d"
        op, bop, wrapper = getattr(self.ops, name), getattr(self.ops, name + "_backward"), \
            getattr(self.gconv_ext.ops, name)
        case = (f"{group.name} {ci}->{co} k{k} s{s} p{p} d{d}{' disk' if disk else ''}"
                f"{' bias' if cfg['bias'] else ''}{' channels_last' if cfg['channels_last'] else ''}")
        x = self.rand((B, ci, H, H) if lifting else (B, ci, n, H, H), dtype)
        w = self.rand((co, ci, k, k) if lifting else (co, ci, n, k, k), dtype)
        b = self.rand((co,), dtype) if cfg["bias"] else None
        if cfg["channels_last"]:
            x = (x.contiguous(memory_format=torch.channels_last) if lifting
                 else x.permute(0, 3, 4, 1, 2).contiguous().permute(0, 3, 4, 1, 2))  # planar view is NHWC
        args = (r, refl, disk, [s, s], [p, p], [d, d])
        want = op(x, w, b, *args)
        got = op(self.to_dev(x), self.to_dev(w), self.to_dev(b), *args)
        go = self.rand(want.shape, dtype)
        fwd, grads = self.conv_bounds(lifting, x, w, b, group, s, p, d, disk, dtype, go)
        self.compare(name, "op", dtype, case, got, want, *fwd)
        gname = ("grad input", "grad weight", "grad bias")
        # the explicit backward op: every gradient, then weight and bias only (the path without the transform)
        for mask in ([True, True, True], [False, True, True]):
            want_b = bop(go, x, w, *args, mask)
            got_b = bop(self.to_dev(go), self.to_dev(x), self.to_dev(w), *args, mask)
            for i in range(3):
                if mask[i]:
                    self.compare(name + "_backward", f"op {gname[i]}{'' if mask[0] else ' (no grad input)'}",
                                 dtype, case, got_b[i], want_b[i], *grads[i])
        # gradients through the Python wrapper (the C++ autograd of the forward op)
        leaves_c = [self.leaf(t) for t in (x, w, b) if t is not None]
        leaves_d = [self.to_dev(t, True) for t in (x, w, b) if t is not None]
        go_c, go_d = self.leaf(go), self.to_dev(go, True)  # leaves too, for the double backward
        out_c = wrapper(*leaves_c[:2], leaves_c[2] if b is not None else None, group, s, p, d, disk)
        out_d = wrapper(*leaves_d[:2], leaves_d[2] if b is not None else None, group, s, p, d, disk)
        want_g = torch.autograd.grad(out_c, leaves_c, go_c, create_graph=double_backward)
        got_g = torch.autograd.grad(out_d, leaves_d, go_d, create_graph=double_backward)
        for i in range(len(leaves_c)):
            self.compare(name, f"wrapper {gname[i]}", dtype, case, got_g[i], want_g[i], *grads[i])
        if double_backward:
            # d/d(x, w, b, grad_out) of sum_i <grad_i, v_i>: the backward op's own autograd (Python)
            vs = [self.rand(g.shape, dtype) for g in want_g]
            want_2 = torch.autograd.grad(want_g, leaves_c + [go_c], vs, allow_unused=True)
            got_2 = torch.autograd.grad(got_g, leaves_d + [go_d], [self.to_dev(v) for v in vs], allow_unused=True)
            labels = ["x", "w", "b"][:len(leaves_c)] + ["grad_out"]
            for label, got2, want2 in zip(labels, got_2, want_2):
                scale = float(want2.abs().max()) if want2 is not None and want2.numel() else 0.0
                self.compare(name + "_backward", f"double backward d/d{label}", dtype, case, got2, want2,
                             self.DOUBLE_BACKWARD_RTOL * scale, 0.0)

    # -- group pooling --------------------------------------------------------------------------
    def group_pool(self, dtype, order: int, double_backward: bool) -> None:
        torch = self.torch
        x = self.rand((2, 3, order, 5, 6), dtype)
        x[0, 0, :, 0, 0] = 1.0  # a tie: the first maximum on both sides
        go = self.rand((2, 3, 5, 6), dtype)
        xd = self.to_dev(x)
        cases = [("", x, xd), (" expanded", x[:, :, :1].expand(-1, -1, order, -1, -1),
                               xd[:, :, :1].expand(-1, -1, order, -1, -1))]
        for mode in ("max", "mean"):
            for label, xc, xg in cases:
                case = f"|G|={order} {mode}{label}"
                self.compare("group_pool", "op", dtype, case, self.ops.group_pool(xg, mode),
                             self.ops.group_pool(xc, mode), exact_required=True)
                self.compare("group_pool_backward", "op", dtype, case,
                             self.ops.group_pool_backward(self.to_dev(go), xg, mode),
                             self.ops.group_pool_backward(go, xc, mode), exact_required=True)
            case = f"|G|={order} {mode}"
            xl, xdl = self.leaf(x), self.to_dev(x, True)
            gol, god = go.clone().requires_grad_(), self.to_dev(go, True)
            (want,) = torch.autograd.grad(self.gconv_ext.ops.group_pool(xl, mode), xl, gol, create_graph=True)
            (got,) = torch.autograd.grad(self.gconv_ext.ops.group_pool(xdl, mode), xdl, god, create_graph=True)
            self.compare("group_pool", "wrapper grad", dtype, case, got, want, exact_required=True)
            if double_backward:
                v = self.rand(x.shape, dtype)
                (want2,) = torch.autograd.grad(want, gol, v)
                (got2,) = torch.autograd.grad(got, god, self.to_dev(v))
                self.compare("group_pool_backward", "double backward d/dgrad_out", dtype, case, got2, want2,
                             exact_required=True)

    # -- spatial pooling ------------------------------------------------------------------------
    SPATIAL = (([2, 2], [1, 1], [0, 0]), ([3, 3], [2, 2], [1, 1]), ([3, 2], [1, 2], [1, 0]))

    def spatial_pool(self, dtype, order: int, double_backward: bool, quick: bool) -> None:
        torch, ops = self.torch, self.ops
        for shape in ((2, 3, order, 9, 8), (2, 5, 9, 8)):
            x = self.rand(shape, dtype)
            x.view(-1)[: x.numel() // 3] = 1.0  # ties: the first maximum on both sides
            xd = self.to_dev(x)
            for k, s, p in self.SPATIAL[:2] if quick else self.SPATIAL:
                case = f"{list(shape)} k{k} s{s} p{p}"
                for kind in ("max", "avg"):
                    fwd = getattr(ops, f"group_{kind}_pool2d")
                    want = fwd(x, k, s, p)
                    self.compare(f"group_{kind}_pool2d", "op", dtype, case, fwd(xd, k, s, p), want,
                                 exact_required=True)
                    go = self.rand(want.shape, dtype)
                    if kind == "max":
                        want_o, want_i = ops.group_max_pool2d_with_indices(x, k, s, p)
                        got_o, got_i = ops.group_max_pool2d_with_indices(xd, k, s, p)
                        self.compare("group_max_pool2d_with_indices", "op", dtype, case, got_o, want_o,
                                     exact_required=True)
                        self.compare("group_max_pool2d_with_indices", "indices", dtype, case, got_i, want_i,
                                     exact_required=True)
                        w_b = ops.group_max_pool2d_backward(go, want_i, list(x.shape), k, s, p)
                        g_b = ops.group_max_pool2d_backward(self.to_dev(go), got_i, list(x.shape), k, s, p)
                    else:
                        w_b = ops.group_avg_pool2d_backward(go, list(x.shape), k, s, p)
                        g_b = ops.group_avg_pool2d_backward(self.to_dev(go), list(x.shape), k, s, p)
                    self.compare(f"group_{kind}_pool2d_backward", "op", dtype, case, g_b, w_b, exact_required=True)
                    wrapper = getattr(self.gconv_ext.ops, f"group_{kind}_pool2d")
                    xl, xdl = self.leaf(x), self.to_dev(x, True)
                    gol, god = go.clone().requires_grad_(), self.to_dev(go, True)
                    (want_g,) = torch.autograd.grad(wrapper(xl, k, s, p), xl, gol, create_graph=True)
                    (got_g,) = torch.autograd.grad(wrapper(xdl, k, s, p), xdl, god, create_graph=True)
                    self.compare(f"group_{kind}_pool2d", "wrapper grad", dtype, case, got_g, want_g,
                                 exact_required=True)
                    if double_backward:
                        v = self.rand(x.shape, dtype)
                        (want2,) = torch.autograd.grad(want_g, gol, v)
                        (got2,) = torch.autograd.grad(got_g, god, self.to_dev(v))
                        self.compare(f"group_{kind}_pool2d_backward", "double backward d/dgrad_out", dtype, case,
                                     got2, want2, exact_required=True)
                v = self.rand(x.shape, dtype)
                want_i = ops.group_max_pool2d_with_indices(x, k, s, p)[1]
                self.compare("group_max_pool2d_gather", "op", dtype, case,
                             ops.group_max_pool2d_gather(self.to_dev(v), self.to_dev(want_i), k, s, p),
                             ops.group_max_pool2d_gather(v, want_i, k, s, p), exact_required=True)

    # -- fused layer norm + ReLU + max pool --------------------------------------------------------
    def norm_pool(self, dtype, order: int, double_backward: bool) -> None:
        torch, ops, tol = self.torch, self.ops, self.tol
        acc, u = self.acc(dtype), self.u(dtype)
        name = "group_layer_norm_relu_max_pool2d"
        for shape in ((2, 3, order, 9, 8), (2, 5, 9, 8)):
            x = (self.rand(shape, torch.float64) + 0.5).to(dtype)
            xd = self.to_dev(x)
            x64 = x.double()
            m = x64[0].numel()
            var, mean = torch.var_mean(x64.flatten(1), dim=1, correction=0)
            rstd = torch.rsqrt(var + 1e-5)
            y_max = float(((x64.flatten(1) - mean[:, None]).abs().amax(1) * rstd).max())
            f_atol = 2 * (float(rstd.max()) * tol.gamma(m, acc) * float(x64.abs().mean())
                          + y_max * tol.gamma(m + 8, acc))
            for k, s, p in self.SPATIAL[:2]:
                case = f"{list(shape)} k{k} s{s} p{p}"
                want = ops.group_layer_norm_relu_max_pool2d(x, k, s, p, 1e-5)
                got = ops.group_layer_norm_relu_max_pool2d(xd, k, s, p, 1e-5)
                self.compare(name, "op", dtype, case, got[0], want[0], f_atol + 2 * u * y_max)
                self.compare(name, "indices", dtype, case, got[1], want[1], exact_required=True)
                for i, what in ((2, "mean"), (3, "rstd")):
                    self.compare(name, what, dtype, case, got[i], want[i],
                                 2 * tol.gamma(m + 8, acc) * float(want[i].abs().max()))
                go = self.rand(want[0].shape, dtype)
                routes = -(-k[0] // s[0]) * -(-k[1] // s[1])
                g_mag = float(rstd.max()) * (routes * float(go.abs().max())
                                             + (1 + 2 * y_max) * float(go.double().abs().mean()) * (1 + y_max))
                b_atol = 2 * g_mag * (tol.gamma(2 * m + 16, acc) + tol.gamma(routes, dtype) + 2 * u)
                w_b = ops.group_layer_norm_relu_max_pool2d_backward(go, x, *want, k, s, p)
                g_b = ops.group_layer_norm_relu_max_pool2d_backward(self.to_dev(go), xd,
                                                                    *[self.to_dev(t) for t in want], k, s, p)
                self.compare(f"{name}_backward", "op", dtype, case, g_b, w_b, b_atol)
                wrapper = self.gconv_ext.ops.group_layer_norm_relu_max_pool2d
                xl, xdl = self.leaf(x), self.to_dev(x, True)
                (want_g,) = torch.autograd.grad(wrapper(xl, k, s, p), xl, go)
                (got_g,) = torch.autograd.grad(wrapper(xdl, k, s, p), xdl, self.to_dev(go))
                self.compare(name, "wrapper grad", dtype, case, got_g, want_g, 2 * b_atol)
                if double_backward:  # built from differentiable ops: the pools' (exact) and torch's
                    v = self.rand(x.shape, dtype)
                    gol, god = go.clone().requires_grad_(), self.to_dev(go, True)
                    (wg,) = torch.autograd.grad(wrapper(xl, k, s, p), xl, gol, create_graph=True)
                    (gg,) = torch.autograd.grad(wrapper(xdl, k, s, p), xdl, god, create_graph=True)
                    (want2,) = torch.autograd.grad(wg, gol, v)
                    (got2,) = torch.autograd.grad(gg, god, self.to_dev(v))
                    self.compare(name, "double backward d/dgrad_out", dtype, case, got2, want2,
                                 1e-10 * float(want2.abs().max()))

    # -- the whole run --------------------------------------------------------------------------
    def run(self) -> None:
        torch, Group = self.torch, self.Group
        quick = self.ctx.quick
        groups = [Group(4, True), Group(8)] + ([] if quick else [Group(5, True)])
        dtypes = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
        conv_cfgs = [{"B": 2, "ci": 3, "co": 4, "H": 9, "k": 3, "stride": 2, "padding": 1, "dilation": 1,
                      "disk": False, "bias": True, "channels_last": False},
                     {"B": 2, "ci": 2, "co": 3, "H": 10, "k": 5, "stride": 1, "padding": 2, "dilation": 2,
                      "disk": True, "bias": False, "channels_last": True}]
        transform_cfgs = [(5, False), (4, True)]
        if quick:
            conv_cfgs, transform_cfgs = conv_cfgs[:1], transform_cfgs[:1]
        # cuDNN on, TF32 off: float32 convolutions at float32 accuracy
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            for dtype in dtypes:
                for gi, group in enumerate(groups):
                    self.ctx.check_time()
                    second = dtype == torch.float64 and gi == 0
                    for k, disk in transform_cfgs:
                        self.transforms(dtype, group, k, disk)
                    for ci, cfg in enumerate(conv_cfgs):
                        for lifting in (True, False):
                            self.conv(dtype, group, lifting, cfg, double_backward=second and ci == 0)
                    self.group_pool(dtype, group.order, double_backward=second)
                    self.spatial_pool(dtype, group.order, double_backward=second, quick=quick)
                    self.norm_pool(dtype, group.order, double_backward=second)


def parity_result(checks: Sequence[Check], ops_defined: Sequence[str], timed_out: bool) -> StageResult:
    """The parity stage's verdict and tables from its checks: FAILED when a check is outside its bound or
    an op of csrc/library.cpp has no check; TIMEOUT when the deadline cut it short."""
    res = StageResult("parity", PASSED)
    bad = [c for c in checks if not c.ok]
    missing = [op for op in ops_defined if not any(c.op == op for c in checks)]
    groups: dict[tuple[str, str, str], list[Check]] = {}
    for c in checks:
        groups.setdefault((c.op, c.path, c.dtype), []).append(c)
    rows = []
    for (op, path, dtype), cs in groups.items():
        worst = max(cs, key=lambda c: (not c.ok, c.ratio if not math.isnan(c.ratio) else math.inf))
        exact = sum(c.exact for c in cs)
        rows.append((op, path, dtype, len(cs), f"{exact}/{len(cs)}", f"{max(c.max_err for c in cs):.3g}",
                     f"{worst.ratio:.3g}", worst.bound,
                     "ok" if all(c.ok for c in cs) else "**FAIL**"))
    exact_pools = all(c.exact for c in checks if c.bound == "exact")
    n_transforms = [c for c in checks if c.op.endswith("_filter") or c.op.endswith("_filter_backward")]
    res.summary = (f"{len(checks)} comparisons over {len({c.op for c in checks})}/{len(ops_defined)} ops; "
                   f"{len(bad)} outside bounds; pools bit-exact: {'yes' if exact_pools else 'NO'}; transforms "
                   f"bitwise equal in {sum(c.exact for c in n_transforms)}/{len(n_transforms)}; worst ratio to "
                   f"bound {max([c.ratio for c in checks if not c.exact] or [0.0]):.3g}")
    if bad or missing:
        res.status = FAILED
    elif timed_out:
        res.status = TIMEOUT
    if timed_out:
        res.summary = "deadline reached before every case ran; " + res.summary
    if missing:
        res.summary = f"no check of {', '.join(missing)}; " + res.summary
    res.details = ["Per (op, path, dtype): `exact` = bitwise-equal cases; `ratio` = the worst max |cuda - cpu| / "
                   "allowed (<= 1 passes; pools must be exact), with that case's bound. Bounds: the `Parity` "
                   "docstring in benchmarks/gpu_check.py.", ""]
    res.details += md_table(["op", "path", "dtype", "cases", "exact", "max err", "ratio", "bound", ""], rows)
    if bad:
        res.details += ["", "Failures (first 40):", ""]
        res.details += md_table(["op", "path", "dtype", "case", "max err", "ratio", "exact", "bound"],
                                [(c.op, c.path, c.dtype, c.case, f"{c.max_err:.3g}", f"{c.ratio:.3g}", c.exact,
                                  c.bound) for c in bad[:40]])
    res.data = {"checks": len(checks), "failures": len(bad), "missing_ops": missing}
    return res


def stage_parity(ctx: Ctx) -> StageResult:
    parity = Parity(ctx)
    timed_out = False
    try:
        parity.run()
    except OutOfTime:
        timed_out = True
    return parity_result(parity.checks, library_ops(), timed_out)


# -- timings ------------------------------------------------------------------------------------------

def _rounds(ctx: Ctx) -> int:
    return 3 if ctx.dry else (5 if ctx.quick else 15)


def _time_pairs(ctx: Ctx, fns: dict, min_block: float = 2e-3) -> dict[str, list[float]]:
    ctx.check_time()
    return interleaved(fns, _rounds(ctx), block_timer_for(ctx.device), min_block=min_block,
                       deadline=ctx.deadline)


def _conv_candidates(dev: str, lifting: bool, group, ci: int, co: int, k: int, pad: int, batch: int, size: int,
                     dtype, channels_last: bool) -> dict[str, Callable[[], object]]:
    """The fused op and its cuDNN floor (F.conv2d on the pre-expanded filter and folded bias, same layout),
    forward only and forward + backward."""
    import torch
    import torch.nn.functional as F

    ops = torch.ops.gconv_ext
    n, r, refl = group.order, group.rotations, group.reflections
    g = torch.Generator().manual_seed(0)
    x = torch.randn((batch, ci, size, size) if lifting else (batch, ci, n, size, size), generator=g)
    w = torch.randn((co, ci, k, k) if lifting else (co, ci, n, k, k), generator=g) * 0.1
    b = torch.randn(co, generator=g)
    x, w, b = (t.to(dev, dtype) for t in (x, w, b))
    if channels_last:  # for a group map: memory order (B, H, W, C, |G|), so the planar view is NHWC
        x = (x.contiguous(memory_format=torch.channels_last) if lifting
             else x.permute(0, 3, 4, 1, 2).contiguous().permute(0, 3, 4, 1, 2))
    xp = x if lifting else x.reshape(batch, ci * n, size, size)
    args = (r, refl, False, [1, 1], [pad, pad], [1, 1])
    fused = ops.lifting_conv2d if lifting else ops.group_conv2d
    with torch.no_grad():
        w_exp = (ops.lift_filter(w, r, refl, False) if lifting
                 else ops.group_filter(w, r, refl, False)).reshape(co * n, -1, k, k)
        if channels_last:
            w_exp = w_exp.contiguous(memory_format=torch.channels_last)
        b_fold = b.repeat_interleave(n)
        go = torch.randn_like(fused(x, w, b, *args))
    go_p = go.reshape(batch, co * n, go.shape[-2], go.shape[-1])
    xl, wl, bl = x.detach().requires_grad_(not lifting), w.detach().requires_grad_(), b.detach().requires_grad_()
    xpl = xp.detach().requires_grad_(not lifting)
    wel, bfl = w_exp.detach().requires_grad_(), b_fold.detach().requires_grad_()
    leaves = [t for t in (xl, wl, bl) if t.requires_grad]
    leaves_floor = [t for t in (xpl, wel, bfl) if t.requires_grad]

    def ours_forward():
        with torch.no_grad():
            return fused(x, w, b, *args)

    def floor_forward():
        with torch.no_grad():
            return F.conv2d(xp, w_exp, b_fold, 1, pad)

    def ours_step():
        return torch.autograd.grad(fused(xl, wl, bl, *args), leaves, go)

    def floor_step():
        return torch.autograd.grad(F.conv2d(xpl, wel, bfl, 1, pad), leaves_floor, go_p)

    return {"ours forward": ours_forward, "floor forward": floor_forward, "ours fwd+bwd": ours_step,
            "floor fwd+bwd": floor_step}


def stage_timing_conv(ctx: Ctx) -> StageResult:
    import torch

    from gconv_ext.groups import group_from_name

    # (lifting, group, C_in, C_out, k, padding, batch, size): the GCNN's lifting and group layers, and a
    # wider D4 layer
    cases = [(True, "C4", 1, 16, 5, 1, 128, 28), (False, "C4", 16, 16, 5, 0, 128, 26),
             (False, "D4", 32, 32, 3, 1, 64, 32)]
    if ctx.dry:
        cases = [(lift, g, ci, co, k, p, 2, 12) for lift, g, ci, co, k, p, _, _ in cases]
    # (mode, dtype, cuDNN TF32, channels_last)
    modes = [("fp32", torch.float32, False, False), ("tf32", torch.float32, True, False),
             ("fp16", torch.float16, False, False), ("fp32 channels_last", torch.float32, False, True),
             ("fp16 channels_last", torch.float16, False, True)]
    if ctx.quick or ctx.dry:
        modes = modes[:3] + modes[4:]
    rows, res = [], StageResult("timing-conv", PASSED)
    try:
        for lifting, gname, ci, co, k, pad, batch, size in cases:
            label = (f"{'lifting' if lifting else 'group'} {ci}->{co} {gname} k{k}{f' p{pad}' if pad else ''}, "
                     f"B{batch} {size}x{size}")
            for mode, dtype, tf32, cl in modes:
                ctx.check_time()
                fns = _conv_candidates(ctx.device, lifting, group_from_name(gname), ci, co, k, pad, batch, size,
                                       dtype, cl)
                with torch.backends.cudnn.flags(enabled=True, benchmark=True, allow_tf32=tf32):
                    for direction in ("forward", "fwd+bwd"):
                        t = _time_pairs(ctx, {"floor": fns[f"floor {direction}"], "ours": fns[f"ours {direction}"]})
                        rows.append((label, mode, direction, fmt_us(statistics.median(t["ours"])),
                                     fmt_us(statistics.median(t["floor"])),
                                     fmt_ratio(round_ratios(t, "ours", "floor"))))
    except OutOfTime:
        res.status = TIMEOUT
    res.summary = (f"{len(rows)} timings; ours / cuDNN floor: "
                   + ", ".join(f"{row[1]} {row[2]} {row[5].split(' ')[0]}" for row in rows[:4])
                   + (" ..." if len(rows) > 4 else ""))
    res.details = ["Ours: the fused op (filter transform + cuDNN convolution, bias folded; fwd+bwd adds the "
                   "transform's adjoint). Floor: F.conv2d on the pre-expanded filter and folded bias, same shapes, "
                   "layout and cuDNN flags (benchmark=True). Ratio: median of the per-round ratios (IQR); what "
                   "exceeds 1x is the transforms' and the wrapper's share.", ""]
    res.details += md_table(["case", "mode", "direction", "ours (us)", "floor (us)", "ours / floor"], rows)
    return res


def stage_timing_transforms(ctx: Ctx) -> StageResult:
    import torch

    ops = torch.ops.gconv_ext
    dev = ctx.device
    # (op, group (rotations, reflections), weight shape without the group axis, label)
    cases = [("lift_filter", (8, False), (256, 64, 5, 5)),
             ("group_filter", (4, True), (128, 128, 5, 5)),
             ("group_filter", (8, False), (128, 128, 5, 5)),
             ("group_filter", (4, False), (16, 16, 5, 5))]
    dtypes = [torch.float32, torch.float16]
    if ctx.dry:
        cases = [(op, g, (4, 4, 5, 5)) for op, g, _ in cases]
    rows, res = [], StageResult("timing-transforms", PASSED)
    try:
        for name, (r, refl), shape in cases:
            n = r * (2 if refl else 1)
            wshape = shape if name == "lift_filter" else (shape[0], shape[1], n, shape[2], shape[3])
            for dtype in dtypes:
                w = torch.randn(wshape, device=dev, dtype=dtype)
                fwd, bwd = getattr(ops, name), getattr(ops, name + "_backward")
                out = fwd(w, r, refl, False)
                grad = torch.randn_like(out)
                def forward(fwd=fwd, w=w, r=r, refl=refl):
                    return fwd(w, r, refl, False)

                def adjoint(bwd=bwd, grad=grad, r=r, refl=refl):
                    return bwd(grad, r, refl, False)

                for direction, fn, src, dst in (("forward", forward, w, out), ("adjoint", adjoint, grad, w)):
                    moved = (src.numel() + dst.numel()) * src.element_size()
                    half = max(1, (src.numel() + dst.numel()) // 2)
                    a = torch.empty(half, device=dev, dtype=dtype)
                    c = torch.empty_like(a)
                    a.normal_()
                    t = _time_pairs(ctx, {"copy": lambda a=a, c=c: c.copy_(a), "ours": fn})
                    t_ours, t_copy = statistics.median(t["ours"]), statistics.median(t["copy"])
                    rows.append((f"{name} {'D' if refl else 'C'}{r} {list(wshape)}", _dtype_name(dtype), direction,
                                 f"{moved / 2**20:.1f}", fmt_us(t_ours), f"{moved / t_ours / 1e9:,.0f}",
                                 f"{moved / t_copy / 1e9:,.0f}", fmt_ratio(round_ratios(t, "ours", "copy"))))
    except OutOfTime:
        res.status = TIMEOUT
    res.summary = f"{len(rows)} timings; ours / copy of the same bytes: " + ", ".join(
        f"{row[0].split(' [')[0]} {row[1]} {row[2]} {row[7].split(' ')[0]}" for row in rows[:3]) + " ..."
    res.details = ["Bytes moved = input + output. Baseline: a device copy (`Tensor.copy_`) moving the same bytes "
                   "(read + write), timed in the same rounds; ratio 1x = at the copy's bandwidth.", ""]
    res.details += md_table(["case", "dtype", "direction", "MiB moved", "ours (us)", "ours GB/s", "copy GB/s",
                             "ours / copy"], rows)
    return res


def stage_timing_pools(ctx: Ctx) -> StageResult:
    import torch
    import torch.nn.functional as F

    import gconv_ext.ops as gops

    dev = ctx.device
    shape = (2, 4, 8, 12, 12) if ctx.dry else (64, 32, 8, 28, 28)
    B, C, G, H, W = shape
    cases = [  # (label, ours(x), torch's(x planar or 5-D))
        ("max k2 s1", lambda t: gops.group_max_pool2d(t, 2, 1), lambda t: F.max_pool2d(t.view(B, C * G, H, W), 2, 1)),
        ("max k3 s2 p1", lambda t: gops.group_max_pool2d(t, 3, 2, 1),
         lambda t: F.max_pool2d(t.view(B, C * G, H, W), 3, 2, 1)),
        ("avg k2 s2", lambda t: gops.group_avg_pool2d(t, 2, 2), lambda t: F.avg_pool2d(t.view(B, C * G, H, W), 2, 2)),
        ("group_pool max", lambda t: gops.group_pool(t, "max"), lambda t: t.amax(2)),
        ("group_pool mean", lambda t: gops.group_pool(t, "mean"), lambda t: t.mean(2)),
    ]
    rows, res = [], StageResult("timing-pools", PASSED)
    try:
        for dtype in (torch.float32, torch.float16):
            x = torch.randn(shape, device=dev, dtype=dtype)
            xl = x.detach().requires_grad_()
            for label, ours, theirs in cases if dtype == torch.float32 else cases[:1]:
                with torch.no_grad():
                    go = torch.randn_like(ours(x))

                def fwd(fn=ours, x=x):
                    with torch.no_grad():
                        return fn(x)

                def fwd_t(fn=theirs, x=x):
                    with torch.no_grad():
                        return fn(x)

                def step(fn=ours, xl=xl, go=go):
                    return torch.autograd.grad(fn(xl), xl, go)

                def step_t(fn=theirs, xl=xl, go=go):
                    out = fn(xl)
                    return torch.autograd.grad(out, xl, go.reshape(out.shape))

                for direction, a, b in (("forward", fwd, fwd_t), ("fwd+bwd", step, step_t)):
                    t = _time_pairs(ctx, {"torch": b, "ours": a})
                    rows.append((label, _dtype_name(dtype), direction, fmt_us(statistics.median(t["ours"])),
                                 fmt_us(statistics.median(t["torch"])), fmt_ratio(round_ratios(t, "ours", "torch"))))
    except OutOfTime:
        res.status = TIMEOUT
    res.summary = f"{len(rows)} timings on {list(shape)}; ours / torch: " + ", ".join(
        f"{row[0]} {row[1]} {row[2]} {row[5].split(' ')[0]}" for row in rows[:4]) + " ..."
    res.details = [f"Input {list(shape)} (B, C, |G|, H, W); torch's pools on the planar view [B, C |G|, H, W], "
                   "group pooling against `amax(2)` / `mean(2)`; fwd+bwd = forward and the input gradient.", ""]
    res.details += md_table(["case", "dtype", "direction", "ours (us)", "torch (us)", "ours / torch"], rows)
    return res


def make_grad_scaler(device: str):
    """A GradScaler for AMP on ``device`` (torch.amp.GradScaler where it exists, else the CUDA one); a
    disabled one on the CPU (bfloat16 needs no scaling)."""
    import torch

    amp_scaler = getattr(getattr(torch, "amp", None), "GradScaler", None)
    if device != "cuda":
        return amp_scaler("cpu", enabled=False) if amp_scaler else torch.cuda.amp.GradScaler(enabled=False)
    return amp_scaler("cuda") if amp_scaler else torch.cuda.amp.GradScaler()


def stage_timing_train(ctx: Ctx) -> StageResult:
    import torch
    import torch.nn.functional as F

    from gconv_ext.models import gcnn_preset

    dev = ctx.device
    batch = 8 if ctx.dry else 128
    torch.manual_seed(0)
    model32 = gcnn_preset("C4/4/16").to(dev)
    model_amp = copy.deepcopy(model32)
    x = torch.randn(batch, 1, 28, 28, device=dev)
    y = torch.randint(0, 10, (batch,), device=dev)
    opt32 = torch.optim.AdamW(model32.parameters(), lr=1e-3)
    opt_amp = torch.optim.AdamW(model_amp.parameters(), lr=1e-3)
    scaler = make_grad_scaler(dev)
    amp_dtype = torch.float16 if dev == "cuda" else torch.bfloat16
    losses: dict[str, list] = {"fp32": [], "amp": []}

    def step_fp32():
        opt32.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model32(x), y)
        loss.backward()
        opt32.step()
        losses["fp32"].append(loss.detach())

    def step_amp():
        opt_amp.zero_grad(set_to_none=True)
        with torch.autocast(device_type=dev, dtype=amp_dtype):
            loss = F.cross_entropy(model_amp(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt_amp)
        scaler.update()
        losses["amp"].append(loss.detach())

    res = StageResult("timing-train", PASSED)
    rows = []
    with torch.backends.cudnn.flags(enabled=True, benchmark=True, allow_tf32=False):
        try:
            t = _time_pairs(ctx, {"fp32": step_fp32, "amp": step_amp}, min_block=0.0)
            memory = {}
            for name, fn in (("fp32", step_fp32), ("amp", step_amp)):
                if dev == "cuda":
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                    fn()
                    torch.cuda.synchronize()
                    memory[name] = f"{torch.cuda.max_memory_allocated() / 2**20:,.0f}"
                else:
                    memory[name] = "n/a"
            for name in ("fp32", "amp"):
                med = statistics.median(t[name])
                rows.append((name, f"{med * 1e3:.2f}", f"{batch / med:,.0f}",
                             fmt_ratio(round_ratios(t, name, "fp32")), memory[name]))
        except OutOfTime:
            res.status = TIMEOUT
    finite = {k: bool(torch.stack(v).isfinite().all()) if v else True for k, v in losses.items()}
    last = {k: float(v[-1]) if v else math.nan for k, v in losses.items()}
    if not all(finite.values()):
        res.status = FAILED
    res.summary = (f"GCNN C4/4/16, batch {batch}: " + ", ".join(f"{r[0]} {r[1]} ms/step" for r in rows)
                   + (f"; AMP / fp32 {rows[1][3].split(' ')[0]}" if len(rows) == 2 else "")
                   + f"; last losses fp32 {last['fp32']:.4f}, amp {last['amp']:.4f}"
                   + ("" if all(finite.values()) else "; NON-FINITE LOSS"))
    res.details = ["One training step: forward, cross-entropy, backward, AdamW (AMP: autocast "
                   f"{_dtype_name(amp_dtype)} + GradScaler); cuDNN TF32 off, benchmark on. Peak memory of one step "
                   "after a reset.", ""]
    res.details += md_table(["precision", "ms/step", "images/s", "vs fp32", "peak MiB"], rows)
    return res


CHILD_STAGES: dict[str, Callable[[Ctx], StageResult]] = {
    "extension": stage_extension,
    "parity": stage_parity,
    "timing-conv": stage_timing_conv,
    "timing-transforms": stage_timing_transforms,
    "timing-pools": stage_timing_pools,
    "timing-train": stage_timing_train,
}


def child_main(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(REPO))
    ctx = Ctx(args.device, args.quick, Deadline(args.deadline))
    t0 = time.time()
    try:
        import gconv_ext  # noqa: F401  (loads gconv_ext._C: registers torch.ops.gconv_ext)

        result = CHILD_STAGES[args.child](ctx)
    except OutOfTime:
        result = StageResult(args.child, TIMEOUT, summary="deadline reached")
    except Exception as exc:  # noqa: BLE001 - every failure becomes the stage's FAILED
        first = str(exc).splitlines()[0][:400] if str(exc).strip() else ""
        result = StageResult(args.child, FAILED, summary=f"{type(exc).__name__}: {first}",
                             details=tail(traceback.format_exc(), 40))
    result.seconds = time.time() - t0
    atomic_write_text(Path(args.child_result), json.dumps(result.to_json()))
    return 0


# == stages run by the parent ============================================================================

def run_child_stage(name: str, timeout: float, opts: argparse.Namespace) -> StageResult:
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        path = Path(tmp) / "result.json"
        cmd = [sys.executable, str(SCRIPT), "--child", name, "--child-result", str(path),
               "--deadline", repr(time.time() + max(timeout - CHILD_GRACE_S, 1.0)), "--device", opts.device]
        if opts.quick:
            cmd.append("--quick")
        res = run_cmd(cmd, timeout, env=child_env())
        if path.exists():
            result = StageResult.from_json(json.loads(path.read_text()))
            if result.status == FAILED and res.output.strip():
                result.details += ["", "Output of the stage's process (last 20 lines):", *tail(res.output, 20)]
            return result
    if res.start_error:
        return StageResult(name, FAILED, summary=res.start_error)
    if res.timed_out:
        return StageResult(name, TIMEOUT, summary=f"killed after its {timeout:.0f} s time box",
                           details=tail(res.output))
    return StageResult(name, FAILED, summary=f"its process exited with code {res.returncode} without a result "
                                             "(crashed?)", details=tail(res.output, 40))


def stage_build(timeout: float, capability_list: Sequence[tuple[int, int]]) -> StageResult:
    archs = arch_list(capability_list)
    jobs = os.cpu_count() or 1
    home = find_cuda_home()
    if home is None or not (Path(home) / "bin" / "nvcc").exists():
        return StageResult("build", FAILED, summary="nvcc not found: set CUDA_HOME to the CUDA toolkit (the folder "
                                                    "holding bin/nvcc)")
    env = child_env({"GCONV_EXT_CUDA": "1", "TORCH_CUDA_ARCH_LIST": archs, "MAX_JOBS": str(jobs), "CUDA_HOME": home})
    # setup.py puts the interpreter's folder on PATH, where pip installs ninja; without ninja the build is serial
    ninja = shutil.which("ninja", path=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""))
    cmd = [sys.executable, "setup.py", "build_ext", "--inplace"]
    res = run_cmd(cmd, timeout, env=env)
    what = (f"`{' '.join(cmd[1:])}` with GCONV_EXT_CUDA=1 TORCH_CUDA_ARCH_LIST={archs} MAX_JOBS={jobs} "
            f"CUDA_HOME={home}{'' if ninja else ' (no ninja: one file at a time)'}")
    if res.start_error:
        return StageResult("build", FAILED, summary=res.start_error)
    if res.timed_out:
        return StageResult("build", TIMEOUT, summary=f"{what}: killed after {timeout:.0f} s",
                           details=tail(res.output))
    if res.returncode != 0:
        errors = [ln for ln in res.output.splitlines() if re.search(r"\berror\b", ln, re.IGNORECASE)][:15]
        return StageResult("build", FAILED, summary=f"{what}: exit code {res.returncode}",
                           details=(["First error lines:", "```", *errors, "```", ""] if errors else [])
                           + tail(res.output, 40))
    warnings = sum(1 for ln in res.output.splitlines() if "warning" in ln.lower())
    return StageResult("build", PASSED, summary=f"{what}: built in {res.seconds:.0f} s ({warnings} warning lines)",
                       details=tail(res.output, 8))


def stage_pytest(timeout: float) -> StageResult:
    probe = subprocess.run([sys.executable, "-c", "import pytest"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return StageResult("pytest", SKIPPED, summary="pytest is not installed for this Python "
                                                      "(pip install -r requirements-test.txt)")
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-rfE", "-p", "no:cacheprovider", "python_tests"]
    res = run_cmd(cmd, timeout, env=child_env())
    counts = parse_pytest_summary(res.output)
    tally = ", ".join(f"{n} {k}" for k, n in counts.items()) or "no summary line"
    if res.start_error:
        return StageResult("pytest", FAILED, summary=res.start_error)
    if res.timed_out:
        return StageResult("pytest", TIMEOUT, summary=f"killed after {timeout:.0f} s", details=tail(res.output, 40))
    if res.returncode == 0 and counts.get("passed", 0) > 0:
        return StageResult("pytest", PASSED, summary=f"`pytest -m cuda`: {tally}", details=tail(res.output, 5))
    why = ("no test ran" if res.returncode == 5 else "no test passed" if res.returncode == 0
           else f"exit code {res.returncode}")
    failed = [ln for ln in res.output.splitlines() if ln.startswith(("FAILED ", "ERROR "))]
    return StageResult("pytest", FAILED, summary=f"`pytest -m cuda`: {why}; {tally}",
                       details=(["```", *failed[:40], "```", ""] if failed else []) + tail(res.output, 60))


SANITIZER_SCRIPT = r'''"""Every CUDA kernel of gconv_ext once (generated by benchmarks/gpu_check.py, run under
compute-sanitizer). The convolutions are left out: beyond the transform kernels they are cuDNN."""
import sys

sys.path.insert(0, {repo!r})
import torch

dev = sys.argv[1] if len(sys.argv) > 1 else "cuda"
if dev == "cuda" and not torch.cuda.is_available():
    print("{no_cuda}")
    sys.exit(3)
import gconv_ext  # noqa: F401,E402  (registers the operators)

ops = torch.ops.gconv_ext


def rand(*shape, dtype):
    return torch.randn(*shape, dtype=torch.float64).to(dtype).to(dev)  # made on the CPU: few torch kernels


for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
    for rot, refl, disk in ((4, True, False), (8, False, True)):
        n = rot * (2 if refl else 1)
        t = ops.lift_filter(rand(3, 2, 5, 5, dtype=dtype), rot, refl, disk)
        ops.lift_filter_backward(t, rot, refl, disk)
        t = ops.group_filter(rand(3, 2, n, 5, 5, dtype=dtype), rot, refl, disk)
        ops.group_filter_backward(t, rot, refl, disk)
    x = rand(2, 3, 8, 7, 6, dtype=dtype)
    for inp in (x, x[:, :, :1].expand(-1, -1, 8, -1, -1)):  # contiguous and stride-0 group axis
        for mode in ("max", "mean"):
            y = ops.group_pool(inp, mode)
            ops.group_pool_backward(y, inp, mode)
    for k, s, p in (([2, 2], [1, 1], [0, 0]), ([3, 3], [2, 2], [1, 1]), ([3, 2], [1, 2], [1, 0])):
        ops.group_max_pool2d(x, k, s, p)
        y, idx = ops.group_max_pool2d_with_indices(x, k, s, p)
        ops.group_max_pool2d_backward(y, idx, list(x.shape), k, s, p)
        ops.group_max_pool2d_gather(rand(*x.shape, dtype=dtype), idx, k, s, p)
        y = ops.group_avg_pool2d(x, k, s, p)
        ops.group_avg_pool2d_backward(y, list(x.shape), k, s, p)
        out, idx, mean, rstd = ops.group_layer_norm_relu_max_pool2d(x, k, s, p, 1e-5)
        ops.group_layer_norm_relu_max_pool2d_backward(out, x, out, idx, mean, rstd, k, s, p)
if dev == "cuda":
    torch.cuda.synchronize()
print("{ok}")
'''


def sanitizer_script() -> str:
    return SANITIZER_SCRIPT.format(repo=str(REPO), no_cuda=SANITIZER_NO_CUDA, ok=SANITIZER_OK)


def stage_sanitizer(tool: str, timeout: float, device: str) -> StageResult:
    with tempfile.TemporaryDirectory(prefix="gpu_check_sanitizer_") as tmp:
        script = Path(tmp) / "exercise_kernels.py"
        script.write_text(sanitizer_script())
        env = child_env({"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"})  # one allocation per tensor: exact bounds
        if device != "cuda":  # dry run: the generated script itself, on the CPU, without the sanitizer
            res = run_cmd([sys.executable, str(script), "cpu"], timeout, env=env)
            ok = res.returncode == 0 and SANITIZER_OK in res.output
            return StageResult(tool, SKIPPED if ok else FAILED,
                               summary="dry run: the generated script ran on the CPU without the sanitizer"
                               if ok else f"dry run: the generated script failed (exit {res.returncode})",
                               details=[] if ok else tail(res.output, 40))
        sanitizer = find_sanitizer()
        if sanitizer is None:
            return StageResult(tool, SKIPPED, summary="compute-sanitizer not found (CUDA_HOME/bin or PATH)")
        helptext = run_cmd([sanitizer, "--help"], 30).output
        cmd = [sanitizer, "--tool", tool, "--error-exitcode", str(SANITIZER_EXITCODE), "--print-limit", "20"]
        if "--report-api-errors" in helptext:
            cmd += ["--report-api-errors", "no"]  # torch's own probing API calls are not our errors
        cmd += [sys.executable, str(script), "cuda"]
        res = run_cmd(cmd, timeout, env=env)
    if res.start_error:
        return StageResult(tool, SKIPPED, summary=f"compute-sanitizer could not start: {res.start_error}")
    if res.timed_out:
        return StageResult(tool, TIMEOUT, summary=f"killed after {timeout:.0f} s", details=tail(res.output, 40))
    status, reason = classify_sanitizer(res.output, res.returncode)
    return StageResult(tool, status, summary=f"compute-sanitizer --tool {tool}: {reason}",
                       details=tail(res.output, 15 if status == PASSED else 60))


# == the parent ===========================================================================================

def no_cuda_report(opts: argparse.Namespace, started: str, t0: float) -> int:
    import torch

    msg = "no CUDA device: nothing to check"
    try:
        sys.path.insert(0, str(REPO))
        import gconv_ext

        info = json.dumps(gconv_ext.build_info())
    except Exception as exc:  # noqa: BLE001 - the report says what went wrong instead
        info = f"gconv_ext did not import: {type(exc).__name__}: {exc}"
    print(msg)
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda}); torch.cuda.is_available() is False")
    print(f"gconv_ext build_info(): {info}")
    env = environment("cpu") + [("build_info()", f"`{info}`")]
    text = render_report(title_note=msg, environment=env, results=[], command=" ".join(["python", *sys.argv]),
                         started=started,
                         elapsed=time.time() - t0, budget=opts.budget,
                         notes=[f"torch.cuda.is_available() is False in torch {torch.__version__}: no stage ran. "
                                "Run this on a machine with a CUDA GPU (see README, 'Checking the CUDA path on "
                                "a GPU')."])
    atomic_write_text(Path(opts.out), text)
    print(f"report: {opts.out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--build", action="store_true",
                   help="build the extension in place first (GCONV_EXT_CUDA=1, this GPU's archs, MAX_JOBS = CPUs)")
    p.add_argument("--out", default="gpu_check_report.md", help="the markdown report (default %(default)s)")
    p.add_argument("--quick", action="store_true", help="fewer parity cases and timing rounds")
    p.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S,
                   help="seconds for the whole run, build included (default %(default)s)")
    p.add_argument("--skip", default="", help=f"comma-separated stages to leave out, of: {', '.join(STAGE_NAMES)}")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                   help="cpu: a dry run of this script's code paths against the CPU (no build, no pytest)")
    # internal: one stage in a child process
    p.add_argument("--child", choices=sorted(CHILD_STAGES), help=argparse.SUPPRESS)
    p.add_argument("--child-result", help=argparse.SUPPRESS)
    p.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    opts = p.parse_args(argv)
    if opts.child:
        return child_main(opts)

    t0 = time.time()
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    skip = {s.strip() for s in opts.skip.split(",") if s.strip()}
    unknown = skip - set(STAGE_NAMES)
    if unknown:
        p.error(f"--skip: unknown stage(s) {sorted(unknown)}; the stages are {', '.join(STAGE_NAMES)}")
    import torch

    if opts.device == "cuda" and not torch.cuda.is_available():
        return no_cuda_report(opts, started, t0)

    deadline = Deadline(t0 + opts.budget - REPORT_RESERVE_S)
    try:
        env = environment(opts.device)
    except Exception as exc:  # noqa: BLE001 - the report still gets written
        env = [("environment", f"could not be read: {type(exc).__name__}: {exc}")]
    command = " ".join(["python", *sys.argv])
    results: list[StageResult] = []
    notes = ([("DRY RUN on the CPU (--device cpu): the 'CUDA' side of every comparison is the CPU; nothing "
               "about CUDA was checked.")] if opts.device != "cuda" else [])

    def write(finished: bool) -> None:
        text = render_report(title_note="", environment=env, results=results, command=command, started=started,
                             elapsed=time.time() - t0, budget=opts.budget, finished=finished, notes=notes)
        atomic_write_text(Path(opts.out), text)

    caps = ([torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())]
            if opts.device == "cuda" else [])
    where = torch.cuda.get_device_name() if opts.device == "cuda" else "dry run on the CPU"
    print(f"gpu_check: {where}; torch {torch.__version__}; budget {opts.budget:.0f} s; report {opts.out}", flush=True)
    extension_ok = True
    for index, step in enumerate(STEPS):
        reserve = reserve_after(STEPS, index)
        jobs: list[tuple[Spec, float]] = []
        for spec in step:
            reason = None
            if spec.name in skip:
                reason = "--skip"
            elif spec.name == "build" and not opts.build:
                reason = "no --build: the extension already built is checked"
            elif spec.name == "build" and opts.device != "cuda":
                reason = "dry run: no build"
            elif spec.name == "pytest" and opts.device != "cuda":
                reason = "dry run: pytest -m cuda needs a GPU"
            elif not extension_ok and spec.name not in ("pytest",):
                reason = "the extension is unusable (see the extension stage)"
            if reason:
                results.append(StageResult(spec.name, SKIPPED, summary=reason))
                continue
            timeout = stage_timeout(deadline.remaining(), spec.cap, spec.floor, reserve)
            if timeout is None:
                results.append(StageResult(spec.name, TIMEOUT, summary=f"not started: {deadline.remaining():.0f} s "
                                                                       f"left of the budget, {reserve:.0f} s kept "
                                                                       "for the later stages"))
                continue
            jobs.append((spec, timeout))
        if not jobs:
            write(False)
            continue

        def run_one(spec: Spec, timeout: float) -> StageResult:
            s0 = time.time()
            try:
                if spec.name == "build":
                    r = stage_build(timeout, caps)
                elif spec.name == "pytest":
                    r = stage_pytest(timeout)
                elif spec.name in ("memcheck", "initcheck"):
                    r = stage_sanitizer(spec.name, timeout, opts.device)
                else:
                    r = run_child_stage(spec.name, timeout, opts)
            except Exception as exc:  # noqa: BLE001 - a stage's own failure, recorded
                r = StageResult(spec.name, FAILED, summary=f"{type(exc).__name__}: {exc}",
                                details=tail(traceback.format_exc(), 30))
            r.name, r.seconds = spec.name, time.time() - s0
            return r

        if len(jobs) == 1:
            done = [run_one(*jobs[0])]
        else:
            with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
                done = list(pool.map(lambda job: run_one(*job), jobs))
        for r in done:
            results.append(r)
            print(f"[{r.name}] {r.status} in {r.seconds:.1f} s: {r.summary}", flush=True)
            if r.name in ("build", "extension") and r.status in BAD_STATUSES:
                extension_ok = False
            if r.name == "extension" and "build_info" in r.data:
                env.append(("build_info()", f"`{json.dumps(r.data['build_info'])}`"))
        write(False)
    order = {name: i for i, name in enumerate(STAGE_NAMES)}
    results.sort(key=lambda r: order.get(r.name, len(order)))
    write(True)
    code = exit_code(results)
    print(f"gpu_check: {overall(results)} in {time.time() - t0:.0f} s; report {opts.out}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
