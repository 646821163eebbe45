"""Traces and metrics through OpenTelemetry, when its API is installed
(``pip install 'grokimagine-async[otel]'``); nothing to set up beyond your own
OpenTelemetry SDK. Without the API every hook here costs one test of a flag,
and with the API but no SDK set up one look at the API's global providers: no
span or measurement is built for the API to drop.

Traces:

* a span per API call (``submit``, ``get_task``, ``wait``, ``generate``,
  ``download``) and per row of a batch (``generate_many``), with
  ``gen_ai.operation.name``, ``gen_ai.provider.name`` (:data:`PROVIDER`), the
  task id and the credits spent; the prompt only if
  ``GROKIMAGINE_OTEL_CAPTURE_PROMPTS=1``;
* a CLIENT span per HTTP attempt, with the HTTP semantic conventions'
  attributes, the time it waited for the rate limiter as an event, and
  ``http.request.resend_count`` on a retry.

Metrics: ``http.client.request.duration``; ``grokimagine.rate_limiter.wait``;
``grokimagine.rate_limited`` (429s); ``grokimagine.requests`` (by kind);
``grokimagine.credits``; ``grokimagine.videos`` (settled, by outcome); and
``grokimagine.rate_limit.usage``, the share of the plan in use.

The token is never recorded: it is in no URL, and headers are not recorded.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import httpx

from ._version import __version__

if TYPE_CHECKING:
    from ._limiter import RateLimitStatus

try:
    from opentelemetry import metrics, trace
    from opentelemetry.trace import ProxyTracerProvider, SpanKind, StatusCode
except ImportError:  # the extra is not installed
    ENABLED = False
else:
    ENABLED = True
    # The API's stand-in until an SDK is set: every span and measurement is dropped.
    _UNSET_METERS: type[Any] = type(metrics.get_meter_provider())
    if _UNSET_METERS.__name__ != "_ProxyMeterProvider":  # set before this import
        _UNSET_METERS = type(None)

__all__ = ["ENABLED", "PROVIDER", "Attempt", "operation"]

#: ``gen_ai.provider.name`` on every span.
PROVIDER = "grok_imagine"
#: Set to ``1`` to record prompts on the spans (off: prompts may hold what users typed).
ENV_CAPTURE_PROMPTS = "GROKIMAGINE_OTEL_CAPTURE_PROMPTS"
_SCOPE = "grokimagine_async"


_tracer: Any = None
_instruments: dict[str, Any] = {}
# The share of the plan in use, by the API's host, as the event loop last saw it: the
# gauge's reader runs in a thread of its own and must not touch a limiter.
_usage_seen: dict[str, float] = {}


def _setup() -> None:
    global _tracer
    # Proxies until the application sets its providers, then the real ones.
    _tracer = trace.get_tracer(_SCOPE, __version__)
    meter = metrics.get_meter(_SCOPE, __version__)
    _instruments.update(
        duration=meter.create_histogram(
            "http.client.request.duration", unit="s", description="Duration of HTTP requests."
        ),
        wait=meter.create_histogram(
            "grokimagine.rate_limiter.wait",
            unit="s",
            description="Time a request waited for a place on the wire and the rate limiter.",
        ),
        rate_limited=meter.create_counter(
            "grokimagine.rate_limited", unit="{response}", description="429 answers."
        ),
        requests=meter.create_counter(
            "grokimagine.requests", unit="{request}", description="Requests sent, by kind."
        ),
        credits=meter.create_counter(
            "grokimagine.credits", unit="{credit}", description="Credits spent on submissions."
        ),
        videos=meter.create_counter(
            "grokimagine.videos", unit="{video}", description="Videos settled, by outcome."
        ),
    )
    meter.create_observable_gauge(
        "grokimagine.rate_limit.usage",
        callbacks=[_usage],
        unit="1",
        description="Share of the plan's window in use.",
    )


def _usage(options: Any) -> Iterable[Any]:
    for address, share in list(_usage_seen.items()):
        yield metrics.Observation(share, {"server.address": address})


if ENABLED:
    _setup()


def _tracing() -> bool:
    """Whether an SDK takes spans (the API alone drops them: building them is waste)."""
    return ENABLED and not isinstance(trace.get_tracer_provider(), ProxyTracerProvider)


def _metering() -> bool:
    """Whether an SDK takes measurements."""
    return ENABLED and not isinstance(metrics.get_meter_provider(), _UNSET_METERS)


def capture_prompts() -> bool:
    return os.environ.get(ENV_CAPTURE_PROMPTS, "").strip().lower() in ("1", "true", "yes")


def budget_seen(address: str, status: Callable[[], RateLimitStatus]) -> None:
    """After an answer, on the event loop: the share of the plan in use now, for the
    usage gauge (read only while an SDK takes measurements)."""
    if _metering():
        s = status()
        if s.limit:
            _usage_seen[address] = (s.limit - s.remaining) / s.limit


@contextmanager
def operation(
    name: str,
    *,
    task_id: str | None = None,
    prompt: str | None = None,
    credits: int | None = None,
) -> Iterator[Any]:
    """A span for one API call, current while the block runs (None without an SDK).
    An exception leaving the block marks it failed with the exception's class."""
    if not _tracing():
        yield None
        return
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": name,
        "gen_ai.provider.name": PROVIDER,
    }
    if task_id is not None:
        attributes["grokimagine.task.id"] = task_id
    if credits is not None:
        attributes["grokimagine.credits"] = credits
    if prompt is not None and capture_prompts():
        attributes["gen_ai.prompt"] = prompt
    with _tracer.start_as_current_span(
        f"grokimagine {name}",
        kind=SpanKind.INTERNAL,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            yield span
        except BaseException as exc:
            span.set_attribute("error.type", type(exc).__name__)
            span.set_status(StatusCode.ERROR, type(exc).__name__)
            raise


def start_row(prompt: str | None) -> Any:
    """A span for one row of a batch, from its submission to its outcome (None without
    an SDK); end it with :func:`end_row`."""
    if not _tracing():
        return None
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "generate",
        "gen_ai.provider.name": PROVIDER,
    }
    if prompt is not None and capture_prompts():
        attributes["gen_ai.prompt"] = prompt
    return _tracer.start_span(
        "grokimagine batch row", kind=SpanKind.INTERNAL, attributes=attributes
    )


def end_row(span: Any, outcome: str, task_id: str | None, credits: int) -> None:
    if span is None:
        return
    if task_id is not None:
        span.set_attribute("grokimagine.task.id", task_id)
    span.set_attribute("grokimagine.outcome", outcome)
    span.set_attribute("grokimagine.credits", credits)
    if outcome not in ("completed", "failed"):
        span.set_attribute("error.type", outcome)
        span.set_status(StatusCode.ERROR, outcome)
    span.end()


@contextmanager
def current(span: Any) -> Iterator[None]:
    """Make ``span`` the parent of what the block does (a batch row's submission)."""
    if span is None:
        yield
        return
    with trace.use_span(span, end_on_exit=False):
        yield


def spent(credits: int) -> None:
    if _metering():
        _instruments["credits"].add(credits)
    if _tracing():
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attribute("grokimagine.credits", credits)


def settled(outcome: str) -> None:
    if _metering():
        _instruments["videos"].add(1, {"grokimagine.outcome": outcome})


def task_known(task_id: str) -> None:
    """The task id of the call running now."""
    if _tracing():
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attribute("grokimagine.task.id", task_id)


class Attempt:
    """One HTTP attempt's span and duration (see the module doc)."""

    __slots__ = ("_attributes", "_metering", "_span", "_started")

    def __init__(
        self,
        method: str,
        url: httpx.URL,
        kind: str,
        resend_count: int,
        waited: float,
        started: float,
    ) -> None:
        self._started = started
        self._attributes: dict[str, Any] = {
            "http.request.method": method,
            "server.address": url.host,
            "server.port": url.port or (443 if url.scheme == "https" else 80),
        }
        self._span: Any = None
        if _tracing():
            attributes: dict[str, Any] = {**self._attributes, "url.full": str(url)}
            if resend_count:
                attributes["http.request.resend_count"] = resend_count
            span = self._span = _tracer.start_span(
                method, kind=SpanKind.CLIENT, attributes=attributes
            )
            span.add_event("grokimagine.rate_limiter.wait", {"grokimagine.wait": waited})
        self._metering = _metering()
        if self._metering:
            _instruments["wait"].record(waited, {"grokimagine.request.kind": kind})
            _instruments["requests"].add(1, {"grokimagine.request.kind": kind})

    def end(self, now: float, status_code: int | None, error: str | None = None) -> None:
        attributes = self._attributes
        span = self._span
        if status_code is not None:
            attributes["http.response.status_code"] = status_code
            if status_code == 429 and self._metering:
                _instruments["rate_limited"].add(1)
            if status_code >= 400 and error is None:
                error = str(status_code)
        if error is not None:
            attributes["error.type"] = error
        if self._metering:
            _instruments["duration"].record(now - self._started, attributes)
        if span is not None:
            if status_code is not None:
                span.set_attribute("http.response.status_code", status_code)
            if error is not None:
                span.set_attribute("error.type", error)
                span.set_status(StatusCode.ERROR)
            span.end()
