"""The limiter's guarantee, on a simulated clock, for any arrival pattern."""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import format_datetime

import anyio
import anyio.lowlevel
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grokimagine_async import RateLimit, RateLimitStatus
from grokimagine_async._headers import RateFeedback, parse_remaining, parse_reset, parse_retry_after
from grokimagine_async._policy import POLICY
from grokimagine_async._sliding_window import SlidingWindowLimiter, WindowBudget

# The async tests run on every anyio backend; the rest have no event loop.
pytestmark = pytest.mark.backends("asyncio", "trio")

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
    answers: list[tuple[float, int, int, float, RateFeedback | None]] = []
    out: list[tuple[float, float]] = []
    t = 0.0
    for i, req in enumerate(sorted(reqs, key=lambda r: r.arrival)):
        t = max(t, req.arrival)
        for _ in range(100_000):
            while answers and answers[0][0] <= t:
                at, _, answered_ticket, sent, fb = heapq.heappop(answers)
                budget.answered(at, fb, answered_ticket, sent)
            ticket = budget.take(t)
            if ticket is not None:
                break
            candidates = [x for x in (budget.next_change(t),) if x is not None]
            if answers:
                candidates.append(answers[0][0])
            assert candidates, "a waiter with nothing to wake it"
            t = max(t, min(candidates))
        else:  # pragma: no cover
            raise AssertionError("no progress")
        heapq.heappush(answers, (t + req.latency, i, ticket, t, req.feedback))
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
def test_a_fresh_budget_lets_a_full_burst_go_after_one_answer(limit: int, n: int) -> None:
    # A server that says what is left: its word caps bursts, so none is held back.
    told = RateFeedback(200, remaining=limit)
    budget = WindowBudget(RateLimit(limit, PERIOD))
    served = run(budget, [Req(0.0, 0.01, 1.0, told) for _ in range(n)])
    assert served[0][0] == 0.0
    assert sum(1 for sent, _ in served if sent <= 0.01) == min(n, limit)


def test_steady_state_uses_the_budget() -> None:
    limit, latency = 30, 0.005
    budget = WindowBudget(RateLimit(limit, PERIOD))
    told = RateFeedback(200, remaining=limit)
    served = run(budget, [Req(0.0, latency, 0.5, told) for _ in range(limit * 20)])
    last = served[-1][0]
    # 20 windows' worth, each costing one round trip beyond its period, after the probe's.
    assert last <= 19 * (PERIOD + latency) + latency + 1e-6


def test_remaining_reveals_a_second_spender_and_the_reservation_fades() -> None:
    budget = WindowBudget(RateLimit(100, PERIOD))
    ticket = budget.take(0.0)
    assert ticket is not None
    budget.answered(0.01, RateFeedback(200, remaining=69), ticket, 0.0)
    # Someone else used 30 of the window: set aside with a margin of 1 + 10%,
    # whole for a period, then fading over another.
    assert budget.reserved(0.01) == 34
    assert budget.limit - budget.used(0.01) == 100 - 1 - 34
    assert budget.limit - budget.used(0.01 + PERIOD / 2) == 100 - 1 - 34
    assert budget.limit - budget.used(0.01 + 1.5 * PERIOD) == 100 - 17
    # While someone else spends the token, few of ours are in flight at once, so
    # that a window they fill is learnt of with few requests on the way.
    assert budget.free(0.01) == POLICY.flight_least
    assert budget.free(0.02 + 2 * PERIOD) == 100


def test_the_freshest_remaining_caps_a_burst() -> None:
    budget = answered_once(WindowBudget(RateLimit(10, PERIOD)))
    t1, t2, t3 = (budget.take(0.0) for _ in range(3))
    assert t1 is not None
    assert t2 is not None
    assert t3 is not None
    budget.answered(0.01, RateFeedback(200, remaining=9), t1, 0.0)
    budget.answered(0.01, RateFeedback(200, remaining=8), t2, 0.0)
    later = [budget.take(0.01) for _ in range(3)]
    assert None not in later
    # Our own count leaves 4, but the server said 4 were left when it counted t3,
    # and three more of ours have gone out since.
    budget.answered(0.02, RateFeedback(200, remaining=4), t3, 0.0)
    assert budget.reserved(0.02) == 0
    assert budget.free(0.02) == 1
    # What was left comes back at the plan's rate (one every 0.2 s), as a server's does.
    assert budget.free(0.02 + PERIOD / 10) == 2


def test_our_requests_leaving_the_window_do_not_refill_the_servers_word() -> None:
    # A bucket refills at its rate however old our requests are (and someone else
    # takes from it too): when the server has just said 1 is left, 1 is left.
    budget = answered_once(WindowBudget(RateLimit(10, 2.0)))
    tickets = [budget.take(0.0) for _ in range(10)]
    for i, ticket in enumerate(tickets):
        assert ticket is not None
        budget.answered(0.010 + 0.003 * i, RateFeedback(200, remaining=9 - i), ticket, 0.0)
    fresh = budget.take(2.041)
    assert fresh is not None
    budget.answered(2.05, RateFeedback(200, remaining=1), fresh, 2.041)
    # By now every one of the first ten has left our window; what the server left is 1.
    assert budget._server_allows(2.05) == 1


def test_the_last_slot_reported_is_kept_back_while_someone_else_spends() -> None:
    # The server's count holds 2 of someone else's beside ours: by the time our next
    # request gets there, the last slot it reported may be theirs.
    def last_slot(limit: int, others: int) -> WindowBudget:
        budget = answered_once(WindowBudget(RateLimit(limit, 2.0)))
        tickets = [budget.take(0.0) for _ in range(limit - others - 1)]
        for i, ticket in enumerate(tickets):
            assert ticket is not None
            remaining = limit - others - 1 - i
            budget.answered(0.01, RateFeedback(200, remaining=remaining), ticket, 0.0)
        return budget

    shared = last_slot(10, others=2)
    assert shared.reserved(0.01) > 0
    assert shared._server_allows(0.01) == 1
    assert shared._server_allows(0.05) == 0
    alone = last_slot(10, others=0)
    assert alone.reserved(0.01) == 0
    assert alone._server_allows(0.05) == 1


def test_a_fixed_window_near_its_end_frees_nothing_before_its_reset() -> None:
    # The server says all 10 are back in 0.3 s, sooner than the plan's rate (one
    # each 0.2 s) could free them: a fixed window about to start again, which frees
    # nothing before then.
    budget = answered_once(WindowBudget(RateLimit(10, 2.0)))
    tickets = [budget.take(0.0) for _ in range(10)]
    for i, ticket in enumerate(tickets):
        assert ticket is not None
        budget.answered(0.01, RateFeedback(200, remaining=9 - i, reset_after=0.3), ticket, 0.0)
    assert budget._server_allows(0.25) == 0
    assert budget._server_allows(0.31) == budget.limit
    # A bucket says so too, but its Reset is what the plan's rate needs: it refills.
    bucket = answered_once(WindowBudget(RateLimit(10, 2.0)))
    ticket = bucket.take(0.0)
    assert ticket is not None
    bucket.answered(0.01, RateFeedback(200, remaining=9, reset_after=0.2), ticket, 0.0)
    assert bucket._server_allows(0.25) == 9 + 1


def answered_once(budget: WindowBudget) -> WindowBudget:
    """Past the first request's probe, long ago."""
    ticket = budget.take(-100.0)
    assert ticket is not None
    budget.answered(-100.0, RateFeedback(200, remaining=budget.limit - 1), ticket, -100.0)
    return budget


def test_remaining_never_loosens_the_limit() -> None:
    budget = answered_once(WindowBudget(RateLimit(10, PERIOD)))
    tickets = [budget.take(0.0) for _ in range(5)]
    assert tickets[0] is not None
    budget.answered(0.01, RateFeedback(200, remaining=500), tickets[0], 0.0)
    assert budget.free(0.01) == 5


def test_remaining_discounts_our_own_requests_in_flight() -> None:
    budget = answered_once(WindowBudget(RateLimit(10, PERIOD)))
    tickets = [budget.take(0.0) for _ in range(10)]
    assert tickets[-1] is not None
    # Sent last and answered first: the nine sent before it were counted before it.
    budget.answered(0.01, RateFeedback(200, remaining=0), tickets[-1], 0.0)
    assert budget.reserved(0.01) == 0


def test_someone_elses_use_is_the_median_of_recent_estimates() -> None:
    budget = answered_once(WindowBudget(RateLimit(100, PERIOD)))
    tickets = [budget.take(0.0) for _ in range(3)]
    # Remaining says 20 others before each of ours, but the second was overtaken
    # by the third on the way, so alone it would suggest 21.
    for ticket, remaining in zip(tickets, [79, 77, 78], strict=True):
        assert ticket is not None
        budget.answered(0.01, RateFeedback(200, remaining=remaining), ticket, 0.0)
    assert budget.reserved(0.01) == 20 + 1 + 2


def test_a_429_closes_the_gate_and_reopens_gently() -> None:
    budget = WindowBudget(RateLimit(100, PERIOD))
    ticket = budget.take(0.0)
    assert ticket is not None
    budget.answered(0.01, RateFeedback(429, retry_after=1.0), ticket, 0.0)
    assert budget.free(0.5) == 0
    assert budget.free(1.0) == 0
    # The gate is open, but what was left comes back over a period, not at once; and
    # since the plan did not explain the 429, sends are paced at its rate, a few at once.
    assert budget.free(1.02) == 0
    assert 0 < budget.free(1.1) <= 6
    assert (budget.pace, budget.burst) == (100 / PERIOD, 1)
    assert budget.free(2.0) == 1
    # Quiet spells relax it a step at a time, until the whole budget may go at once.
    assert budget.free(2.0 + 2 * PERIOD) == 2
    assert budget.limit - budget.used(40.0) == 100
    # A server that has said nothing of its count gets no more in flight than the
    # plan's rate needs (at this round trip, the least: four).
    assert budget.free(40.0) == POLICY.flight_least
    assert budget.pace is None
    assert budget.pace is None


@pytest.mark.parametrize(
    ("remaining", "limit"), [(999, 1000), (4999, 5000), (99, 100), (1500, 1000)]
)
def test_an_unknown_plan_moves_up_to_what_the_headers_prove(remaining: int, limit: int) -> None:
    plans = [RateLimit(1000, 60.0), RateLimit(5000, 60.0)]
    budget = WindowBudget(RateLimit(100, 60.0), upgrades=plans)
    ticket = budget.take(0.0)
    assert ticket is not None
    budget.answered(0.01, RateFeedback(200, remaining=remaining), ticket, 0.0)
    assert budget.limit == limit


# --- the async limiter: waiting, cancellation, status ------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.lowlevel.checkpoint()


@pytest.mark.anyio
async def test_a_fresh_limiter_sends_one_request_until_an_answer_comes() -> None:
    limiter = SlidingWindowLimiter(RateLimit(10, 60.0))
    probe = await limiter.acquire()
    assert limiter.status().remaining == 0
    probe.record(RateFeedback(200, remaining=9))
    assert limiter.status().remaining == 9


@pytest.mark.anyio
async def test_a_cancelled_waiter_gives_its_place_back_and_leaves_nothing() -> None:
    limiter = SlidingWindowLimiter(RateLimit(1, 60.0))
    held = await limiter.acquire()
    async with anyio.create_task_group() as tg:
        tg.start_soon(limiter.acquire)
        await wait_until(lambda: limiter.status().waiting == 1)
        tg.cancel_scope.cancel()
    assert limiter.status().waiting == 0
    held.record(None, sent=False)
    assert limiter.status().remaining == 1
    assert limiter.status().in_flight == 0


@pytest.mark.anyio
@pytest.mark.backends(
    "asyncio", reason="asyncio's Task.cancel, as asyncio code cancels, is the point"
)
async def test_a_slot_granted_to_a_task_cancelled_in_the_same_instant_passes_on() -> None:
    limiter = SlidingWindowLimiter(RateLimit(1, 60.0))
    held = await limiter.acquire()
    first = asyncio.ensure_future(limiter.acquire())
    second = asyncio.ensure_future(limiter.acquire())
    await wait_until(lambda: limiter.status().waiting == 2)
    held.record(None, sent=False)  # grants the slot to `first` ...
    first.cancel()  # ... which is cancelled before it can run
    with anyio.fail_after(5):
        slot = await second
    with pytest.raises(asyncio.CancelledError):
        await first
    assert limiter.status().in_flight == 1
    slot.record(None, sent=False)


@pytest.mark.anyio
async def test_a_slot_granted_to_a_waiter_whose_scope_is_cancelled_at_once_passes_on() -> None:
    limiter = SlidingWindowLimiter(RateLimit(1, 60.0))
    held = await limiter.acquire()
    sent: list[str] = []

    async def send(name: str, scope: anyio.CancelScope) -> None:
        with scope:
            async with limiter.slot() as slot:
                await anyio.lowlevel.checkpoint()  # where the request would go out
                sent.append(name)
                slot.record(None, sent=False)

    first = anyio.CancelScope()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(send, "first", first)
            await wait_until(lambda: limiter.status().waiting == 1)
            tg.start_soon(send, "second", anyio.CancelScope())
            await wait_until(lambda: limiter.status().waiting == 2)
            held.record(None, sent=False)  # grants the slot to the first waiter ...
            first.cancel()  # ... whose scope is cancelled before it can run
    assert sent == ["second"]
    assert limiter.status().in_flight == 0


@pytest.mark.anyio
async def test_waiters_are_served_in_order_as_slots_free() -> None:
    clock = FakeClock()
    limiter = SlidingWindowLimiter(RateLimit(3, 1.0), clock=clock)
    (await limiter.acquire()).record(RateFeedback(200))  # the first answer ends probing
    a, b = await limiter.acquire(), await limiter.acquire()
    order: list[int] = []

    async def take(n: int) -> None:
        (await limiter.acquire()).record(None, sent=False)
        order.append(n)

    async with anyio.create_task_group() as tg:
        for n in range(3):
            tg.start_soon(take, n)
            await wait_until(lambda n=n: limiter.status().waiting == n + 1)  # type: ignore[misc]
        a.record(RateFeedback(200))
        b.record(None, sent=False)
        await wait_until(lambda: len(order) == 3)
    assert order == [0, 1, 2]


@pytest.mark.anyio
async def test_status_tells_limit_remaining_reset_and_queue() -> None:
    clock = FakeClock()
    limiter = SlidingWindowLimiter(RateLimit(3, 2.0), clock=clock)
    slot = await limiter.acquire()
    # One request in flight and no answer yet: the rest waits for what it says.
    assert limiter.status() == RateLimitStatus(3, 2.0, 0, 0.0, 0, 1)
    clock.now = 0.5
    slot.record(RateFeedback(200, remaining=2))
    status = limiter.status()
    assert (status.remaining, status.in_flight, status.resets_in) == (2, 0, 2.0)
    clock.now = 2.5
    assert limiter.status().remaining == 3


@pytest.mark.anyio
async def test_a_429_holds_every_waiter_until_the_reset() -> None:
    limiter = SlidingWindowLimiter(RateLimit(50, 1.0))
    slot = await limiter.acquire()
    slot.record(RateFeedback(429, retry_after=0.3))
    assert limiter.status().remaining == 0
    started = anyio.current_time()
    (await limiter.acquire()).record(RateFeedback(200))
    assert anyio.current_time() - started >= 0.29


# --- the header parser ----------------------------------------------------------------

NOW = 1_764_000_000.0


@given(st.floats(0, 1e6))
def test_reset_as_seconds_until(delta: float) -> None:
    assert parse_reset(repr(delta), NOW) == pytest.approx(delta)


@given(st.floats(-1e5, 1e6))
def test_reset_as_epoch_seconds(delta: float) -> None:
    assert parse_reset(str(NOW + delta), NOW) == pytest.approx(max(0.0, delta), abs=1e-3)


@given(st.integers(-100_000_000, 1_000_000_000))
def test_reset_as_epoch_milliseconds(delta_ms: int) -> None:
    value = str(int(NOW * 1000) + delta_ms)
    assert parse_reset(value, NOW) == pytest.approx(max(0.0, delta_ms / 1000), abs=1e-3)


@given(st.text(max_size=20))
def test_unreadable_headers_are_none_never_an_exception(text: str) -> None:
    for value in (parse_reset(text, NOW), parse_retry_after(text, NOW)):
        assert value is None or value >= 0
    remaining = parse_remaining(text)
    assert remaining is None or remaining >= 0


@given(st.integers(0, 86_400))
def test_retry_after_as_an_http_date(seconds: int) -> None:
    when = datetime.fromtimestamp(NOW + seconds, tz=timezone.utc)
    assert parse_retry_after(format_datetime(when, usegmt=True), NOW) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"x-ratelimit-remaining": "7", "x-ratelimit-reset": "3"}, (7, 3.0, None)),
        ({"X-RateLimit-Remaining": "0", "Retry-After": "2"}, (0, None, 2.0)),
        ({"x-ratelimit-remaining": "-1", "x-ratelimit-reset": "soon"}, (None, None, None)),
        ({}, (None, None, None)),
    ],
)
def test_feedback_from_headers(headers: dict[str, str], expected: tuple[object, ...]) -> None:
    fb = RateFeedback.from_headers(200, httpx.Headers(headers), NOW)
    assert (fb.remaining, fb.reset_after, fb.retry_after) == expected


def test_overtaking_among_our_own_requests_reserves_nothing() -> None:
    budget = answered_once(WindowBudget(RateLimit(100, PERIOD)))
    tickets = [budget.take(0.0) for _ in range(10)]
    assert tickets[0] is not None
    # The first sent was counted fifth: four sent after it overtook it on the way.
    budget.answered(0.01, RateFeedback(200, remaining=95), tickets[0], 0.0)
    assert budget.reserved(0.01) == 0
