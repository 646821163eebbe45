"""Cancelling a call stops it at once and leaves nothing behind.

``generate_many``, ``watch``, ``wait`` and ``download``, cancelled through an
anyio cancel scope or asyncio's ``Task.cancel`` while they are busy on real
sockets: each stops within a second, leaves no task running, no connection in
use, no file descriptor open and no ``.part`` file, and closes without a
``ResourceWarning``. A batch cancelled half way resumes from its journal
without paying for anything twice.
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import anyio
import pytest
import sniffio

from grokimagine_async import AsyncClient, OutcomeStatus, RateLimit
from grokimagine_async.simulator import Fault, Simulator

from .helpers import TOKEN, serving

pytestmark = [
    pytest.mark.anyio,
    # An unclosed socket or file shows as a ResourceWarning when it is collected.
    pytest.mark.filterwarnings("error::ResourceWarning"),
    pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning"),
]

OPERATIONS = ["generate_many", "watch", "wait", "download"]
#: The deadline for a cancelled call to return. Every wait it could be stuck in here
#: is longer (a generation of 60 s, a video host that hangs 30 s, a limiter slot a
#: period off), so a call that returns within it did not wait for any of them; and
#: a loaded machine is far inside it.
DEADLINE = 20.0


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


async def until(condition: Callable[[], bool], within: float = 10.0) -> None:
    """Wait for ``condition`` to hold, looking every few milliseconds, up to ``within`` s."""
    with anyio.fail_after(within):
        while not condition():  # noqa: ASYNC110 - the state lives in the simulator or the OS
            await anyio.sleep(0.005)


def pool_in_use(client: AsyncClient) -> int:
    """Requests httpx's pool still holds for the client (0 once every one has ended)."""
    pool = client._http._transport._pool  # type: ignore[attr-defined]
    return len(pool._requests)


class Busy:
    """One operation, started against the simulator and busy when ``ready()`` says so."""

    def __init__(self, op: str, sim: Simulator, client: AsyncClient, folder: Path) -> None:
        self.op, self.sim, self.client, self.folder = op, sim, client, folder
        self.journal = folder / "batch.db"

    def ready(self) -> bool:
        stats = self.sim.stats
        if self.op == "generate_many":
            return stats.tasks_created >= 5
        if self.op == "download":
            return stats.video_requests >= 1
        return stats.by_endpoint["status"] >= 2

    async def run(self) -> None:
        client = self.client
        if self.op == "generate_many":
            requests = [{"prompt": f"video {i}"} for i in range(30)]
            async with client.generate_many(requests, journal=self.journal) as results:
                async for _ in results:
                    pass
        elif self.op == "watch":
            ids = [await client.submit(prompt=f"video {i}") for i in range(3)]
            async for _ in client.watch(ids):
                pass
        elif self.op == "wait":
            await client.wait(await client.submit(prompt="a fox"), timeout=600)
        else:
            task = await client.generate(prompt="a fox")
            # The video host hangs before its answer: the download is cut off waiting.
            self.sim.inject(Fault.delay(30.0), endpoint="video")
            await client.download(task, self.folder / "videos")


def simulator_for(op: str) -> Simulator:
    # Long generations keep watch and wait polling; a quick one lets download start.
    quick = op in ("download", "generate_many")
    return Simulator(
        limit=100, period=1.0, generation_time=(0.05, 0.1) if quick else (60.0, 60.0), seed=6
    )


async def cancelled_while_busy(
    op: str, how: str, tmp_path: Path
) -> tuple[Simulator, Busy, float, int]:
    """Run ``op`` until busy, cancel it ``how``; the simulator, the call, the seconds the
    cancellation took, and descriptors open before the client was made."""
    sim = simulator_for(op)
    async with serving(sim, in_thread=True) as url:
        baseline = open_descriptors()
        tasks_before = len(anyio.get_running_tasks())
        # A slow plan keeps the batch half sent when it is cancelled, its next slot a
        # minute off.
        rate = RateLimit(10, 60.0) if op == "generate_many" else RateLimit(100, 1.0)
        client = AsyncClient(TOKEN, base_url=url, rate_limit=rate, poll_interval=0.05)
        busy = Busy(op, sim, client, tmp_path)
        async with client:
            took = await cancel(busy.run, busy.ready, how)
            assert len(anyio.get_running_tasks()) == tasks_before
            assert pool_in_use(client) == 0
        assert not list(tmp_path.rglob("*.part"))
        gc.collect()
        await until(lambda: open_descriptors() <= baseline)
    return sim, busy, took, baseline


async def cancel(
    run: Callable[[], Coroutine[Any, Any, None]], ready: Callable[[], bool], how: str
) -> float:
    """Start ``run``, wait until ``ready()``, cancel it ``how``; seconds until it returned."""
    if how == "asyncio Task.cancel":
        task = asyncio.get_running_loop().create_task(run())
        await until(ready)
        started = time.monotonic()
        task.cancel()
        with anyio.fail_after(DEADLINE):
            await asyncio.wait([task])
        assert task.cancelled()
        return time.monotonic() - started
    ended = anyio.Event()
    started = 0.0
    async with anyio.create_task_group() as tg:

        async def body(scope: anyio.CancelScope) -> None:
            with scope:
                await run()
            ended.set()

        scope = anyio.CancelScope()
        tg.start_soon(body, scope)
        await until(ready)
        started = time.monotonic()
        scope.cancel()
        with anyio.fail_after(DEADLINE):
            await ended.wait()
    assert scope.cancelled_caught
    return time.monotonic() - started


@pytest.mark.parametrize("op", OPERATIONS)
@pytest.mark.parametrize(
    "how",
    [
        pytest.param("cancel scope", marks=pytest.mark.backends("asyncio", "trio")),
        pytest.param("asyncio Task.cancel"),
    ],
)
async def test_a_cancelled_call_stops_at_once_and_leaves_nothing(
    op: str, how: str, tmp_path: Path
) -> None:
    if how == "asyncio Task.cancel" and sniffio.current_async_library() != "asyncio":
        pytest.skip("asyncio's own cancellation")
    sim, _, _, _ = await cancelled_while_busy(op, how, tmp_path)
    if op == "generate_many":
        assert 5 <= sim.stats.tasks_created < 30


async def test_a_cancelled_batch_resumes_from_its_journal_without_paying_twice(
    tmp_path: Path,
) -> None:
    sim, busy, _, _ = await cancelled_while_busy("generate_many", "cancel scope", tmp_path)
    outcomes: list[Any] = []
    async with (
        serving(sim, in_thread=True) as url,
        AsyncClient(TOKEN, base_url=url, rate_limit=RateLimit(100, 1.0), poll_interval=0.05) as c,
    ):
        requests = [{"prompt": f"video {i}"} for i in range(30)]
        with anyio.fail_after(30):
            async with c.generate_many(requests, journal=busy.journal) as results:
                outcomes = [o async for o in results]
    assert sorted(o.index for o in outcomes) == list(range(30))
    per_prompt = Counter(r["prompt"] for r in sim.stats.created_requests())
    assert max(per_prompt.values()) == 1
    statuses = Counter(o.status for o in outcomes)
    settled = statuses[OutcomeStatus.COMPLETED] + statuses[OutcomeStatus.FAILED]
    # A submission cut off on the wire may have created its task: it is settled
    # uncertain, never sent again without being asked.
    assert settled + statuses[OutcomeStatus.UNCERTAIN] == 30
    assert settled <= sim.stats.tasks_created <= 30


async def test_asyncio_s_own_cancel_during_a_connection_s_close_leaves_no_request_in_the_pool(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if sniffio.current_async_library() != "asyncio":
        pytest.skip("asyncio's own cancellation")
    from httpcore._async.http11 import AsyncHTTP11Connection

    closing = anyio.Event()
    release = anyio.Event()
    closed = AsyncHTTP11Connection._response_closed

    async def slow_close(self: AsyncHTTP11Connection) -> None:
        # httpcore shields this with an anyio cancel scope; Task.cancel() goes through
        # such a shield, and a request cut off here stayed in the pool's queue for good.
        closing.set()
        await release.wait()
        await closed(self)

    sim = Simulator(limit=100, period=1.0, seed=6)
    async with (
        serving(sim, in_thread=True) as url,
        AsyncClient(TOKEN, base_url=url, rate_limit=RateLimit(100, 1.0)) as client,
    ):
        task_id = await client.submit(prompt="a fox")
        monkeypatch.setattr(AsyncHTTP11Connection, "_response_closed", slow_close)
        call = asyncio.get_running_loop().create_task(client.get_task(task_id))
        with anyio.fail_after(10):
            await closing.wait()
        call.cancel()
        release.set()
        await asyncio.wait([call])
        assert call.cancelled()
        assert pool_in_use(client) == 0
