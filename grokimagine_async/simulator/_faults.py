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
        """Whether the server handles the request (creates the task) despite this fault."""
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


class FaultPlan:
    """Queued faults first (in order), then random ones by rate."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._queue: list[_Queued] = []
        self._rates: dict[tuple[Fault, FaultEndpoint], float] = {}

    def inject(self, fault: Fault, endpoint: FaultEndpoint, times: int) -> None:
        check_endpoint(endpoint)
        if times < 1:
            raise ValueError(f"times must be at least 1, got {times}")
        self._queue.append(_Queued(fault, endpoint, times))

    def set_rate(self, fault: Fault, rate: float, endpoint: FaultEndpoint) -> None:
        check_endpoint(endpoint)
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
            if queued.endpoint in (endpoint, "any"):
                queued.remaining -= 1
                if queued.remaining == 0:
                    self._queue.remove(queued)
                return queued.fault
        for (fault, where), rate in self._rates.items():
            if where in (endpoint, "any") and self._rng.random() < rate:
                return fault
        return None
