"""Single waits share one scheduler: every :meth:`AsyncClient.wait` of a client
hands its task to the client's :class:`Waits`, and a caller that is waiting
drives the polls of all of them.

Why one scheduler: fifty web handlers each waiting on a video are fifty tasks
of one poller, which times each poll from what generations take (learnt from
the client's batches and waits alike), instead of fifty loops polling on a
fixed backoff. There is no background task: the first caller to wait runs the
poller until its own task settles, then the next caller still waiting takes
over. Polls of other callers' tasks that are still on the way when it leaves
get :data:`HANDOVER` seconds to answer, then are called off and sent again by
the next caller, so a caller is never held up by another's poll queued for a
slot.
"""

from __future__ import annotations

from collections import Counter

import anyio

from . import _telemetry as telemetry
from ._exceptions import TaskFailedError, TaskPollError, TaskTimeoutError
from ._models import Task, TaskState
from ._poller import DurationModel, Poller, PollResult, StatusSource

__all__ = ["HANDOVER", "SPARE_GAP", "SPARE_RESERVE", "WAIT_QUANTILES", "Waits"]

#: Seconds a caller whose task has settled waits for the polls of others still on
#: the way before it calls them off: a round trip answers well within it.
HANDOVER = 1.0

#: The shares of generations done by which a waited-on task is polled: closer than a
#: batch's (0.95, 0.99), since a caller is waiting and few tasks are.
WAIT_QUANTILES = (0.2, 0.4, 0.6, 0.8, 0.95, 0.99)

#: Polls of a waited-on task on spare budget are at least this share of its age
#: apart: a caller waits at most about this share longer than its video took.
SPARE_GAP = 0.2

#: The share of the plan that polls on spare budget leave free: a handler's next
#: submission may come at any moment, and a slot taken stays taken for a period.
SPARE_RESERVE = 0.5


class Waits:
    """The tasks a client's callers are waiting on, polled by one :class:`Poller`."""

    def __init__(self, source: StatusSource, durations: DurationModel) -> None:
        self._source = source
        self._results: dict[str, PollResult] = {}
        self._callers: Counter[str] = Counter()
        self._changed = anyio.Event()
        self._driving = False
        self._poller = Poller(
            get_task=source.get_task,
            budget=source.rate_limit_status,
            on_result=self._arrived,
            prior=durations.prior,
            durations=durations,
            quantiles=WAIT_QUANTILES,
            spare_gap=SPARE_GAP,
            spare_reserve=SPARE_RESERVE,
        )

    def _arrived(self, result: PollResult) -> None:
        if self._callers[result.task_id]:
            self._results[result.task_id] = result
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def wait(self, task_id: str, timeout: float | None) -> Task:
        """The task once completed (see :meth:`AsyncClient.wait` for what it raises)."""
        deadline = None if timeout is None else anyio.current_time() + timeout
        since = self._source.submitted_at(task_id)
        self._callers[task_id] += 1
        # Only a task this client just created may not be visible yet.
        self._poller.add(task_id, since, fresh=since is not None)
        self._poller.wake()
        try:
            while (result := self._results.get(task_id)) is None:
                left = None if deadline is None else deadline - anyio.current_time()
                if left is not None and left <= 0:
                    last, error = self._poller.last_seen(task_id)
                    raise TaskTimeoutError(task_id, timeout or 0.0, last) from error
                if self._driving:
                    changed = self._changed
                    with anyio.move_on_after(left):
                        await changed.wait()
                    continue
                self._driving = True
                try:
                    await self._poller.run(
                        stop=lambda: task_id in self._results, deadline=deadline, linger=HANDOVER
                    )
                finally:
                    self._driving = False
                    self._notify()
        finally:
            self._callers[task_id] -= 1
            if not self._callers[task_id]:
                del self._callers[task_id]
                self._results.pop(task_id, None)
                self._poller.discard(task_id)
        if result.error is not None:
            raise TaskPollError(task_id, result.error, result.task) from result.error
        assert result.task is not None
        telemetry.settled(result.task.state.value)
        if result.task.state is TaskState.FAILED:
            raise TaskFailedError(result.task)
        return result.task
