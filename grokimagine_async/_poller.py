"""One scheduler for every watched task: polls spend the same budget as
submissions, so each poll should count.

How a task's polls are timed
----------------------------
* The scheduler learns how long generations take from the tasks it has seen
  finish. A finish time is known only to lie between the last poll that found
  the task running and the poll that found it done, so only tightly bracketed
  finishes are learnt from.
* A few tasks at a time (at most a fifth of those watched) are probed, each
  at gaps of 40% of its age, which brackets their finish closely enough,
  until a dozen generations have been timed. Only probes are learnt from:
  polls timed by the model would only teach it its own guesses.
* After that a task is polled first when 95% of generations are done, then at
  99%, then with growing gaps. When the budget is the bottleneck this is about
  1.1 polls a task.
* Budget that would otherwise go unused (the rate limiter has free slots,
  nobody waiting for them, and more than the polls already due within a
  period will need) goes on earlier polls of tasks old enough to be done, in
  turn, each at most every twentieth of the median generation, so when the
  budget is plentiful a finished video waits little.

Memory: a watched task costs a few hundred bytes.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import anyio
from anyio.abc import TaskGroup

from ._exceptions import GrokImagineError, poll_error_is_final
from ._limiter import RateLimitStatus
from ._models import Task, TaskState

__all__ = ["DurationModel", "PollResult", "Poller", "StatusSource"]


class StatusSource(Protocol):
    """What the bulk layer needs of a client to follow tasks."""

    @property
    def poll_interval(self) -> float:
        """The first guess of how long a generation takes, in seconds."""

    async def get_task(self, task_id: str) -> Task:
        """One status call."""

    def submitted_at(self, task_id: str) -> float | None:
        """When this client submitted the task, if it did just now (else None)."""

    def rate_limit_status(self) -> RateLimitStatus:
        """The token's budget now."""

    def _durations_for(self, poll_interval: float | None) -> DurationModel:
        """What the client has learnt of generations, for a call whose first guess is
        ``poll_interval`` (None: the client's own, shared by every such call)."""


#: Probing goes on until this many generations have been timed. Only probes are
#: learnt from: polls timed by the model itself would teach it its own guesses.
PROBE_SAMPLES = 12


class DurationModel:
    """What the scheduler has learnt of how long generations take."""

    def __init__(self, prior: float, *, min_samples: int = 3, keep: int = 256) -> None:
        self.prior = prior
        self.min_samples = min_samples
        self._samples: deque[float] = deque(maxlen=keep)
        self._sorted: list[float] | None = None

    def learn(self, duration: float) -> None:
        """One generation's length (seconds from submission to done)."""
        self._samples.append(duration)
        self._sorted = None

    @property
    def samples(self) -> int:
        """How many generations it has learnt from."""
        return len(self._samples)

    @property
    def ready(self) -> bool:
        """Whether enough generations have been seen to predict from."""
        return len(self._samples) >= self.min_samples

    def quantile(self, q: float) -> float:
        """The time by which a share ``q`` of generations are done."""
        if not self._samples:
            return self.prior
        if self._sorted is None:
            self._sorted = sorted(self._samples)
        values = self._sorted
        return values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))]


@dataclass(eq=False)
class _Watched:
    __slots__ = (
        "done", "due", "error", "fresh", "in_flight", "last", "last_poll", "polls", "since",
        "task_id",
    )  # fmt: skip
    task_id: str
    since: float
    due: float
    polls: int
    last_poll: float
    in_flight: bool
    done: bool
    last: Task | None
    #: Created just now (by this client): a 404 is not final at once.
    fresh: bool
    #: The passing error of the last poll (None if it answered).
    error: GrokImagineError | None


@dataclass(frozen=True)
class PollResult:
    """A watched task that has settled: its final ``task``, or the ``error``
    that makes further polling pointless."""

    task_id: str
    task: Task | None
    error: GrokImagineError | None = None


@dataclass
class Poller:
    """Polls many tasks through one client, timing each poll (see the module doc).

    ``get_task`` is the client's status call and ``budget`` its
    ``rate_limit_status``. Results go to ``on_result`` as tasks settle.
    """

    get_task: Callable[[str], Awaitable[Task]]
    budget: Callable[[], RateLimitStatus]
    on_result: Callable[[PollResult], None]
    #: A first guess at a generation's length, and the shortest gap between two
    #: polls of one task is a fifth of it.
    prior: float = 5.0
    max_in_flight: int = 64
    #: What generations take, shared with other pollers of the client (a new one if None).
    durations: DurationModel | None = None
    #: Polls on spare budget (see the module doc) of one task are at least this share
    #: of its age apart, besides ``min_gap``.
    spare_gap: float = 0.0
    #: The share of the plan that polls on spare budget leave free.
    spare_reserve: float = 0.0
    #: The shares of generations done by which a task is polled, once the model is ready.
    quantiles: tuple[float, ...] = (0.95, 0.99)
    _model: DurationModel = field(init=False)
    _tasks: dict[str, _Watched] = field(init=False, default_factory=dict)
    _heap: list[tuple[float, int, _Watched]] = field(init=False, default_factory=list)
    # Every task's next poll, sorted: how many fall due within a period is a bisection,
    # not a scan of the heap (whose stale entries wait to be popped) on each wake-up.
    _dues: list[float] = field(init=False, default_factory=list)
    _rotation: deque[_Watched] = field(init=False, default_factory=deque)
    _counter: itertools.count[int] = field(init=False, default_factory=itertools.count)
    _in_flight: int = field(init=False, default=0)
    _wakeup: anyio.Event = field(init=False, default_factory=anyio.Event)
    _probing: set[str] = field(init=False, default_factory=set)

    def __post_init__(self) -> None:
        self._model = DurationModel(self.prior) if self.durations is None else self.durations

    @property
    def min_gap(self) -> float:
        """The shortest gap between two polls of one task: a fifth of the first
        guess of a generation's length, and once generations have been timed, at
        most a twentieth of the median one, so a finished video waits little
        whatever the time scale."""
        gap = self._model.prior / 5
        if self._model.ready:
            gap = min(gap, self._model.quantile(0.5) / 20)
        return gap

    @property
    def model(self) -> DurationModel:
        return self._model

    def __len__(self) -> int:
        return len(self._tasks)

    def pending(self) -> dict[str, Task | None]:
        """Tasks not yet settled, with the last state seen of each."""
        return {t.task_id: t.last for t in self._tasks.values()}

    def add(self, task_id: str, since: float | None = None, *, fresh: bool = True) -> None:
        """Watch a task submitted at ``since`` (``anyio.current_time()``; now if None).
        ``fresh``: it may have been created just now, so a 404 is not final at once."""
        if task_id in self._tasks:
            return
        now = anyio.current_time()
        start = now if since is None else since
        watched = _Watched(task_id, start, math.inf, 0, -math.inf, False, False, None, fresh, None)
        self._tasks[task_id] = watched
        self._rotation.append(watched)
        self._schedule(watched, now)
        self._wakeup.set()

    def discard(self, task_id: str) -> None:
        """Stop watching a task (its caller gave up); a poll of it on the way is ignored."""
        w = self._tasks.pop(task_id, None)
        if w is not None:
            self._set_due(w, math.inf)
            w.done = True
            self._probing.discard(task_id)

    def last_seen(self, task_id: str) -> tuple[Task | None, GrokImagineError | None]:
        """A watched task's last state seen, and the passing error of its last poll."""
        w = self._tasks.get(task_id)
        return (None, None) if w is None else (w.last, w.error)

    def _probe_limit(self) -> int:
        status = self.budget()
        # At most a fifth of the tasks watched: each probe is a poll that other
        # work may wait behind, and a process watching a few tasks of a budget
        # shared with others pays for its own learning.
        return max(1, min(max(4, min(8, status.limit // 20)), len(self._tasks) // 5))

    def _schedule(self, w: _Watched, now: float) -> None:
        age = now - w.since
        model = self._model
        learning = model.samples < PROBE_SAMPLES
        if w.task_id in self._probing or (
            learning and w.polls == 0 and len(self._probing) < self._probe_limit()
        ):
            self._probing.add(w.task_id)
            # From a quarter of the first guess: a guess too long must not hold the
            # first finished videos back, and the growing gaps bracket short ones.
            # A first look needs no gap: a task recruited old is looked at now, not
            # held behind a gap its age would set.
            gap = 0.0 if w.polls == 0 else max(self.min_gap, age / 2.5)
            due = max(w.since + model.prior / 4, now + gap)
        elif not model.ready:
            # Rescheduled when the model is ready; this is only a fallback.
            due = max(now + self.min_gap, w.since + 10 * model.prior)
        else:
            due = math.inf
            for q in self.quantiles:
                at = w.since + model.quantile(q)
                if at > now + self.min_gap / 2 and (w.polls == 0 or at > w.last_poll):
                    due = at
                    break
            if due == math.inf:
                gap = max(self.min_gap, model.quantile(0.5) * 0.25 * 1.5 ** max(0, w.polls - 2))
                due = now + min(gap, max(self.min_gap, model.quantile(0.5)))
        self._set_due(w, due)
        if due < math.inf:
            heapq.heappush(self._heap, (due, next(self._counter), w))

    def _set_due(self, w: _Watched, due: float) -> None:
        if w.due < math.inf:
            del self._dues[bisect.bisect_left(self._dues, w.due)]
        w.due = due
        if due < math.inf:
            bisect.insort(self._dues, due)

    def _recruit_probe(self, now: float) -> None:
        """Another unpolled task takes a finished probe's place."""
        for w in self._tasks.values():
            if w.polls == 0 and not w.in_flight and w.task_id not in self._probing:
                self._probing.add(w.task_id)
                self._schedule(w, now)
                return

    def _reschedule_all(self, now: float) -> None:
        self._heap = []
        for w in self._tasks.values():
            if not w.in_flight:
                self._schedule(w, now)

    def wake(self) -> None:
        """Look at the schedule again now (more budget, a caller waiting, ...)."""
        self._wakeup.set()

    async def run(
        self,
        stop: Callable[[], bool],
        deadline: float | None = None,
        more_coming: Callable[[], bool] = lambda: False,
        linger: float | None = None,
    ) -> None:
        """Poll until ``stop()`` is true, the deadline passes, or nothing is
        left to watch (and ``more_coming()`` says no more will be added).

        Returns once every poll it started has come back, so nothing is left
        running; with ``linger``, waits that long at most for them, then calls
        off the rest, which are polled again by the next ``run``."""
        async with anyio.create_task_group() as tg:
            while not stop() and (self._tasks or more_coming()):
                now = anyio.current_time()
                if deadline is not None and now >= deadline:
                    # Polls are reads: cut them off rather than overrun the deadline.
                    tg.cancel_scope.cancel()
                    break
                self._start_due(tg, now)
                self._start_spare(tg, now)
                wait = self._next_wake(now, deadline)
                self._wakeup = anyio.Event()
                if stop():
                    break
                with anyio.move_on_after(wait):
                    await self._wakeup.wait()
            if linger is not None and self._in_flight:
                # A poll still queued for a slot could hold the caller for a period.
                with anyio.move_on_after(linger):
                    while self._in_flight:
                        self._wakeup = anyio.Event()
                        await self._wakeup.wait()
                tg.cancel_scope.cancel()

    def _next_wake(self, now: float, deadline: float | None) -> float:
        times = [now + 60.0]
        if deadline is not None:
            times.append(deadline)
        if self._in_flight >= self.max_in_flight:
            # Nothing can start until a poll comes back, which wakes the loop.
            return max(0.0, min(times) - now)
        while self._heap and (self._heap[0][2].due != self._heap[0][0] or self._heap[0][2].done):
            heapq.heappop(self._heap)
        if self._heap:
            times.append(self._heap[0][0])
        if self._spare_possible():
            times.append(now + self.min_gap / 2)
        return max(0.0, min(times) - now)

    def _start_due(self, tg: TaskGroup, now: float) -> None:
        heap = self._heap
        while heap and self._in_flight < self.max_in_flight and heap[0][0] <= now:
            due, _, w = heapq.heappop(heap)
            if w.done or w.in_flight or w.due != due:
                continue
            self._launch(tg, w, now)

    def _spare_possible(self) -> bool:
        rotation = self._rotation
        # Settled tasks leave the rotation lazily: a head of them must not hide the
        # ones still waiting, or the loop sleeps until the next scheduled poll.
        while rotation and rotation[0].done:
            rotation.popleft()
        return any(not w.in_flight and not w.done for w in itertools.islice(rotation, 16))

    def _start_spare(self, tg: TaskGroup, now: float) -> None:
        if not self._rotation:
            return
        status = self.budget()
        if status.waiting:
            return
        # A slot taken now stays taken for a period: keep what the polls already
        # due within it will need.
        horizon = now + status.period
        due_soon = bisect.bisect_right(self._dues, horizon)
        spare = status.remaining - due_soon - 1 - math.ceil(self.spare_reserve * status.limit)
        old_enough = self._model.quantile(0.05)
        looked = 0
        while spare > 0 and self._rotation and self._in_flight < self.max_in_flight and looked < 16:
            looked += 1
            w = self._rotation[0]
            if w.done:
                # Settled tasks leave the rotation when they reach its head.
                self._rotation.popleft()
                continue
            self._rotation.rotate(-1)
            age = now - w.since
            gap = max(self.min_gap, self.spare_gap * age)
            if w.in_flight or now - w.last_poll < gap or age < old_enough:
                continue
            self._launch(tg, w, now)
            spare -= 1

    def _launch(self, tg: TaskGroup, w: _Watched, now: float) -> None:
        w.in_flight = True
        self._set_due(w, math.inf)
        self._in_flight += 1
        tg.start_soon(self._poll, w)

    async def _poll(self, w: _Watched) -> None:
        sent = anyio.current_time()
        error: GrokImagineError | None = None
        task: Task | None = None
        try:
            task = await self.get_task(w.task_id)
        except GrokImagineError as exc:
            error = exc
        except BaseException:
            # Called off (a run that lingers no longer): due again for the next run.
            if not w.done:
                self._schedule(w, anyio.current_time())
            raise
        finally:
            self._in_flight -= 1
            w.in_flight = False
            self._wakeup.set()
        if w.done:
            return
        age = sent - w.since if w.fresh else math.inf
        if error is not None and poll_error_is_final(error, age):
            self._settle(w, PollResult(w.task_id, w.last, error))
            return
        now = anyio.current_time()
        previous = w.last_poll
        w.polls += 1
        w.last_poll = sent
        w.error = error
        if task is not None:
            w.last = task
            if task.state.is_terminal:
                if task.state is TaskState.COMPLETED:
                    self._learn(w, previous, now)
                self._settle(w, PollResult(w.task_id, task))
                return
        self._schedule(w, now)

    def _learn(self, w: _Watched, previous: float, now: float) -> None:
        model = self._model
        if w.task_id not in self._probing:
            return
        start = max(previous, w.since)
        was_ready = model.ready
        if previous > -math.inf and now - start <= 0.45 * (now - w.since):
            model.learn((start + now) / 2 - w.since)
        elif not model.ready and now - w.since < model.prior:
            # Done at its first poll: generations are shorter than guessed.
            model.prior = max(self.min_gap, now - w.since)
        if model.ready and not was_ready:
            self._reschedule_all(now)

    def _settle(self, w: _Watched, result: PollResult) -> None:
        self._set_due(w, math.inf)
        w.done = True
        del self._tasks[w.task_id]
        if w.task_id in self._probing:
            self._probing.discard(w.task_id)
            if self._model.samples < PROBE_SAMPLES:
                self._recruit_probe(anyio.current_time())
        self.on_result(result)
        self._wakeup.set()
