"""The blocking client: :class:`Client`, the calls of :class:`AsyncClient` for
code that runs no event loop of its own (scripts, notebooks, Django and Flask
views, threads).

Every blocking client of the process runs its calls on one event loop, in a
thread of its own that starts with the first client and stops when the last
is closed. So the rate limiter the async client shares per token is shared by
every blocking client and thread too: two threads with a client each on one
token keep to the plan together. A Jupyter kernel's own running loop is
never touched.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import threading
import weakref
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import AbstractContextManager
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import httpx
from anyio.from_thread import BlockingPortal, start_blocking_portal
from typing_extensions import Self

from ._client import DEFAULT_MAX_RETRY_AFTER, DEFAULT_WAIT_TIMEOUT, AsyncClient, _check_wait
from ._config import CREDITS_PER_VIDEO, RateLimit, Tier
from ._exceptions import ClientClosedError
from ._limiter import Limiter, RateLimitStatus
from ._models import GenerateRequest, Task
from ._outcomes import Outcome, PipelineProgress, SubmitOutcome
from ._pipeline import GenerationPipeline, RequestLike
from ._priority import Priority
from ._watch import TaskWatch

__all__ = ["BlockingGenerationPipeline", "BlockingTaskWatch", "Client"]

logger = logging.getLogger("grokimagine_async")

T = TypeVar("T")

#: Seconds a call cancelled by Ctrl-C gets to let go of what it holds (a slot, a
#: connection) before the interrupt reaches the caller.
CANCEL_GRACE = 5.0


class _Loop:
    """The process's one event loop for blocking clients, in a thread of its own."""

    _lock = threading.Lock()
    _portal: BlockingPortal | None = None
    _context: AbstractContextManager[BlockingPortal] | None = None
    _users = 0

    _exit_hook = False

    @classmethod
    def acquire(cls) -> BlockingPortal:
        with cls._lock:
            if cls._portal is None:
                # asyncio: the Redis limiter runs on asyncio only.
                context = start_blocking_portal("asyncio", name="grokimagine-loop")
                cls._portal = context.__enter__()
                cls._context = context
                if not cls._exit_hook:
                    # A client never closed must not keep the program from exiting:
                    # stopped before the interpreter waits for its threads.
                    threading._register_atexit(cls.stop)  # type: ignore[attr-defined]
                    cls._exit_hook = True
            cls._users += 1
            return cls._portal

    @classmethod
    def stop(cls) -> None:
        """Stop the loop whoever still uses it (at exit): their calls are cancelled."""
        with cls._lock:
            context, cls._context, cls._portal, cls._users = cls._context, None, None, 0
        if context is not None:
            context.__exit__(KeyboardInterrupt, KeyboardInterrupt(), None)

    @classmethod
    def release(cls) -> None:
        with cls._lock:
            if cls._context is None:  # stopped at exit already
                return
            cls._users -= 1
            if cls._users:
                return
            context, cls._context, cls._portal = cls._context, None, None
        # Anything still running is a call its caller left (a Ctrl-C as it was handed
        # over): cancelled, not waited for.
        context.__exit__(KeyboardInterrupt, KeyboardInterrupt(), None)


class _NotSent(Exception):
    """A submission stopped by Ctrl-C before it left."""


class _SendGuard:
    """Whether a submission has left, decided once against a Ctrl-C from another
    thread: interrupted first, it never leaves; sent first, it is left to answer."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sent = False
        self._interrupted = False

    def before_send(self) -> None:
        with self._lock:
            if self._interrupted:
                raise _NotSent
            self._sent = True

    def interrupt(self) -> bool:
        """Stop the submission if it has not left; whether it had."""
        with self._lock:
            self._interrupted = True
            return self._sent


def _run(
    portal: BlockingPortal,
    call: Callable[[], Awaitable[T]],
    *,
    finished: Callable[[T], None] | None = None,
    guard: _SendGuard | None = None,
) -> T:
    """Run ``call`` on the loop and block until it returns.

    A KeyboardInterrupt in the caller's thread cancels it, giving it
    :data:`CANCEL_GRACE` seconds to let go of what it holds. With ``finished``
    the call is first left to answer (cancelling it could lose a paid task's
    id) and its answer goes to ``finished``, unless ``guard`` says it has not
    left yet: then it is cancelled unsent. A second interrupt cancels it.
    """
    future: concurrent.futures.Future[T] | None = None
    try:
        future = portal.start_task_soon(call)
        return future.result()
    except KeyboardInterrupt:
        if future is None:
            # Interrupted while the call was handed over: it may be running with no
            # way to hear of it. Stopped unsent if it would send; the loop's stop ends it.
            if guard is not None:
                guard.interrupt()
            raise
        try:
            if finished is not None and (guard is None or guard.interrupt()):
                try:
                    answer = future.result()
                except _NotSent:
                    pass
                except Exception:
                    logger.debug("an interrupted call failed as it finished", exc_info=True)
                else:
                    finished(answer)
        finally:
            future.cancel()
            concurrent.futures.wait([future], timeout=CANCEL_GRACE)
        raise


class Client:
    """The blocking client: the calls of :class:`AsyncClient`, without ``await``.

    ::

        from grokimagine_async import Client

        with Client() as client:                 # token from GROKIMAGINE_API_KEY
            task = client.generate(prompt="a fox in the snow")
            print(task.videos)

            with client.generate_many(prompts, journal="batch.db") as results:
                for outcome in results:
                    print(outcome.status, outcome.videos)

    It takes the same arguments as :class:`AsyncClient`, raises the same
    errors, and keeps the same journal. Use it from any thread, and from many
    at once: every blocking client of the process shares one rate limiter per
    token (an :class:`AsyncClient` on an event loop of your own has its own).

    Ctrl-C during :meth:`submit` stops a request still waiting for its slot
    unsent; one on the wire answers first and its task id is logged, so no paid
    task is lost. During any other call it stops the call at once. During a
    :meth:`generate_many` iteration the first Ctrl-C sends nothing more and
    waits for the submissions on the wire (their task ids go to the journal),
    then raises :class:`KeyboardInterrupt`; a second stops at once. Rerun the
    batch with the same journal to go on.
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | httpx.URL | None = None,
        tier: Tier | str | None = None,
        rate_limit: RateLimit | None = None,
        timeout: float | httpx.Timeout | None = None,
        max_retries: int = 3,
        backoff: float = 0.5,
        retry_uncertain_submits: bool = False,
        rate_limit_patience: float | None = None,
        poll_interval: float | None = None,
        http_client: httpx.AsyncClient | None = None,
        limiter: Limiter | None = None,
        redis_url: str | None = None,
        redis_fallback: float | None = None,
        max_retry_after: float = DEFAULT_MAX_RETRY_AFTER,
        allow_insecure_http: bool | None = None,
    ) -> None:
        self._closed = True
        self._closing = threading.Lock()
        portal = _Loop.acquire()
        try:
            self._async = portal.call(
                lambda: AsyncClient(
                    api_key,
                    base_url=base_url,
                    tier=tier,
                    rate_limit=rate_limit,
                    timeout=timeout,
                    max_retries=max_retries,
                    backoff=backoff,
                    retry_uncertain_submits=retry_uncertain_submits,
                    rate_limit_patience=rate_limit_patience,
                    poll_interval=poll_interval,
                    http_client=http_client,
                    limiter=limiter,
                    redis_url=redis_url,
                    redis_fallback=redis_fallback,
                    max_retry_after=max_retry_after,
                    allow_insecure_http=allow_insecure_http,
                )
            )
        except BaseException:
            _Loop.release()
            raise
        self._portal = portal
        self._closed = False

    def __repr__(self) -> str:
        return repr(self._async).replace("<AsyncClient", f"<{type(self).__name__}", 1)

    def _loop(self) -> BlockingPortal:
        if self._closed:
            raise ClientClosedError(
                "this Client is closed; make a new one (or keep using it inside its 'with' block)"
            )
        return self._portal

    def _call(self, call: Callable[[], Awaitable[T]]) -> T:
        return _run(self._loop(), call)

    def close(self) -> None:
        """Close the connection pool (not an ``http_client`` you passed in). Safe
        to call more than once, from any thread."""
        with self._closing:
            if self._closed:
                return
            self._closed = True
        try:
            self._portal.call(self._async.aclose)
        finally:
            _Loop.release()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def base_url(self) -> httpx.URL:
        """The API's address."""
        return self._async.base_url

    @property
    def rate_limit(self) -> RateLimit:
        """The budget the client keeps to now (see :attr:`AsyncClient.rate_limit`)."""
        return self._async.rate_limit

    @property
    def poll_interval(self) -> float:
        """The first guess of how long a generation takes (see :class:`AsyncClient`)."""
        return self._async.poll_interval

    def rate_limit_status(self) -> RateLimitStatus:
        """The token's budget now (see :meth:`AsyncClient.rate_limit_status`)."""
        return self._loop().call(self._async.rate_limit_status)

    def submit(
        self,
        request: GenerateRequest | Mapping[str, Any] | None = None,
        /,
        *,
        prompt: str | None = None,
        mode: str | None = None,
        ratio: str | None = None,
        images: str | Sequence[str] | None = None,
        priority: Priority | str | None = None,
    ) -> str:
        """Start one video task (40 credits) and return its task id (see
        :meth:`AsyncClient.submit`). Ctrl-C before the request has left (it may be
        waiting for a slot) stops it unsent; once it is on the wire, the submission
        answers first and the id of the task it created is logged."""
        req = GenerateRequest.build(request, prompt=prompt, mode=mode, ratio=ratio, images=images)
        guard = _SendGuard()

        def created(task_id: str) -> None:
            logger.warning(
                "interrupted: the submission had created task %s (paid); "
                "client.wait(%r) follows it",
                task_id,
                task_id,
            )

        return _run(
            self._loop(),
            lambda: self._async._submit(req, priority, guard.before_send),
            finished=created,
            guard=guard,
        )

    def get_task(self, task_id: str, *, priority: Priority | str | None = None) -> Task:
        """One status call: the task as the server sees it now."""
        return self._call(lambda: self._async.get_task(task_id, priority=priority))

    def wait(
        self,
        task_id: str,
        *,
        timeout: float | None = DEFAULT_WAIT_TIMEOUT,
        poll_interval: float | None = None,
        priority: Priority | str | None = None,
    ) -> Task:
        """Poll a task until it is completed and return it (see :meth:`AsyncClient.wait`)."""
        return self._call(
            lambda: self._async.wait(
                task_id, timeout=timeout, poll_interval=poll_interval, priority=priority
            )
        )

    def generate(
        self,
        request: GenerateRequest | Mapping[str, Any] | None = None,
        /,
        *,
        prompt: str | None = None,
        mode: str | None = None,
        ratio: str | None = None,
        images: str | Sequence[str] | None = None,
        timeout: float | None = DEFAULT_WAIT_TIMEOUT,
        poll_interval: float | None = None,
        priority: Priority | str | None = None,
    ) -> Task:
        """Submit one video and wait for it: :meth:`submit` then :meth:`wait`.

        A timeout raises :class:`TaskTimeoutError` with the task id, and Ctrl-C
        during the wait logs it, so the paid task is never lost.
        """
        # Checked before the paid submission: a wait that cannot start would lose its id.
        _check_wait(timeout, poll_interval)
        task_id = self.submit(
            request, prompt=prompt, mode=mode, ratio=ratio, images=images, priority=priority
        )
        try:
            return self.wait(
                task_id, timeout=timeout, poll_interval=poll_interval, priority=priority
            )
        except KeyboardInterrupt:
            logger.warning(
                "interrupted while waiting for task %s (paid), which goes on; "
                "client.wait(%r) follows it",
                task_id,
                task_id,
            )
            raise

    def download(
        self, task: Task | str, directory: str | Path, *, concurrency: int = 4
    ) -> list[Path]:
        """Stream a completed task's videos into ``directory``; returns the paths
        (see :meth:`AsyncClient.download`)."""
        return self._call(lambda: self._async.download(task, directory, concurrency=concurrency))

    def submit_many(
        self,
        requests: Iterable[RequestLike],
        *,
        concurrency: int | None = None,
        priority: Priority | str = Priority.BULK,
    ) -> list[SubmitOutcome]:
        """Submit every request through the shared limiter; one outcome per
        request, in input order (see :meth:`AsyncClient.submit_many`)."""
        return self._call(
            lambda: self._async.submit_many(requests, concurrency=concurrency, priority=priority)
        )

    def watch(
        self,
        task_ids: Iterable[str] = (),
        *,
        timeout: float | None = None,
        poll_interval: float | None = None,
        priority: Priority | str = Priority.BULK,
    ) -> BlockingTaskWatch:
        """Follow tasks until each is completed or failed; an iterator (see
        :meth:`AsyncClient.watch`)."""
        portal = self._loop()
        watch = portal.call(
            lambda: self._async.watch(
                task_ids, timeout=timeout, poll_interval=poll_interval, priority=priority
            )
        )
        return BlockingTaskWatch(self, watch)

    def generate_many(
        self,
        requests: Iterable[RequestLike],
        *,
        journal: str | Path | None = None,
        max_credits: int | None = None,
        credits_per_video: int = CREDITS_PER_VIDEO,
        concurrency: int | None = None,
        timeout: float | None = None,
        resubmit_uncertain: bool = False,
        resubmit_failed: bool = False,
        poll_interval: float | None = None,
        priority: Priority | str = Priority.BULK,
    ) -> BlockingGenerationPipeline:
        """Submit and watch at once; yields an :class:`Outcome` per request as
        soon as it is settled (see :meth:`AsyncClient.generate_many`).

        Use it as ``with client.generate_many(...) as results: for outcome in
        results:`` so that work goes on while your loop body runs; a bare
        ``for`` works too, and then the work pauses while your body runs.
        """
        portal = self._loop()
        pipeline = portal.call(
            lambda: self._async.generate_many(
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
        )
        return BlockingGenerationPipeline(self, pipeline)


def _close_later(client: Client, inner: GenerationPipeline) -> None:
    if not client._closed:
        with contextlib.suppress(RuntimeError):  # the loop stopped meanwhile
            client._portal.start_task_soon(inner.aclose)


class BlockingTaskWatch:
    """Yields each watched task once, as it completes or fails (see :class:`TaskWatch`)."""

    def __init__(self, client: Client, inner: TaskWatch) -> None:
        self._client = client
        self._inner = inner

    @property
    def _portal(self) -> BlockingPortal:
        return self._client._loop()  # ClientClosedError once the client is closed

    def add(self, task_id: str) -> None:
        """Watch one more task (see :meth:`TaskWatch.add`)."""
        self._portal.call(self._inner.add, task_id)

    @property
    def unfinished(self) -> dict[str, Task | None]:
        """Ids not yet yielded, with the last state seen of each."""
        return self._portal.call(lambda: self._inner.unfinished)

    def __iter__(self) -> Iterator[Task]:
        return self

    def __next__(self) -> Task:
        task = _run(self._portal, lambda: _next_or_none(self._inner))
        if task is None:
            raise StopIteration
        return task


async def _next_or_none(iterator: AsyncIterator[T]) -> T | None:
    # A StopAsyncIteration cannot cross to the caller's thread: it is a signal, not an error.
    try:
        return await iterator.__anext__()
    except StopAsyncIteration:
        return None


class BlockingGenerationPipeline:
    """The outcomes of :meth:`Client.generate_many` (see :class:`GenerationPipeline`)."""

    def __init__(self, client: Client, inner: GenerationPipeline) -> None:
        self._client = client
        self._inner = inner
        self._context: AbstractContextManager[GenerationPipeline] | None = None
        # Dropped without close (a break out of a bare ``for``): the batch closes on the
        # loop's thread, which holds its journal, without blocking the one dropping it.
        self._finalizer = weakref.finalize(self, _close_later, client, inner)

    @property
    def _portal(self) -> BlockingPortal:
        return self._client._loop()  # ClientClosedError once the client is closed

    @property
    def progress(self) -> PipelineProgress:
        """Counts so far (see :attr:`GenerationPipeline.progress`)."""
        return self._portal.call(lambda: self._inner.progress)

    @property
    def unfinished(self) -> dict[str, Task | None]:
        """Tasks submitted and not yet settled, with the last state seen of each."""
        return self._portal.call(lambda: self._inner.unfinished)

    def stop_submitting(self) -> None:
        """Send no more requests (see :meth:`GenerationPipeline.stop_submitting`)."""
        self._portal.call(self._inner.stop_submitting)

    def wait_submitted(self) -> None:
        """After :meth:`stop_submitting`: return once no request is on the wire."""
        _run(self._portal, self._inner.wait_submitted)

    def close(self) -> None:
        """Stop the batch's work and let go of its journal now (see
        :meth:`GenerationPipeline.aclose`)."""
        self._finalizer.detach()
        if self._context is not None:
            context, self._context = self._context, None
            context.__exit__(None, None, None)
        _run(self._portal, self._inner.aclose)

    def __enter__(self) -> Self:
        context = self._portal.wrap_async_context_manager(self._inner)
        context.__enter__()
        self._context = context
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        context, self._context = self._context, None
        if context is not None:
            # An error of the caller's thread is the caller's: the batch only stops.
            context.__exit__(None, None, None)

    def __iter__(self) -> Iterator[Outcome]:
        return self

    def __next__(self) -> Outcome:
        future = self._portal.start_task_soon(_next_or_none, self._inner)
        try:
            outcome = future.result()
        except KeyboardInterrupt:
            self._stop_gracefully(future)
            raise
        if outcome is None:
            raise StopIteration
        return outcome

    def _stop_gracefully(self, pending: concurrent.futures.Future[Outcome | None]) -> None:
        """The first Ctrl-C: nothing more is sent, and the submissions on the wire
        answer (the call waiting for the next outcome drives them in a bare
        ``for``); a second Ctrl-C stops at once."""
        try:
            self.stop_submitting()
            self.wait_submitted()
        except KeyboardInterrupt:
            pass
        finally:
            pending.cancel()
            concurrent.futures.wait([pending], timeout=CANCEL_GRACE)
            if self._context is None:
                # A bare ``for``: nothing else lets go of the journal.
                self._finalizer.detach()
                _run(self._portal, self._inner.aclose)
