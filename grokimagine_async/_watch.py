"""Following many tasks to the end: the async iterator :meth:`AsyncClient.watch` returns."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

import anyio

from ._exceptions import TaskPollError, WatchTimeoutError
from ._models import Task, check_task_id
from ._poller import Poller, PollResult, StatusSource
from ._priority import Priority, prioritised

__all__ = ["TaskWatch"]


class TaskWatch:
    """Yields each watched task once, as it completes or fails (see :meth:`AsyncClient.watch`).

    Polling happens only while the caller waits for the next task, so breaking
    out of the loop or cancelling leaves nothing running.
    """

    def __init__(
        self,
        source: StatusSource,
        task_ids: Iterable[str],
        *,
        timeout: float | None,
        poll_interval: float | None,
        priority: Priority = Priority.BULK,
    ) -> None:
        self._source = source
        self._ready: deque[PollResult] = deque()
        self._poller = Poller(
            get_task=source.get_task,
            budget=source.rate_limit_status,
            on_result=self._ready.append,
            prior=poll_interval or source.poll_interval,
            durations=source._durations_for(poll_interval),
        )
        self._priority = priority
        self._timeout = timeout
        self._deadline: float | None = None
        for task_id in task_ids:
            self.add(task_id)

    def add(self, task_id: str) -> None:
        """Watch one more task (an id already watched is watched once). Only one this
        client just submitted is given time to show up: a 404 for another is final."""
        task_id = check_task_id(task_id)
        since = self._source.submitted_at(task_id)
        self._poller.add(task_id, since, fresh=since is not None)

    @property
    def unfinished(self) -> dict[str, Task | None]:
        """Ids not yet yielded, with the last state seen of each."""
        return self._poller.pending()

    def __aiter__(self) -> TaskWatch:
        return self

    async def __anext__(self) -> Task:
        if self._deadline is None and self._timeout is not None:
            self._deadline = anyio.current_time() + self._timeout
        while not self._ready:
            if not len(self._poller):
                raise StopAsyncIteration
            if self._deadline is not None and anyio.current_time() >= self._deadline:
                raise WatchTimeoutError(self._poller.pending(), self._timeout or 0.0)
            with prioritised(self._priority):
                await self._poller.run(stop=lambda: bool(self._ready), deadline=self._deadline)
        result = self._ready.popleft()
        if result.error is not None:
            raise TaskPollError(result.task_id, result.error, result.task) from result.error
        assert result.task is not None
        return result.task
