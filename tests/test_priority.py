"""Interactive calls ahead of bulk work, and bulk work's share kept: the rule, the
in-process limiter on a virtual clock, the Redis queue across processes, and
which calls are which."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from grokimagine_async import (
    BULK_MIN_SHARE,
    AsyncClient,
    Priority,
    RateLimit,
    RequestValidationError,
    Slot,
)
from grokimagine_async._headers import RateFeedback
from grokimagine_async._priority import (
    KEEP_WITHIN,
    WaitQueue,
    current_priority,
    may_lead,
    prioritised,
    reserve,
)
from grokimagine_async._redis_limiter import RedisLimiter
from grokimagine_async._sliding_window import SlidingWindowLimiter
from grokimagine_async.simulator import Simulator

from .helpers import TOKEN, LimiterAround, on_virtual_clock, serving
from .redis_server import RedisServer
from .test_limiter_redis import limiters, raw_redis, redis_keys, wait_for

ANSWERED = RateFeedback(200)


def test_the_interactive_line_goes_first_within_its_share() -> None:
    queue: WaitQueue[str] = WaitQueue()
    for name, priority in (
        ("b1", Priority.BULK),
        ("i1", Priority.INTERACTIVE),
        ("b2", Priority.BULK),
    ):
        queue.append(name, priority)
    assert queue.head(lead=True) == "i1"
    # Past its share, bulk work goes first.
    assert queue.head(lead=False) == "b1"
    assert [queue.popleft(lead=True, now=0.0) for _ in range(3)] == ["i1", "b1", "b2"]
    queue.append("i2", Priority.INTERACTIVE)
    queue.append("b3", Priority.BULK)
    assert [queue.popleft(lead=False, now=0.0) for _ in range(2)] == ["b3", "i2"]
    assert queue.interactive_granted(now=0.5, period=1.0) == 2
    assert queue.interactive_granted(now=1.5, period=1.0) == 0


def test_bulk_work_keeps_its_share_and_nothing_is_kept_without_interactive_calls() -> None:
    limit = 60
    bulk_least = int(BULK_MIN_SHARE * limit)
    assert may_lead(limit - bulk_least - 1, limit)
    assert not may_lead(limit - bulk_least, limit)
    assert reserve(0, limit) == 0
    assert reserve(1, limit) == 1
    assert reserve(8, limit) == 2
    assert reserve(limit - bulk_least - 1, limit) == 11
    # Past their share, interactive calls are owed nothing.
    assert reserve(limit - bulk_least, limit) == 0


class Grants:
    """Who was granted a slot, in order."""

    def __init__(self) -> None:
        self.order: list[str] = []

    async def take(
        self, limiter: SlidingWindowLimiter | RedisLimiter, name: str, hold: float
    ) -> None:
        slot = await limiter.acquire()
        self.order.append(name)
        await anyio.sleep(hold)
        slot.record(ANSWERED)


def test_an_interactive_call_goes_ahead_of_a_queued_batch() -> None:
    async def main() -> None:
        limiter = SlidingWindowLimiter(RateLimit(4, 1.0), clock=anyio.current_time)
        grants = Grants()
        async with anyio.create_task_group() as tg:
            with anyio.CancelScope() as batch:
                for i in range(40):
                    tg.start_soon(grants.take, limiter, f"bulk {i}", 0.01)
                await anyio.sleep(0.5)  # the window is full and the batch queued
                assert limiter.status().waiting > 30
                with prioritised(Priority.INTERACTIVE):
                    await grants.take(limiter, "web", 0.01)
                batch.cancel()
        web = grants.order.index("web")
        # It took the first slot that freed: nobody of the batch was served meanwhile.
        assert web == 4, grants.order[: web + 1]

    on_virtual_clock(_as_bulk(main))


def test_a_batch_leaves_a_slot_free_while_interactive_calls_come() -> None:
    """Slots of a batch free in clumps: without one kept free, an interactive call
    first in line would wait for the next clump."""

    async def main() -> None:
        limiter = SlidingWindowLimiter(RateLimit(10, 1.0), clock=anyio.current_time)
        with prioritised(Priority.INTERACTIVE):
            slot = await limiter.acquire()
            slot.record(ANSWERED)
        grants = Grants()
        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(grants.take, limiter, f"bulk {i}", 0.0)
            await anyio.sleep(0.1)
            # The batch took all but one of what was free, and waits.
            assert len(grants.order) == 10 - 1 - 1
            assert limiter.status().remaining == 1
            with prioritised(Priority.INTERACTIVE), anyio.fail_after(0.001):
                slot = await limiter.acquire()
            slot.record(ANSWERED)
            tg.cancel_scope.cancel()

    on_virtual_clock(_as_bulk(main))


def test_a_slot_about_to_free_stands_in_for_the_one_kept() -> None:
    """An idle slot kept free costs a batch a plan's share of a period: once another
    frees within KEEP_WITHIN of a period the batch may take it, and an interactive
    call waits no longer than that."""

    async def main() -> None:
        limiter = SlidingWindowLimiter(RateLimit(4, 1.0), clock=anyio.current_time)
        with prioritised(Priority.INTERACTIVE):
            (await limiter.acquire()).record(ANSWERED)
        for _ in range(2):
            (await limiter.acquire()).record(ANSWERED)
        assert limiter.status().remaining == 1
        # All three free at 1.0; the batch's next request takes the kept slot as soon
        # as they are within reach, not when they free.
        await limiter.acquire()
        taken = anyio.current_time()
        assert taken == pytest.approx(1.0 - KEEP_WITHIN)
        with prioritised(Priority.INTERACTIVE):
            await limiter.acquire()
        assert anyio.current_time() - taken <= KEEP_WITHIN + 1e-9

    on_virtual_clock(_as_bulk(main))


def test_interactive_calls_cannot_starve_a_batch() -> None:
    async def main() -> None:
        limit = 8
        limiter = SlidingWindowLimiter(RateLimit(limit, 1.0), clock=anyio.current_time)
        grants = Grants()
        async with anyio.create_task_group() as tg:
            for i in range(200):
                tg.start_soon(grants.take, limiter, f"bulk {i}", 0.0)
            with prioritised(Priority.INTERACTIVE):
                for i in range(200):
                    tg.start_soon(grants.take, limiter, f"web {i}", 0.0)
            await anyio.sleep(20.0)
            tg.cancel_scope.cancel()
        later = grants.order[limit:]
        bulk = sum(1 for name in later if name.startswith("bulk"))
        assert len(later) >= 19 * limit
        assert bulk / len(later) >= BULK_MIN_SHARE

    on_virtual_clock(_as_bulk(main))


def _as_bulk(main: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    """``main`` with bulk as the priority it starts from (the tasks it starts inherit it)."""

    async def wrapped() -> None:
        with prioritised(Priority.BULK):
            await main()

    return wrapped


@pytest.mark.anyio
@pytest.mark.backends("asyncio")
@pytest.mark.parametrize("lead", [True, False], ids=["interactive", "bulk"])
async def test_across_processes_an_interactive_call_goes_ahead_of_another_process_batch(
    redis_server: RedisServer, lead: bool
) -> None:
    """A's batch queued in Redis before B's call: when a slot frees, B's call takes it
    if it leads, else A, which waited longer, does."""
    rate = RateLimit(2, 1.0)
    async with limiters(redis_server.url, 2, key=f"lead-{lead}", rate=rate) as (a, b):
        with prioritised(Priority.BULK):
            for _ in range(rate.requests):
                (await a.acquire()).record(ANSWERED)
        # Both wait, A first: the window is full.
        assert int((await a._run_acquire(5, 0.0))["granted"]) == 0
        queued = await b._run_acquire(1, 0.0, interactive=lead, lead=lead)
        assert int(queued["granted"]) == 0

        async def all_free() -> bool:
            return int((await a._run_acquire(0, 0.0))["free"]) == rate.requests

        await wait_for(all_free, within=10 * rate.period)
        a_got = int((await a._run_acquire(5, 0.0))["granted"])
        b_got = int((await b._run_acquire(1, 0.0, interactive=lead, lead=lead))["granted"])
    assert (a_got, b_got) == ((rate.requests - 1, 1) if lead else (rate.requests, 0))


class PriorityLog(LimiterAround):
    """A limiter that notes the priority each request waited at."""

    def __init__(self, rate: RateLimit) -> None:
        super().__init__(SlidingWindowLimiter(rate))
        self.seen: list[Priority] = []

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[Slot]:
        self.seen.append(current_priority())
        async with self.inner.slot() as slot:
            yield slot


@pytest.mark.anyio
@pytest.mark.backends("asyncio", "trio")
async def test_single_calls_are_interactive_and_bulk_calls_bulk() -> None:
    sim = Simulator(generation_time=(0.05, 0.1), seed=2)
    log = PriorityLog(RateLimit(100, 1.0))
    async with (
        serving(sim) as url,
        AsyncClient(TOKEN, base_url=url, limiter=log, poll_interval=0.05) as client,
    ):
        task_id = await client.submit(prompt="one")
        await client.wait(task_id)
        assert set(log.seen) == {Priority.INTERACTIVE}
        log.seen.clear()
        await client.get_task(task_id, priority="bulk")
        assert log.seen == [Priority.BULK]
        log.seen.clear()
        async for outcome in client.generate_many([{"prompt": "a"}, {"prompt": "b"}]):
            assert outcome.ok
        outcomes = await client.submit_many([{"prompt": "c"}])
        async for _ in client.watch([o.task_id for o in outcomes if o.task_id]):
            pass
        assert log.seen
        assert set(log.seen) == {Priority.BULK}
        log.seen.clear()
        async for _ in client.generate_many([{"prompt": "d"}], priority=Priority.INTERACTIVE):
            pass
        assert set(log.seen) == {Priority.INTERACTIVE}
        before = sim.stats.requests
        with pytest.raises(RequestValidationError, match="priority"):
            await client.submit(prompt="e", priority="urgent")
        with pytest.raises(RequestValidationError, match="priority"):
            client.generate_many([{"prompt": "f"}], priority="urgent")
        assert sim.stats.requests == before


def test_when_the_first_waiter_changes_lines_with_nothing_to_grant_it_still_keeps_the_time() -> (
    None
):
    """The interactive line's turn comes back as its grants age, while a gate (as after
    a 429) holds every grant: the interactive waiter, first now, must be woken to keep
    the time, or both waiters sleep with the window free."""

    async def main() -> None:
        period = 0.4
        limiter = SlidingWindowLimiter(RateLimit(8, period), clock=anyio.current_time)
        start = anyio.current_time()
        with prioritised(Priority.INTERACTIVE):
            for _ in range(6):
                (await limiter.acquire()).record(ANSWERED)
        with prioritised(Priority.BULK):
            for _ in range(2):
                (await limiter.acquire()).record(ANSWERED)
        limiter._budget.learned.gate = start + 1.5 * period
        granted: list[str] = []

        async def wait(name: str, priority: Priority) -> None:
            with prioritised(priority):
                slot = await limiter.acquire()
            granted.append(name)
            slot.record(ANSWERED)

        with anyio.fail_after(3 * period):
            async with anyio.create_task_group() as tg:
                tg.start_soon(wait, "bulk", Priority.BULK)
                await anyio.sleep(0.01)
                tg.start_soon(wait, "web", Priority.INTERACTIVE)
        assert sorted(granted) == ["bulk", "web"]

    on_virtual_clock(main)


@pytest.mark.anyio
@pytest.mark.backends("asyncio")
async def test_across_processes_interactive_calls_lead_only_within_their_share(
    redis_server: RedisServer,
) -> None:
    """However many wait and however stale a process's count, Redis lets interactive
    calls lead for no more than the plan less bulk work's share in a period."""
    rate = RateLimit(8, 1.0)
    async with limiters(redis_server.url, 1, key="lead-room", rate=rate) as (a,):
        reply = await a._run_acquire(8, 0.0, interactive=True, lead=True)
    assert int(reply["granted"]) == rate.requests - math.ceil(BULK_MIN_SHARE * rate.requests)
    assert int(reply["led"]) == int(reply["granted"])


async def bulk_ask_beside_a_kept_slot(
    redis_server: RedisServer, *, key: str, rate: RateLimit
) -> dict[str, Any]:
    """Redis's answer to a batch's ask for one slot on a plan of three, one taken by an
    interactive call and one by the batch, both answered: the one left is kept."""
    async with limiters(redis_server.url, 1, key=key, rate=rate) as (a,):
        with prioritised(Priority.INTERACTIVE):
            (await a.acquire()).record(ANSWERED)
        with prioritised(Priority.BULK):
            (await a.acquire()).record(ANSWERED)
        await asyncio.gather(*a._pending)  # both answers reported
        return await a._run_acquire(1, 0.0, keep=1)


@pytest.mark.anyio
@pytest.mark.backends("asyncio")
async def test_across_processes_bulk_work_waits_for_a_slot_not_a_turn_beside_kept_ones(
    redis_server: RedisServer,
) -> None:
    """A batch that only the slots it leaves to interactive calls could serve is told
    to ask again when a slot frees (or an interactive grant ages), not in a few
    milliseconds: a batch beside a web handler asked Redis hundreds of times a second."""
    rate = RateLimit(3, 1.0)
    reply = await bulk_ask_beside_a_kept_slot(redis_server, key="kept", rate=rate)
    assert int(reply["granted"]) == 0
    assert int(reply["free"]) == 1
    # Both held slots free a period after their answers, in a period at the most.
    assert 0.1 * rate.period < float(reply["wait"]) <= rate.period


@pytest.mark.anyio
@pytest.mark.backends("asyncio")
async def test_across_processes_a_slot_about_to_free_stands_in_for_the_one_kept(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis counts the slots that free within KEEP_WITHIN of a period as kept, as the
    in-process limiter does (here a whole period, so that the answered ones are in reach
    however slow the machine)."""
    monkeypatch.setattr("grokimagine_async._redis_limiter.KEEP_WITHIN", 1.0)
    rate = RateLimit(3, 1.0)
    reply = await bulk_ask_beside_a_kept_slot(redis_server, key="in-reach", rate=rate)
    assert int(reply["granted"]) == 1


def test_bulk_work_goes_on_when_the_interactive_grants_it_kept_slots_for_age() -> None:
    """With nothing to free for a while, the batch learns that fewer slots are kept
    when the interactive grant that made it keep one is a period old, not later."""

    async def main() -> None:
        limiter = SlidingWindowLimiter(RateLimit(4, 1.0), clock=anyio.current_time)
        # The server says what is left: the slow start is over. A period later, from 0:
        (await limiter.acquire()).record(RateFeedback(200, remaining=3))
        await anyio.sleep(1.0)
        start = anyio.current_time()
        with prioritised(Priority.INTERACTIVE):
            interactive = await limiter.acquire()
        held = [await limiter.acquire() for _ in range(2)]
        async with anyio.create_task_group() as tg:

            async def answer() -> None:
                await anyio.sleep(0.3)
                for slot in held:
                    slot.record(ANSWERED)  # back at 1.3
                await anyio.sleep(0.6)
                interactive.record(ANSWERED)  # back at 1.9

            tg.start_soon(answer)
            # One slot free, kept for interactive calls until their grant at 0 ages.
            await limiter.acquire()
            assert anyio.current_time() - start == pytest.approx(1.0)

    on_virtual_clock(_as_bulk(main))


@pytest.mark.anyio
@pytest.mark.backends("asyncio")
async def test_across_processes_bulk_work_goes_on_when_the_interactive_grants_age(
    redis_server: RedisServer,
) -> None:
    """The batch's ask that Redis refuses on a count of interactive grants that has
    just aged asks again at once, not when a slot next comes within reach."""
    rate = RateLimit(3, 2.0)
    async with limiters(redis_server.url, 1, key="aging", rate=rate) as (a,):
        with prioritised(Priority.INTERACTIVE):
            interactive = await a.acquire()
        with prioritised(Priority.BULK):
            held = await a.acquire()
            async with anyio.create_task_group() as tg:

                async def answer() -> None:
                    await anyio.sleep(0.5 * rate.period)
                    interactive.record(ANSWERED)
                    held.record(ANSWERED)

                tg.start_soon(answer)
                # One free, kept for interactive calls until the grant ages.
                slot = await a.acquire()
            await asyncio.gather(*a._pending)
            async with raw_redis(redis_server.url) as r:
                found = await r.zrange(redis_keys("aging")["slots"], 0, 1, withscores=True)
                scores = [float(member[1]) for member in found]
        slot.record(ANSWERED)
    # Granted while both answered slots were still out of reach.
    assert slot.taken_at < min(scores) - KEEP_WITHIN * rate.period
