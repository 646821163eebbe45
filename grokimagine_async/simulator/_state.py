"""Generation tasks: what each one will do is drawn at creation, its phase read off the clock."""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

from ._config import Phase, SimulatorConfig


@dataclass(frozen=True)
class SimTask:
    """One generation task as the simulator holds it (times are on the simulator clock).

    The whole future of a task is drawn when it is created, so its phase at any moment
    follows from the clock alone: ``pending`` before ``running_at``, ``running`` before
    ``finished_at``, then ``completed`` or ``failed``.
    """

    task_id: str
    #: The request body as submitted (the status answer echoes it).
    request: dict[str, Any]
    created_at: float
    #: Creation time as epoch seconds (what ``created_at`` in the answer shows).
    created_wall: float
    running_at: float
    finished_at: float
    failed: bool
    error_message: str | None
    #: How many video URLs the task yields if it completes.
    videos: int
    #: Credits charged at creation.
    credits: int

    def phase(self, now: float) -> Phase:
        """The task's phase at simulator time ``now``."""
        if now >= self.finished_at:
            return "failed" if self.failed else "completed"
        if now >= self.running_at:
            return "running"
        return "pending"


class TaskStore:
    """All tasks of one simulator, with the seeded randomness that shapes new ones."""

    def __init__(self, config: SimulatorConfig, rng: random.Random) -> None:
        self._config = config
        self._rng = rng
        # A reset draws the same tasks again: two runs against one simulator meet the
        # same generation times in the same order, so they compare fairly.
        self._start = rng.getstate()
        self._tasks: dict[str, SimTask] = {}
        # Ids stay unique across resets so a stale id never finds a newer task.
        self._issued: set[str] = set()

    def _new_id(self) -> str:
        drawn = task_id = f"task_{self._rng.randrange(10**11, 10**12)}"
        # Taken before a reset: a suffix, not another draw, keeps the draws in step.
        suffix = 0
        while task_id in self._issued:
            suffix += 1
            task_id = f"{drawn}_{suffix}"
        self._issued.add(task_id)
        return task_id

    def create(self, request: dict[str, Any], now: float, wall_now: float) -> SimTask:
        """Create a task for ``request`` at ``now``; its outcome is decided here."""
        config = self._config
        rng = self._rng
        duration = rng.uniform(*config.generation_time)
        failed = rng.random() < config.failure_rate
        message: str | None = None
        if failed:
            messages = list(config.failure_messages)
            weights = [config.failure_messages[m] for m in messages]
            message = rng.choices(messages, weights=weights)[0]
        videos = config.videos_per_task
        count = videos if isinstance(videos, int) else rng.randint(*videos)
        task = SimTask(
            task_id=self._new_id(),
            request=copy.deepcopy(request),
            created_at=now,
            created_wall=wall_now,
            running_at=now + duration * config.queue_fraction,
            finished_at=now + duration,
            failed=failed,
            error_message=message,
            videos=count,
            credits=config.credits_per_video,
        )
        self._tasks[task.task_id] = task
        return task

    def clear(self) -> None:
        """Forget every task (issued ids stay reserved); new tasks are drawn as from the
        start."""
        self._tasks.clear()
        self._rng.setstate(self._start)

    def get(self, task_id: str) -> SimTask | None:
        """The task with ``task_id``, if there is one."""
        return self._tasks.get(task_id)

    def snapshot(self) -> dict[str, SimTask]:
        """A copy of the id-to-task mapping."""
        return dict(self._tasks)

    def finish_now(
        self, task_id: str, now: float, *, error_message: str | None, videos: int | None
    ) -> SimTask:
        """End ``task_id`` at ``now``: failed with ``error_message``, or completed."""
        task = self._tasks[task_id]
        task = replace(
            task,
            running_at=min(task.running_at, now),
            finished_at=now,
            failed=error_message is not None,
            error_message=error_message,
            videos=task.videos if videos is None else videos,
        )
        self._tasks[task_id] = task
        return task

    def status_data(
        self, task: SimTask, now: float, video_base: str, *, phase: Phase | None = None
    ) -> dict[str, Any]:
        """The ``data`` object of a status answer for ``task`` at ``now``.

        ``phase`` shows the task in that phase instead of the one it is in.
        """
        config = self._config
        if phase is None:
            phase = task.phase(now)
        credits = task.credits
        if phase == "failed" and config.refund_failed:
            credits = 0
        urls: list[str] = []
        if phase == "completed":
            urls = [video_url(video_base, task.task_id, n) for n in range(1, task.videos + 1)]
        return {
            "consumed_credits": credits,
            "created_at": iso_utc(task.created_wall),
            "status": config.status_words[phase],
            "task_id": task.task_id,
            "error_message": task.error_message if phase == "failed" else None,
            "request": copy.deepcopy(task.request),
            "response": urls,
        }


def video_url(base: str, task_id: str, number: int) -> str:
    """Where video ``number`` (1-based) of ``task_id`` is served under ``base``."""
    return f"{base}/videos/{task_id}/{number}.mp4"


def iso_utc(epoch: float) -> str:
    """Epoch seconds as ISO-8601 UTC with a ``Z``, to the second (as the contract shows)."""
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
