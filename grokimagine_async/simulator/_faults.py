"""Faults the simulator can be told to produce, queued or at random."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal, get_args

FaultKind = Literal[
    "html",
    "server_error",
    "error_in_200",
    "rate_limited",
    "truncated_json",
    "empty_body",
    "reset_before",
    "reset_after",
    "delay",
    "server_error_after",
    "status_backwards",
    "video_not_found",
]
"""What goes wrong; each kind has a :class:`Fault` class method of the same name."""

FaultEndpoint = Literal["generate", "status", "video", "any"]
"""Which requests a fault applies to; ``"any"`` means generate, status and video alike."""

_KINDS: tuple[str, ...] = get_args(FaultKind)
_ENDPOINTS: tuple[str, ...] = get_args(FaultEndpoint)

# Faults that answer instead of the server: the request never reaches the counting or
# the task store, so nothing is created and nothing is counted.
UNPROCESSED: frozenset[str] = frozenset(
    {"html", "server_error", "error_in_200", "rate_limited", "reset_before"}
)

# Kinds that mean nothing elsewhere: they are never drawn for another endpoint, so a
# rate set for "any" requests does not spend its draws where it cannot show.
ONLY_ON: dict[str, str] = {"status_backwards": "status", "video_not_found": "video"}


def applies_to(kind: str, endpoint: str) -> bool:
    """Whether a fault of ``kind`` can happen to a request to ``endpoint``."""
    only = ONLY_ON.get(kind)
    return only is None or endpoint in (only, "any")


@dataclass(frozen=True)
class Fault:
    """Something going wrong with one answer. Build one with the class methods.

    Faults that stop the request before the server handles it (no task is created, the
    rate limiter does not count it):

    * :meth:`html` - a proxy's HTML error page (502 by default).
    * :meth:`server_error` - HTTP 500 with the JSON error body (``SERVER_ERROR``).
    * :meth:`error_in_200` - HTTP 200 whose JSON body carries an error ``code``.
    * :meth:`rate_limited` - a 429 the limiter did not ask for, with the rate headers
      (``X-RateLimit-Remaining: 0``) and ``Retry-After``.
    * :meth:`reset_before` - the connection is closed without an answer.

    Faults where the server handles the request (a ``generate`` creates its task, the
    request is counted) and then the answer goes wrong:

    * :meth:`truncated_json` - the body is cut in half (the HTTP framing stays valid).
    * :meth:`empty_body` - the body is empty (``Content-Length: 0``).
    * :meth:`reset_after` - the connection is closed without an answer.
    * :meth:`delay` - the answer is held back ``seconds`` (a client that times out
      leaves a created task behind).
    * :meth:`server_error_after` - the answer is replaced by the HTTP 500 that
      :meth:`server_error` gives (``SERVER_ERROR``).

    Faults for one endpoint only, handled like the ones above (never drawn for another
    endpoint; injecting or setting a rate for another is a ``ValueError``):

    * :meth:`status_backwards` - ``status``: a task that has completed or failed is
      answered as still processing, for that one answer.
    * :meth:`video_not_found` - ``video``: a video that exists answers the CDN's 404
      (``NoSuchKey``), at most once per URL.

    A ``generate`` that created its task but whose answer lost the task id (through
    ``reset_after``, ``empty_body``, ``server_error_after``, a ``truncated_json`` whose
    half holds no id, or a ``delay`` its client hung up on) is counted in
    ``SimulatorStats.tasks_unreported``.

    With :meth:`Simulator.transport() <grokimagine_async.simulator.Simulator.transport>`
    and over real sockets alike, both resets reach an httpx client as
    ``httpx.RemoteProtocolError("Server disconnected without sending a response.")``.
    """

    kind: FaultKind
    #: HTTP status of an ``html`` page, or the body ``code`` of ``error_in_200``.
    status: int | None = None
    #: How long a ``delay`` holds the answer, or the ``Retry-After`` of ``rate_limited``.
    seconds: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"fault kind must be one of {_KINDS}, got {self.kind!r}")
        if self.status is not None and not 100 <= self.status <= 599:
            raise ValueError(f"fault status must be an HTTP status 100..599, got {self.status}")
        if self.seconds is not None and self.seconds < 0:
            raise ValueError(f"fault seconds must not be negative, got {self.seconds}")

    @property
    def processed(self) -> bool:
        """Whether the server handles the request (creates the task) despite this fault.

        True for the endpoint-only kinds as well: a status is looked up and counted, a
        video file looked up (downloads are never counted).
        """
        return self.kind not in UNPROCESSED

    @classmethod
    def html(cls, status: int = 502) -> Fault:
        """A proxy's HTML error page with HTTP ``status``; the request is not handled."""
        return cls("html", status=status)

    @classmethod
    def server_error(cls) -> Fault:
        """HTTP 500 ``{"code":500,...,"error":"SERVER_ERROR"}``; the request is not handled."""
        return cls("server_error")

    @classmethod
    def error_in_200(cls, code: int = 500) -> Fault:
        """HTTP 200 with error ``code`` inside the JSON body; the request is not handled."""
        return cls("error_in_200", status=code)

    @classmethod
    def rate_limited(cls, retry_after: float = 1.0) -> Fault:
        """A forced 429 saying to retry after ``retry_after`` s; the request is not handled."""
        return cls("rate_limited", seconds=retry_after)

    @classmethod
    def truncated_json(cls) -> Fault:
        """The request is handled; its answer's body is cut in half."""
        return cls("truncated_json")

    @classmethod
    def empty_body(cls) -> Fault:
        """The request is handled; its answer has an empty body."""
        return cls("empty_body")

    @classmethod
    def reset_before(cls) -> Fault:
        """The connection is dropped before the request is handled (nothing created)."""
        return cls("reset_before")

    @classmethod
    def reset_after(cls) -> Fault:
        """The request is handled (a task is created), then the connection is dropped."""
        return cls("reset_after")

    @classmethod
    def delay(cls, seconds: float) -> Fault:
        """The request is handled, then the answer waits ``seconds`` of real time."""
        return cls("delay", seconds=seconds)

    @classmethod
    def server_error_after(cls) -> Fault:
        """The request is handled (a task is created, the request counted), then 500'd.

        The answer, HTTP 500 ``{"code":500,...,"error":"SERVER_ERROR"}``, is the one
        :meth:`server_error` gives (so with ``errors_as_http_200`` it is an HTTP 200
        carrying code 500); the rate headers stay on it.
        """
        return cls("server_error_after")

    @classmethod
    def status_backwards(cls) -> Fault:
        """A status answer goes back in time: a completed or failed task is shown running.

        For that one answer the task has the status word of a running task, no
        ``response`` URLs, no ``error_message`` and its credits unrefunded; the next
        answer shows it as it is. The request is handled and counted. Drawn for a task
        that is still pending or running (or unknown), it changes nothing and is not
        counted in ``SimulatorStats.faults``. Only status requests draw it.
        """
        return cls("status_backwards")

    @classmethod
    def video_not_found(cls) -> Fault:
        """A video that exists answers the CDN's 404 (``NoSuchKey``) once.

        Each video URL 404s this way at most once (until a reset): drawn again for the
        same URL, the fault is used up but the file is served, so a client that retries
        once succeeds. Drawn for a URL that would not answer 200 anyway (not finished,
        expired, no such video), the real answer stands. Counted in
        ``SimulatorStats.faults`` only when it turned a 200 into the 404. Only video
        requests draw it.
        """
        return cls("video_not_found")


def as_fault(fault: Fault | FaultKind) -> Fault:
    """Accept a kind name wherever a :class:`Fault` with default parameters would do."""
    if isinstance(fault, Fault):
        return fault
    if fault == "delay":
        raise ValueError("a delay fault needs its length: use Fault.delay(seconds)")
    return Fault(fault)


def check_endpoint(endpoint: str) -> None:
    if endpoint not in _ENDPOINTS:
        raise ValueError(f"endpoint must be one of {_ENDPOINTS}, got {endpoint!r}")


@dataclass
class _Queued:
    fault: Fault
    endpoint: FaultEndpoint
    remaining: int


def check_applies(fault: Fault, endpoint: str) -> None:
    if not applies_to(fault.kind, endpoint):
        raise ValueError(
            f"a {fault.kind} fault happens only to {ONLY_ON[fault.kind]} requests, "
            f"not to {endpoint} requests"
        )


class FaultPlan:
    """Queued faults first (in order), then random ones by rate."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._queue: list[_Queued] = []
        self._rates: dict[tuple[Fault, FaultEndpoint], float] = {}

    def inject(self, fault: Fault, endpoint: FaultEndpoint, times: int) -> None:
        check_endpoint(endpoint)
        check_applies(fault, endpoint)
        if times < 1:
            raise ValueError(f"times must be at least 1, got {times}")
        self._queue.append(_Queued(fault, endpoint, times))

    def set_rate(self, fault: Fault, rate: float, endpoint: FaultEndpoint) -> None:
        check_endpoint(endpoint)
        check_applies(fault, endpoint)
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate must be within 0..1, got {rate}")
        if rate == 0.0:
            self._rates.pop((fault, endpoint), None)
        else:
            self._rates[(fault, endpoint)] = rate

    def clear(self) -> None:
        self._queue.clear()
        self._rates.clear()

    def pending(self) -> int:
        """How many queued fault applications are still to come."""
        return sum(q.remaining for q in self._queue)

    def pick(self, endpoint: str) -> Fault | None:
        """The fault for the next request to ``endpoint``, if any (consumes a queued one)."""
        for queued in self._queue:
            if queued.endpoint in (endpoint, "any") and applies_to(queued.fault.kind, endpoint):
                queued.remaining -= 1
                if queued.remaining == 0:
                    self._queue.remove(queued)
                return queued.fault
        for (fault, where), rate in self._rates.items():
            if (
                where in (endpoint, "any")
                and applies_to(fault.kind, endpoint)
                and self._rng.random() < rate
            ):
                return fault
        return None
