"""Submit and watch at once: the pipeline behind :meth:`AsyncClient.generate_many`.

Submissions and polls share the token's budget through one poll scheduler; a
journal (optional) makes a stopped batch resumable without paying twice, by
the rules :mod:`._journal` keeps. The pipeline adds what a batch needs on top:
credit accounting (``max_credits``), a deadline, a graceful stop, and one
outcome per request as soon as it settles.

The input is read a chunk at a time as submissions need it, never whole: a
batch of a million prompts starts submitting at once and holds only the
requests in flight.
"""

from __future__ import annotations

import enum
import logging
import weakref
from collections import deque
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sized,
)
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import anyio
from anyio.abc import TaskGroup
from typing_extensions import Self

from . import _telemetry as telemetry
from ._exceptions import (
    AuthenticationError,
    BudgetExceededError,
    ConfigurationError,
    Creation,
    GrokImagineError,
    JournalError,
    RateLimitError,
    RequestValidationError,
    SubmitUncertainError,
    TaskFailedError,
    TaskPollError,
    TaskTimeoutError,
    creation,
    never_sent,
)
from ._journal import Journal, JournalEntry, Resume
from ._models import GenerateRequest, Task, TaskState
from ._outcomes import Outcome, OutcomeStatus, PipelineProgress
from ._poller import Poller, PollResult, StatusSource
from ._priority import Priority, prioritised

__all__ = ["GenerationPipeline", "RequestLike", "Submitter", "collect_requests", "try_build"]

#: A request as the bulk calls take it: a checked model or a plain mapping.
RequestLike = GenerateRequest | Mapping[str, Any]

logger = logging.getLogger("grokimagine_async")

#: Polls in flight at once once nothing is left to submit.
MAX_POLLS_IN_FLIGHT = 64

#: Requests read from the input (and admitted to the journal, in one transaction)
#: at a time.
CHUNK = 256

#: A batch with more than this many windows of work left polls while it submits
#: (see _Batch.poll_share): a window lost at its end is a tenth of it at most, and
#: its first videos come early. A shorter one holds its polls until the
#: submissions are out, so that every request goes to work it needs.
EARLY_POLL_WINDOWS = 10


class Submitter(StatusSource, Protocol):
    """What the pipeline needs of a client."""

    async def submit_request(
        self,
        request: GenerateRequest | Mapping[str, Any],
        *,
        before_send: Callable[[], None] | None = None,
        after_unsent: Callable[[], None] | None = None,
    ) -> str:
        """Submit one checked request; see :meth:`AsyncClient.submit_request`."""


def _refuse_one(requests: object) -> None:
    if isinstance(requests, (str, bytes, Mapping, GenerateRequest)):
        raise RequestValidationError(
            "requests",
            f"expected many requests, got one {type(requests).__name__}",
            "Pass a list (or any iterable) of requests, e.g. [{'prompt': '...'}]",
        )


async def collect_requests(requests: Iterable[Any] | AsyncIterable[Any]) -> list[Any]:
    """Every item of a bulk call's input (refusing one request passed as many)."""
    if isinstance(requests, AsyncIterable):
        return [item async for item in requests]
    _refuse_one(requests)
    return list(requests)


class _Source:
    """A bulk call's input, read a chunk at a time."""

    def __init__(self, requests: Iterable[Any] | AsyncIterable[Any]) -> None:
        self._sync: Iterator[Any] | None = None
        self._async: AsyncIterator[Any] | None = None
        #: How many requests the input holds, once known (at once for a list).
        self.total: int | None = None
        if isinstance(requests, AsyncIterable):
            self._async = aiter(requests)
        else:
            _refuse_one(requests)
            self._sync = iter(requests)
        if isinstance(requests, Sized):
            self.total = len(requests)
        self.read = 0
        self.ended = False

    async def take(self, n: int) -> list[tuple[int, Any]]:
        """Up to ``n`` more items with their places; fewer only at the end."""
        taken: list[tuple[int, Any]] = []
        if self._sync is not None:
            for item in self._sync:
                taken.append((self.read + len(taken), item))
                if len(taken) == n:
                    break
        elif self._async is not None:
            async for item in self._async:
                taken.append((self.read + len(taken), item))
                if len(taken) == n:
                    break
        self.read += len(taken)
        if len(taken) < n:
            self.ended = True
            self.total = self.read
        return taken


def try_build(item: Any) -> GenerateRequest | RequestValidationError:
    """The checked request, or why it is not one."""
    try:
        return GenerateRequest.build(item)
    except RequestValidationError as exc:
        return exc


class _NotSent(Exception):
    """Stops a submission at the last moment: it is not sent."""


def _stopped() -> GrokImagineError:
    return GrokImagineError("not submitted: the batch was stopped; run it again to submit")


@dataclass(eq=False)
class _Item:
    index: int
    request: GenerateRequest | None
    invalid: RequestValidationError | None = None
    #: False for a row the journal refused (another batch's): nothing of it is written.
    journaled: bool = True
    #: The row's trace span, from its submission to its outcome (with OpenTelemetry).
    span: Any = None


class _Credits:
    """What the batch has spent or committed, against an optional ceiling."""

    def __init__(self, ceiling: int | None, per_video: int) -> None:
        self.ceiling = ceiling
        self.per_video = per_video
        self.spent = 0

    def count(self) -> None:
        """A video paid for earlier (or whose payment cannot be ruled out)."""
        self.spent += self.per_video

    def reserve(self) -> BudgetExceededError | None:
        """Commit one video's credits, or say why not."""
        if self.ceiling is not None and self.spent + self.per_video > self.ceiling:
            return BudgetExceededError(
                f"not submitted: it would take the batch's spend to "
                f"{self.spent + self.per_video} credits, past max_credits={self.ceiling}"
            )
        self.spent += self.per_video
        return None

    def refund(self) -> None:
        """The video was provably not paid for after all."""
        self.spent -= self.per_video


class _Life(enum.Enum):
    """Where a batch is in its life. Whether it still sends is apart from this
    (``_Batch.stopping``): a batch may be stopped before it starts."""

    NEW = "new"
    RUNNING = "running"
    #: Every outcome settled; those not yet taken can still be.
    FINISHED = "finished"
    #: Closed by the caller or at the end: nothing more is handed out, the journal let go.
    CLOSED = "closed"


class _Batch:
    """The pipeline's state and work. Nothing here refers back to the
    :class:`GenerationPipeline` a user holds, so that dropping it frees the journal."""

    def __init__(
        self,
        client: Submitter,
        requests: Iterable[RequestLike] | AsyncIterable[RequestLike],
        *,
        journal: str | Path | None,
        max_credits: int | None,
        credits_per_video: int,
        concurrency: int | Callable[[], int],
        timeout: float | None,
        resubmit_uncertain: bool,
        resubmit_failed: bool,
        poll_interval: float | None,
        priority: Priority,
    ) -> None:
        self.client = client
        self.requests = requests
        self.journal_path = journal
        self.credits = _Credits(max_credits, credits_per_video)
        # A number the caller chose, or the client's default, which follows the plan.
        self._concurrency = concurrency
        self.timeout = timeout
        self.resubmit_uncertain = resubmit_uncertain
        self.resubmit_failed = resubmit_failed
        self.poll_interval = poll_interval
        self.priority = priority
        self.prior = poll_interval or client.poll_interval
        self.ready: deque[Outcome] = deque()
        self.queue: deque[_Item] = deque()
        # One task id may come back for two requests: each still gets its own outcome.
        self.by_task: dict[str, list[_Item]] = {}
        self.journal: Journal | None = None
        self.poller = self._new_poller()
        self.life = _Life.NEW
        # Iterated from a background task (inside ``async with``), or pulled by the caller.
        self.background = False
        self.submitting = 0
        self.deadline: float | None = None
        self.arrived = anyio.Event()
        # Set when the caller takes an outcome.
        self.taken = anyio.Event()
        self.source: _Source | None = None
        # A batch that cannot end well once its input is read (a journal of another
        # batch): raised to the caller after the last outcome.
        self.failure: GrokImagineError | None = None
        self.stopping = False
        self.stop_reason: GrokImagineError = _stopped()
        # Submissions not yet on the wire, which a stop may still call off.
        self.scopes: dict[int, anyio.CancelScope] = {}
        self.unsent: set[int] = set()
        self.quiet = anyio.Event()
        # Rows whose trace span is open (with OpenTelemetry): ended at the latest on close.
        self.open_rows: set[_Item] = set()

    @property
    def concurrency(self) -> int:
        """Submissions in flight at once, at most (now)."""
        c = self._concurrency
        return c() if callable(c) else c

    def _new_poller(self) -> Poller:
        return Poller(
            get_task=self.client.get_task,
            budget=self.client.rate_limit_status,
            on_result=self._on_poll,
            prior=self.prior,
            durations=self.client._durations_for(self.poll_interval),
        )

    # -- setting up ---------------------------------------------------------------------

    async def start(self) -> None:
        self.life = _Life.RUNNING
        self.source = _Source(self.requests)
        if self.timeout is not None:
            self.deadline = anyio.current_time() + self.timeout
        if self.journal_path is not None:
            self.journal = Journal(self.journal_path)
        try:
            if self.journal is not None and self.source.total is not None:
                # An input of known length is checked against the journal's whole now.
                self.journal.end(self.source.total)
            # The first rows are checked against the journal before anything is sent.
            await self.fill(strict=True)
        except BaseException:
            self.close()
            raise

    async def fill(self, *, strict: bool = False) -> None:
        """Read the next chunk of the input: queue what is to be sent, and settle
        or follow what the journal says an earlier run did."""
        assert self.source is not None
        rows = await self.source.take(CHUNK)
        items = []
        for index, raw in rows:
            built = try_build(raw)
            if isinstance(built, GenerateRequest):
                items.append(_Item(index, built))
            else:
                items.append(_Item(index, None, invalid=built))
        entries: list[JournalEntry | None] = [None] * len(items)
        if self.journal is not None:
            payloads = [
                (it.index, it.request.to_payload() if it.request else {"invalid": str(it.invalid)})
                for it in items
            ]
            try:
                entries = self.journal.admit(payloads)
            except (ConfigurationError, JournalError) as exc:
                if strict:
                    raise
                self._refused(items, exc)
                return
            if self.source.ended:
                try:
                    self.journal.end(self.source.read)
                except ConfigurationError as exc:
                    # Every row read matched the journal's, so the rows go on as a
                    # rerun of that batch would take them; the caller hears of the
                    # difference at the end.
                    if strict:
                        raise
                    logger.error("%s", exc)
                    self.failure = exc
        for item, entry in zip(items, entries, strict=True):
            if item.invalid is not None:
                self.settle(item, OutcomeStatus.ERROR, error=item.invalid)
            elif entry is not None:
                self._resume(item, entry)
            else:
                self._queue(item)

    def _refused(self, items: list[_Item], error: GrokImagineError) -> None:
        """The journal refused these rows: each settles unsent, with nothing written
        of it, and the batch sends nothing more."""
        logger.error("%s", error)
        if not self.stopping:
            self.stop(error)
        for item in items:
            item.journaled = False
            self.settle(item, OutcomeStatus.SKIPPED, error=error)

    def _queue(self, item: _Item) -> None:
        """A row to send, unless the batch is stopping or out of time: then it
        settles unsent, and the journal keeps it as the new row it just wrote."""
        if self.stopping:
            item.journaled = False
            self.settle(item, OutcomeStatus.SKIPPED, error=self.stop_reason)
        elif self.past_deadline():
            item.journaled = False
            error = TaskTimeoutError("(not submitted)", self.timeout or 0.0, None)
            self.settle(item, OutcomeStatus.SKIPPED, error=error)
        else:
            self.queue.append(item)

    def _resume(self, item: _Item, entry: JournalEntry) -> None:
        assert self.journal is not None
        action = entry.resume(
            resubmit_uncertain=self.resubmit_uncertain, resubmit_failed=self.resubmit_failed
        )
        if action is Resume.SEND:
            if entry.state == Journal.DONE:
                # A failed task resent: the first attempt was paid for too.
                self.credits.count()
                self.journal.resend(entry)
            self._queue(item)
        elif action is Resume.FOLLOW:
            assert entry.task_id is not None
            self.credits.count()
            self._follow(item, entry.task_id)
        elif action is Resume.SETTLED:
            if entry.task_id:
                self.credits.count()
            self.ready.append(entry.outcome_of(item.request))
        else:
            assert item.request is not None
            self.credits.count()
            error = entry.error_of(item.request)
            if not isinstance(error, SubmitUncertainError):
                error = SubmitUncertainError(
                    "a run of this batch was sending this request when it stopped: it may "
                    "have created a task (and spent credits) whose id never came back. "
                    "Pass resubmit_uncertain=True to send it again",
                    request=item.request,
                    cause=error
                    or GrokImagineError("the run stopped while the request was on the wire"),
                )
            self.settle(item, OutcomeStatus.UNCERTAIN, error=error, resumed=True)

    def _follow(self, item: _Item, task_id: str, since: float | None = None) -> None:
        self.by_task.setdefault(task_id, []).append(item)
        self.poller.add(task_id, since)

    # -- settling ---------------------------------------------------------------------------

    def settle(
        self,
        item: _Item,
        status: OutcomeStatus,
        *,
        task_id: str | None = None,
        task: Task | None = None,
        error: GrokImagineError | None = None,
        resumed: bool = False,
    ) -> None:
        outcome = Outcome(item.index, item.request, status, task_id, task, error, resumed)
        if not resumed:
            telemetry.settled(status.value)
        if item.span is not None:
            paid = self.credits.per_video if task_id is not None and not resumed else 0
            telemetry.end_row(item.span, status.value, task_id, paid)
            item.span = None
            self.open_rows.discard(item)
        if not resumed and item.journaled and self.journal is not None:
            try:
                self.journal.record(outcome)
            except JournalError as exc:
                logger.error("%s (outcome %s, task %s)", exc, status.value, task_id)
        self.ready.append(outcome)
        self.arrived.set()

    def _on_poll(self, result: PollResult) -> None:
        for item in self.by_task.pop(result.task_id):
            if result.error is not None:
                error = TaskPollError(result.task_id, result.error, result.task)
                error.__cause__ = result.error
                self.settle(item, OutcomeStatus.ERROR, task_id=result.task_id, error=error)
            elif result.task is not None and result.task.state is TaskState.COMPLETED:
                self.settle(item, OutcomeStatus.COMPLETED, task_id=result.task_id, task=result.task)
            else:
                assert result.task is not None
                self.settle(
                    item,
                    OutcomeStatus.FAILED,
                    task_id=result.task_id,
                    task=result.task,
                    error=TaskFailedError(result.task),
                )

    # -- running ----------------------------------------------------------------------------

    def unread(self) -> bool:
        return self.source is not None and not self.source.ended

    def more_coming(self) -> bool:
        return bool(self.queue) or self.submitting > 0 or self.unread()

    def poll_share(self) -> int:
        """Polls in flight at once, at most, while submissions are still to go.

        The budget frees a window at a time, so a batch's end is the window its
        last request falls in: one poll that finds a task still running can cost
        a whole window. A batch whose work left spans at most
        :data:`EARLY_POLL_WINDOWS` windows of the plan polls nothing until its
        submissions are out (then every poll finds an older task, and every
        request is one the batch needs); a longer one polls a little as it
        submits, so its first videos come early, at a cost of at most a window
        in that many. An input of a length not known (a generator with no
        ``len``) counts as long: a stream of a million prompts should show its
        first videos early."""
        if not (self.queue or self.unread()):
            return MAX_POLLS_IN_FLIGHT
        source = self.source
        total = None if source is None else source.total
        if total is not None:
            assert source is not None
            unread = total - source.read
            work = 2 * (len(self.queue) + self.submitting + unread) + len(self.poller)
            if work <= EARLY_POLL_WINDOWS * self.client.rate_limit_status().limit:
                return 0
        return max(2, self.concurrency // 5)

    def done(self) -> bool:
        return not self.queue and not self.submitting and not len(self.poller) and not self.unread()

    def past_deadline(self) -> bool:
        return self.deadline is not None and anyio.current_time() >= self.deadline

    async def run(self, stop: Callable[[], bool]) -> None:
        """Submit and poll until ``stop()``; returns with nothing in flight."""
        with prioritised(self.priority):
            await self._run(stop)

    async def _run(self, stop: Callable[[], bool]) -> None:
        poller = self.poller
        slots = anyio.CapacityLimiter(self.concurrency)

        async def submit(item: _Item, token: object) -> None:
            try:
                with anyio.CancelScope() as scope:
                    self.scopes[item.index] = scope
                    self.unsent.add(item.index)
                    if self.stopping:
                        # Stopped after this task was started but before it ran, so
                        # stop() could not call it off: it would wait a whole window
                        # for a slot just to learn that.
                        scope.cancel()
                    await self._submit(item)
                if scope.cancelled_caught:
                    self.settle(item, OutcomeStatus.SKIPPED, error=self.stop_reason)
            finally:
                self.scopes.pop(item.index, None)
                self.unsent.discard(item.index)
                self.submitting -= 1
                if not self.submitting:
                    self.quiet.set()
                    self.quiet = anyio.Event()
                slots.release_on_behalf_of(token)
                poller.max_in_flight = self.poll_share()
                poller.wake()

        poller.max_in_flight = self.poll_share()

        async def feed(tg: TaskGroup) -> None:
            try:
                while not stop():
                    late = self.stopping or self.past_deadline()
                    if self.unread() and (late or len(self.queue) < CHUNK // 4):
                        if late and self.background and len(self.ready) >= CHUNK:
                            # Rows now settle unsent as fast as they are read: no
                            # faster than the caller takes their outcomes.
                            self.taken = anyio.Event()
                            await self.taken.wait()
                            continue
                        await self.fill()
                        continue
                    if late or not self.queue:
                        break
                    token = object()
                    slots.total_tokens = self.concurrency
                    await slots.acquire_on_behalf_of(token)
                    if stop() or self.past_deadline() or not self.queue:
                        # A deadline or a stop meanwhile: the rows not read yet still
                        # need their outcomes.
                        slots.release_on_behalf_of(token)
                        continue
                    self.submitting += 1
                    tg.start_soon(submit, self.queue.popleft(), token)
            finally:
                if not self.queue and not self.unread():
                    poller.max_in_flight = MAX_POLLS_IN_FLIGHT
                    poller.wake()

        async with anyio.create_task_group() as tg:
            tg.start_soon(feed, tg)
            await poller.run(stop=stop, deadline=self.deadline, more_coming=self.more_coming)
        if self.past_deadline():
            self._expire()

    async def run_all(self) -> None:
        try:
            while not self.done():
                await self.run(stop=lambda: False)
        finally:
            if self.life is not _Life.CLOSED:
                self.life = _Life.FINISHED
            self.arrived.set()

    def _expire(self) -> None:
        for task_id, last in self.poller.pending().items():
            for item in self.by_task.pop(task_id):
                error = TaskTimeoutError(task_id, self.timeout or 0.0, last)
                self.settle(item, OutcomeStatus.TIMED_OUT, task_id=task_id, task=last, error=error)
        self.poller = self._new_poller()
        while self.queue:
            error = TaskTimeoutError("(not submitted)", self.timeout or 0.0, None)
            self.settle(self.queue.popleft(), OutcomeStatus.SKIPPED, error=error)

    async def _submit(self, item: _Item) -> None:
        """Send one request with its video's credits reserved: the one place they are
        given back, when the request provably made no task."""
        refused = self.credits.reserve()
        if refused is not None:
            self.settle(item, OutcomeStatus.SKIPPED, error=refused)
            return
        may_have_paid = False
        try:
            may_have_paid = await self._send(item)
        except BaseException:
            # Cut off: paid for if it had left (it is no longer among the unsent).
            may_have_paid = item.index not in self.unsent
            raise
        finally:
            if not may_have_paid:
                self.credits.refund()

    async def _send(self, item: _Item) -> bool:
        """Send one request and settle or follow it; whether it may have made a task."""
        assert item.request is not None

        def before_send() -> None:
            if self.stopping or self.past_deadline():
                raise _NotSent
            self.unsent.discard(item.index)
            if self.journal is not None:
                self.journal.sending(item.index)

        def after_unsent() -> None:
            # A 429 or a connection never made: nothing is on the wire until the retry.
            if self.stopping or self.past_deadline():
                raise _NotSent
            self.unsent.add(item.index)
            if self.journal is not None:
                self.journal.unsent(item.index)

        since = anyio.current_time()
        if item.span is None:
            item.span = telemetry.start_row(item.request.prompt)
            if item.span is not None:
                self.open_rows.add(item)
        try:
            with telemetry.current(item.span):
                task_id = await self.client.submit_request(
                    item.request, before_send=before_send, after_unsent=after_unsent
                )
        except _NotSent:
            late = TaskTimeoutError("(not submitted)", self.timeout or 0.0, None)
            reason = self.stop_reason if self.stopping else late
            self.settle(item, OutcomeStatus.SKIPPED, error=reason)
            return False
        except SubmitUncertainError as exc:
            self.settle(item, OutcomeStatus.UNCERTAIN, error=exc)
            return True
        except RateLimitError as exc:
            # The server said "slow down" for longer than the client's patience: that
            # is no verdict on the request, which goes back to the head of the queue.
            if self.stopping:
                self.settle(item, OutcomeStatus.SKIPPED, error=self.stop_reason)
                return False
            logger.info("request %d goes back in the queue: %s", item.index, exc)
            if self.journal is not None:
                self.journal.unsent(item.index)
            self.queue.appendleft(item)
            return False
        except GrokImagineError as exc:
            unsent = never_sent(exc)
            if unsent and self.stopping:
                # Never sent, and the batch already stopped (the shared limiter fails
                # every waiting request at once): one error says why, the rest skipped.
                self.settle(item, OutcomeStatus.SKIPPED, error=self.stop_reason)
                return False
            self.settle(item, OutcomeStatus.ERROR, error=exc)
            if isinstance(exc, AuthenticationError) or unsent:
                # A refused token, or a host (or the shared limiter's Redis) that could
                # not be reached through every retry: every other request would end
                # the same way.
                self.stop(exc)
            return creation(exc) is Creation.MAYBE
        self._follow(item, task_id, since)
        if self.journal is not None:
            try:
                self.journal.submitted(item.index, task_id)
            except JournalError as exc:
                logger.error("%s: task %s is followed all the same", exc, task_id)
        return True

    # -- stopping and closing ---------------------------------------------------------------

    def stop(self, reason: GrokImagineError) -> None:
        self.stopping = True
        self.stop_reason = reason
        for index in list(self.unsent):
            self.scopes[index].cancel()
        while self.queue:
            self.settle(self.queue.popleft(), OutcomeStatus.SKIPPED, error=reason)
        # Rows not read yet settle as they are read (see _queue).

    async def wait_submitted(self) -> None:
        while self.submitting:
            await self.quiet.wait()

    def progress(self) -> PipelineProgress:
        running = sum(len(items) for items in self.by_task.values())
        queued = len(self.queue)
        read = self.source.read if self.source is not None else 0
        total = self.source.total if self.source is not None else 0
        settled = read - queued - self.submitting - running
        if total is not None:
            queued = total - read + queued
        return PipelineProgress(
            total, queued, self.submitting, running, settled, self.credits.spent
        )

    async def next(self) -> Outcome:
        if self.life is _Life.CLOSED:
            # Closed (aclose, or the end): outcomes settled but not yet taken stay in
            # the journal for a rerun.
            raise StopAsyncIteration
        if self.life is _Life.NEW:
            await self.start()
        while not self.ready:
            if self.done() or self.life in (_Life.FINISHED, _Life.CLOSED):
                self.close()
                if self.failure is not None:
                    failure, self.failure = self.failure, None
                    raise failure
                raise StopAsyncIteration
            if self.background:
                self.arrived = anyio.Event()
                if not self.ready:
                    await self.arrived.wait()
            else:
                await self.run(stop=lambda: bool(self.ready))
        self.taken.set()
        return self.ready.popleft()

    def close(self) -> None:
        """Let go of the journal and its lock; nothing more is sent."""
        self.life = _Life.CLOSED
        # Rows left unsettled end their spans here: "closed", their fate in the journal.
        for item in self.open_rows:
            telemetry.end_row(item.span, "closed", None, 0)
            item.span = None
        self.open_rows.clear()
        if self.journal is not None:
            self.journal.close()
            self.journal = None


class GenerationPipeline:
    """The async iterator :meth:`AsyncClient.generate_many` returns: an
    :class:`Outcome` per request, as each settles.

    Use it as ``async with client.generate_many(...) as results:`` (or wrap it
    in ``contextlib.aclosing``): leaving the block, by ``break`` or an error,
    stops the work and lets go of the journal at once. A bare ``async for``
    works too: the journal is let go when the loop ends, or, after a
    ``break``, as soon as nothing refers to the pipeline any more; or call
    :meth:`aclose`.
    """

    def __init__(
        self,
        client: Submitter,
        requests: Iterable[RequestLike] | AsyncIterable[RequestLike],
        *,
        journal: str | Path | None = None,
        max_credits: int | None = None,
        credits_per_video: int,
        concurrency: int | Callable[[], int],
        timeout: float | None = None,
        resubmit_uncertain: bool = False,
        resubmit_failed: bool = False,
        poll_interval: float | None = None,
        priority: Priority = Priority.BULK,
    ) -> None:
        self._batch = _Batch(
            client,
            requests,
            journal=journal,
            max_credits=max_credits,
            credits_per_video=credits_per_video,
            concurrency=concurrency,
            timeout=timeout,
            resubmit_uncertain=resubmit_uncertain,
            resubmit_failed=resubmit_failed,
            poll_interval=poll_interval,
            priority=priority,
        )
        self._background: TaskGroup | None = None
        # Runs when the last reference to the pipeline goes (a `break` out of a bare
        # `async for`): the batch does not refer back here, so no cycle delays it.
        self._finalizer = weakref.finalize(self, self._batch.close)

    @property
    def progress(self) -> PipelineProgress:
        """Counts of the batch's requests by stage, and the credits spent so far."""
        return self._batch.progress()

    @property
    def unfinished(self) -> dict[str, Task | None]:
        """Tasks submitted and not yet settled, with the last state seen of each:
        what you would lose track of by stopping now without a journal."""
        return self._batch.poller.pending()

    def stop_submitting(self) -> None:
        """Send no more requests, as for a graceful Ctrl-C.

        Requests not yet sent settle as ``SKIPPED`` (a journal keeps them for a
        rerun); those already on the wire finish and their task ids are kept
        and recorded. Tasks already submitted are still followed: iterate on
        to see them settle, or leave now and let a rerun of the journal follow
        them. ``progress.submitting`` drops to 0 once no request is on the wire.
        """
        self._batch.stop(_stopped())

    async def wait_submitted(self) -> None:
        """After :meth:`stop_submitting`: return once no request is on the wire,
        every task id that came back recorded. Bound it with a timeout of your own."""
        await self._batch.wait_submitted()

    async def aclose(self) -> None:
        """Stop the batch's work and let go of its journal (and lock) now.

        Requests not yet sent stay unsent and tasks submitted stay recorded in
        the journal, so a rerun resumes. Safe to call more than once.
        """
        if self._background is not None:
            self._background.cancel_scope.cancel()
        self._finalizer()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Outcome:
        return await self._batch.next()

    async def __aenter__(self) -> Self:
        batch = self._batch
        await batch.start()
        self._background = anyio.create_task_group()
        await self._background.__aenter__()
        batch.background = True
        self._background.start_soon(batch.run_all)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._background is not None
        self._background.cancel_scope.cancel()
        try:
            return await self._background.__aexit__(exc_type, exc, tb)
        finally:
            self._background = None
            self._finalizer()
