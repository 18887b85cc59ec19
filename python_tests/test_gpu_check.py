"""benchmarks/gpu_check.py without a GPU: the no-CUDA run end to end (a subprocess that sees no device), a
dry run of the parent/child plumbing on the CPU, the generated sanitizer script on the CPU, a small
CPU-vs-CPU parity, and the pure-Python parts (arch list, deadline and time boxes, report, output parsers)."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module
    spec.loader.exec_module(module)
    return module


gc = _load()


def _run(args, tmp_path, **env):
    full_env = {**os.environ, **env}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=tmp_path, env=full_env, capture_output=True,
                          text=True, timeout=240, check=False)


# -- end to end, without a GPU --------------------------------------------------------------------------

def test_without_cuda_says_so_and_exits_0(tmp_path):
    out = tmp_path / "sub" / "report.md"
    res = _run(["--build", "--out", str(out)], tmp_path, CUDA_VISIBLE_DEVICES="")  # no device, even on a GPU box
    assert res.returncode == 0, res.stdout + res.stderr
    assert "no CUDA device: nothing to check" in res.stdout
    assert torch.__version__ in res.stdout and "build_info()" in res.stdout
    text = out.read_text()
    assert "no CUDA device: nothing to check" in text
    assert torch.__version__ in text and "build_info()" in text
    assert not [p for p in out.parent.iterdir() if p.name != "report.md"]  # no temporary file left


def test_dry_run_plumbing(tmp_path):
    # the parent runs the extension stage in a child process and reads its JSON result; the rest skipped
    out = tmp_path / "dry.md"
    skip = ",".join(s for s in gc.STAGE_NAMES if s != "extension")
    res = _run(["--device", "cpu", "--skip", skip, "--out", str(out)], tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "[extension] PASSED" in res.stdout
    text = out.read_text()
    assert "DRY RUN" in text and "| extension | PASSED |" in text and "| build | SKIPPED |" in text
    assert '"compiled": true' in text  # build_info() in the environment table


def test_unknown_skip_is_an_error(tmp_path):
    res = _run(["--skip", "nonsense"], tmp_path)
    assert res.returncode == 2 and "unknown stage" in res.stderr


def test_sanitizer_script_runs_on_cpu(tmp_path):
    script = tmp_path / "exercise.py"
    script.write_text(gc.sanitizer_script())
    res = subprocess.run([sys.executable, str(script), "cpu"], capture_output=True, text=True, timeout=120,
                         check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert gc.SANITIZER_OK in res.stdout


# -- parity, CPU against CPU ----------------------------------------------------------------------------

def test_parity_cases_cover_every_op_of_library_cpp():
    from gconv_ext.groups import Group

    ctx = gc.Ctx("cpu", True, gc.Deadline.after(600))
    p = gc.Parity(ctx)
    cfg = {"B": 1, "ci": 2, "co": 2, "H": 6, "k": 3, "stride": 1, "padding": 1, "dilation": 1, "disk": False,
           "bias": True, "channels_last": True}
    group = Group(4, True)
    p.transforms(torch.float32, group, 3, True)
    for lifting in (True, False):
        p.conv(torch.float64, group, lifting, cfg, double_backward=True)
        p.conv(torch.bfloat16, group, lifting, cfg, double_backward=False)
    p.group_pool(torch.float16, group.order, double_backward=False)
    p.spatial_pool(torch.float64, group.order, double_backward=True, quick=True)
    p.norm_pool(torch.float64, group.order, double_backward=True)
    p.norm_pool(torch.bfloat16, group.order, double_backward=False)
    ops = gc.library_ops()
    res = gc.parity_result(p.checks, ops, timed_out=False)
    assert res.status == gc.PASSED, res.summary
    assert {c.op for c in p.checks} == set(ops)
    assert res.data["missing_ops"] == []


def test_parity_result_flags_missing_ops_and_timeouts():
    check = gc.Check("group_pool", "op", "float32", "c", 0.0, 0.0, True, True, "exact")
    res = gc.parity_result([check], ["group_pool", "new_op"], timed_out=False)
    assert res.status == gc.FAILED and "new_op" in res.summary
    assert gc.parity_result([check], ["group_pool"], timed_out=True).status == gc.TIMEOUT


def test_compare_bounds_and_exactness():
    p = gc.Parity(gc.Ctx("cpu", True, gc.Deadline.after(600)))
    want = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    got = want + torch.tensor([0.0, 1e-9, 0.0], dtype=torch.float64)
    p.compare("op", "op", torch.float64, "within", got, want, atol=1e-8)
    p.compare("op", "op", torch.float64, "outside", got, want, atol=1e-10)
    p.compare("op", "op", torch.float64, "not exact", got, want, exact_required=True)
    p.compare("op", "op", torch.float64, "exact", want.clone(), want, exact_required=True)
    p.compare("op", "op", torch.float64, "nan", torch.full_like(want, float("nan")), want, atol=1.0)
    p.compare("op", "op", torch.float64, "shape", want[:2], want, atol=1.0)
    assert [c.ok for c in p.checks] == [True, False, False, True, False, False]
    assert p.checks[0].ratio == pytest.approx(0.1) and not p.checks[0].exact
    assert p.checks[3].exact and p.checks[3].ratio == 0.0


# -- pure Python ----------------------------------------------------------------------------------------

def test_arch_list_from_capabilities():
    assert gc.arch_list([(9, 0)]) == "9.0"
    assert gc.arch_list([(9, 0), (8, 6), (8, 6)]) == "8.6;9.0"
    assert gc.arch_list([(10, 0), (9, 0)]) == "9.0;10.0"  # numeric order, not text order
    assert gc.arch_list([(12, 1)]) == "12.1"
    with pytest.raises(ValueError):
        gc.arch_list([])


@pytest.mark.parametrize("built,cap,runs", [
    (["9.0"], (9, 0), True),
    (["8.0"], (8, 6), True),                   # same major, older minor: binary compatible
    (["8.6"], (8, 0), False),
    (["7.5", "8.0", "9.0+PTX"], (10, 0), True),  # PTX JIT on a newer GPU
    (["7.5", "8.0"], (9, 0), False),
    (["9.0a"], (9, 0), True),
    (["9.0a"], (9, 1), False),                 # arch-specific: only its own sm
    ([], (9, 0), False),
])
def test_arch_runs_on(built, cap, runs):
    assert gc.arch_runs_on(built, cap) is runs


def test_deadline_and_time_boxes():
    now = [100.0]
    d = gc.Deadline.after(50, clock=lambda: now[0])
    assert d.remaining() == 50 and not d.expired()
    now[0] = 151.0
    assert d.expired()
    assert gc.stage_timeout(remaining=400, cap=120, floor=20, reserve=100) == 120
    assert gc.stage_timeout(remaining=150, cap=120, floor=20, reserve=100) == 50
    assert gc.stage_timeout(remaining=110, cap=120, floor=20, reserve=100) is None
    steps = ((gc.Spec("a", 10, 5),), (gc.Spec("b", 10, 7), gc.Spec("c", 10, 3)), (gc.Spec("d", 10, 2),))
    assert gc.reserve_after(steps, 0) == 9 and gc.reserve_after(steps, 1) == 2 and gc.reserve_after(steps, 2) == 0
    # the real plan fits the default budget with every stage's floor
    assert gc.reserve_after(gc.STEPS, -1) < gc.DEFAULT_BUDGET_S - gc.REPORT_RESERVE_S
    assert len(set(gc.STAGE_NAMES)) == len(gc.STAGE_NAMES)


def test_exit_code_counts_failures_and_timeouts_not_skips():
    r = gc.StageResult
    assert gc.exit_code([r("a", gc.PASSED), r("b", gc.SKIPPED)]) == 0
    assert gc.exit_code([r("a", gc.PASSED), r("b", gc.FAILED)]) == 1
    assert gc.exit_code([r("a", gc.TIMEOUT)]) == 1


def test_report_is_written_atomically(tmp_path):
    results = [gc.StageResult("parity", gc.PASSED, 12.3, "all | fine", ["| a |", "detail"]),
               gc.StageResult("memcheck", gc.SKIPPED, 1.0, "device not supported")]
    text = gc.render_report(title_note="", environment=[("device", "X")], results=results, command="python x",
                            started="now", elapsed=20, budget=480)
    assert "**Result: PASSED (2 stages: 1 passed, 1 skipped)**" in text
    assert "| parity | PASSED | 12.3 | all \\| fine |" in text  # cells escaped
    assert "## parity: PASSED" in text and "detail" in text
    path = tmp_path / "r" / "report.md"
    gc.atomic_write_text(path, "old")
    gc.atomic_write_text(path, text)
    assert path.read_text() == text
    assert [p.name for p in path.parent.iterdir()] == ["report.md"]
    results.append(gc.StageResult("build", gc.FAILED))
    assert gc.overall(results).startswith("FAILED")
    assert gc.overall(results, finished=False).startswith("IN PROGRESS")
    assert gc.StageResult.from_json(results[0].to_json()) == results[0]


def test_parse_library_ops():
    text = 'm.def("a(Tensor x) -> Tensor");\n  m.def(\n      "b_backward(Tensor g, "\n "int k) -> Tensor");'
    assert gc.parse_library_ops(text) == ["a", "b_backward"]
    ops = gc.library_ops()
    assert "lifting_conv2d_backward" in ops and "group_max_pool2d_gather" in ops and len(ops) == len(set(ops))
    assert all(hasattr(torch.ops.gconv_ext, op) for op in ops)


def test_parse_pytest_summary():
    out = "....\nFAILED python_tests/test_x.py::t - boom\n3 failed, 95 passed, 12 skipped, 900 deselected in 41.20s\n"
    assert gc.parse_pytest_summary(out) == {"failed": 3, "passed": 95, "skipped": 12, "deselected": 900}
    assert gc.parse_pytest_summary("= 1 error, 2 warnings in 3.0s =") == {"errors": 1, "warnings": 2}
    assert gc.parse_pytest_summary("no summary") == {}


@pytest.mark.parametrize("output,rc,status", [
    ("========= COMPUTE-SANITIZER\nGPU_CHECK_SANITIZER_SCRIPT_OK\n========= ERROR SUMMARY: 0 errors\n", 0, "PASSED"),
    ("========= Invalid __global__ read of size 4 bytes\n========= ERROR SUMMARY: 2 errors\n", 86, "FAILED"),
    ("========= Error: Device not supported\n========= ERROR SUMMARY: 0 errors\n", 1, "SKIPPED"),
    ("========= Error: Target application terminated before first instrumented API call\n"
     "========= Internal Sanitizer Error: The Sanitizer API returned an error\n", 255, "SKIPPED"),
    ("GPU_CHECK_NO_CUDA\n", 3, "SKIPPED"),
    ("Traceback (most recent call last):\nRuntimeError: boom\n========= ERROR SUMMARY: 0 errors\n", 1, "FAILED"),
    ("Traceback (most recent call last):\nPermissionError: [Errno 13] Permission denied: 'x'\n", 1, "FAILED"),
    ("Error: unable to attach to the target process\n", 1, "SKIPPED"),
])
def test_classify_sanitizer(output, rc, status):
    assert gc.classify_sanitizer(output, rc)[0] == status


def test_interleaved_rotates_and_honours_the_deadline():
    calls = []

    def timer(fn, n):
        for _ in range(n):
            fn()
        return {"a": 1e-3, "b": 2e-3}[calls[-1]]

    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    times = gc.interleaved(fns, 4, timer, min_block=2e-3, warmup=1)
    assert times == {"a": [1e-3] * 4, "b": [2e-3] * 4}
    assert gc.round_ratios(times, "b", "a") == [2.0] * 4
    assert gc.rotation(["a", "b", "c"], 1) == ["b", "c", "a"]
    # after warm-up (1 each) and calibration (1 each): a runs 2 calls a block (2 ms / 1 ms), b 1; b first in odd rounds
    assert calls[4:] == ["a", "a", "b", "b", "a", "a", "a", "a", "b", "b", "a", "a"]
    expired = gc.Deadline(0.0)
    assert len(gc.interleaved(fns, 10, timer, deadline=expired, min_rounds=3)["a"]) == 3
    assert gc.fmt_ratio([1.0, 2.0, 3.0]).startswith("2.00x")
