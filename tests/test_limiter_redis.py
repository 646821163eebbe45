"""The shared (Redis-backed) limiter against a real ``redis-server`` and the simulator.

Several "processes" in one event loop are several :class:`RedisLimiter` instances, each
with its own Redis connection: the limiter keeps per-instance state exactly as a process
would (its own queue of waiters, its own id in Redis). One test runs real subprocesses.
Time is compressed: a "minute" of one second.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import os
import socket
import sys
import textwrap
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from grokimagine_async import (
    AsyncClient,
    ConfigurationError,
    OutcomeStatus,
    RateLimit,
    RateLimiterUnavailableError,
    RedisLimiter,
)
from grokimagine_async._config import resolve_base_url, resolve_redis
from grokimagine_async._constraints import NEVER
from grokimagine_async._headers import RateFeedback
from grokimagine_async._limiter import token_hash
from grokimagine_async._redis_limiter import _uptime
from grokimagine_async.simulator import Simulator
from grokimagine_async.simulator._stats import max_in_window

from .helpers import serving
from .redis_server import RedisClusterServers, RedisServer, TLSFront

# redis.asyncio runs on asyncio only.
pytestmark = [pytest.mark.anyio, pytest.mark.backends("asyncio", reason="redis.asyncio")]

#: Distinctive, so that any leak of it into Redis, a repr or a message is found.
TOKEN = "sk-SECRET-abc123"
LIMIT, PERIOD = 20, 1.0
RATE = RateLimit(LIMIT, PERIOD)
ANSWERED = RateFeedback(200)
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _no_redis_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The settings these tests set themselves, unset (conftest clears only the older ones)."""
    for name in ("GROKIMAGINE_RATE_LIMIT", "GROKIMAGINE_REDIS_URL", "GROKIMAGINE_REDIS_FALLBACK"):
        monkeypatch.delenv(name, raising=False)


# -- helpers ----------------------------------------------------------------------------


def key_for(base_url: str) -> str:
    """The name the client gives the token in Redis, for a simulator at ``base_url``."""
    return token_hash(str(resolve_base_url(base_url)), TOKEN)


def redis_keys(key: str) -> dict[str, str]:
    """The limiter's keys in Redis by role (each carries the hash tag ``{key}``)."""
    return {
        name: f"grokimagine:{{{key}}}:{name}"
        for name in ("slots", "state", "queue", "due", "refused", "interactive")
    }


@asynccontextmanager
async def raw_redis(url: str) -> AsyncIterator[aioredis.Redis]:
    """A plain Redis client, for looking at what the limiter left there."""
    # Once more on a fresh connection: a restarted server closes the old ones.
    client = aioredis.Redis.from_url(url, retry=Retry(NoBackoff(), 1))
    try:
        yield client
    finally:
        await client.aclose()


@asynccontextmanager
async def limiters(
    redis_url: str, count: int, *, key: str, rate: RateLimit = RATE, **kwargs: Any
) -> AsyncIterator[list[RedisLimiter]]:
    """``count`` limiters for one token, each on a connection of its own, closed afterwards."""
    async with AsyncExitStack() as stack:
        made = []
        for _ in range(count):
            limiter = RedisLimiter(redis_url, rate, key=key, **kwargs)
            stack.push_async_callback(limiter.aclose)
            made.append(limiter)
        yield made


async def wait_for(
    check: Callable[[], Awaitable[bool]], *, within: float, step: float = 0.01
) -> None:
    """Wait until ``check()`` holds, failing after ``within`` seconds."""
    with anyio.fail_after(within):
        while not await check():  # noqa: ASYNC110 - the state lives in Redis or the simulator
            await anyio.sleep(step)


def counted_times(sim: Simulator) -> list[float]:
    return [r.time for r in sim.stats.log if r.counted]


def utilisation(times: Sequence[float], period: float) -> tuple[int, int]:
    """(requests counted in the whole periods from the first one, how many periods)."""
    start, end = min(times), max(times)
    periods = math.floor((end - start) / period)
    return sum(1 for t in times if t < start + periods * period), periods


async def take(limiter: RedisLimiter, grants: list[float]) -> None:
    """Take one slot, note when, and answer at once (held a period from now)."""
    slot = await limiter.acquire()
    grants.append(time.monotonic())
    slot.record(ANSWERED)


async def hammer(clients: Sequence[AsyncClient], *, seconds: float, pollers: int) -> None:
    """Poll (and now and then submit) from many tasks per client, for a while."""
    task_ids = [await client.submit(prompt=f"first {i}") for i, client in enumerate(clients)]

    async def poll(client: AsyncClient, task_id: str) -> None:
        while True:
            await client.get_task(task_id)

    async def submit(client: AsyncClient) -> None:
        while True:
            await client.submit(prompt="more")

    with anyio.move_on_after(seconds):
        async with anyio.create_task_group() as tg:
            for client, task_id in zip(clients, task_ids, strict=True):
                for _ in range(pollers):
                    tg.start_soon(poll, client, task_id)
                tg.start_soon(submit, client)


def sliding_sim(**kwargs: Any) -> Simulator:
    """An exact sliding window with exact headers, on a one-second "minute"."""
    kwargs.setdefault("limit", LIMIT)
    kwargs.setdefault("seed", 7)
    return Simulator(
        period=PERIOD,
        rate_model="sliding",
        reset_format="delta_s",
        time_scale=PERIOD / 60,
        generation_time=(0.2, 0.5),
        **kwargs,
    )


@pytest.fixture(params=["one", "cluster", "tls"])
def shared_redis(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A ``redis_url`` of each kind the limiter takes: one Redis, a three-node Redis
    Cluster (``redis+cluster://``), and one Redis behind TLS (``rediss://``, with a
    certificate the fixture makes)."""
    if request.param == "cluster":
        with RedisClusterServers() as cluster:
            yield cluster.url
        return
    with RedisServer() as server:
        if request.param == "tls":
            with TLSFront(server.port, tmp_path) as front:
                yield front.url
        else:
            yield server.url


# -- 1. the guarantee, several processes in one loop -------------------------------------


async def test_processes_sharing_redis_never_exceed_the_plan_and_use_it(
    shared_redis: str,
) -> None:
    sim = sliding_sim()
    async with serving(sim) as url, limiters(shared_redis, 4, key=key_for(url)) as made:
        clients = [AsyncClient(TOKEN, base_url=url, limiter=lim, backoff=0.01) for lim in made]
        try:
            await hammer(clients, seconds=4 * PERIOD, pollers=LIMIT)
        finally:
            for client in clients:
                await client.aclose()
    stats = sim.stats
    assert stats.rate_limited == 0
    assert stats.max_in_window() == LIMIT  # the plan, never more
    # Together they used the plan: at least 80% of it over the whole periods of the run.
    sent, periods = utilisation(counted_times(sim), PERIOD)
    assert periods >= 3
    assert sent >= 0.8 * LIMIT * periods, (sent, periods)


# -- 2. the guarantee, real processes ----------------------------------------------------

WORKER = textwrap.dedent(
    """
    import asyncio, sys
    from grokimagine_async import AsyncClient

    async def main() -> None:
        base_url, polls = sys.argv[1], int(sys.argv[2])
        # The token, the Redis and the budget come from the environment.
        async with AsyncClient(base_url=base_url, backoff=0.01) as client:
            rate = client.rate_limit
            print("ready", rate.requests, repr(rate.period), flush=True)
            sys.stdin.readline()  # go
            task_id = await client.submit(prompt="p")
            await asyncio.gather(*(client.get_task(task_id) for _ in range(polls)))
            print("done", type(client._get_limiter()).__name__, flush=True)

    asyncio.run(main())
    """
)


async def test_real_processes_share_the_plan_through_redis(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    limit, procs, polls = 30, 3, 29
    sim = sliding_sim(limit=limit)
    env = {
        **os.environ,
        "GROKIMAGINE_API_KEY": TOKEN,
        "GROKIMAGINE_REDIS_URL": redis_server.url,
        "GROKIMAGINE_RATE_LIMIT": f"{limit}/{PERIOD:g}s",
        "PYTHONPATH": str(REPO),
    }
    async with serving(sim) as url, AsyncExitStack() as stack:
        started: list[tuple[Process, BufferedByteReceiveStream, Path]] = []
        for n in range(procs):
            errors = tmp_path / f"worker{n}.err"
            process = await stack.enter_async_context(
                await anyio.open_process(
                    [sys.executable, "-c", WORKER, url, str(polls)],
                    env=env,
                    cwd=REPO,
                    stderr=stack.enter_context(errors.open("wb")),
                )
            )
            assert process.stdout is not None
            started.append((process, BufferedByteReceiveStream(process.stdout), errors))

        async def line(n: int) -> str:
            process, out, errors = started[n]
            try:
                return (await out.receive_until(b"\n", 1000)).decode()
            except (anyio.EndOfStream, anyio.IncompleteRead):
                await process.wait()
                raise AssertionError(
                    f"worker {n} exited {process.returncode}: {errors.read_text()}"
                ) from None

        with anyio.fail_after(20):
            for n in range(procs):
                assert (await line(n)).split() == ["ready", str(limit), repr(PERIOD)]
            # All at once, so that they contend.
            for process, _, _ in started:
                assert process.stdin is not None
                await process.stdin.send(b"go\n")
            for n in range(procs):
                assert (await line(n)).split() == ["done", "RedisLimiter"]
            for process, _, _ in started:
                assert await process.wait() == 0
    stats = sim.stats
    assert stats.requests == procs * (polls + 1)
    assert stats.rate_limited == 0
    # The plan, never more: some window was full (the processes contended), none over.
    assert stats.max_in_window() == limit
    times = counted_times(sim)
    assert max(times) - min(times) >= 2 * PERIOD  # three windows' worth took three


# -- 3. fairness ------------------------------------------------------------------------


async def test_a_process_with_one_request_is_served_beside_one_with_hundreds(
    redis_server: RedisServer,
) -> None:
    async with limiters(redis_server.url, 2, key="fair") as (a, b):
        a_grants: list[float] = []
        sent = itertools.count()

        async def request(limiter: RedisLimiter, grants: list[float]) -> None:
            # Answers take a while, each its own: the slots free one by one, as they
            # do in use.
            slot = await limiter.acquire()
            grants.append(time.monotonic())
            await anyio.sleep(0.01 * PERIOD * (next(sent) % 23))
            slot.record(ANSWERED)

        async with anyio.create_task_group() as tg:
            for _ in range(200):
                tg.start_soon(request, a, a_grants)
            with anyio.fail_after(5):
                # B comes later, while A's slots free one at a time.
                while len(a_grants) <= LIMIT:  # noqa: ASYNC110 - the state is A's
                    await anyio.sleep(0.01)
            a_before = len(a_grants)
            b_grants: list[float] = []
            with anyio.fail_after(10 * PERIOD):
                await request(b, b_grants)
            a_waiting = a.status().waiting
            tg.cancel_scope.cancel()
    assert a_waiting > 100  # A still had many queued: B did not just wait for A to finish
    # B's one request took its turn beside A's: A was granted fewer than a window's
    # worth meanwhile (counted, not timed).
    a_meanwhile = sum(1 for t in a_grants[a_before:] if t < b_grants[0])
    print(f"A granted {a_meanwhile} while B waited")
    assert a_meanwhile < LIMIT


# -- 4. shared learning -----------------------------------------------------------------


async def learned_gate(r: Any, state: str) -> float | None:
    """The 429 gate the processes share, if one was ever shut."""
    learned = await r.hget(state, "learned")
    if learned is None:
        return None
    gate = float(json.loads(learned)["gate"])
    return gate if gate > NEVER else None


async def test_a_429_seen_by_one_process_closes_the_gate_for_the_others(
    redis_server: RedisServer,
) -> None:
    retry_after = 0.6 * PERIOD
    async with (
        limiters(redis_server.url, 2, key="gate") as (a, b),
        raw_redis(redis_server.url) as r,
    ):
        state = redis_keys("gate")["state"]
        slot = await a.acquire()
        refused_at = time.monotonic()
        slot.record(RateFeedback(429, retry_after=retry_after))

        async def gate_in_redis() -> bool:
            return await learned_gate(r, state) is not None

        await wait_for(gate_in_redis, within=2)
        with anyio.fail_after(retry_after + 2 * PERIOD):
            later = await b.acquire()
        waited = time.monotonic() - refused_at
        later.record(ANSWERED)
    # B knew nothing of the 429 itself: Redis told it. And the gate reopened: what the
    # 429 left unknown of the window comes back at the plan's pace from then on.
    # (How soon after the gate it went is a speed: rate_limit.py's.)
    assert retry_after - 0.02 <= waited, waited


async def test_no_server_advised_wait_shuts_the_processes_out_past_the_cap(
    redis_server: RedisServer,
) -> None:
    async with (
        limiters(redis_server.url, 1, key="capped") as (a,),
        raw_redis(redis_server.url) as r,
    ):
        state = redis_keys("capped")["state"]
        slot = await a.acquire()
        seconds, micros = await r.time()
        refused_at = seconds + micros / 1e6
        # An hour asked for, and a client whose cap is a tenth of a period.
        slot.record(RateFeedback(429, retry_after=3600.0, reset_after=7200.0, max_wait=0.1))

        async def refusal_in_redis() -> bool:
            return await learned_gate(r, state) is not None

        await wait_for(refusal_in_redis, within=2)
        gate = await learned_gate(r, state)
    assert gate is not None
    assert gate - refused_at < 0.1 + 0.5, gate - refused_at


async def test_a_stated_burst_paces_every_process_from_the_start(
    redis_server: RedisServer,
) -> None:
    stated = RateLimit(RATE.requests, RATE.period, burst=2)
    grants: list[float] = []
    async with limiters(redis_server.url, 2, key="stated", rate=stated) as (a, b):
        with anyio.fail_after(4 * PERIOD):
            async with anyio.create_task_group() as tg:
                for limiter in (a, b) * 5:
                    tg.start_soon(take, limiter, grants)
        status = a.status()
    # Ten requests asked for at once by two processes: two go at once, the rest one at a
    # time at the plan's rate, as in one process with that RateLimit.
    grants.sort()
    gap = RATE.period / RATE.requests
    assert grants[1] - grants[0] < gap
    assert grants[-1] - grants[0] >= 7 * gap * 0.9
    assert status.pace == pytest.approx(RATE.per_second)
    assert status.burst == 2


async def test_a_slot_freed_while_a_request_was_on_its_way_is_nobody_elses_use(
    redis_server: RedisServer,
) -> None:
    # The server counted the first request when the second arrived; by the time the
    # second's answer is reported the first has left the window. Its Remaining is then
    # one lower than the window shows: that is the first, not another user to set
    # slots aside for (which cost a batch that runs the plan full about 5%).
    rate = RateLimit(2, PERIOD)
    async with (
        limiters(redis_server.url, 1, key="aged", rate=rate) as (limiter,),
        raw_redis(redis_server.url) as r,
    ):
        keys = redis_keys("aged")
        first = await limiter.acquire()
        first.record(RateFeedback(200, remaining=1))
        await wait_for(lambda: _equals(answered_in_redis(r, keys["slots"]), 1), within=2)
        freed_at = float((await r.zrange(keys["slots"], 0, 0, withscores=True))[0][1])
        second = await limiter.acquire()

        async def first_freed() -> bool:
            seconds, micros = await r.time()
            return seconds + micros / 1e6 > freed_at

        await wait_for(first_freed, within=2 * PERIOD)
        second.record(RateFeedback(200, remaining=0))
        await wait_for(lambda: _equals(answered_in_redis(r, keys["slots"]), 1), within=2)
        await asyncio.gather(*limiter._pending)
        learned = await r.hget(keys["state"], "learned")
    reserved = json.loads(learned)["reserve"][0] if learned else 0
    assert reserved == 0, learned


# -- 5. what is kept in Redis -----------------------------------------------------------


async def test_redis_holds_only_hashed_keys_that_expire(redis_server: RedisServer) -> None:
    rate = RateLimit(5, 0.4 * PERIOD)
    sim = sliding_sim(limit=100)
    async with serving(sim) as url, raw_redis(redis_server.url) as r:
        client = AsyncClient(
            TOKEN, base_url=url, rate_limit=rate, redis_url=redis_server.url, backoff=0.01
        )
        name = token_hash(str(client.base_url), TOKEN)
        names = redis_keys(name)

        async def check_keys(*expected: str) -> None:
            """The limiter's keys and nothing else, each under the hash tag of the
            token's hash, each with an expiry, none holding the token."""
            keys = {_text(k) async for k in r.scan_iter()}
            assert keys <= set(names.values())
            assert {names[role] for role in expected} <= keys
            for key in keys:
                assert "{" + name + "}" in key
                assert TOKEN not in key
                assert await r.pttl(key) > 0, key
                values = await stored(r, key)
                assert values, key
                assert not [v for v in values if TOKEN.encode() in v]

        async def queued() -> bool:
            return bool(await r.exists(names["queue"]))

        async with client:
            task_id = await client.submit(prompt="p")
            async with anyio.create_task_group() as tg:
                for _ in range(8):  # more than the plan: some wait, in Redis's queue too
                    tg.start_soon(client.get_task, task_id)
                await wait_for(queued, within=2)
                await check_keys("slots", "state", "queue", "due")
            await check_keys("slots", "state")
    assert sim.stats.requests == 9


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def stored(r: aioredis.Redis, key: str) -> list[bytes]:
    """Every field and value of a hash, every member of a sorted set."""
    kind = _text(await r.type(key))
    found: list[Any]
    if kind == "hash":
        found = [x for pair in (await r.hgetall(key)).items() for x in pair]
    else:
        assert kind == "zset", (key, kind)
        found = list(await r.zrange(key, 0, -1))
    return [x if isinstance(x, bytes) else str(x).encode() for x in found]


async def test_a_script_that_fails_is_said_at_warning_and_counted_not_swallowed(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="grokimagine_async")
    async with limiters(redis_server.url, 1, key="broken") as (a,):
        # A bug in the report script, as a drift between two copies of a rule would be.
        a._record = a._redis.register_script("error('a bug in the script')")
        slot = await a.acquire()
        slot.record(ANSWERED)
        with anyio.fail_after(5):
            while a.script_errors == 0:  # noqa: ASYNC110 - set by a task the limiter spawned
                await anyio.sleep(0.01)
        # A failing grant script is raised to the caller, before anything is sent.
        a._acquire = a._redis.register_script("error('a bug in the script')")
        with pytest.raises(Exception, match="a bug in the script"):
            await a.acquire()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("could not report a request" in r.getMessage() for r in warnings)
    assert a.script_errors == 1
    assert TOKEN not in caplog.text


# -- 6. Redis away, no fallback ---------------------------------------------------------


async def test_without_redis_a_call_fails_fast_and_sends_nothing(
    redis_server: RedisServer,
) -> None:
    sim = sliding_sim()
    async with serving(sim) as url:
        client = AsyncClient(
            TOKEN, base_url=url, rate_limit=RATE, redis_url=redis_server.url, backoff=0.01
        )
        async with client:
            task_id = await client.submit(prompt="p")  # through Redis, which answers
            sent = sim.stats.requests
            redis_server.stop()
            with anyio.fail_after(3), pytest.raises(RateLimiterUnavailableError) as caught:
                await client.get_task(task_id)
            assert sim.stats.requests == sent  # nothing went out
            assert "redis_fallback" in str(caught.value)
            assert TOKEN not in str(caught.value)
            assert TOKEN not in repr(caught.value.__cause__)
            # Redis back (empty, same port): calls go again.
            redis_server.start()
            with anyio.fail_after(3):
                await client.get_task(task_id)
            assert sim.stats.requests == sent + 1
    assert sim.stats.rate_limited == 0


async def test_a_limiter_that_never_reached_redis_fails_fast(redis_server: RedisServer) -> None:
    redis_server.stop()
    sim = sliding_sim()
    async with serving(sim) as url:
        client = AsyncClient(
            TOKEN, base_url=url, rate_limit=RATE, redis_url=redis_server.url, backoff=0.01
        )
        async with client:
            with anyio.fail_after(3):
                for _ in range(3):
                    with pytest.raises(RateLimiterUnavailableError):
                        await client.submit(prompt="p")
    assert sim.stats.requests == 0


# -- 7. Redis away, with a fallback -----------------------------------------------------


def fallback_client(url: str, redis_url: str, share: float) -> AsyncClient:
    """A client on the shared limiter that falls back to ``share`` of the plan."""
    return AsyncClient(
        TOKEN, base_url=url, rate_limit=RATE, redis_url=redis_url,
        redis_fallback=share, backoff=0.01,
    )  # fmt: skip


async def test_with_a_fallback_calls_go_on_at_a_share_then_rejoin_redis(
    redis_server: RedisServer, log_records: list[logging.LogRecord]
) -> None:
    share = 0.5
    sim = sliding_sim()
    redis_server.stop()
    async with serving(sim) as url, raw_redis(redis_server.url) as r:
        client = fallback_client(url, redis_server.url, share)
        keys = redis_keys(key_for(url))
        state, slots = keys["state"], keys["slots"]
        async with client:
            await hammer([client], seconds=2 * PERIOD, pollers=LIMIT)
            away = counted_times(sim)
            assert max_in_window(away, PERIOD) <= math.floor(LIMIT * share)
            # and it did go on: about its share a period
            assert len(away) >= LIMIT * share * 1.5
            warned = [rec for rec in log_records if rec.levelno == logging.WARNING]
            assert any("cannot be reached" in rec.getMessage() for rec in warned)

            redis_server.start()  # the same port, empty
            task_id = await client.submit(prompt="back")

            async def granted_by_redis() -> bool:
                await client.get_task(task_id)
                seq = await r.hget(state, "seq")
                return seq is not None and int(seq) >= 1

            await wait_for(granted_by_redis, within=3 * PERIOD)
            assert await r.exists(slots)
            assert any("answers again" in rec.getMessage() for rec in log_records)
    assert sim.stats.rate_limited == 0
    assert all(TOKEN not in rec.getMessage() for rec in log_records)


async def test_waiters_queued_in_the_fallback_do_not_overrun_the_plan_after_rejoining(
    redis_server: RedisServer,
) -> None:
    """While Redis was away, many calls queued in the fallback. Once the process has
    rejoined Redis, every request it sends must be known to Redis: with another process
    spending through Redis beside it from then on, the plan holds."""
    share = 0.5
    sim = sliding_sim()
    redis_server.stop()
    async with serving(sim) as url, raw_redis(redis_server.url) as r:
        client = fallback_client(url, redis_server.url, share)
        slots = redis_keys(key_for(url))["slots"]
        async with client, limiters(redis_server.url, 1, key=key_for(url)) as (other,):
            other_client = AsyncClient(TOKEN, base_url=url, limiter=other, backoff=0.01)
            task_id = await client.submit(prompt="p")

            async def poll(c: AsyncClient) -> None:
                while True:
                    await c.get_task(task_id)

            async def many_queued_locally() -> bool:
                fallback = getattr(client._limiter, "_fallback", None)
                return fallback is not None and fallback.status().waiting >= 4

            async def rejoined() -> bool:
                # The process re-adds what it holds as it rejoins.
                return bool(await r.exists(slots))

            with anyio.move_on_after(2.5 * PERIOD):
                async with anyio.create_task_group() as tg:
                    for _ in range(3 * LIMIT):
                        tg.start_soon(poll, client)
                    await wait_for(many_queued_locally, within=2 * PERIOD)
                    redis_server.start()
                    await wait_for(rejoined, within=PERIOD)
                    back = time.monotonic()
                    for _ in range(LIMIT):
                        tg.start_soon(poll, other_client)
            await other_client.aclose()
    after = [t for t in counted_times(sim) if t >= back - PERIOD]
    refused = [rec.time for rec in sim.stats.log if rec.status == 429]
    assert refused == []
    assert max_in_window(after, PERIOD) <= LIMIT


async def test_no_slot_is_granted_locally_while_the_held_ones_are_re_added(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rejoining Redis re-adds what the process holds, and that call takes a round
    trip: a local slot granted meanwhile would be a request Redis never hears of."""
    redis_server.stop()
    async with limiters(redis_server.url, 1, key="rejoin-race", fallback=0.5) as (limiter,):
        first = await limiter.acquire()  # Redis away: from the fallback
        first.record(ANSWERED)
        redis_server.start()
        reseeding = anyio.Event()
        release = anyio.Event()
        reseed = limiter._reseed_slots

        async def slow_reseed() -> None:
            reseeding.set()
            await release.wait()
            await reseed()

        monkeypatch.setattr(limiter, "_reseed_slots", slow_reseed)
        limiter._retry_redis_at = 0.0
        granted: list[Any] = []

        async def take() -> None:
            granted.append(await limiter.acquire())

        async with anyio.create_task_group() as tg:
            tg.start_soon(take)
            await reseeding.wait()
            tg.start_soon(take)
            await anyio.wait_all_tasks_blocked()
            assert granted == []  # the second waits for the rejoin, not the fallback
            release.set()
        # Both came from Redis once it knew what this process holds.
        assert [slot.seq is not None for slot in granted] == [True, True]
        for slot in granted:
            slot.record(ANSWERED)


# -- 8. a restarted Redis ---------------------------------------------------------------


async def held_in_redis(r: aioredis.Redis, slots: str) -> int:
    """Slots held now (a freed one stays in the set a period more, not held)."""
    seconds, micros = await r.time()
    return int(await r.zcount(slots, f"({seconds + micros / 1e6}", "+inf"))


async def answered_in_redis(r: aioredis.Redis, slots: str) -> int:
    """Slots held a period from their answer (not a lease: the report has landed)."""
    seconds, micros = await r.time()
    now = seconds + micros / 1e6
    return int(await r.zcount(slots, f"({now}", now + 2 * PERIOD))


async def test_a_restarted_redis_gets_the_held_slots_back(redis_server: RedisServer) -> None:
    held = 12
    slots = redis_keys("restart")["slots"]
    async with (
        limiters(redis_server.url, 2, key="restart") as (a, b),
        raw_redis(redis_server.url) as r,
    ):
        first: list[float] = []
        async with anyio.create_task_group() as tg:
            for _ in range(held):
                tg.start_soon(take, a, first)
        await wait_for(lambda: _equals(answered_in_redis(r, slots), held), within=2)
        answered = max(first)
        redis_server.restart()  # back empty: the window is lost
        assert await held_in_redis(r, slots) == 0

        grants: list[float] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(take, a, grants)  # A is back first, and re-adds what it holds
            await wait_for(lambda: _at_least(held_in_redis(r, slots), held), within=PERIOD / 2)
            for _ in range(LIMIT):
                tg.start_soon(take, b, grants)
            # A's held slots free a period after their answers: until then only the rest
            # (counted by when each was granted, so a late wake-up changes nothing).
            await anyio.sleep(max(0.0, answered + 0.9 * PERIOD - time.monotonic()))
            in_window = sum(1 for t in grants if t < answered + 0.9 * PERIOD)
            tg.cancel_scope.cancel()
    assert in_window <= LIMIT - held
    assert in_window >= 1  # the gate reopened: not stuck


async def test_a_restart_noticed_by_another_process_gets_an_idle_ones_slots_back(
    redis_server: RedisServer,
) -> None:
    """A holds slots and stays idle; B (which has used Redis before) notices the restart.
    A's slots must still count in the window, or B takes the whole plan beside them."""
    held = 12
    slots = redis_keys("idle")["slots"]
    async with (
        limiters(redis_server.url, 2, key="idle") as (a, b),
        raw_redis(redis_server.url) as r,
    ):
        first: list[float] = []
        await take(b, first)  # B has used Redis before the restart
        async with anyio.create_task_group() as tg:
            for _ in range(held):
                tg.start_soon(take, a, first)
        await wait_for(lambda: _equals(answered_in_redis(r, slots), held + 1), within=2)
        answered = max(first)
        redis_server.restart()

        grants: list[float] = []
        async with anyio.create_task_group() as tg:
            for _ in range(LIMIT):
                tg.start_soon(take, b, grants)
            await anyio.sleep(max(0.0, answered + 0.9 * PERIOD - time.monotonic()))
            granted = len(grants)
            readded = await held_in_redis(r, slots) - granted
            in_window = sum(1 for t in grants if t < answered + 0.9 * PERIOD)
            tg.cancel_scope.cancel()
    assert readded >= held, f"A's {held} slots were not re-added ({readded} were)"
    assert in_window <= LIMIT - held - 1, f"B took {in_window} beside A's {held}"


async def _equals(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


async def _at_least(value: Awaitable[int], expected: int) -> bool:
    return await value >= expected


# -- 9. configuration -------------------------------------------------------------------


def test_a_redis_url_that_is_not_one_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="redis_url") as caught:
        AsyncClient(TOKEN, redis_url="http://x")
    assert "http://x" not in str(caught.value)  # a URL may carry a password


def test_a_fallback_that_is_not_a_share_is_refused() -> None:
    for share in (2, 0, -0.5, True):
        with pytest.raises(ConfigurationError, match="redis_fallback"):
            AsyncClient(TOKEN, redis_url="redis://localhost:6379/0", redis_fallback=share)


def test_bad_settings_from_the_environment_name_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for bad in ("abc", "60", "60/0s", "0/1s", "60/-2s", "60/nan", "60/infs", "60/1m"):
        monkeypatch.setenv("GROKIMAGINE_RATE_LIMIT", bad)
        with pytest.raises(ConfigurationError, match="GROKIMAGINE_RATE_LIMIT"):
            AsyncClient(TOKEN)
    monkeypatch.delenv("GROKIMAGINE_RATE_LIMIT")
    monkeypatch.setenv("GROKIMAGINE_REDIS_URL", "localhost:6379")
    with pytest.raises(ConfigurationError, match="GROKIMAGINE_REDIS_URL"):
        AsyncClient(TOKEN)
    monkeypatch.setenv("GROKIMAGINE_REDIS_URL", "redis://localhost:6379/0")
    for bad in ("half", "1.5", "0", "nan"):
        monkeypatch.setenv("GROKIMAGINE_REDIS_FALLBACK", bad)
        with pytest.raises(ConfigurationError, match="GROKIMAGINE_REDIS_FALLBACK"):
            AsyncClient(TOKEN)


async def test_settings_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, redis_server: RedisServer
) -> None:
    monkeypatch.setenv("GROKIMAGINE_RATE_LIMIT", "60/2s")
    async with AsyncClient(TOKEN) as client:
        assert client.rate_limit == RateLimit(60, 2.0)
    monkeypatch.setenv("GROKIMAGINE_RATE_LIMIT", " 1000/60 ")
    async with AsyncClient(TOKEN) as client:
        assert client.rate_limit == RateLimit(1000, 60.0)
    # An argument wins over the environment.
    async with AsyncClient(TOKEN, rate_limit=RateLimit(5, 1.0)) as client:
        assert client.rate_limit == RateLimit(5, 1.0)
    monkeypatch.setenv("GROKIMAGINE_REDIS_URL", redis_server.url)
    monkeypatch.setenv("GROKIMAGINE_REDIS_FALLBACK", "0.25")
    async with AsyncClient(TOKEN) as client:
        limiter = client._get_limiter()
        assert isinstance(limiter, RedisLimiter)
        assert limiter.rate == RateLimit(1000, 60.0)
        assert limiter._fallback_share == 0.25


# -- 10. the token is never shown -------------------------------------------------------


async def test_nothing_shown_carries_the_token(redis_server: RedisServer) -> None:
    key = token_hash("https://api.example/", TOKEN)
    async with limiters(redis_server.url, 1, key=key) as (limiter,):
        slot = await limiter.acquire()
        slot.record(ANSWERED)
        shown = [repr(limiter), str(limiter), repr(limiter.status()), repr(slot)]
        redis_server.stop()
        with pytest.raises(RateLimiterUnavailableError) as caught:
            await limiter.acquire()
        error: BaseException | None = caught.value
        while error is not None:
            shown += [repr(error), str(error)]
            error = error.__cause__ or error.__context__
    client = AsyncClient(TOKEN, redis_url=redis_server.url)
    shown += [repr(client), str(client)]
    await client.aclose()
    for text in shown:
        assert TOKEN not in text
        assert "SECRET" not in text
    # and the token cannot be read back from its name in Redis
    assert key != TOKEN
    assert TOKEN not in key


# -- the bulk layer and other event loops ---------------------------------------------------


async def test_a_batch_stops_unsent_when_redis_is_away_and_a_rerun_sends_the_rest(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    sim = sliding_sim()
    journal = tmp_path / "batch.db"
    requests = [{"prompt": f"video {i}"} for i in range(6)]
    async with serving(sim) as url:
        redis_server.stop()
        async with AsyncClient(
            TOKEN, base_url=url, rate_limit=RATE, redis_url=redis_server.url, backoff=0.01
        ) as client:
            with anyio.fail_after(10):
                async with client.generate_many(requests, journal=journal) as results:
                    outcomes = [o async for o in results]
        assert sim.stats.requests == 0  # nothing sent, nothing spent
        assert any(isinstance(o.error, RateLimiterUnavailableError) for o in outcomes)
        assert {o.status.value for o in outcomes} <= {"error", "skipped"}
        # Redis back: the rerun of the journal sends every request, once.
        redis_server.start()
        async with AsyncClient(
            TOKEN, base_url=url, rate_limit=RATE, redis_url=redis_server.url
        ) as client:
            with anyio.fail_after(20):
                async with client.generate_many(requests, journal=journal) as results:
                    again = [o async for o in results]
    assert sorted(o.status.value for o in again) == ["completed"] * len(requests)
    assert sim.stats.tasks_created == len(requests)


def test_the_redis_limiter_refuses_an_event_loop_other_than_asyncio(
    redis_server: RedisServer,
) -> None:
    trio = pytest.importorskip("trio")

    async def main() -> None:
        async with AsyncClient(
            TOKEN, base_url="http://127.0.0.1:9", rate_limit=RATE, redis_url=redis_server.url
        ) as client:
            with pytest.raises(ConfigurationError, match="asyncio only"):
                await client.get_task("task_1")

    trio.run(main)


async def test_a_grant_whose_answer_a_cancellation_dropped_is_given_back(
    redis_server: RedisServer,
) -> None:
    import asyncio

    key = "cancelled"
    slots = redis_keys(key)["slots"]
    async with (
        limiters(redis_server.url, 1, key=key) as (limiter,),
        raw_redis(redis_server.url) as r,
    ):
        script = limiter._acquire
        answered = anyio.Event()

        async def slow_answer(**kwargs: Any) -> Any:
            reply = await script(**kwargs)  # granted in Redis...
            await anyio.sleep(0.2)  # ...but the answer is late
            answered.set()
            return reply

        limiter._acquire = slow_answer  # type: ignore[assignment]
        waiter = asyncio.ensure_future(limiter.acquire())
        await wait_for(lambda: _at_least(r.zcard(slots), 1), within=2)
        waiter.cancel()  # as asyncio.wait_for or a web framework does
        with pytest.raises(asyncio.CancelledError):
            await waiter
        await answered.wait()
        # Given back at once, not held for the 600 s lease.
        await wait_for(lambda: _equals(r.zcard(slots), 0), within=2)


async def test_a_batch_with_redis_unreachable_ends_in_one_error_and_the_rest_skipped() -> None:
    # The shared limiter fails every waiting request at once; one error says why.
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"redis://127.0.0.1:{probe.getsockname()[1]}/0"
    sim = sliding_sim()
    async with serving(sim) as url:
        client = AsyncClient(TOKEN, base_url=url, rate_limit=RATE, redis_url=closed)
        async with client, client.generate_many([{"prompt": f"v{i}"} for i in range(8)]) as results:
            statuses = Counter([outcome.status async for outcome in results])
    assert statuses == {OutcomeStatus.ERROR: 1, OutcomeStatus.SKIPPED: 7}
    assert sim.stats.requests == 0


def test_the_restart_check_reads_the_uptime_of_one_redis_or_of_every_cluster_node() -> None:
    assert _uptime({"uptime_in_seconds": 12, "redis_version": "7.2"}) == 12.0
    # A cluster asked for every node answers by node: the youngest counts.
    per_node = {
        "127.0.0.1:7000": {"uptime_in_seconds": 300},
        "127.0.0.1:7001": {"uptime_in_seconds": 4},
    }
    assert _uptime(per_node) == 4.0
    assert _uptime({}) == math.inf


@pytest.mark.parametrize("url", ["redis+cluster://127.0.0.1:7000", "rediss+cluster://h:7000"])
def test_a_cluster_url_is_accepted(url: str) -> None:
    assert resolve_redis(url, None) == (url, None)


def test_a_url_that_is_no_redis_names_the_forms_it_may_take() -> None:
    with pytest.raises(ConfigurationError, match=r"redis\+cluster://"):
        resolve_redis("http://127.0.0.1:6379", None)
