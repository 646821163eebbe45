"""Bulk generation at the real clock: the same behaviour whatever the period.

Runs ``benchmarks/realclock.py``'s scenario (the simulator and the client in one
trio loop on a virtual clock) so that a 60 s period takes a second of real time.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from realclock import GEN, PERIOD, bound, fluid_bound, perfect_schedule, run


@pytest.mark.parametrize(("n", "limit"), [(20, 100), (100, 100), (140, 100), (1500, 1000)])
def test_a_perfect_schedule_scores_exactly_one_on_the_bound(n: int, limit: int) -> None:
    times = perfect_schedule(n, limit, PERIOD, GEN[1])
    assert len(times) == 2 * n
    # It keeps the plan in every window, and its last request is the bound.
    assert all(times.count(t) <= limit for t in set(times))
    assert max(times) / bound(n, limit, PERIOD, GEN[1]) == pytest.approx(1.0, abs=1e-12)


def test_the_fluid_bound_is_out_of_reach_between_multiples_of_the_plan() -> None:
    # 140 videos on 100 a minute: 280 requests need three windows, not 1.8 periods.
    times = perfect_schedule(140, 100, PERIOD, GEN[1])
    assert max(times) / fluid_bound(140, 100, PERIOD) > 1.1


def test_the_same_batch_at_a_2s_and_a_60s_period_scores_the_same() -> None:
    """Every duration scaled with the period (generations, round trips, the first
    guess of a generation): no constant of the limiter or the poller fixed in
    seconds or in periods may move the ratio."""
    compressed = run(200, 100, 2.0, state_plan=True)
    real = run(200, 100, PERIOD, state_plan=True)
    assert compressed.rate_limited == real.rate_limited == 0
    assert compressed.completed == real.completed == 200
    assert compressed.ratio == pytest.approx(real.ratio, rel=0.02)


def test_a_short_batch_at_the_real_clock_spends_every_request_on_work() -> None:
    """300 videos on the Free plan at a real minute, defaults: a poll that found a
    task running would push the last poll into a sixth window."""
    r = run(300, 100)
    assert r.requests == 600
    assert r.rate_limited == 0
    assert r.ratio <= 1.05
