"""The poll scheduler: when to poll each watched task so that every poll counts."""

from __future__ import annotations

import math
from collections.abc import Callable

import anyio
import pytest

from grokimagine_async._limiter import RateLimitStatus
from grokimagine_async._models import Task
from grokimagine_async._poller import Poller, PollResult

pytestmark = pytest.mark.anyio

PERIOD = 2.0


def idle_poller(on_result: Callable[[PollResult], None] | None = None) -> Poller:
    """A scheduler that never polls, a first guess of 5 s, 60 free slots a period."""
    status = RateLimitStatus(60, PERIOD, 60, 0.0, 0, 0)
    return Poller(
        get_task=None,  # type: ignore[arg-type]
        budget=lambda: status,
        on_result=on_result,  # type: ignore[arg-type]
        prior=5.0,
    )


def test_the_shortest_gap_between_polls_follows_the_generations_timed() -> None:
    poller = Poller(get_task=None, budget=None, on_result=None, prior=5.0)  # type: ignore[arg-type]
    assert poller.min_gap == 1.0
    for seconds in (4.0, 5.0, 6.0):
        poller.model.learn(seconds)
    assert poller.min_gap == pytest.approx(5.0 / 20)


async def test_the_first_tasks_are_probed_from_a_quarter_of_the_first_guess() -> None:
    poller = idle_poller()
    since = anyio.current_time()
    poller.add("task_1", since)
    (due, _, _), *_ = poller._heap
    # A first guess longer than the generations must not hold the first videos back.
    assert due == pytest.approx(since + 5.0 / 4)


async def test_the_polls_due_soon_are_counted_from_the_schedule_in_force() -> None:
    status = RateLimitStatus(600, PERIOD, 600, 0.0, 0, 0)
    polls = 0

    async def get_task(task_id: str) -> Task:
        nonlocal polls
        polls += 1
        # Every poll leaves the schedule as it is: one entry a task not in flight.
        scheduled = sorted(w.due for w in poller._tasks.values() if w.due < math.inf)
        assert poller._dues == scheduled
        state = "completed" if polls > 60 else "running"
        return Task.model_validate({"task_id": task_id, "status": state})

    settled: list[str] = []
    poller = Poller(
        get_task=get_task,
        budget=lambda: status,
        on_result=lambda result: settled.append(result.task_id),
        prior=0.5,
    )
    for i in range(30):
        poller.add(f"task_{i}")
    with anyio.fail_after(20):
        await poller.run(stop=lambda: False)
    assert sorted(settled) == sorted(f"task_{i}" for i in range(30))
    assert poller._dues == []


async def test_tasks_settled_ahead_in_the_rotation_do_not_hide_one_still_waiting() -> None:
    settled: list[str] = []
    poller = idle_poller(on_result=lambda result: settled.append(result.task_id))
    for i in range(40):
        poller.add(f"task_{i}")
    # The first 39 settle; the last one's next scheduled poll is far off.
    for i in range(39):
        w = poller._tasks[f"task_{i}"]
        poller._settle(w, PollResult(w.task_id, None))
    last = poller._tasks["task_39"]
    now = anyio.current_time()
    poller._set_due(last, now + 60.0)
    # Budget is free, so the loop must look again soon to spend it on the one left,
    # not sleep until its scheduled poll a minute away.
    assert poller._next_wake(now, None) <= poller.min_gap


async def test_a_process_watching_few_tasks_probes_a_fifth_of_them() -> None:
    poller = idle_poller()
    for i in range(10):
        poller.add(f"task_{i}")
    # Processes sharing one budget each learn on their own: ten tasks probed four at a
    # time cost the others' submissions a dozen slots in the first full window.
    assert len(poller._probing) == 2
    for i in range(10, 40):
        poller.add(f"task_{i}")
    assert len(poller._probing) == 4
