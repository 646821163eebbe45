"""The rate-limit benchmark's formulas, on synthetic schedules whose right score is known."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from _metrics import (
    max_in_window,
    throughput,
    trailing_counts,
    utilisation,
    whole_windows,
    window_counts,
)

# Monotonic clocks read seconds since boot: large values, where float sums drift most.
starts = st.floats(min_value=0.0, max_value=1e6, allow_nan=False)
limits = st.integers(min_value=1, max_value=300)
periods = st.sampled_from([0.5, 1.0, 2.0, 3.0, 7.3, 60.0])


def even(start: float, limit: int, period: float, count: int, rate: float = 1.0) -> list[float]:
    """``count`` requests spaced evenly at ``rate`` times the plan's steady rate."""
    return [start + i * period / (limit * rate) for i in range(count)]


def bursts(start: float, limit: int, period: float, count: int, spread: float = 0.0) -> list[float]:
    """``count`` requests in bursts of ``limit`` at the start of each period.

    ``spread`` is the gap between two requests of one burst, as an event loop
    and a connection pool let them out.
    """
    return [start + (i // limit) * period + (i % limit) * spread for i in range(count)]


@settings(deadline=None)
@given(start=starts, limit=limits, period=periods, count=st.integers(1, 3000))
def test_an_even_client_at_the_plan_s_rate_scores_exactly_one(
    start: float, limit: int, period: float, count: int
) -> None:
    times = even(start, limit, period, count)
    score = utilisation(times, limit, period)
    if count <= limit:
        # Its last request is due before one whole window has passed.
        assert math.isnan(score)
    else:
        assert score == 1.0


@settings(deadline=None)
@given(
    start=starts,
    limit=limits,
    period=periods,
    count=st.integers(1, 3000),
    spread=st.floats(0.0, 0.999),
)
def test_a_burst_of_limit_every_period_scores_exactly_one(
    start: float, limit: int, period: float, count: int, spread: float
) -> None:
    # The whole burst leaves within the period, however slowly.
    times = bursts(start, limit, period, count, spread=spread * period / limit)
    score = utilisation(times, limit, period)
    if count <= limit:
        assert math.isnan(score)
    else:
        assert score == 1.0


def test_the_old_formula_s_case_a_twenty_second_run_of_bursts_scores_one() -> None:
    # Ten bursts of 60 at 0, 2, ..., 18 s: the old formula gave 10 bursts over 9 periods.
    times = bursts(0.0, 60, 2.0, 600)
    assert utilisation(times, 60, 2.0) == 1.0
    assert len(window_counts(times, 2.0, 0.0, 18.0)) == 9


@settings(deadline=None)
@given(start=starts, period=periods, end_gap=st.floats(0.0, 1.0))
def test_the_run_s_end_after_its_last_request_does_not_move_the_score(
    start: float, period: float, end_gap: float
) -> None:
    # The run goes on (idle) up to just before the next burst was due.
    limit = 60
    times = bursts(start, limit, period, 5 * limit)
    end = start + 4 * period + end_gap * period * 0.999
    assert utilisation(times, limit, period, start=start, end=end) == 1.0


def test_idle_whole_windows_count_against_the_client() -> None:
    times = bursts(0.0, 60, 2.0, 300)  # five bursts, then nothing for three periods
    assert utilisation(times, 60, 2.0, start=0.0, end=16.0) == pytest.approx(5 / 8)


@settings(deadline=None)
@given(start=starts, limit=st.integers(1, 150).map(lambda n: 2 * n), period=periods)
def test_an_even_client_at_half_the_rate_scores_one_half(
    start: float, limit: int, period: float
) -> None:
    times = even(start, limit, period, 10 * limit, rate=0.5)
    assert utilisation(times, limit, period) == 0.5


def test_a_burst_client_at_half_the_plan_scores_one_half() -> None:
    times = bursts(0.0, 30, 2.0, 300)  # 30 a period on a plan of 60
    assert utilisation(times, 60, 2.0) == 0.5


@settings(deadline=None)
@given(start=starts, limit=limits, period=periods)
def test_an_even_client_over_the_rate_scores_above_one(
    start: float, limit: int, period: float
) -> None:
    times = even(start, limit + 1, period, 10 * (limit + 1))
    assert utilisation(times, limit, period) == pytest.approx((limit + 1) / limit)
    assert utilisation(times, limit, period) > 1.0


@settings(deadline=None)
@given(start=starts, limit=limits, period=periods)
def test_bursts_one_over_the_limit_score_above_one(start: float, limit: int, period: float) -> None:
    times = bursts(start, limit + 1, period, 10 * (limit + 1))
    assert utilisation(times, limit, period) > 1.0


def test_a_server_s_start_up_burst_shows_above_one() -> None:
    # A token bucket lets a full burst go, then refills: the first window holds nearly 2x.
    limit, period = 60, 2.0
    times = [0.0] * limit + [period * (i + 1) / limit for i in range(5 * limit)]
    assert utilisation(times, limit, period) > 1.15


def test_requests_before_the_run_s_start_are_not_counted() -> None:
    times = [-0.5, *bursts(0.0, 10, 1.0, 40)]
    assert utilisation(times, 10, 1.0, start=0.0, end=max(times)) == 1.0


def test_a_run_shorter_than_a_period_has_no_score() -> None:
    assert math.isnan(utilisation([0.0, 0.5, 1.9], 3, 2.0))
    assert math.isnan(utilisation([], 3, 2.0))
    assert math.isnan(throughput([], 2.0))


@settings(deadline=None)
@given(start=starts, limit=limits, period=periods)
def test_throughput_of_a_perfect_client_is_the_plan_s_rate(
    start: float, limit: int, period: float
) -> None:
    times = even(start, limit, period, 7 * limit + 3)
    assert throughput(times, period) == pytest.approx(limit / period, rel=1e-12)


def test_whole_windows_rounds_down_but_not_below_a_float_s_noise() -> None:
    assert whole_windows(0.0, 5.999, 2.0) == 2
    assert whole_windows(0.0, 6.0, 2.0) == 3
    assert whole_windows(0.1, 0.7, 0.2) == 3  # (0.7 - 0.1) / 0.2 is 2.9999999999999996
    assert whole_windows(5.0, 4.0, 2.0) == 0
    with pytest.raises(ValueError, match="period"):
        whole_windows(0.0, 1.0, 0.0)


@settings(deadline=None)
@given(start=starts, limit=limits, period=periods, count=st.integers(1, 3000))
def test_a_perfect_client_never_has_more_than_limit_in_any_window(
    start: float, limit: int, period: float, count: int
) -> None:
    expected = min(limit, count)
    assert max_in_window(even(start, limit, period, count), period) == expected
    assert max_in_window(bursts(start, limit, period, count), period) == expected


@settings(deadline=None)
@given(start=starts, limit=limits, period=periods)
def test_one_request_over_the_rate_shows_in_the_max(
    start: float, limit: int, period: float
) -> None:
    assert max_in_window(even(start, limit + 1, period, 5 * (limit + 1)), period) == limit + 1
    assert max_in_window(bursts(start, limit + 1, period, 5 * (limit + 1)), period) == limit + 1


def test_two_bursts_either_side_of_a_boundary_pass_utilisation_but_not_the_max() -> None:
    # What aiolimiter allows: a full burst at the end of a window, another at the start
    # of the next. Each aligned window holds the limit; one sliding window holds twice it.
    limit, period = 60, 2.0
    times = [0.0, *[period - 0.01] * (limit - 1), *[period + 0.01] * limit, 2 * period]
    assert utilisation(times, limit, period) == 1.0
    assert max_in_window(times, period) == 2 * limit - 1


def test_max_in_window_is_half_open() -> None:
    assert max_in_window([0.0, 1.0, 2.0, 3.0], 2.0) == 2
    assert max_in_window([0.0, 1.0, 1.999, 3.0], 2.0) == 3
    assert max_in_window([], 2.0) == 0


def test_trailing_counts_follow_a_perfect_client() -> None:
    limit, period = 60, 2.0
    times = even(0.0, limit, period, 5 * limit)
    curve = trailing_counts(times, period, [0.0, 1.0, 2.0, 5.0, 9.95, 20.0])
    assert curve == [1, 31, 60, 60, 60, 0]
