"""The limiter's guarantee, on a simulated clock, for any arrival pattern."""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grokimagine_async import RateLimit
from grokimagine_async._headers import RateFeedback
from grokimagine_async._limiter import WindowBudget

PERIOD = 2.0


@dataclass
class Req:
    arrival: float
    latency: float
    #: Where in [send, answer] the server counted it, 0..1.
    count_at: float
    feedback: RateFeedback | None


def run(budget: WindowBudget, reqs: list[Req]) -> list[tuple[float, float]]:
    """Serve requests first come first served; return (sent, counted) times."""
    answers: list[tuple[float, int, float, RateFeedback | None]] = []
    out: list[tuple[float, float]] = []
    t = 0.0
    for i, req in enumerate(sorted(reqs, key=lambda r: r.arrival)):
        t = max(t, req.arrival)
        for _ in range(100_000):
            while answers and answers[0][0] <= t:
                at, _, sent, fb = heapq.heappop(answers)
                budget.answered(at, fb, sent)
            if budget.take(t):
                break
            candidates = [x for x in (budget.next_change(t),) if x is not None]
            if answers:
                candidates.append(answers[0][0])
            assert candidates, "a waiter with nothing to wake it"
            t = max(t, min(candidates))
        else:  # pragma: no cover
            raise AssertionError("no progress")
        heapq.heappush(answers, (t + req.latency, i, t, req.feedback))
        out.append((t, t + req.latency * req.count_at))
    return out


def max_in_window(times: list[float], period: float) -> int:
    times = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        # A nanosecond of slack for float rounding in the simulated clock.
        while t - times[lo] >= period - 1e-9:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


feedbacks = st.one_of(
    st.none(),
    st.builds(
        RateFeedback,
        status_code=st.sampled_from([200, 200, 200, 429, 500]),
        remaining=st.one_of(st.none(), st.integers(0, 40)),
        reset_after=st.one_of(st.none(), st.floats(0, 5)),
        retry_after=st.one_of(st.none(), st.floats(0, 3)),
    ),
)
requests = st.builds(
    Req,
    arrival=st.floats(0, 6 * PERIOD),
    latency=st.floats(0, 1.5 * PERIOD),
    count_at=st.floats(0, 1),
    feedback=feedbacks,
)


@settings(max_examples=300, deadline=None)
@given(limit=st.integers(1, 12), reqs=st.lists(requests, max_size=80))
def test_no_window_holds_more_than_the_limit(limit: int, reqs: list[Req]) -> None:
    budget = WindowBudget(RateLimit(limit, PERIOD))
    served = run(budget, reqs)
    assert len(served) == len(reqs)
    counted = [c for _, c in served]
    assert max_in_window(counted, PERIOD) <= limit


@settings(max_examples=100, deadline=None)
@given(limit=st.integers(1, 30), n=st.integers(1, 30))
def test_a_fresh_budget_lets_a_full_burst_go_at_once(limit: int, n: int) -> None:
    budget = WindowBudget(RateLimit(limit, PERIOD))
    served = run(budget, [Req(0.0, 0.01, 1.0, None) for _ in range(n)])
    assert sum(1 for sent, _ in served if sent == 0.0) == min(n, limit)


def test_steady_state_uses_the_budget() -> None:
    limit, latency = 30, 0.005
    budget = WindowBudget(RateLimit(limit, PERIOD))
    served = run(budget, [Req(0.0, latency, 0.5, None) for _ in range(limit * 20)])
    last = served[-1][0]
    # 20 windows' worth, each costing one round trip beyond its period.
    assert last <= 19 * (PERIOD + latency) + 1e-6


def test_remaining_reveals_a_second_spender_and_the_reservation_fades() -> None:
    budget = WindowBudget(RateLimit(100, PERIOD))
    assert budget.take(0.0)
    budget.answered(0.01, RateFeedback(200, remaining=69), sent_at=0.0)
    # Someone else used 30 of the window: 100 - 1 (ours) - 30 left.
    assert budget.free(0.01) == 69
    assert budget.free(0.01 + PERIOD / 2) == 84
    assert budget.free(0.02 + PERIOD) == 100


def test_remaining_never_loosens_the_limit() -> None:
    budget = WindowBudget(RateLimit(10, PERIOD))
    for _ in range(5):
        assert budget.take(0.0)
    budget.answered(0.01, RateFeedback(200, remaining=500), sent_at=0.0)
    assert budget.free(0.01) == 5


def test_remaining_discounts_our_own_requests_in_flight() -> None:
    budget = WindowBudget(RateLimit(10, PERIOD))
    for _ in range(10):
        assert budget.take(0.0)
    # Answered first but counted last: the other nine were counted before it.
    budget.answered(0.01, RateFeedback(200, remaining=0), sent_at=0.0)
    assert budget.reserved(0.01) == 0


def test_a_429_closes_the_gate_and_reopens_gently() -> None:
    budget = WindowBudget(RateLimit(100, PERIOD))
    assert budget.take(0.0)
    budget.answered(0.01, RateFeedback(429, retry_after=1.0), sent_at=0.0)
    assert budget.free(0.5) == 0
    assert budget.free(1.0) == 0
    # The gate is open, but what was left comes back over a period, not at once.
    assert budget.free(1.02) == 0
    assert 0 < budget.free(1.1) <= 6
    assert 40 <= budget.free(2.0) <= 60
    assert budget.free(3.02) == 100


@pytest.mark.parametrize(
    ("remaining", "limit"), [(999, 1000), (4999, 5000), (99, 100), (1500, 1000)]
)
def test_an_unknown_plan_moves_up_to_what_the_headers_prove(remaining: int, limit: int) -> None:
    plans = [RateLimit(1000, 60.0), RateLimit(5000, 60.0)]
    budget = WindowBudget(RateLimit(100, 60.0), upgrades=plans)
    assert budget.take(0.0)
    budget.answered(0.01, RateFeedback(200, remaining=remaining), sent_at=0.0)
    assert budget.limit == limit
