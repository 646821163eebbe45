"""The client: :class:`AsyncClient`, the typed API calls and the bulk calls' entry points.

The typed calls (``submit``, ``get_task``, ``wait``, ``generate``,
``download``) go over :mod:`._http` (the wire: sending, reading and retrying)
through the token's shared rate limiter. The bulk calls (``submit_many``,
``watch``, ``generate_many``) hand the client to the bulk layer, which uses
only those typed calls.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, overload

import anyio
import httpx
from pydantic import ValidationError
from typing_extensions import Self

from . import _telemetry as telemetry
from ._config import (
    CREDITS_PER_VIDEO,
    RateLimit,
    Tier,
    resolve_api_key,
    resolve_base_url,
    resolve_poll_interval,
    resolve_rate_limit,
    resolve_redis,
    resolve_tier,
)
from ._download import download_task
from ._exceptions import (
    NOT_FOUND_GRACE,
    ClientClosedError,
    ConfigurationError,
    GrokImagineError,
    MalformedResponseError,
    RequestValidationError,
    SubmitUncertainError,
    _excerpt,
)
from ._headers import DEFAULT_MAX_WAIT
from ._http import RequestKind, RetryPolicy, Uncertain, Wire
from ._limiter import (
    Limiter,
    RateLimitStatus,
    release_shared_limiter,
    shared_limiter,
    token_hash,
)
from ._models import GenerateRequest, Task, check_task_id
from ._outcomes import SubmitOutcome
from ._pipeline import GenerationPipeline, RequestLike, collect_requests, try_build
from ._poller import DurationModel
from ._priority import Priority, prioritised
from ._redis_limiter import DEFAULT_LEASE, RedisLimiter
from ._sliding_window import SlidingWindowLimiter
from ._version import __version__
from ._waits import Waits
from ._watch import TaskWatch

__all__ = ["DEFAULT_POOL", "DEFAULT_TIMEOUT", "AsyncClient"]

logger = logging.getLogger("grokimagine_async")

#: 30 s to read an answer, 10 s to connect; waiting for a pooled connection is
#: not limited, since the rate limiter already decides when a request goes.
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=10.0, pool=None)
#: The most connections the pool may open; requests on the wire at once are kept to
#: what the plan's rate needs (see ``_flight``), so far fewer are opened.
DEFAULT_POOL = httpx.Limits(max_connections=256, max_keepalive_connections=64, keepalive_expiry=4.0)
DEFAULT_WAIT_TIMEOUT = 600.0
#: The longest wait the client takes from the server's Retry-After or rate headers.
DEFAULT_MAX_RETRY_AFTER = DEFAULT_MAX_WAIT


def _longest_request(timeout: httpx.Timeout) -> float:
    """The longest one request can be in flight under ``timeout``: how long a shared
    limiter holds the slot of a request whose process died before its answer."""
    connect, write, read = timeout.connect, timeout.write, timeout.read
    if connect is None or write is None or read is None:
        return DEFAULT_LEASE
    # The pool's wait comes after the slot is taken; unbounded, the wire's cap on
    # requests at once keeps it short (see _flight), so it adds nothing here.
    return connect + write + read + (timeout.pool or 0.0)


def _is_seconds(value: object, *, zero_ok: bool = False) -> bool:
    """A finite number of seconds, above 0 (or 0 itself when ``zero_ok``); not a bool."""
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and (value >= 0 if zero_ok else value > 0)
        and value < math.inf
    )


def _check_setting(field: str, value: object, *, zero_ok: bool, example: str) -> None:
    """A client option in seconds; None (its default) passes."""
    if value is not None and not _is_seconds(value, zero_ok=zero_ok):
        least = ">= 0" if zero_ok else "above 0"
        raise ConfigurationError(f"{field} must be seconds {least}, got {value!r}; e.g. {example}")


def _check_positive(field: str, value: float | None, example: str) -> None:
    if value is not None and not _is_seconds(value):
        raise RequestValidationError(
            field, f"must be above 0, got {value!r}", f"Pass e.g. {example}"
        )


def _check_count(field: str, value: int | None, example: str, *, none_ok: bool = True) -> None:
    """A number of things at once: a whole number, at least 1 (None: the default, where
    ``none_ok``)."""
    if (value is not None or not none_ok) and (
        isinstance(value, bool) or not isinstance(value, int) or value < 1
    ):
        raise RequestValidationError(
            field, f"must be a whole number, at least 1, got {value!r}", f"Pass e.g. {example}"
        )


def _check_flag(field: str, value: object) -> None:
    """A yes/no option takes True or False: a string such as ``"no"`` would read as yes,
    and these say whether to pay twice."""
    if not isinstance(value, bool):
        raise RequestValidationError(
            field, f"must be True or False, got {value!r}", "Pass True or False"
        )


@overload
def _check_priority(priority: Priority | str) -> Priority: ...
@overload
def _check_priority(priority: None) -> None: ...


def _check_priority(priority: Priority | str | None) -> Priority | None:
    """The priority asked for (None: the one in force, left as it is)."""
    if priority is None:
        return None
    try:
        return Priority(priority)
    except ValueError:
        raise RequestValidationError(
            "priority",
            f"expected 'interactive' or 'bulk', got {priority!r}",
            "Pass Priority.INTERACTIVE or Priority.BULK",
        ) from None


def _check_wait(timeout: float | None, poll_interval: float | None) -> None:
    """The checks of :meth:`AsyncClient.wait`'s own options (made before a submission)."""
    if poll_interval is not None:
        _check_positive("poll_interval", poll_interval, "5")
    if timeout is not None:
        _check_positive("timeout", timeout, "600, or None")


class AsyncClient:
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
            and compressed-time tests; defaults to ``GROKIMAGINE_RATE_LIMIT``
            (``REQUESTS/PERIOD``, such as ``1000/60s``).
        redis_url: share the token's budget with every process that names the
            same Redis (``redis://host:6379/0``; ``rediss://`` with TLS;
            ``redis+cluster://`` and any node of a Redis Cluster), as a web app's workers and a
            batch job beside them do; defaults to ``GROKIMAGINE_REDIS_URL``,
            else the budget is this process's alone. Needs
            ``pip install 'grokimagine-async[redis]'`` and asyncio. See
            :class:`RedisLimiter`.
        redis_fallback: the share of the plan (0 to 1) this process keeps to
            on its own while that Redis is unreachable; defaults to
            ``GROKIMAGINE_REDIS_FALLBACK``, else None: requests then fail with
            :class:`RateLimiterUnavailableError`, unsent.
        timeout: seconds (or an ``httpx.Timeout``) for each request; by
            default 30 s to read and 10 s to connect, or your
            ``http_client``'s own timeout if you pass one.
        max_retries: retries after the first attempt of each request.
        backoff: seconds before the first retry; doubles each retry, up to 8 s,
            with jitter. A server's ``Retry-After`` overrides it.
        retry_uncertain_submits: also resend a submission that may already
            have created a paid task (off by default: see
            :class:`SubmitUncertainError`).
        rate_limit_patience: seconds one call waits out 429s (the server
            saying "slow down", not counting time queued behind other requests
            for a slot) before it raises :class:`RateLimitError`; by
            default three periods of the rate limit (3 minutes on the
            provider's plans). 429s do not use up ``max_retries``, and a
            ``generate_many`` batch never fails a request for one.
        poll_interval: the first guess of a generation's length in seconds,
            from which :meth:`wait` and the bulk calls time their polls until
            they have timed real generations; defaults to
            ``GROKIMAGINE_POLL_INTERVAL``, else 5.
        http_client: your own ``httpx.AsyncClient`` (proxies, transports,
            event hooks). The client never closes it, and never sets the token
            on it: the token goes only on requests to ``base_url``.
        limiter: a rate limiter of your own (one shared by many processes,
            say) in place of the process-wide one for this token; ``tier`` and
            ``rate_limit`` are then its business. See :class:`Limiter`.
        max_retry_after: the longest wait, in seconds, the client takes from the
            server (``Retry-After``, ``X-RateLimit-Reset``): a server that asks
            for longer fails the call at once with :class:`RateLimitError`
            rather than holding it, and no answer holds the rate limiter back
            longer than this. 120 by default.
        allow_insecure_http: allow a plain ``http://`` ``base_url`` to a host
            other than this machine, which sends the token in clear text; off by
            default, and ``GROKIMAGINE_ALLOW_INSECURE_HTTP=1`` turns it on.
            Loopback addresses (a local simulator) need no opt-in.
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
        key = resolve_api_key(api_key)
        self._base_url = resolve_base_url(base_url, allow_insecure_http=allow_insecure_http)
        if http_client is not None and not isinstance(http_client, httpx.AsyncClient):
            raise ConfigurationError(
                f"http_client must be an httpx.AsyncClient, got {type(http_client).__name__}: "
                "pass httpx.AsyncClient(...) (a synchronous httpx.Client cannot be awaited)"
            )
        if limiter is not None and not all(
            hasattr(limiter, name) for name in ("slot", "status", "rate")
        ):
            raise ConfigurationError(
                f"limiter must be a Limiter (such as RedisLimiter), got "
                f"{type(limiter).__name__}; for a budget of your own pass rate_limit=RateLimit(...)"
            )
        if not isinstance(retry_uncertain_submits, bool):
            raise ConfigurationError(
                f"retry_uncertain_submits must be True or False, got {retry_uncertain_submits!r}"
                " (True resends submissions that may have created a paid task)"
            )
        self._tier = resolve_tier(tier)
        rate_limit = resolve_rate_limit(rate_limit)
        self._redis_url, self._redis_fallback = resolve_redis(redis_url, redis_fallback)
        self._rate_limit = rate_limit or (self._tier or Tier.FREE).rate_limit
        # A plan nobody stated may turn out bigger: the headers can prove it.
        self._explicit_rate = rate_limit is not None or self._tier is not None
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ConfigurationError(
                f"max_retries must be a whole number >= 0, got {max_retries!r}"
            )
        _check_setting("backoff", backoff, zero_ok=True, example="0.5")
        _check_setting("rate_limit_patience", rate_limit_patience, zero_ok=True, example="180")
        if max_retry_after is None:
            raise ConfigurationError(
                f"max_retry_after must be seconds above 0, got None; leave it out for "
                f"{DEFAULT_MAX_RETRY_AFTER:g}"
            )
        _check_setting("max_retry_after", max_retry_after, zero_ok=False, example="120")
        self._poll_interval = resolve_poll_interval(poll_interval)
        # What generations take, learnt by every call that starts from the client's guess.
        self._durations = DurationModel(self._poll_interval)
        self._waits: Waits | None = None
        # Task ids this client created lately, by when (see submitted_at).
        self._recent: dict[str, float] = {}
        http_timeout: httpx.Timeout | httpx._client.UseClientDefault
        if isinstance(timeout, httpx.Timeout):
            http_timeout = timeout
        elif timeout is not None:
            _check_setting("timeout", timeout, zero_ok=False, example="30, or an httpx.Timeout")
            http_timeout = httpx.Timeout(timeout, pool=None)
        elif http_client is not None:
            http_timeout = httpx.USE_CLIENT_DEFAULT
        else:
            http_timeout = DEFAULT_TIMEOUT
        self._http_timeout = http_timeout
        self._owns_http = http_client is None
        self._http = http_client or httpx.AsyncClient(
            limits=DEFAULT_POOL, timeout=DEFAULT_TIMEOUT, follow_redirects=False
        )
        self._limiter: Limiter | None = limiter
        # Whether the limiter came from the per-loop registry (and goes back to it).
        self._shares_limiter = False
        self._limiter_key = key
        self._wire = Wire(
            http=self._http,
            base_url=self._base_url,
            api_key=key,
            timeout=http_timeout,
            retry=RetryPolicy(
                max_retries=max_retries,
                initial_backoff=backoff,
                max_backoff=max(8.0, backoff),
                max_retry_after=float(max_retry_after),
                retry_uncertain_submits=retry_uncertain_submits,
                rate_limit_patience=rate_limit_patience,
            ),
            limiter=self._get_limiter,
            user_agent=f"grokimagine-async/{__version__}",
        )
        self._closed = False

    @property
    def base_url(self) -> httpx.URL:
        """Where API requests go."""
        return self._base_url

    @property
    def rate_limit(self) -> RateLimit:
        """The budget the client keeps to now (an unstated plan may have moved up)."""
        if self._limiter is not None:
            return self._limiter.rate
        return self._rate_limit

    @property
    def poll_interval(self) -> float:
        """The first guess of how long a generation takes, before the client has
        timed any: :meth:`wait` and the bulk calls then poll by what they learn."""
        return self._poll_interval

    def _durations_for(self, poll_interval: float | None) -> DurationModel:
        # A call with a first guess of its own learns afresh.
        if poll_interval is None or poll_interval == self._poll_interval:
            return self._durations
        return DurationModel(poll_interval)

    def __repr__(self) -> str:
        tier = self._tier.value if self._tier else "unset"
        return (
            f"<{type(self).__name__} base_url={str(self._base_url)!r} tier={tier} api_key=<hidden>>"
        )

    def _get_limiter(self) -> Limiter:
        if self._closed:
            raise ClientClosedError(
                "this AsyncClient is closed; make a new one (or keep using it inside "
                "its 'async with' block)"
            )
        if self._limiter is None:
            rate = self._rate_limit
            upgrades = () if self._explicit_rate else tuple(t.rate_limit for t in Tier)
            base_url, key = str(self._base_url), self._limiter_key
            factory: Callable[[], Limiter]
            if self._redis_url is not None:
                redis_url, fallback = self._redis_url, self._redis_fallback
                lease = _longest_request(self._wire_timeout())
                factory = lambda: RedisLimiter(  # noqa: E731
                    redis_url,
                    rate,
                    key=token_hash(base_url, key),
                    fallback=fallback,
                    lease=lease,
                )
            else:
                factory = lambda: SlidingWindowLimiter(rate, upgrades=upgrades)  # noqa: E731
            self._limiter = shared_limiter(
                base_url,
                key,
                rate,
                explicit=self._explicit_rate,
                factory=factory,
                backend=self._redis_url,
            )
            self._shares_limiter = True
        return self._limiter

    def _wire_timeout(self) -> httpx.Timeout:
        timeout = self._http_timeout
        return timeout if isinstance(timeout, httpx.Timeout) else self._http.timeout

    def rate_limit_status(self) -> RateLimitStatus:
        """The token's budget as the client sees it: the limit, requests that
        may go now, seconds until the budget is whole again, and how many
        requests wait or are in flight (shared by every client of the token)."""
        if self._limiter is None:
            rate = self.rate_limit
            return RateLimitStatus(rate.requests, rate.period, rate.requests, 0.0, 0, 0)
        return self._limiter.status()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool (not an ``http_client`` you passed in)."""
        if not self._closed:
            self._closed = True
            if self._shares_limiter:
                self._shares_limiter = False
                await release_shared_limiter(str(self._base_url), self._limiter_key)
            if self._owns_http:
                await self._http.aclose()

    async def submit(
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
        """Start one video task (40 credits) and return its task id.

        Pass a :class:`GenerateRequest`, a mapping, or the fields as keywords.
        The request is checked before it is sent. ``priority``: single calls are
        :attr:`Priority.INTERACTIVE` (ahead of the bulk calls' requests on the
        token); pass ``"bulk"`` for one that can wait.

        Raises:
            RequestValidationError: the request is invalid; nothing was sent.
            SubmitUncertainError: the request may have reached the server and
                created a task whose id never came back.
            APIStatusError: the API refused it (no task was created).
        """
        req = GenerateRequest.build(request, prompt=prompt, mode=mode, ratio=ratio, images=images)
        return await self._submit(req, priority)

    async def _submit(
        self,
        request: GenerateRequest,
        priority: Priority | str | None,
        before_send: Callable[[], None] | None = None,
    ) -> str:
        with (
            prioritised(_check_priority(priority)),
            telemetry.operation("submit", prompt=request.prompt),
        ):
            return await self.submit_request(request, before_send=before_send)

    async def submit_request(
        self,
        request: GenerateRequest | Mapping[str, Any],
        *,
        before_send: Callable[[], None] | None = None,
        after_unsent: Callable[[], None] | None = None,
    ) -> str:
        """:meth:`submit` for a request that is already built.

        ``before_send`` runs each time the rate limiter lets the POST go, just
        before it leaves: a last chance to record that it may now create a
        task, or to stop it (whatever it raises stops it unsent).
        ``after_unsent`` runs when an attempt provably created nothing (a 429,
        a connection never made) and the POST will be tried again after a
        wait: the time to record that nothing is on the wire, or to stop.
        """
        request = GenerateRequest.build(request)
        try:
            data = await self._wire.request(
                "POST",
                "/v1/generate",
                kind=RequestKind.SUBMIT,
                json_body=request.to_payload(),
                before_send=before_send,
                after_unsent=after_unsent,
            )
        except Uncertain as uncertain:
            raise SubmitUncertainError(
                f"the submission may have created a task (and spent credits), but no task id "
                f"came back: {uncertain.cause}. It was not resent, to avoid paying twice; "
                "check your dashboard, or resend it yourself if the video is worth the risk",
                request=request,
                cause=uncertain.cause,
            ) from uncertain.cause
        task_id = data.get("task_id")
        if isinstance(task_id, int) and not isinstance(task_id, bool):
            task_id = str(task_id)
        if not isinstance(task_id, str) or not task_id:
            # A success without an id: a task may exist, so this is uncertain, not malformed.
            cause = MalformedResponseError(
                f"POST /v1/generate succeeded without a task_id: {_excerpt(repr(data))}",
                status_code=200,
                excerpt=_excerpt(repr(data)),
                method="POST",
            )
            raise SubmitUncertainError(
                "the API accepted the submission but sent no task id, so a paid task may exist "
                "that the client cannot follow. It was not resent, to avoid paying twice",
                request=request,
                cause=cause,
            ) from cause
        logger.debug("submitted task %s", task_id)
        telemetry.task_known(task_id)
        telemetry.spent(CREDITS_PER_VIDEO)
        self._remember(task_id)
        return task_id

    def _remember(self, task_id: str) -> None:
        """Note a task this client just created: a status call may not see it yet."""
        now = anyio.current_time()
        recent = self._recent
        recent[task_id] = now
        while recent:
            oldest = next(iter(recent))
            if now - recent[oldest] <= NOT_FOUND_GRACE:
                break
            del recent[oldest]

    def submitted_at(self, task_id: str) -> float | None:
        """When this client submitted ``task_id`` (``anyio.current_time()``), if it did
        within the last :data:`NOT_FOUND_GRACE` seconds: only such a task is given time
        to show up in status calls; a 404 for any other id is final at once."""
        return self._recent.get(task_id)

    async def get_task(self, task_id: str, *, priority: Priority | str | None = None) -> Task:
        """One status call: the task as the server sees it now (``priority``: as
        for :meth:`submit`)."""
        task_id = check_task_id(task_id)
        with (
            prioritised(_check_priority(priority)),
            telemetry.operation("get_task", task_id=task_id),
        ):
            data = await self._wire.request(
                "GET", "/v1/status", kind=RequestKind.READ, params={"task_id": task_id}
            )
        data.setdefault("task_id", task_id)
        try:
            return Task.model_validate(data)
        except (ValidationError, ValueError, TypeError, OverflowError) as exc:
            detail = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
            raise MalformedResponseError(
                f"GET /v1/status: the task does not have the documented shape: {detail}",
                status_code=200,
                excerpt=_excerpt(repr(data)),
                method="GET",
            ) from None

    async def wait(
        self,
        task_id: str,
        *,
        timeout: float | None = DEFAULT_WAIT_TIMEOUT,
        poll_interval: float | None = None,
        priority: Priority | str | None = None,
    ) -> Task:
        """Poll a task until it is completed and return it.

        Every wait of a client is polled by one scheduler, which times the
        polls from how long the client has seen generations take (before it has
        seen any, from ``poll_interval``, a first guess that a call may give
        for itself), so many callers waiting at once cost few requests. ``priority``:
        as for :meth:`submit`.
        Passing errors (connection trouble, 5xx, 429, a garbled answer, a
        404 in the first 30 seconds) don't end the wait: polling goes on
        until the deadline, which no poll overruns.

        Raises:
            TaskFailedError: the task failed; ``.task`` says why.
            TaskTimeoutError: not finished after ``timeout`` seconds; it carries
                the task id and the last state seen, and the task goes on.
            TaskPollError: polling failed for good (a revoked token, say);
                it carries the task id and the error.
        """
        task_id = check_task_id(task_id)
        _check_wait(timeout, poll_interval)
        priority = _check_priority(priority)
        durations = self._durations_for(poll_interval)
        if durations is not self._durations:
            waits = Waits(self, durations)
        else:
            if self._waits is None:
                self._waits = Waits(self, durations)
            waits = self._waits
        with prioritised(priority), telemetry.operation("wait", task_id=task_id):
            return await waits.wait(task_id, timeout)

    async def generate(
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

        A timeout raises :class:`TaskTimeoutError` with the task id, so the
        paid task is never lost.
        """
        # Checked before the paid submission: a wait that cannot start would lose its id.
        _check_wait(timeout, poll_interval)
        priority = _check_priority(priority)
        with telemetry.operation("generate", prompt=prompt):
            task_id = await self.submit(
                request, prompt=prompt, mode=mode, ratio=ratio, images=images, priority=priority
            )
            return await self.wait(
                task_id, timeout=timeout, poll_interval=poll_interval, priority=priority
            )

    async def download(
        self, task: Task | str, directory: str | Path, *, concurrency: int = 4
    ) -> list[Path]:
        """Stream a completed task's videos into ``directory``; returns the paths.

        ``task`` is a :class:`Task` or a task id (then looked up first). Files
        are named ``<task_id>_<n>.mp4`` and written whole or not at all (via a
        ``.part`` file); one already there is kept. Transient failures are
        retried, and so is an answer that is empty, is no video, is shorter
        than its length header, or is an MP4 cut short inside one of its boxes.
        The API token is never sent to the hosts that serve videos. An expired
        link (401, 403, 410, or a 404 that a second look still gets) raises
        :class:`VideoExpiredError`, which says how to get a fresh one.
        """
        _check_count("concurrency", concurrency, "4", none_ok=False)
        task_id = (
            task if isinstance(task, str) else task.task_id if isinstance(task, Task) else None
        )
        with telemetry.operation("download", task_id=task_id):
            if isinstance(task, str):
                task = await self.get_task(task)
            elif not isinstance(task, Task):
                raise RequestValidationError(
                    "task",
                    f"expected a Task or a task id, got {type(task).__name__}",
                    "Pass a Task or the id that submit() returned",
                )
            return await download_task(
                self._http,
                task,
                directory,
                concurrency=concurrency,
                retry=self._wire.retry,
            )

    def _default_concurrency(self) -> int:
        # Read again as the batch goes: an unstated plan proved bigger by the headers
        # needs more submissions in flight to spend it.
        return max(4, math.ceil(self.rate_limit.per_second * 0.5))

    async def submit_many(
        self,
        requests: Iterable[RequestLike] | AsyncIterable[RequestLike],
        *,
        concurrency: int | None = None,
        priority: Priority | str = Priority.BULK,
    ) -> list[SubmitOutcome]:
        """Submit every request through the shared limiter.

        Returns one outcome per request, in input order: its task id, or the
        error (validation, API error, or ``SubmitUncertainError``). One
        failure cancels nothing else. Accepts any iterable or async iterable
        of :class:`GenerateRequest` or plain dicts.

        ``concurrency`` caps submissions in flight at once (by default about
        half the plan's requests a second, at least 4); the rate limiter
        paces them whatever it is. Its requests are :attr:`Priority.BULK`: single
        calls on the token go first, and it keeps at least
        :data:`BULK_MIN_SHARE` of the plan.

        The outcomes come back together at the end: cancel this call (or let
        a timeout do it) and the ids of tasks already created are lost to you.
        For batches you may interrupt, use :meth:`generate_many` with a
        ``journal``.
        """
        _check_count("concurrency", concurrency, "16")
        priority = _check_priority(priority)
        items = await collect_requests(requests)
        limit = anyio.CapacityLimiter(concurrency or self._default_concurrency())
        follow = concurrency is None
        outcomes: list[SubmitOutcome | None] = [None] * len(items)

        async def one(index: int, request: GenerateRequest, token: object) -> None:
            try:
                task_id = await self.submit_request(request)
            except GrokImagineError as exc:
                outcomes[index] = SubmitOutcome(index, request, error=exc)
            else:
                outcomes[index] = SubmitOutcome(index, request, task_id=task_id)
            finally:
                limit.release_on_behalf_of(token)

        with prioritised(priority):
            async with anyio.create_task_group() as tg:
                for index, item in enumerate(items):
                    request = try_build(item)
                    if isinstance(request, RequestValidationError):
                        outcomes[index] = SubmitOutcome(index, None, error=request)
                        continue
                    # Taken here, in input order: an event loop may start new tasks in any order.
                    token = object()
                    if follow:
                        limit.total_tokens = self._default_concurrency()
                    await limit.acquire_on_behalf_of(token)
                    tg.start_soon(one, index, request, token)
        return [o for o in outcomes if o is not None]

    def watch(
        self,
        task_ids: Iterable[str] = (),
        *,
        timeout: float | None = None,
        poll_interval: float | None = None,
        priority: Priority | str = Priority.BULK,
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
        Its polls are :attr:`Priority.BULK` unless ``priority`` says otherwise.
        """
        _check_positive("timeout", timeout, "3600, or None")
        _check_positive("poll_interval", poll_interval, "5")
        if isinstance(task_ids, (str, bytes)):
            raise RequestValidationError(
                "task_ids",
                "expected many task ids, got one string",
                f"Pass a list: watch([{task_ids!r}])",
            )
        return TaskWatch(
            self,
            task_ids,
            timeout=timeout,
            poll_interval=poll_interval,
            priority=_check_priority(priority),
        )

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
        resubmit_failed: bool = False,
        poll_interval: float | None = None,
        priority: Priority | str = Priority.BULK,
    ) -> GenerationPipeline:
        """Submit and watch at once; yields an :class:`Outcome` per request as
        soon as it is settled.

        Use it as ``async with client.generate_many(...) as results: async for
        outcome in results:`` so that work goes on while your loop body runs,
        and leaving the block (``break``, an error) stops the work and lets
        go of the journal at once. A bare ``async for`` works too, but then
        submitting and polling pause while your loop body runs, and after a
        ``break`` the journal is let go only once nothing refers to the
        pipeline (or call :meth:`GenerationPipeline.aclose`).

        Args:
            journal: a file path: every request and task id is written before
                and after its POST, so running the same call again after a
                crash or Ctrl-C resumes: settled requests are yielded from the
                journal (``from_journal``), tasks in flight are watched again,
                and nothing that got a task id is submitted twice. One batch
                at a time holds a journal: a second, in this process or
                another, gets ``JournalError`` while the first is open.
            max_credits: stop submitting before the spend (``credits_per_video``
                a video, earlier runs of the journal included) would pass it;
                the rest settle as ``SKIPPED``.
            concurrency: submissions in flight at once.
            timeout: seconds for the whole batch; tasks unfinished then settle
                as ``TIMED_OUT`` (the journal still holds them: rerun to go on).
            resubmit_uncertain: on resume, resend a request whose POST was under
                way at the crash (it may have created a task: you may pay
                twice). Off, such a request settles as ``UNCERTAIN``.
            resubmit_failed: on resume, resend a request whose task failed in
                a way a new submission may cure (``Task.resubmit_may_succeed``:
                an upstream build failure, a passing network error). It costs
                another video's credits; the journal keeps the failed task's id.
            credits_per_video: what one submission costs, for ``max_credits``
                and ``progress.spent_credits``.
            poll_interval: the first guess of how long a generation takes,
                before any has been timed (see :meth:`watch`).
            priority: :attr:`Priority.BULK` by default: single calls on the
                token go ahead of the batch's requests, and the batch keeps at
                least :data:`BULK_MIN_SHARE` of the plan.

        To stop a batch gracefully (on a signal, at shutdown), call
        :meth:`GenerationPipeline.stop_submitting`, then
        :meth:`GenerationPipeline.wait_submitted`: nothing more is sent and no
        task id on the wire is lost.
        """
        _check_count("concurrency", concurrency, "16")
        _check_positive("timeout", timeout, "3600, or None")
        _check_positive("poll_interval", poll_interval, "5")
        for field, value in (
            ("max_credits", max_credits),
            ("credits_per_video", credits_per_video),
        ):
            if value is not None and (
                isinstance(value, bool)
                or not isinstance(value, int)
                or value < (0 if field == "max_credits" else 1)
            ):
                least = "0 or more" if field == "max_credits" else "at least 1"
                example = "4000" if field == "max_credits" else f"{CREDITS_PER_VIDEO}"
                raise RequestValidationError(
                    field,
                    f"must be a whole number of credits, {least}, got {value!r}",
                    f"Pass e.g. {example}",
                )
        _check_flag("resubmit_uncertain", resubmit_uncertain)
        _check_flag("resubmit_failed", resubmit_failed)
        return GenerationPipeline(
            self,
            requests,
            journal=journal,
            max_credits=max_credits,
            credits_per_video=credits_per_video,
            concurrency=concurrency or self._default_concurrency,
            timeout=timeout,
            resubmit_uncertain=resubmit_uncertain,
            resubmit_failed=resubmit_failed,
            poll_interval=poll_interval,
            priority=_check_priority(priority),
        )
