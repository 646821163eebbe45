"""Requests on the wire at once: no more than the plan's rate needs."""

from __future__ import annotations

import math

import anyio
import httpx
import pytest

from grokimagine_async import AsyncClient, RateLimit
from grokimagine_async._flight import MAX_FOR_WINDOW, MIN_ON_WIRE, WINDOW_ROUND_TRIPS, FlightGate

from .helpers import SIM_URL, TOKEN

pytestmark = [pytest.mark.anyio, pytest.mark.backends("asyncio", "trio")]


async def test_a_burst_of_the_whole_budget_goes_no_more_than_the_cap_at_once() -> None:
    on_wire = 0
    most = 0
    release = anyio.Event()

    async def api(request: httpx.Request) -> httpx.Response:
        nonlocal on_wire, most
        on_wire += 1
        most = max(most, on_wire)
        if request.url.params["task_id"] != "first":
            await release.wait()
        on_wire -= 1
        body = {"code": 200, "data": {"task_id": request.url.params["task_id"], "status": "x"}}
        # The server says what is left: a burst of the whole budget is safe.
        return httpx.Response(200, json=body, headers={"X-RateLimit-Remaining": "199"})

    http = httpx.AsyncClient(transport=httpx.MockTransport(api))
    async with (
        http,
        AsyncClient(
            TOKEN, base_url=SIM_URL, rate_limit=RateLimit(200, 60.0), http_client=http
        ) as client,
    ):
        # A fresh limiter lets one request go until an answer says what the server sees.
        await client.get_task("first")
        async with anyio.create_task_group() as tg:
            for i in range(60):
                tg.start_soon(client.get_task, f"task_{i}")
            with anyio.fail_after(5):
                await anyio.wait_all_tasks_blocked()
            assert on_wire == MIN_ON_WIRE
            assert client.rate_limit_status().in_flight == MIN_ON_WIRE
            release.set()
    assert most == MIN_ON_WIRE


async def test_the_cap_follows_the_rate_at_the_quickest_round_trip_of_a_period() -> None:
    gate = FlightGate(lambda: (100.0, 10.0))
    assert gate.cap == MIN_ON_WIRE
    for _ in range(3):
        await gate.enter()
    # 100 requests a second, 0.2 s round trips: 20 in flight carry the rate, 40 a burst.
    gate.leave("read", 0.2)
    gate.leave("read", 0.5)
    assert gate.cap == 40
    # A slower kind of request: its quickest counts.
    gate.leave("submit", 0.3)
    assert gate.cap == 60
    assert gate.on_wire == 0
    # An attempt that got no answer says nothing of the network.
    await gate.enter()
    gate.leave("read", None)
    assert gate.cap == 60


@pytest.mark.parametrize(
    ("limit", "cap"), [(100, MIN_ON_WIRE), (1000, 16), (5000, MAX_FOR_WINDOW)], ids=str
)
async def test_a_big_plan_sends_a_window_of_budget_in_a_few_dozen_round_trips(
    limit: int, cap: int
) -> None:
    # A real minute at a 44 ms round trip: twice the average rate would need only
    # 8 at once even on Enterprise, whose 5,000 a window would then take 27 s to leave.
    gate = FlightGate(lambda: (limit / 60.0, 60.0))
    await gate.enter()
    gate.leave("read", 0.044)
    assert gate.cap == cap
    if cap < MAX_FOR_WINDOW:
        assert math.ceil(limit / cap) <= WINDOW_ROUND_TRIPS


async def test_the_client_s_own_lag_does_not_raise_the_window_s_share() -> None:
    gate = FlightGate(lambda: (1000 / 60.0, 60.0))
    for round_trip in (0.044, 0.3, 0.9):
        await gate.enter()
        gate.leave("read", round_trip)
    # The quickest of the period counts: answers that a busy loop made late do not.
    assert gate.cap == 16


async def test_a_waiter_cancelled_takes_no_place_and_the_next_one_gets_it() -> None:
    gate = FlightGate(lambda: (1.0, 60.0))
    for _ in range(MIN_ON_WIRE):
        await gate.enter()
    entered: list[str] = []

    async def wait(name: str) -> None:
        await gate.enter()
        entered.append(name)

    async with anyio.create_task_group() as tg:
        async with anyio.create_task_group() as first:
            first.start_soon(wait, "never")
            await anyio.wait_all_tasks_blocked()
            first.cancel_scope.cancel()
        tg.start_soon(wait, "second")
        await anyio.wait_all_tasks_blocked()
        assert entered == []
        gate.leave()
    assert entered == ["second"]
    assert gate.on_wire == MIN_ON_WIRE
