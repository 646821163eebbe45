"""Single waits: every ``AsyncClient.wait`` of a client is polled by one scheduler.

Each test runs the simulator and the client in one trio loop on a virtual
clock (a 60 s period takes no real time), so what it counts is the same on a
loaded machine.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx
import pytest

from grokimagine_async import AsyncClient, Task, TaskState, TaskTimeoutError
from grokimagine_async._poller import PROBE_SAMPLES
from grokimagine_async.simulator import Simulator

from .helpers import TOKEN, on_virtual_clock

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from waits import run as run_waits

#: Long enough that no task finishes unless a test finishes it.
NEVER = (10_000.0, 10_001.0)


class Polls:
    """Each status call: when it went, for which task."""

    def __init__(self, sim: Simulator) -> None:
        self.transport = sim.transport()
        self.times: dict[str, list[float]] = defaultdict(list)
        self.in_flight: dict[str, int] = defaultdict(int)
        self.most_in_flight = 0

    async def handle(self, request: httpx.Request) -> httpx.Response:
        task_id = request.url.params.get("task_id")
        if task_id is None:
            return await self.transport.handle_async_request(request)
        self.times[task_id].append(anyio.current_time())
        self.in_flight[task_id] += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight[task_id])
        try:
            await anyio.sleep(0.05)
            return await self.transport.handle_async_request(request)
        finally:
            self.in_flight[task_id] -= 1


@asynccontextmanager
async def client_of(sim: Simulator) -> AsyncIterator[tuple[AsyncClient, Polls]]:
    polls = Polls(sim)
    http = httpx.AsyncClient(
        transport=httpx.MockTransport(polls.handle), base_url="http://sim.test"
    )
    async with http, AsyncClient(TOKEN, base_url="http://sim.test", http_client=http) as client:
        yield client, polls


def simulator(generation: tuple[float, float] = NEVER) -> Simulator:
    return Simulator(
        limit=100, period=60.0, generation_time=generation, seed=5, clock=anyio.current_time
    )


def test_many_callers_waiting_at_once_cost_fewer_polls_than_a_loop_each() -> None:
    """60 web handlers' calls, one every 6 s, on the Free plan at a real minute: the
    poll-sleep loop every other SDK writes is the baseline, in the same run."""
    ours = run_waits(60, 6.0, baseline=False)
    loops = run_waits(60, 6.0, baseline=True)
    assert ours.rate_limited == loops.rate_limited == 0
    assert ours.polls < 0.8 * loops.polls


def test_waits_learn_how_long_generations_take() -> None:
    """Generations of 20-60 s: once the client has timed some, a wait does not look
    at its task in its first seconds, as the first guess of 5 s has it do."""

    async def main() -> None:
        sim = simulator((20.0, 60.0))
        async with client_of(sim) as (client, polls):
            for i in range(PROBE_SAMPLES + 2):
                task_id = await client.submit(prompt=f"video {i}")
                submitted = anyio.current_time()
                task = await client.wait(task_id)
                assert task.state is TaskState.COMPLETED
        first = polls.times[task_id][0] - submitted
        assert first >= 15.0, f"first poll {first:.1f}s after the submission"

    on_virtual_clock(main)


def test_when_the_caller_driving_the_polls_is_done_another_takes_over() -> None:
    async def main() -> None:
        sim = simulator()
        returned: dict[str, float] = {}
        async with client_of(sim) as (client, polls):
            first = await client.submit(prompt="first")
            second = await client.submit(prompt="second")

            async def wait(task_id: str) -> None:
                task = await client.wait(task_id)
                assert task.state is TaskState.COMPLETED
                returned[task_id] = anyio.current_time()

            async with anyio.create_task_group() as tg:
                tg.start_soon(wait, first)
                await anyio.sleep(1)
                tg.start_soon(wait, second)
                await anyio.sleep(30)
                sim.complete_now(first)
                await anyio.sleep(60)
                sim.complete_now(second)
            finished = anyio.current_time()
        assert returned[first] < returned[second]
        # The second was still polled once the first caller left: it heard within a minute.
        assert returned[second] <= finished
        assert polls.times[second][-1] > returned[first]
        assert polls.most_in_flight == 1

    on_virtual_clock(main)


def test_a_cancelled_caller_leaves_the_others_polled() -> None:
    async def main() -> None:
        sim = simulator()
        async with client_of(sim) as (client, polls):
            first = await client.submit(prompt="first")
            second = await client.submit(prompt="second")
            got: list[Task] = []

            async def wait_second() -> None:
                got.append(await client.wait(second))

            async with anyio.create_task_group() as tg:
                with anyio.CancelScope() as driver:
                    tg.start_soon(wait_second)
                    with anyio.move_on_after(20):
                        await client.wait(first)
                    driver.cancel()
                polled_by_then = len(polls.times[second])
                sim.complete_now(second)
            assert [t.state for t in got] == [TaskState.COMPLETED]
            assert len(polls.times[second]) > polled_by_then
            assert sum(polls.in_flight.values()) == 0

    on_virtual_clock(main)


def test_two_callers_waiting_on_one_task_both_get_it_from_the_same_polls() -> None:
    async def main() -> None:
        sim = simulator()
        async with client_of(sim) as (client, polls):
            task_id = await client.submit(prompt="shared")
            got: list[Task] = []

            async def wait() -> None:
                got.append(await client.wait(task_id))

            async with anyio.create_task_group() as tg:
                tg.start_soon(wait)
                tg.start_soon(wait)
                await anyio.sleep(40)
                sim.complete_now(task_id)
        assert [t.state for t in got] == [TaskState.COMPLETED, TaskState.COMPLETED]
        assert polls.most_in_flight == 1

    on_virtual_clock(main)


def test_a_caller_that_times_out_is_told_the_last_state_and_the_others_go_on() -> None:
    async def main() -> None:
        sim = simulator()
        async with client_of(sim) as (client, _):
            short = await client.submit(prompt="short")
            long = await client.submit(prompt="long")
            got: list[Task] = []

            async def wait_long() -> None:
                got.append(await client.wait(long))

            async with anyio.create_task_group() as tg:
                tg.start_soon(wait_long)
                with pytest.raises(TaskTimeoutError) as caught:
                    await client.wait(short, timeout=30)
                sim.complete_now(long)
            assert caught.value.task_id == short
            assert caught.value.last_task is not None
            assert [t.state for t in got] == [TaskState.COMPLETED]

    on_virtual_clock(main)
