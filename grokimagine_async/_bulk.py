"""Bulk generation: many prompts in, videos out, as fast as the plan allows.

:meth:`AsyncClient.submit_many` submits, :meth:`AsyncClient.watch` follows
tasks to the end, and :meth:`AsyncClient.generate_many` does both at once,
with a journal that makes a stopped batch resumable without paying twice.
"""

from __future__ import annotations

import enum
import logging
import math
from collections import deque
from collections.abc import AsyncIterable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio
from anyio.abc import TaskGroup
from typing_extensions import Self

from ._client import BaseClient, _check_task_id
from ._config import CREDITS_PER_VIDEO
from ._download import download_task
from ._exceptions import (
    APIConnectionError,
    APIStatusError,
    AuthenticationError,
    BudgetExceededError,
    GrokImagineError,
    JournalError,
    RequestValidationError,
    SubmitUncertainError,
    TaskFailedError,
    TaskPollError,
    TaskTimeoutError,
    WatchTimeoutError,
)
from ._journal import Journal, JournalEntry
from ._models import GenerateRequest, Task, TaskState
from ._poller import Poller, PollResult

__all__ = [
    "AsyncClient",
    "GenerationPipeline",
    "Outcome",
    "OutcomeStatus",
    "SubmitOutcome",
    "TaskWatch",
]

RequestLike = GenerateRequest | Mapping[str, Any]

logger = logging.getLogger("grokimagine_async")


class _NotSent(Exception):
    """Stops a submission at the last moment: it is not sent."""


def _stopped() -> GrokImagineError:
    return GrokImagineError("not submitted: the batch was stopped; run it again to submit")


def _check_positive(field: str, value: float | None, example: str) -> None:
    if value is not None and not (isinstance(value, (int, float)) and value > 0):
        raise RequestValidationError(
            field, f"must be above 0, got {value!r}", f"Pass e.g. {example}"
        )


@dataclass(frozen=True)
class SubmitOutcome:
    """What became of one request of :meth:`AsyncClient.submit_many`."""

    #: The request's place in the input, from 0.
    index: int
    #: The request as checked; None if it could not be read as one.
    request: GenerateRequest | None
    #: The task it created: poll or watch it. None when ``error`` says why not.
    task_id: str | None = None
    #: Why there is no task id: a ``RequestValidationError``, an API error, or a
    #: ``SubmitUncertainError`` (a task may exist without its id).
    error: GrokImagineError | None = None

    @property
    def ok(self) -> bool:
        """True when the request created a task (``task_id`` is set)."""
        return self.task_id is not None


class OutcomeStatus(str, enum.Enum):
    """How one request of a pipeline settled."""

    COMPLETED = "completed"  #: the video is ready: ``task.videos``
    FAILED = "failed"  #: the task failed: ``task.failure_kind`` says why
    ERROR = "error"  #: refused before or at submission, or lost to a polling error
    UNCERTAIN = "uncertain"  #: the POST may have created a task whose id never came back
    SKIPPED = "skipped"  #: not submitted: ``max_credits`` would have been passed
    TIMED_OUT = "timed_out"  #: submitted, not finished by the deadline; resumable

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class PipelineProgress:
    """Where a :meth:`AsyncClient.generate_many` batch stands: ``pipeline.progress``."""

    #: Requests in the batch (0 until the pipeline starts).
    total: int
    #: Not yet submitted.
    queued: int
    #: Being submitted now.
    submitting: int
    #: Submitted, with a task id, not yet finished.
    running: int
    #: Settled: completed, failed, errored, uncertain, skipped or timed out.
    settled: int
    #: Credits the batch has spent or committed, earlier runs of its journal included.
    spent_credits: int


@dataclass(frozen=True)
class Outcome:
    """One request of :meth:`AsyncClient.generate_many`, settled."""

    #: The request's place in the input, from 0.
    index: int
    #: The request as checked; None if it could not be read as one.
    request: GenerateRequest | None
    #: How it settled; see :class:`OutcomeStatus`.
    status: OutcomeStatus
    #: The task it created, if it got that far (also for failed and timed-out ones).
    task_id: str | None = None
    #: The task's last state: its ``videos`` when completed, ``failure_kind`` when failed.
    task: Task | None = None
    #: Why it is not completed: a validation or API error, ``TaskFailedError``,
    #: ``SubmitUncertainError``, ``BudgetExceededError``, ``TaskTimeoutError``...
    error: GrokImagineError | None = None
    #: True when this outcome was read from the journal of an earlier run.
    from_journal: bool = False

    @property
    def videos(self) -> tuple[str, ...]:
        """The video URLs of a completed task (empty otherwise); they expire."""
        return self.task.videos if self.task is not None else ()


async def _collect(requests: Iterable[Any] | AsyncIterable[Any]) -> list[Any]:
    if isinstance(requests, AsyncIterable):
        return [item async for item in requests]
    if isinstance(requests, (str, bytes, Mapping, GenerateRequest)):
        raise RequestValidationError(
            "requests",
            f"expected many requests, got one {type(requests).__name__}",
            "Pass a list (or any iterable) of requests, e.g. [{'prompt': '...'}]",
        )
    return list(requests)


def _build(item: Any) -> GenerateRequest | RequestValidationError:
    try:
        return GenerateRequest.build(item)
    except RequestValidationError as exc:
        return exc


class AsyncClient(BaseClient):
    """An asyncio client for the Grok Imagine video API.

    ::

        async with AsyncClient() as client:          # token from GROKIMAGINE_API_KEY
            task = await client.generate(prompt="a fox in the snow")
            print(task.videos)

            async with client.generate_many(prompts, journal="batch.db") as results:
                async for outcome in results:
                    print(outcome.status, outcome.videos)

    One client is cheap to share across thousands of concurrent tasks: it owns
    one connection pool, and every request of every client using the same
    token and base URL goes through one rate limiter.

    Args:
        api_key: the API token; defaults to ``GROKIMAGINE_API_KEY``.
        base_url: defaults to ``GROKIMAGINE_BASE_URL``, else the provider's.
        tier: the plan (``"free"``, ``"pro"``, ``"enterprise"``); defaults to
            ``GROKIMAGINE_TIER``. Unset means: start at the Free plan's figures
            and move up to the plan the server's rate-limit headers prove.
        rate_limit: a budget that overrides the tier's, for custom contracts
            and compressed-time tests.
        timeout: seconds (or an ``httpx.Timeout``) for each request; by
            default 30 s to read and 10 s to connect, or your
            ``http_client``'s own timeout if you pass one.
        max_retries: retries after the first attempt of each request.
        backoff: seconds before the first retry; doubles each retry, up to 8 s,
            with jitter. A server's ``Retry-After`` overrides it.
        retry_uncertain_submits: also resend a submission that may already
            have created a paid task (off by default: see
            :class:`SubmitUncertainError`).
        poll_interval: seconds between status polls in :meth:`wait`.
        http_client: your own ``httpx.AsyncClient`` (proxies, transports,
            event hooks). The client never closes it, and never sets the token
            on it: the token goes only on requests to ``base_url``.
        limiter: a rate limiter of your own (one shared by many processes,
            say) in place of the process-wide one for this token; ``tier`` and
            ``rate_limit`` are then its business. See :class:`Limiter`.
    """

    async def download(
        self, task: Task | str, directory: str | Path, *, concurrency: int = 4
    ) -> list[Path]:
        """Stream a completed task's videos into ``directory``; returns the paths.

        ``task`` is a :class:`Task` or a task id (then looked up first). Files
        are named ``<task_id>_<n>.mp4`` and written whole or not at all (via a
        ``.part`` file); one already there is kept. Content type and length are
        checked, transient failures retried. The API token is never sent to
        the hosts that serve videos. An expired link raises
        :class:`VideoExpiredError`, which says how to get a fresh one.
        """
        if isinstance(task, str):
            task = await self.get_task(task)
        _check_positive("concurrency", concurrency, "4")
        return await download_task(
            self._http,
            task,
            directory,
            concurrency=concurrency,
            max_retries=self._wire.retry.max_retries,
            backoff=self._wire.retry.initial_backoff,
        )

    def _default_concurrency(self) -> int:
        return max(4, math.ceil(self.rate_limit.per_second * 0.5))

    async def submit_many(
        self,
        requests: Iterable[RequestLike] | AsyncIterable[RequestLike],
        *,
        concurrency: int | None = None,
    ) -> list[SubmitOutcome]:
        """Submit every request through the shared limiter.

        Returns one outcome per request, in input order: its task id, or the
        error (validation, API error, or ``SubmitUncertainError``). One
        failure cancels nothing else. Accepts any iterable or async iterable
        of :class:`GenerateRequest` or plain dicts.

        ``concurrency`` caps submissions in flight at once (by default about
        half the plan's requests a second, at least 4); the rate limiter
        paces them whatever it is.

        The outcomes come back together at the end: cancel this call (or let
        a timeout do it) and the ids of tasks already created are lost to you.
        For batches you may interrupt, use :meth:`generate_many` with a
        ``journal``.
        """
        _check_positive("concurrency", concurrency, "16")
        items = await _collect(requests)
        limit = anyio.CapacityLimiter(concurrency or self._default_concurrency())
        outcomes: list[SubmitOutcome | None] = [None] * len(items)

        async def one(index: int, item: Any) -> None:
            request = _build(item)
            if isinstance(request, RequestValidationError):
                outcomes[index] = SubmitOutcome(index, None, error=request)
                return
            async with limit:
                try:
                    task_id = await self.submit_request(request)
                except GrokImagineError as exc:
                    outcomes[index] = SubmitOutcome(index, request, error=exc)
                else:
                    outcomes[index] = SubmitOutcome(index, request, task_id=task_id)

        async with anyio.create_task_group() as tg:
            for index, item in enumerate(items):
                tg.start_soon(one, index, item)
        return [o for o in outcomes if o is not None]

    def watch(
        self,
        task_ids: Iterable[str] = (),
        *,
        timeout: float | None = None,
        poll_interval: float | None = None,
    ) -> TaskWatch:
        """Follow tasks until each is completed or failed; an async iterator.

        Yields each task once, as it reaches a terminal state, in the order
        they finish (a failed task is yielded, not raised). ``watch.add(id)``
        adds more while it runs. Polling happens only while you wait for the
        next task: breaking out of the loop or cancelling leaves nothing
        running. One scheduler times every poll (see the docs on polling).

        At ``timeout`` seconds the iteration raises :class:`WatchTimeoutError`
        whose ``unfinished`` holds every task id not yet yielded, with its
        last state. A task whose polling fails for good (401, or a 404 after
        30 s) raises :class:`TaskPollError` carrying its id; the watch can go
        on after it.

        ``poll_interval`` is the first guess of how long a generation takes,
        before any has been timed (the client's ``poll_interval`` by default);
        the scheduler learns the real figure from the first tasks it follows.
        """
        _check_positive("timeout", timeout, "3600, or None")
        _check_positive("poll_interval", poll_interval, "5")
        return TaskWatch(self, task_ids, timeout=timeout, poll_interval=poll_interval)

    def generate_many(
        self,
        requests: Iterable[RequestLike] | AsyncIterable[RequestLike],
        *,
        journal: str | Path | None = None,
        max_credits: int | None = None,
        credits_per_video: int = CREDITS_PER_VIDEO,
        concurrency: int | None = None,
        timeout: float | None = None,
        resubmit_uncertain: bool = False,
        poll_interval: float | None = None,
    ) -> GenerationPipeline:
        """Submit and watch at once; yields an :class:`Outcome` per request as
        soon as it is settled.

        Use it as ``async with client.generate_many(...) as results: async for
        outcome in results:`` so that work goes on while your loop body runs;
        a bare ``async for`` works too, but then submitting and polling pause
        while your loop body runs.

        Args:
            journal: a file path: every request and task id is written before
                and after its POST, so running the same call again after a
                crash or Ctrl-C resumes: settled requests are yielded from the
                journal (``from_journal``), tasks in flight are watched again,
                and nothing that got a task id is submitted twice. One process
                at a time holds a journal (`JournalError` for a second); in one
                process, a new call on it takes it over from a batch left
                behind, which can then send nothing more.
            max_credits: stop submitting before the spend (``credits_per_video``
                a video, earlier runs of the journal included) would pass it;
                the rest settle as ``SKIPPED``.
            concurrency: submissions in flight at once.
            timeout: seconds for the whole batch; tasks unfinished then settle
                as ``TIMED_OUT`` (the journal still holds them: rerun to go on).
            resubmit_uncertain: on resume, resend a request whose POST was under
                way at the crash (it may have created a task: you may pay
                twice). Off, such a request settles as ``UNCERTAIN``.
            credits_per_video: what one submission costs, for ``max_credits``
                and ``progress.spent_credits``.
            poll_interval: the first guess of how long a generation takes,
                before any has been timed (see :meth:`watch`).

        To stop a batch gracefully (on a signal, at shutdown), call
        :meth:`GenerationPipeline.stop_submitting`, then
        :meth:`GenerationPipeline.wait_submitted`: nothing more is sent and no
        task id on the wire is lost.
        """
        _check_positive("concurrency", concurrency, "16")
        _check_positive("timeout", timeout, "3600, or None")
        _check_positive("poll_interval", poll_interval, "5")
        if max_credits is not None and max_credits < 0:
            raise RequestValidationError(
                "max_credits", f"must be 0 or more, got {max_credits}", "Pass e.g. 4000"
            )
        return GenerationPipeline(
            self,
            requests,
            journal=journal,
            max_credits=max_credits,
            credits_per_video=credits_per_video,
            concurrency=concurrency or self._default_concurrency(),
            timeout=timeout,
            resubmit_uncertain=resubmit_uncertain,
            poll_interval=poll_interval,
        )


class TaskWatch:
    """The async iterator :meth:`AsyncClient.watch` returns."""

    def __init__(
        self,
        client: BaseClient,
        task_ids: Iterable[str],
        *,
        timeout: float | None,
        poll_interval: float | None,
    ) -> None:
        self._ready: deque[PollResult] = deque()
        self._poller = Poller(
            get_task=client.get_task,
            budget=client.rate_limit_status,
            on_result=self._ready.append,
            prior=poll_interval or client._poll_interval,
        )
        self._timeout = timeout
        self._deadline: float | None = None
        for task_id in task_ids:
            self.add(task_id)

    def add(self, task_id: str) -> None:
        """Watch one more task."""
        self._poller.add(_check_task_id(task_id))

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
            await self._poller.run(stop=lambda: bool(self._ready), deadline=self._deadline)
        result = self._ready.popleft()
        if result.error is not None:
            raise TaskPollError(result.task_id, result.error, result.task)
        assert result.task is not None
        return result.task


@dataclass(eq=False)
class _Item:
    index: int
    request: GenerateRequest | None
    invalid: RequestValidationError | None = None


@dataclass
class GenerationPipeline:
    """The async iterator :meth:`AsyncClient.generate_many` returns."""

    client: BaseClient
    requests: Iterable[RequestLike] | AsyncIterable[RequestLike]
    journal: str | Path | None
    max_credits: int | None
    credits_per_video: int
    concurrency: int
    timeout: float | None
    resubmit_uncertain: bool
    poll_interval: float | None
    _ready: deque[Outcome] = field(init=False, default_factory=deque)
    _queue: deque[_Item] = field(init=False, default_factory=deque)
    _by_task: dict[str, _Item] = field(init=False, default_factory=dict)
    _journal: Journal | None = field(init=False, default=None)
    _poller: Poller | None = field(init=False, default=None)
    _started: bool = field(init=False, default=False)
    _submitting: int = field(init=False, default=0)
    _spent: int = field(init=False, default=0)
    _deadline: float | None = field(init=False, default=None)
    _arrived: anyio.Event = field(init=False, default_factory=anyio.Event)
    _background: TaskGroup | None = field(init=False, default=None)
    _finished: bool = field(init=False, default=False)
    _total: int = field(init=False, default=0)
    _stopping: bool = field(init=False, default=False)
    _stop_reason: GrokImagineError = field(init=False, default_factory=_stopped)
    # Submissions not yet on the wire, which stop_submitting() may still call off.
    _scopes: dict[int, anyio.CancelScope] = field(init=False, default_factory=dict)
    _unsent: set[int] = field(init=False, default_factory=set)
    _quiet: anyio.Event = field(init=False, default_factory=anyio.Event)

    # -- setting up ---------------------------------------------------------------------

    async def _start(self) -> None:
        self._started = True
        items = []
        for index, raw in enumerate(await _collect(self.requests)):
            built = _build(raw)
            if isinstance(built, GenerateRequest):
                items.append(_Item(index, built))
            else:
                items.append(_Item(index, None, invalid=built))
        self._total = len(items)
        self._poller = Poller(
            get_task=self.client.get_task,
            budget=self.client.rate_limit_status,
            on_result=self._on_poll,
            prior=self.poll_interval or self.client._poll_interval,
        )
        if self.timeout is not None:
            self._deadline = anyio.current_time() + self.timeout
        if self.journal is not None:
            payloads = [
                it.request.to_payload() if it.request else {"invalid": str(it.invalid)}
                for it in items
            ]
            self._journal = Journal(self.journal, payloads)
            entries = self._journal.entries()
        else:
            entries = []
        for item in items:
            if item.invalid is not None:
                self._settle(item, OutcomeStatus.ERROR, error=item.invalid)
                continue
            entry = entries[item.index] if entries else None
            if entry is None or entry.state == Journal.NEW:
                self._queue.append(item)
            elif entry.state == Journal.DONE:
                self._spent += self.credits_per_video if entry.task_id else 0
                self._ready.append(self._from_journal(item, entry))
            elif entry.state == Journal.SUBMITTED and entry.task_id:
                self._spent += self.credits_per_video
                self._by_task[entry.task_id] = item
                self._poller.add(entry.task_id)
            elif self.resubmit_uncertain:
                self._queue.append(item)
            else:
                self._spent += self.credits_per_video
                error = SubmitUncertainError(
                    "a run of this batch was sending this request when it stopped: it may "
                    "have created a task (and spent credits) whose id never came back. "
                    "Pass resubmit_uncertain=True to send it again",
                    request=item.request,  # type: ignore[arg-type]
                    cause=GrokImagineError(entry.error or "interrupted"),
                )
                self._settle(item, OutcomeStatus.UNCERTAIN, error=error, write=False)

    def _from_journal(self, item: _Item, entry: JournalEntry) -> Outcome:
        status = OutcomeStatus(entry.outcome or "error")
        task = Task.model_validate(entry.task) if entry.task else None
        error = GrokImagineError(entry.error) if entry.error else None
        if status is OutcomeStatus.FAILED and task is not None:
            error = TaskFailedError(task)
        return Outcome(item.index, item.request, status, entry.task_id, task, error, True)

    # -- settling ---------------------------------------------------------------------------

    def _settle(
        self,
        item: _Item,
        status: OutcomeStatus,
        *,
        task_id: str | None = None,
        task: Task | None = None,
        error: GrokImagineError | None = None,
        write: bool = True,
    ) -> None:
        # A timed-out task, or one whose polling failed, stays "submitted": a rerun
        # follows it again.
        if write and self._journal is not None and status is not OutcomeStatus.TIMED_OUT:
            try:
                if (
                    status is OutcomeStatus.SKIPPED
                    or (isinstance(error, APIConnectionError) and not error.request_sent)
                    # The server's refusal: no task was made, so a rerun may try again.
                    or (isinstance(error, APIStatusError) and task_id is None)
                ):
                    self._journal.unsent(item.index)
                elif status is OutcomeStatus.UNCERTAIN:
                    self._journal.sending(item.index)
                elif not (status is OutcomeStatus.ERROR and task_id is not None):
                    self._journal.done(
                        item.index,
                        status.value,
                        task=task.model_dump(mode="json", by_alias=True) if task else None,
                        error=str(error) if error else None,
                    )
            except JournalError as exc:
                logger.error("%s (outcome %s, task %s)", exc, status.value, task_id)
        self._ready.append(Outcome(item.index, item.request, status, task_id, task, error))
        self._arrived.set()

    def _on_poll(self, result: PollResult) -> None:
        item = self._by_task.pop(result.task_id)
        if result.error is not None:
            error = TaskPollError(result.task_id, result.error, result.task)
            self._settle(item, OutcomeStatus.ERROR, task_id=result.task_id, error=error)
        elif result.task is not None and result.task.state is TaskState.COMPLETED:
            self._settle(item, OutcomeStatus.COMPLETED, task_id=result.task_id, task=result.task)
        else:
            assert result.task is not None
            self._settle(
                item,
                OutcomeStatus.FAILED,
                task_id=result.task_id,
                task=result.task,
                error=TaskFailedError(result.task),
            )

    # -- running ----------------------------------------------------------------------------

    def _more_coming(self) -> bool:
        return bool(self._queue) or self._submitting > 0

    def _done(self) -> bool:
        assert self._poller is not None
        return not self._queue and not self._submitting and not len(self._poller)

    async def _run(self, stop: Any) -> None:
        """Submit and poll until ``stop()``; returns with nothing in flight."""
        assert self._poller is not None
        poller = self._poller
        slots = anyio.CapacityLimiter(self.concurrency)

        async def submit(item: _Item, token: object) -> None:
            try:
                with anyio.CancelScope() as scope:
                    self._scopes[item.index] = scope
                    self._unsent.add(item.index)
                    await self._submit(item)
                if scope.cancelled_caught:
                    self._spent -= self.credits_per_video
                    self._settle(item, OutcomeStatus.SKIPPED, error=self._stop_reason)
            finally:
                self._scopes.pop(item.index, None)
                self._unsent.discard(item.index)
                self._submitting -= 1
                if not self._submitting:
                    self._quiet.set()
                    self._quiet = anyio.Event()
                slots.release_on_behalf_of(token)
                poller.wake()

        # While submissions are queued they get most of the budget: polls can wait a
        # little, and every submission out early shortens the batch's tail.
        poller.max_in_flight = max(2, self.concurrency // 5) if self._queue else 64

        async def feed(tg: TaskGroup) -> None:
            try:
                await fill(tg)
            finally:
                if not self._queue:
                    poller.max_in_flight = 64
                    poller.wake()

        async def fill(tg: TaskGroup) -> None:
            while self._queue and not stop() and not self._past_deadline():
                token = object()
                await slots.acquire_on_behalf_of(token)
                if stop() or not self._queue or self._past_deadline():
                    slots.release_on_behalf_of(token)
                    break
                self._submitting += 1
                tg.start_soon(submit, self._queue.popleft(), token)

        async with anyio.create_task_group() as tg:
            tg.start_soon(feed, tg)
            await poller.run(stop=stop, deadline=self._deadline, more_coming=self._more_coming)
        if self._past_deadline():
            self._expire()

    def _past_deadline(self) -> bool:
        return self._deadline is not None and anyio.current_time() >= self._deadline

    def _expire(self) -> None:
        assert self._poller is not None
        pending = self._poller.pending()
        for task_id, last in pending.items():
            item = self._by_task.pop(task_id)
            error = TaskTimeoutError(task_id, self.timeout or 0.0, last)
            self._settle(item, OutcomeStatus.TIMED_OUT, task_id=task_id, task=last, error=error)
        self._poller = Poller(
            get_task=self.client.get_task,
            budget=self.client.rate_limit_status,
            on_result=self._on_poll,
            prior=self.poll_interval or self.client._poll_interval,
        )
        while self._queue:
            item = self._queue.popleft()
            error = TaskTimeoutError("(not submitted)", self.timeout or 0.0, None)
            self._settle(item, OutcomeStatus.SKIPPED, error=error)

    async def _submit(self, item: _Item) -> None:
        assert item.request is not None
        assert self._poller is not None
        cost = self.credits_per_video
        if self.max_credits is not None and self._spent + cost > self.max_credits:
            error = BudgetExceededError(
                f"not submitted: it would take the batch's spend to {self._spent + cost} "
                f"credits, past max_credits={self.max_credits}"
            )
            self._settle(item, OutcomeStatus.SKIPPED, error=error)
            return
        self._spent += cost

        def before_send() -> None:
            if self._stopping or self._past_deadline():
                raise _NotSent
            self._unsent.discard(item.index)
            if self._journal is not None:
                self._journal.sending(item.index)

        def after_unsent() -> None:
            # A 429 or a connection never made: nothing is on the wire until the retry.
            if self._stopping or self._past_deadline():
                raise _NotSent
            self._unsent.add(item.index)
            if self._journal is not None:
                self._journal.unsent(item.index)

        since = anyio.current_time()
        try:
            task_id = await self.client.submit_request(
                item.request, before_send=before_send, after_unsent=after_unsent
            )
        except _NotSent:
            self._spent -= cost
            late = TaskTimeoutError("(not submitted)", self.timeout or 0.0, None)
            self._settle(
                item, OutcomeStatus.SKIPPED, error=self._stop_reason if self._stopping else late
            )
            return
        except SubmitUncertainError as exc:
            self._settle(item, OutcomeStatus.UNCERTAIN, error=exc)
            return
        except GrokImagineError as exc:
            if not (isinstance(exc, APIConnectionError) and exc.request_sent):
                self._spent -= cost
            self._settle(item, OutcomeStatus.ERROR, error=exc)
            if isinstance(exc, AuthenticationError):
                # Every other request would be refused the same way.
                self._stop(exc)
            return
        self._by_task[task_id] = item
        self._poller.add(task_id, since)
        if self._journal is not None:
            try:
                self._journal.submitted(item.index, task_id)
            except JournalError as exc:
                logger.error("%s: task %s is followed all the same", exc, task_id)

    # -- iterating --------------------------------------------------------------------------

    @property
    def unfinished(self) -> dict[str, Task | None]:
        """Tasks submitted and not yet settled, with the last state seen of each:
        what you would lose track of by stopping now without a journal."""
        return self._poller.pending() if self._poller is not None else {}

    def stop_submitting(self) -> None:
        """Send no more requests, as for a graceful Ctrl-C.

        Requests not yet sent settle as ``SKIPPED`` (a journal keeps them for a
        rerun); those already on the wire finish and their task ids are kept
        and recorded. Tasks already submitted are still followed: iterate on
        to see them settle, or leave now and let a rerun of the journal follow
        them. ``progress.submitting`` drops to 0 once no request is on the wire.
        """
        self._stop(_stopped())

    def _stop(self, reason: GrokImagineError) -> None:
        self._stopping = True
        self._stop_reason = reason
        for index in list(self._unsent):
            self._scopes[index].cancel()
        while self._queue:
            self._settle(self._queue.popleft(), OutcomeStatus.SKIPPED, error=reason)

    async def wait_submitted(self) -> None:
        """After :meth:`stop_submitting`: return once no request is on the wire,
        every task id that came back recorded. Bound it with a timeout of your own."""
        while self._submitting:
            await self._quiet.wait()

    @property
    def progress(self) -> PipelineProgress:
        """Counts of the batch's requests by stage, and the credits spent so far."""
        running = len(self._by_task)
        queued = len(self._queue)
        settled = self._total - queued - self._submitting - running
        return PipelineProgress(
            self._total, queued, self._submitting, running, settled, self._spent
        )

    def __aiter__(self) -> GenerationPipeline:
        return self

    async def __anext__(self) -> Outcome:
        if not self._started:
            await self._start()
        while not self._ready:
            if self._done() or self._finished:
                self._close()
                raise StopAsyncIteration
            if self._background is not None:
                self._arrived = anyio.Event()
                if not self._ready:
                    await self._arrived.wait()
            else:
                await self._run(stop=lambda: bool(self._ready))
        return self._ready.popleft()

    async def __aenter__(self) -> Self:
        await self._start()
        self._background = anyio.create_task_group()
        await self._background.__aenter__()
        self._background.start_soon(self._run_all)
        return self

    async def _run_all(self) -> None:
        try:
            while not self._done():
                await self._run(stop=lambda: False)
        finally:
            self._finished = True
            self._arrived.set()

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
            self._close()

    def _close(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None
