"""The interleaved timer of benchmarks/common.py, with a fake clock (no sleeping, no real timing)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import common  # noqa: E402


class FakeClock:
    """A clock that only moves when a candidate "runs": each call advances it by that candidate's cost."""

    def __init__(self) -> None:
        self.now = 0.0
        self.calls: list[str] = []

    def __call__(self) -> float:
        return self.now

    def fn(self, name: str, costs):
        """A candidate whose n-th call costs ``costs(n)`` seconds (``costs`` a number or a function)."""
        count = [0]

        def run() -> None:
            self.calls.append(name)
            self.now += costs(count[0]) if callable(costs) else costs
            count[0] += 1
        return run


def test_rotation_orders():
    names = ["A", "B", "C"]
    assert [common.rotation(names, r) for r in range(4)] == [["A", "B", "C"], ["B", "C", "A"], ["C", "A", "B"],
                                                               ["A", "B", "C"]]


def test_interleaved_order_and_blocks():
    clock = FakeClock()
    fns = {name: clock.fn(name, 0.001) for name in "ABC"}
    out = common.interleaved(fns, rounds=3, warmup=1, inner=2, clock=clock, sync=lambda: None)
    # one warm-up call each, then blocks of 2 calls in the rotating order
    assert clock.calls == list("ABC") + list("AABBCC") + list("BBCCAA") + list("CCAABB")
    for s in out.values():
        assert s.inner == 2 and len(s.per_round) == 3
        assert s.median == pytest.approx(0.001)
        assert s.vs_baseline.median == pytest.approx(1.0)


def test_interleaved_ratio_is_median_of_per_round_ratios():
    clock = FakeClock()
    # the machine slows down over time (drift): per-call costs grow 10% per call for both candidates
    # equally per round, but B is always 1.5x A within a round
    a_costs = [1.0, 1.0, 2.0, 4.0, 8.0]  # warm-up, then rounds 0..3
    fns = {"A": clock.fn("A", lambda n: a_costs[n]),
           "B": clock.fn("B", lambda n: 1.5 * a_costs[n])}
    out = common.interleaved(fns, rounds=4, warmup=1, inner=1, clock=clock, sync=lambda: None)
    assert out["A"].per_round == (1.0, 2.0, 4.0, 8.0)
    assert out["B"].per_round == (1.5, 3.0, 6.0, 12.0)
    r = out["B"].vs_baseline
    assert (r.median, r.q1, r.q3, r.min, r.max) == pytest.approx((1.5,) * 5)
    assert out["B"].ratio(out["A"]).median == pytest.approx(1.5)
    assert common.ratio(out["A"], out["B"]).median == pytest.approx(1 / 1.5)
    # the ratio of the two medians would be the same here; the per-round median also survives one bad round
    assert out["A"].time.median == pytest.approx(3.0)


def test_ratio_spread_and_outlier():
    clock = FakeClock()
    b_costs = [2.0, 2.0, 2.0, 2.0, 20.0, 2.0]  # one disturbed round of B
    fns = {"A": clock.fn("A", 1.0), "B": clock.fn("B", lambda n: b_costs[n])}
    out = common.interleaved(fns, rounds=5, warmup=1, inner=1, clock=clock, sync=lambda: None, baseline="A")
    r = out["B"].vs_baseline
    assert r.median == pytest.approx(2.0)
    assert r.q1 == pytest.approx(2.0) and r.q3 == pytest.approx(2.0)
    assert r.min == pytest.approx(2.0) and r.max == pytest.approx(20.0)
    assert r.fmt(2) == "2.00x (IQR 2.00-2.00)"


def test_spread_quartiles():
    s = common.Spread.of([1.0, 2.0, 3.0, 4.0, 5.0])
    assert (s.median, s.q1, s.q3, s.min, s.max) == (3.0, 2.0, 4.0, 1.0, 5.0)
    one = common.Spread.of([7.0])
    assert (one.median, one.q1, one.q3) == (7.0, 7.0, 7.0)


def test_auto_inner_makes_blocks_last_min_block():
    clock = FakeClock()
    fns = {"fast": clock.fn("fast", 0.001), "slow": clock.fn("slow", 0.05)}
    out = common.interleaved(fns, rounds=2, warmup=0, min_block=0.02, clock=clock, sync=lambda: None)
    assert out["slow"].inner == 1
    assert out["fast"].inner * 0.001 >= 0.02 - 1e-12
    assert out["fast"].inner <= 40  # not wildly more than needed
    assert out["fast"].median == pytest.approx(0.001)
    assert out["slow"].vs_baseline.median == pytest.approx(50.0)


def test_interleaved_rejects_bad_arguments():
    with pytest.raises(ValueError):
        common.interleaved({}, rounds=1)
    with pytest.raises(ValueError):
        common.interleaved({"A": lambda: None}, rounds=0)
    with pytest.raises(ValueError):
        common.interleaved({"A": lambda: None}, rounds=1, baseline="B")


def test_budget_caps_rounds_but_keeps_min_rounds():
    clock = FakeClock()
    fns = {"A": clock.fn("A", 1.0), "B": clock.fn("B", 2.0)}  # a round lasts 3 s
    out = common.interleaved(fns, rounds=10, warmup=0, inner=1, budget=10.0, clock=clock, sync=lambda: None)
    assert len(out["A"].per_round) == 3  # 3 rounds = 9 s; a 4th would end at 12 s > 10 s
    out = common.interleaved(fns, rounds=10, warmup=0, inner=1, budget=1.0, min_rounds=2, clock=clock,
                             sync=lambda: None)
    assert len(out["B"].per_round) == 2


def test_slow_candidate_is_not_calibrated_after_warmup():
    clock = FakeClock()
    fns = {"fast": clock.fn("fast", 0.004), "slow": clock.fn("slow", 0.05)}
    out = common.interleaved(fns, rounds=1, warmup=2, min_block=0.02, clock=clock, sync=lambda: None)
    assert out["slow"].inner == 1 and out["fast"].inner == 5
    # warm-up (fast, slow) x 2, calibration of fast only (1 call, then 2: 8 ms >= 20/4 ms, scaled to 5), a round
    assert clock.calls == ["fast", "slow"] * 2 + ["fast"] * 3 + ["fast"] * 5 + ["slow"]


def test_slow_first_call_does_not_fix_one_call_per_block():
    """A candidate whose first call is slow (one-off set-up) but whose later calls are fast is calibrated,
    not timed one call per block: with a single warm-up round that call says nothing about the steady state."""
    clock = FakeClock()
    fns = {"jit": clock.fn("jit", lambda n: 0.05 if n == 0 else 0.001), "plain": clock.fn("plain", 0.001)}
    out = common.interleaved(fns, rounds=3, warmup=1, min_block=0.02, clock=clock, sync=lambda: None)
    assert out["jit"].inner >= 20 and out["jit"].median == pytest.approx(0.001)
    assert out["jit"].vs_baseline.median == pytest.approx(1.0)


def test_warmup_time_runs_untimed_block_rounds_first():
    """A process's first case runs slow for a while: ``warmup_time`` runs whole untimed rounds of blocks until
    that much time has passed, and only then times its rounds."""
    clock = FakeClock()
    # every candidate's first 6 calls cost 3x (a cold start), later ones 1 ms
    fns = {name: clock.fn(name, lambda n: 0.003 if n < 6 else 0.001) for name in "AB"}
    out = common.interleaved(fns, rounds=2, warmup=0, inner=2, warmup_time=0.02, clock=clock, sync=lambda: None)
    # untimed rounds of 2-call blocks until 20 ms passed: rounds of 12 ms each -> 2 untimed rounds (24 ms, the
    # first 4 calls of each candidate), then timed rounds
    assert clock.calls[:8] == list("AABB") + list("BBAA")
    assert len(clock.calls) == 8 + 2 * 4
    assert out["A"].per_round == (pytest.approx(0.003), pytest.approx(0.001))  # calls 4, 5 cold; 6, 7 warm
    clock2 = FakeClock()
    common.interleaved({name: clock2.fn(name, 0.001) for name in "AB"}, rounds=1, warmup=0, inner=1, clock=clock2,
                       sync=lambda: None)
    assert clock2.calls == list("AB")  # warmup_time=0 (the default): no untimed rounds
