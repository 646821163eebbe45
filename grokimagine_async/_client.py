"""The asyncio client: typed calls over the wire."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any

import anyio
import httpx
from pydantic import ValidationError
from typing_extensions import Self

from ._config import RateLimit, Tier, resolve_api_key, resolve_base_url, resolve_tier
from ._exceptions import (
    APIConnectionError,
    APIError,
    ClientClosedError,
    ConfigurationError,
    MalformedResponseError,
    NotFoundError,
    RateLimitError,
    RequestValidationError,
    ServerError,
    SubmitUncertainError,
    TaskFailedError,
    TaskPollError,
    TaskTimeoutError,
    _excerpt,
)
from ._http import RequestKind, RetryPolicy, Uncertain, Wire
from ._limiter import SlidingWindowLimiter
from ._models import GenerateRequest, Task, TaskState
from ._ratelimit import Limiter, RateLimitStatus, shared_limiter
from ._version import __version__

__all__ = ["DEFAULT_TIMEOUT", "BaseClient"]

logger = logging.getLogger("grokimagine_async")

#: 30 s to read an answer, 10 s to connect; waiting for a pooled connection is
#: not limited, since the rate limiter already decides when a request goes.
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=10.0, pool=None)
#: Enough connections for a plan's worth of requests in flight at once.
DEFAULT_POOL = httpx.Limits(max_connections=256, max_keepalive_connections=64, keepalive_expiry=4.0)
DEFAULT_WAIT_TIMEOUT = 600.0
DEFAULT_POLL_INTERVAL = 5.0
#: A task just created may not be visible to status calls yet.
NOT_FOUND_GRACE = 30.0
#: Errors after which a later poll may well succeed.
TRANSIENT_POLL_ERRORS = (APIConnectionError, MalformedResponseError, ServerError, RateLimitError)


class BaseClient:
    """The typed API calls over the wire: submit, get_task, wait, generate.

    Use :class:`AsyncClient`, which adds the bulk calls; its documentation
    lists the arguments.
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
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        http_client: httpx.AsyncClient | None = None,
        limiter: Limiter | None = None,
    ) -> None:
        key = resolve_api_key(api_key)
        self._base_url = resolve_base_url(base_url)
        self._tier = resolve_tier(tier)
        if rate_limit is not None and not isinstance(rate_limit, RateLimit):
            raise ConfigurationError(
                "rate_limit must be a RateLimit, such as RateLimit(requests=100, period=60)"
            )
        self._rate_limit = rate_limit or (self._tier or Tier.FREE).rate_limit
        # A plan nobody stated may turn out bigger: the headers can prove it.
        self._explicit_rate = rate_limit is not None or self._tier is not None
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ConfigurationError(
                f"max_retries must be a whole number >= 0, got {max_retries!r}"
            )
        if not backoff >= 0:
            raise ConfigurationError(f"backoff must be seconds >= 0, got {backoff!r}")
        if not poll_interval > 0:
            raise ConfigurationError(
                f"poll_interval must be above 0 seconds, got {poll_interval!r}"
            )
        self._poll_interval = float(poll_interval)
        http_timeout: httpx.Timeout | httpx._client.UseClientDefault
        if isinstance(timeout, httpx.Timeout):
            http_timeout = timeout
        elif timeout is not None:
            http_timeout = httpx.Timeout(timeout, pool=None)
        elif http_client is not None:
            http_timeout = httpx.USE_CLIENT_DEFAULT
        else:
            http_timeout = DEFAULT_TIMEOUT
        self._owns_http = http_client is None
        self._http = http_client or httpx.AsyncClient(
            limits=DEFAULT_POOL, timeout=DEFAULT_TIMEOUT, follow_redirects=False
        )
        self._limiter: Limiter | None = limiter
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
                retry_uncertain_submits=retry_uncertain_submits,
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
            self._limiter = shared_limiter(
                str(self._base_url),
                self._limiter_key,
                rate,
                explicit=self._explicit_rate,
                factory=lambda: SlidingWindowLimiter(rate, upgrades=upgrades),
            )
        return self._limiter

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
    ) -> str:
        """Start one video task (40 credits) and return its task id.

        Pass a :class:`GenerateRequest`, a mapping, or the fields as keywords.
        The request is checked before it is sent.

        Raises:
            RequestValidationError: the request is invalid; nothing was sent.
            SubmitUncertainError: the request may have reached the server and
                created a task whose id never came back.
            APIStatusError: the API refused it (no task was created).
        """
        req = GenerateRequest.build(request, prompt=prompt, mode=mode, ratio=ratio, images=images)
        return await self.submit_request(req)

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
        return task_id

    async def get_task(self, task_id: str) -> Task:
        """One status call: the task as the server sees it now."""
        task_id = _check_task_id(task_id)
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
    ) -> Task:
        """Poll a task until it is completed and return it.

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
        task_id = _check_task_id(task_id)
        interval = self._poll_interval if poll_interval is None else poll_interval
        if not (isinstance(interval, (int, float)) and interval > 0):
            raise RequestValidationError(
                "poll_interval", f"must be above 0 seconds, got {poll_interval!r}", "Pass e.g. 5"
            )
        if timeout is not None and not timeout > 0:
            raise RequestValidationError(
                "timeout", f"must be above 0 seconds, got {timeout!r}", "Pass e.g. 600, or None"
            )
        started = anyio.current_time()
        deadline = None if timeout is None else started + timeout
        last: Task | None = None
        last_error: APIError | None = None
        delay = float(interval)
        while True:
            left = None if deadline is None else deadline - anyio.current_time()
            if left is not None and left <= 0:
                raise TaskTimeoutError(task_id, timeout or 0.0, last) from last_error
            with anyio.move_on_after(left) as scope:
                try:
                    last = await self.get_task(task_id)
                    last_error = None
                except TRANSIENT_POLL_ERRORS as exc:
                    last_error = exc
                except NotFoundError as exc:
                    if anyio.current_time() - started > NOT_FOUND_GRACE:
                        raise TaskPollError(task_id, exc, last) from exc
                    last_error = exc
                except APIError as exc:
                    raise TaskPollError(task_id, exc, last) from exc
            if scope.cancelled_caught:
                raise TaskTimeoutError(task_id, timeout or 0.0, last) from last_error
            if last is not None and last_error is None:
                if last.state is TaskState.COMPLETED:
                    return last
                if last.state is TaskState.FAILED:
                    raise TaskFailedError(last)
            elif last_error is not None:
                logger.info("polling task %s: %s; still waiting", task_id, last_error)
            sleep_for = delay
            if deadline is not None:
                sleep_for = max(0.0, min(delay, deadline - anyio.current_time()))
            await anyio.sleep(sleep_for)
            # Long generations need fewer polls; the cap keeps a finished video from waiting long.
            delay = min(interval * 3, delay * 1.25)

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
    ) -> Task:
        """Submit one video and wait for it: :meth:`submit` then :meth:`wait`.

        A timeout raises :class:`TaskTimeoutError` with the task id, so the
        paid task is never lost.
        """
        task_id = await self.submit(request, prompt=prompt, mode=mode, ratio=ratio, images=images)
        return await self.wait(task_id, timeout=timeout, poll_interval=poll_interval)


def _check_task_id(task_id: object) -> str:
    if not isinstance(task_id, str) or not task_id.strip():
        raise RequestValidationError(
            "task_id",
            f"must be a non-empty string, got {task_id!r}",
            "Pass the id that submit() returned, such as 'task_123456789'.",
        )
    return task_id.strip()
