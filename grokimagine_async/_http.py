"""The wire: one place where requests are sent, read, classified and retried.

Every attempt first waits for a place on the wire (:mod:`._flight`: no more
requests at once than the rate needs, so a window that frees its whole budget
does not put hundreds on the wire in one instant), then for the token's rate
limiter, which so counts no request that waits for a place. What is retried
depends
on what a resend could cost:

* reads (``GET``) are retried on connection errors, timeouts, 408, 5xx and
  unreadable bodies, ``max_retries`` times;
* a 429 is the server saying "slow down", not "no": any request is sent again
  once the limiter lets it, for as long as the call's patience lasts (a few
  rate-limit periods by default), without using up ``max_retries``;
* a submission (``POST /v1/generate``) creates a paid task and the API has no
  idempotency key, so it is resent only when the task provably was not
  created: a 429, or a connection that was never made. Once an attempt may
  have reached the server, every way the call can end short of a task id is
  :class:`Uncertain`, which the client raises as ``SubmitUncertainError``,
  unless the caller allowed resending those.

Waits between attempts back off exponentially with jitter and honour
``Retry-After`` and ``X-RateLimit-Reset``, up to ``max_retry_after``: a server
that asks for longer gets the error raised at once.

The token never leaves in what the wire builds from an answer: a server (or a
proxy) that echoes it back in a body, a header or a broken answer's error has it
masked in the data handed on, in every message and excerpt, and in the
transport error kept as the cause.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import json
import logging
import random
import re
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import sniffio

from . import _telemetry as telemetry
from ._exceptions import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    Creation,
    MalformedResponseError,
    RateLimitError,
    _excerpt,
    creation,
    never_sent,
    status_error_class,
)
from ._flight import FlightGate
from ._headers import DEFAULT_MAX_WAIT, RateFeedback
from ._limiter import Limiter

__all__ = ["RequestKind", "RetryPolicy", "Uncertain", "Wire"]

logger = logging.getLogger("grokimagine_async")

TimeoutSetting = httpx.Timeout | httpx._client.UseClientDefault


class RequestKind(enum.Enum):
    """Whether resending a request is free (a read) or may cost (a submission)."""

    READ = "read"
    SUBMIT = "submit"


@dataclass(frozen=True)
class RetryPolicy:
    """How many times to retry, and how long to wait between attempts."""

    max_retries: int = 3
    #: First backoff in seconds; doubles each attempt, up to ``max_backoff``.
    initial_backoff: float = 0.5
    max_backoff: float = 8.0
    #: A server that asks for a longer wait than this is not waited for: the error is raised.
    max_retry_after: float = DEFAULT_MAX_WAIT
    #: Seconds one call waits out 429s before raising ``RateLimitError``; None means
    #: :data:`PATIENCE_PERIODS` periods of the token's rate limit. 429s don't use up
    #: ``max_retries``: the server said "slow down", not "no".
    rate_limit_patience: float | None = None
    #: Resend a submission even when it may already have created a paid task.
    retry_uncertain_submits: bool = False

    def backoff(self, attempt: int) -> float:
        """The wait before retry number ``attempt`` (1-based), with jitter."""
        base = min(self.max_backoff, self.initial_backoff * 2.0 ** (attempt - 1))
        return base * (0.75 + random.random() * 0.25)


_TOO_LONG = "the server asked for {:.3g}s, over max_retry_after"

#: How many rate-limit periods a call waits out 429s by default.
PATIENCE_PERIODS = 3.0

_RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_SALVAGE_TASK_ID = re.compile(r'"task_id"\s*:\s*"([^"\\]{1,200})"')


class Uncertain(Exception):
    """A submission ended without a task id after it may have reached the server."""

    def __init__(self, cause: APIError) -> None:
        super().__init__(str(cause))
        self.cause = cause


@dataclass
class _Failure(Exception):
    """One attempt that did not succeed, and whether another may."""

    error: APIError
    retryable: bool
    #: The server asked for at least this wait.
    wait_at_least: float | None = None
    #: Seconds the attempt waited for a slot behind other requests.
    queued: float = 0.0


@dataclass
class _Tries:
    """One call's attempts so far."""

    #: Failures that used up a retry (429s do not).
    failures: int = 0
    #: When the first 429 came, and the time since spent queued for a slot.
    refused_since: float | None = None
    queued: float = 0.0
    #: An attempt of this submission may have created a task.
    may_have_created: bool = False


class Wire:
    """Sends API requests through the limiter, with the retry rules above."""

    def __init__(
        self,
        *,
        http: httpx.AsyncClient,
        base_url: httpx.URL,
        api_key: str,
        timeout: TimeoutSetting,
        retry: RetryPolicy,
        limiter: Callable[[], Limiter],
        user_agent: str,
    ) -> None:
        self._http = http
        self._base_url = base_url
        self._timeout = timeout
        self.retry = retry
        self._limiter = limiter
        self._flight = FlightGate(self._rate)
        self._urls: dict[str, httpx.URL] = {}
        self._redact = _Redactor(api_key)
        self._request_headers = {
            "Authorization": f"Bearer {api_key}",
            "Accept": "application/json",
            "User-Agent": user_agent,
        }

    async def request(
        self,
        method: str,
        path: str,
        *,
        kind: RequestKind,
        params: Mapping[str, str] | None = None,
        json_body: Mapping[str, Any] | None = None,
        before_send: Callable[[], None] | None = None,
        after_unsent: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        """Send a request and return the answer's ``data`` object.

        Raises an :class:`APIError` subclass, or for ``RequestKind.SUBMIT``
        :class:`Uncertain` once an attempt may have created the task.
        ``before_send`` runs once the rate limiter lets an attempt go, just
        before it is sent; whatever it raises stops the request unsent.
        ``after_unsent`` runs when a submission's attempt provably created
        nothing (a 429, a connection never made) and another is to follow;
        whatever it raises stops the request there.
        """
        url = self._urls.get(path)
        if url is None:
            url = self._base_url.copy_with(path=self._base_url.path.rstrip("/") + path)
            self._urls[path] = url
        submit = kind is RequestKind.SUBMIT
        tries = _Tries()
        resends = 0
        while True:
            try:
                return await self._attempt(
                    method,
                    url,
                    kind,
                    params,
                    json_body,
                    before_send,
                    tries.refused_since is not None,
                    resends,
                )
            except _Failure as failure:
                outcome = failure
            if submit:
                created = creation(outcome.error)
                if created is Creation.REFUSED and not tries.may_have_created:
                    raise outcome.error  # the server's no: again would be no again
                tries.may_have_created |= created is Creation.MAYBE
            go, delay, reason = self._should_retry(outcome, tries)
            if not go:
                logger.debug("not retrying %s %s: %s", method, url.path, reason)
                # A later attempt's clean refusal does not undo an earlier one's doubt.
                if tries.may_have_created:
                    raise Uncertain(outcome.error) from outcome.error
                raise outcome.error
            if submit and not tries.may_have_created and after_unsent is not None:
                after_unsent()
            logger.info("retrying %s %s in %.2fs: %s", method, url.path, delay, reason)
            resends += 1
            await anyio.sleep(delay)

    def _should_retry(self, outcome: _Failure, tries: _Tries) -> tuple[bool, float, str]:
        """Whether to send the request again, after how long, and why (or why not):
        the one place that decides. A 429 is waited out against the call's patience
        (the server said "slow down", not "no"); other failures use up ``max_retries``;
        a submission that may have created a task goes again only if the caller said so;
        no wait is longer than ``max_retry_after``."""
        error, retry = outcome.error, self.retry
        if tries.may_have_created and not retry.retry_uncertain_submits:
            return False, 0.0, "it may have created a paid task (retry_uncertain_submits=False)"
        if isinstance(error, RateLimitError) and not tries.may_have_created:
            now = anyio.current_time()
            if tries.refused_since is None:
                tries.refused_since = now
            else:
                # Time queued for a slot behind other requests is the queue's, not the
                # server's: not held against the patience.
                tries.queued += outcome.queued
            # The limiter holds every request back while the server asks; this call's
            # own wait is only what the server said, or a short backoff.
            delay = outcome.wait_at_least or retry.backoff(1)
            waited = now - tries.refused_since - tries.queued
            if outcome.wait_at_least is not None and outcome.wait_at_least > retry.max_retry_after:
                return False, 0.0, _TOO_LONG.format(outcome.wait_at_least)
            patience = self._patience()
            if waited + delay > patience:
                return False, 0.0, f"429s for {waited:.3g}s, past the patience of {patience:.3g}s"
            return (
                True,
                delay,
                f"the server said slow down (waited {waited:.3g}s of {patience:.3g}s)",
            )
        # Once a submission may have created a task, the caller's say-so decides.
        if not (outcome.retryable or tries.may_have_created):
            return False, 0.0, f"{type(error).__name__} is not passing trouble"
        tries.failures += 1
        if tries.failures > retry.max_retries:
            return False, 0.0, f"{retry.max_retries} retries used"
        delay = retry.backoff(tries.failures)
        if outcome.wait_at_least is not None:
            if outcome.wait_at_least > retry.max_retry_after:
                return False, 0.0, _TOO_LONG.format(outcome.wait_at_least)
            delay = max(delay, outcome.wait_at_least)
        return True, delay, f"retry {tries.failures} of {retry.max_retries} after: {error}"

    def _rate(self) -> tuple[float, float]:
        rate = self._limiter().rate
        return rate.per_second, rate.period

    def _patience(self) -> float:
        patience = self.retry.rate_limit_patience
        if patience is None:
            patience = PATIENCE_PERIODS * self._limiter().rate.period
        return patience

    async def _attempt(
        self,
        method: str,
        url: httpx.URL,
        kind: RequestKind,
        params: Mapping[str, str] | None,
        json_body: Mapping[str, Any] | None,
        before_send: Callable[[], None] | None = None,
        retrying_429: bool = False,
        resends: int = 0,
    ) -> dict[str, Any]:
        request = self._http.build_request(
            method,
            url,
            params=params,
            json=json_body,
            headers=self._request_headers,
            timeout=self._timeout,
        )
        shown = str(request.url)
        limiter = self._limiter()
        # A retry after a 429 queued behind other requests waits for them, not for the
        # server: that wait is not held against the call's patience. First in line, it
        # waits out the limiter's 429 gate, which is.
        behind_others = retrying_429 and limiter.status().waiting > 0
        asked = anyio.current_time()
        await self._flight.enter()
        round_trip: float | None = None
        try:
            async with limiter.slot() as slot:
                queued = anyio.current_time() - asked if behind_others else 0.0
                if before_send is not None:
                    try:
                        before_send()
                    except BaseException:
                        slot.record(None, sent=False)
                        raise
                started = anyio.current_time()
                attempt = (
                    telemetry.Attempt(
                        method, request.url, kind.value, resends, started - asked, started
                    )
                    if telemetry.ENABLED
                    else None
                )
                try:
                    response = await _send(self._http, request)
                except httpx.HTTPError as exc:
                    error = _transport_error(exc, method, shown, self._redact)
                    if attempt is not None:
                        attempt.end(anyio.current_time(), None, type(error).__name__)
                    # Kept when the error is raised after the retries, as `raise ... from exc`.
                    error.__cause__ = self._redact.error(exc)
                    # A connection never made was never counted; anything else may have been.
                    slot.record(None, sent=not never_sent(error))
                    logger.debug("%s %s -> %s", method, shown, error)
                    raise _Failure(error, retryable=True, queued=queued) from exc
                except BaseException:
                    if attempt is not None:
                        attempt.end(anyio.current_time(), None, "cancelled")
                    raise
                round_trip = anyio.current_time() - started
                if attempt is not None:
                    attempt.end(started + round_trip, response.status_code)
                # The cap rides on the feedback: the limiter is shared by clients whose
                # caps may differ, and each answer's wait is judged by its own client's.
                feedback = RateFeedback.from_headers(
                    response.status_code,
                    response.headers,
                    time.time(),
                    max_wait=self.retry.max_retry_after,
                )
                slot.record(feedback)
                if attempt is not None:
                    telemetry.budget_seen(request.url.host, limiter.status)
        finally:
            self._flight.leave(kind.value, round_trip)
        elapsed_ms = (round_trip or 0.0) * 1000
        logger.debug("%s %s -> %d (%.0f ms)", method, shown, response.status_code, elapsed_ms)
        try:
            return _read_answer(response, method, shown, kind, feedback, self._redact)
        except _Failure as failure:
            failure.queued = queued
            raise


async def _send(http: httpx.AsyncClient, request: httpx.Request) -> httpx.Response:
    """``http.send(request)``, safe against asyncio's own ``Task.cancel()``.

    httpcore shields the closing of a connection from cancellation with an anyio
    cancel scope, which a native ``Task.cancel()`` (``asyncio.wait_for``, a
    ``TaskGroup``, a web server dropping a handler) goes straight through: a request
    cut off there stays in the pool's queue for good, and its connection with it
    (encode/httpcore#830, #1093). So on asyncio the request runs in a task of its
    own, and a cancellation of the caller reaches it as an anyio cancellation, which
    waits for the shielded close.
    """
    if sniffio.current_async_library() != "asyncio":
        return await http.send(request)
    scope = anyio.CancelScope()

    async def send() -> httpx.Response:
        with scope:
            return await http.send(request)
        raise _Cancelled  # the scope was cancelled: the caller raises its own

    task = asyncio.ensure_future(send())
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        scope.cancel()
        while not task.done():
            # A cancel scope of the caller's delivers its cancellation again: keep
            # waiting (asyncio.wait never cancels the request's task natively).
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([task])
        if not task.cancelled():
            task.exception()  # retrieved: it was the cancellation's doing
        raise


class _Cancelled(Exception):
    """The request's own task was cancelled on its caller's behalf."""


class _Redactor:
    """Masks the token wherever an answer, or a transport error, echoes it back."""

    __slots__ = ("__weakref__", "_mask", "_secret")

    def __init__(self, secret: str) -> None:
        self._secret = secret
        _watch_logs(self)
        # Of a character the token lacks: what is left around a mask cannot join up
        # with it to spell the token again.
        candidates = itertools.chain("*#~", map(chr, itertools.count(0x2500)))
        self._mask = next(c for c in candidates if c not in secret) * 8

    def text(self, text: str) -> str:
        """``text`` with the token masked."""
        if not self._secret or self._secret not in text:
            return text
        return text.replace(self._secret, self._mask)

    def may_hold(self, content: bytes) -> bool:
        """Whether ``content`` can hold the token, plainly or escaped in JSON:
        most answers cannot, and need no walk through their JSON."""
        # Any escape (\\/, \\u...) may spell the token in a way the bytes do not show.
        return bool(self._secret) and (self._secret.encode() in content or b"\\" in content)

    def body(self, response: httpx.Response) -> str:
        """The answer's body as text, for messages and excerpts."""
        return self.text(response.content.decode("utf-8", "replace"))

    def json(self, value: Any) -> Any:
        """Decoded JSON with the token masked in every string, keys too, in place.

        A loop, not recursion: JSON that ``json.loads`` took can be nested deeper
        than the stack has left.
        """
        if isinstance(value, str):
            return self.text(value)
        todo: list[dict[Any, Any] | list[Any]] = []
        if isinstance(value, (dict, list)):
            todo.append(value)
        while todo:
            node = todo.pop()
            if isinstance(node, list):
                for i, item in enumerate(node):
                    if isinstance(item, str):
                        node[i] = self.text(item)
                    elif isinstance(item, (dict, list)):
                        todo.append(item)
                continue
            for key in list(node):
                item = node[key]
                if isinstance(item, str):
                    item = node[key] = self.text(item)
                elif isinstance(item, (dict, list)):
                    todo.append(item)
                if isinstance(key, str) and self.text(key) != key:
                    del node[key]
                    node[self.text(key)] = item
        return value

    def error(self, exc: httpx.HTTPError) -> BaseException:
        """``exc``, or, when it or an error behind it echoes the token (a protocol
        error quoting the bad line, say), a copy of it without: it becomes the cause."""
        chain: list[BaseException] = []
        e: BaseException | None = exc
        while e is not None and e not in chain:
            chain.append(e)
            e = e.__cause__ or e.__context__
        if not self._secret or not any(self._secret in f"{e}{e!r}" for e in chain):
            return exc
        message = self.text(str(exc))
        try:
            copy: BaseException = type(exc)(message)
        except Exception:  # an httpx error that wants more than a message
            copy = httpx.TransportError(message)
        if self._secret in repr(copy):
            copy = httpx.TransportError(message)
        copy.__suppress_context__ = True
        return copy


#: The clients alive, whose tokens the log filter masks.
_LIVE: weakref.WeakSet[_Redactor] = weakref.WeakSet()
#: The loggers of the layers under the wire (httpcore's trace logs the headers and the
#: reason a server sent, which may echo the token), and ours. A filter on a logger
#: sees only the records logged on that logger, not its children's: each is named.
_LOGGERS = (
    "grokimagine_async",
    "httpx",
    "httpcore",
    "httpcore.connection",
    "httpcore.connection_pool",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
    "httpcore.socks",
)


class _MaskTokens(logging.Filter):
    """Masks every live client's token in a log record, whoever logged it."""

    def filter(self, record: logging.LogRecord) -> bool:
        redactors = list(_LIVE)
        if redactors:
            message = masked = record.getMessage()
            for redactor in redactors:
                masked = redactor.text(masked)
            if masked != message:
                record.msg, record.args = masked, None
        return True


_MASK = _MaskTokens()


def _watch_logs(redactor: _Redactor) -> None:
    if not _LIVE:
        for name in _LOGGERS:
            log = logging.getLogger(name)
            if _MASK not in log.filters:
                log.addFilter(_MASK)
    _LIVE.add(redactor)


def _transport_error(exc: httpx.HTTPError, method: str, url: str, redact: _Redactor) -> APIError:
    if isinstance(exc, httpx.DecodingError):
        # The answer arrived, but its body could not be decoded.
        return MalformedResponseError(
            f"{method} {url}: the answer's body could not be decoded: {redact.text(str(exc))}",
            status_code=0,
            excerpt="",
            method=method,
            url=url,
        )
    # Only these fail before a byte of the request left: the server cannot have seen it.
    unsent = isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))
    detail = redact.text(str(exc)) or type(exc).__name__
    cls = APITimeoutError if isinstance(exc, httpx.TimeoutException) else APIConnectionError
    what = "timed out" if cls is APITimeoutError else "failed"
    return cls(
        f"{method} {url} {what} ({type(exc).__name__}): {detail}",
        method=method,
        url=url,
        request_sent=not unsent,
    )


def _read_answer(
    response: httpx.Response,
    method: str,
    url: str,
    kind: RequestKind,
    feedback: RateFeedback,
    redact: _Redactor,
) -> dict[str, Any]:
    status = response.status_code
    # Masked before anything reads it: the data handed on (a task, its error message,
    # its videos) and every message below are then free of the token.
    body = _decode_json(response)
    if redact.may_hold(response.content):
        body = redact.json(body)
    fields: dict[str, Any] = body if isinstance(body, dict) else {}
    data = fields.get("data")
    # A task id that came back is kept whatever else the body says.
    if kind is RequestKind.SUBMIT and 200 <= status < 300 and _names_task(data):
        assert isinstance(data, dict)
        if _body_error_code(fields) is not None:
            logger.warning(
                "%s %s: the answer carries error code %s but also task %s; keeping it",
                method,
                url,
                fields.get("code"),
                data.get("task_id"),
            )
        return data
    if 300 <= status < 400:
        location = redact.text(response.headers.get("location", "?"))
        error = APIStatusError(
            f"{method} {url}: HTTP {status} redirect to {location}: point base_url at the "
            "final address (https://, no trailing path); nothing was created",
            status_code=status,
            excerpt=_excerpt(redact.body(response)),
            method=method,
            url=url,
        )
        raise _Failure(error, retryable=False)
    code = status if status >= 400 else _body_error_code(fields)
    if code is not None:
        raise _status_failure(response, fields, code, method, url, feedback, redact)
    if 200 <= status < 300 and isinstance(data, dict):
        return data
    if kind is RequestKind.SUBMIT and body is None:
        salvaged = _SALVAGE_TASK_ID.search(redact.text(response.text))
        if salvaged:
            logger.warning(
                "%s %s: the answer was cut short, but it names task %s; keeping it",
                method,
                url,
                salvaged.group(1),
            )
            return {"task_id": salvaged.group(1)}
    what = "not JSON" if body is None else "JSON without a 'data' object"
    text = redact.body(response)
    malformed = MalformedResponseError(
        f"{method} {url}: HTTP {status} answer is {what}: {_excerpt(text, 120)!r}",
        status_code=status,
        excerpt=_excerpt(text),
        method=method,
        url=url,
    )
    raise _Failure(malformed, retryable=kind is RequestKind.READ)


def _names_task(data: object) -> bool:
    if not isinstance(data, dict):
        return False
    task_id = data.get("task_id")
    return isinstance(task_id, (str, int)) and not isinstance(task_id, bool) and task_id != ""


def _decode_json(response: httpx.Response) -> Any:
    """The body as JSON, or None when it is empty, truncated, HTML or binary."""
    try:
        return json.loads(response.content)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None


def _as_code(value: object) -> int | None:
    """A body's ``code`` as a whole number: an int, or a string of digits."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        digits = value.strip()
        # ASCII digits, and few: str.isdigit() also passes '²' and '٣', and int() takes
        # no more than 4300 digits; either would make int() raise.
        if digits.isascii() and digits.isdigit() and len(digits) <= 9:
            return int(digits)
    return None


def _body_error_code(body: Mapping[str, Any]) -> int | None:
    """The body's ``code`` when it is an HTTP error status (400-599)."""
    code = _as_code(body.get("code"))
    if code is not None and 400 <= code <= 599:
        return code
    return None


def _status_failure(
    response: httpx.Response,
    fields: Mapping[str, Any],
    code: int,
    method: str,
    url: str,
    feedback: RateFeedback,
    redact: _Redactor,
) -> _Failure:
    api_message = fields.get("message") if isinstance(fields.get("message"), str) else None
    error_name = fields.get("error") if isinstance(fields.get("error"), str) else None
    body_code = _as_code(fields.get("code"))
    if api_message or error_name:
        said = f"{error_name + ': ' if error_name else ''}{api_message or ''}".rstrip(": ")
    else:
        text = redact.body(response)
        said = f"{_excerpt(text, 120)!r}" if response.content else "(empty body)"
    where = f"HTTP {response.status_code}" + (
        f" carrying code {code}" if code != response.status_code else ""
    )
    wait = feedback.retry_after
    if wait is None and code == 429:
        wait = feedback.reset_after
    error = status_error_class(code)(
        f"{method} {url}: {where}: {said}",
        status_code=code,
        http_status=response.status_code,
        code=body_code,
        error=error_name,
        api_message=api_message,
        retry_after=wait,
        excerpt="" if fields else _excerpt(redact.body(response)),
        method=method,
        url=url,
    )
    return _Failure(error, retryable=code in _RETRYABLE_STATUS or code >= 500, wait_at_least=wait)
