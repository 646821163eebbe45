"""How many requests are on the wire at once.

**Guarantee**: no more than :attr:`FlightGate.cap` requests on the wire
together; the rest wait here in order, interactive calls ahead of bulk work
(see ``_priority.py``). The server sees the same requests,
spread over the time they take to answer, rather than a window's whole budget
in one instant (every connection a pool holds costs CPU on every request).

**Rule**: the cap is the larger of two needs, never below :data:`MIN_ON_WIRE`:

* twice the plan's rate at the quickest round trip seen within the last
  period, for the slower kind of request (a busy event loop makes every
  answer late, but some still come back quickly: the cap does not feed on the
  client's own lag);
* a window's budget in :data:`WINDOW_ROUND_TRIPS` round trips, up to
  :data:`MAX_FOR_WINDOW`. A sliding window frees its budget a period after it
  was spent, so the time a budget takes to leave is paid again at the end of a
  batch: at twice the rate alone, Enterprise (5,000 a minute, 44 ms round trips)
  ended a 10,000-video batch 1.15 x its bound; in 64 round trips, 1.03 x. A
  count, not a time, so load cannot raise it.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable

import anyio

from ._priority import WaitQueue, current_priority, may_lead

__all__ = ["MAX_FOR_WINDOW", "MIN_ON_WIRE", "WINDOW_ROUND_TRIPS", "FlightGate"]

#: Requests on the wire at once, at the least: on loopback or a quick network a
#: handful carries any plan's rate.
MIN_ON_WIRE = 8
#: A window's budget leaves in about this many round trips (see the module doc).
WINDOW_ROUND_TRIPS = 64
#: The most requests at once that a window's budget asks for: the connections
#: the default pool keeps alive.
MAX_FOR_WINDOW = 64


class _WindowedMin:
    """The least value seen within the last ``horizon`` seconds (a monotonic deque)."""

    __slots__ = ("_values",)

    def __init__(self) -> None:
        self._values: deque[tuple[float, float]] = deque()

    def add(self, now: float, value: float) -> None:
        values = self._values
        while values and values[-1][1] >= value:
            values.pop()
        values.append((now, value))

    def least(self, now: float, horizon: float) -> float | None:
        values = self._values
        while len(values) > 1 and values[0][0] < now - horizon:
            values.popleft()
        return values[0][1] if values else None


class FlightGate:
    """Keeps the requests on the wire at once to what the rate needs (see the module doc).

    ``rate`` gives the plan's figures now, as ``(requests a second, period)``:
    they may change while the client runs (a plan proved bigger).
    """

    def __init__(self, rate: Callable[[], tuple[float, float]]) -> None:
        self._rate = rate
        self._quickest: dict[str, _WindowedMin] = {}
        self._on_wire = 0
        self._cap = MIN_ON_WIRE
        self._waiting: WaitQueue[anyio.Event] = WaitQueue()
        # The cap is worked out again at most every 1/32 of a period once a few
        # answers have set it: it is looked at on every request.
        self._answers = 0
        self._next_look = -math.inf

    @property
    def cap(self) -> int:
        """Requests that may be on the wire at once now."""
        return self._cap

    @property
    def on_wire(self) -> int:
        """Requests on the wire now."""
        return self._on_wire

    async def enter(self) -> None:
        """Wait for a place on the wire; the caller must :meth:`leave` once its
        request has ended (not if this raised: cancelled, it took no place)."""
        priority = current_priority()
        if self._on_wire < self._cap and not self._waiting:
            self._on_wire += 1
            self._waiting.note_grant(priority, anyio.current_time())
            return
        event = anyio.Event()
        self._waiting.append(event, priority)
        try:
            await event.wait()
        except BaseException:
            if event.is_set():
                # Handed a place in the instant it was cancelled: pass it on.
                self.leave()
            else:
                self._waiting.remove(event)
            raise

    def leave(self, kind: str | None = None, round_trip: float | None = None) -> None:
        """A request has left the wire; ``round_trip`` is how long its answer took
        (None when it did not come: that says nothing of the network)."""
        self._on_wire -= 1
        if kind is not None and round_trip is not None:
            self._measured(kind, round_trip)
        if not self._waiting:
            return
        now = anyio.current_time()
        per_second, period = self._rate()
        while self._waiting and self._on_wire < self._cap:
            self._on_wire += 1
            led = self._waiting.interactive_granted(now, period)
            self._waiting.popleft(may_lead(led, round(per_second * period)), now).set()

    def _measured(self, kind: str, round_trip: float) -> None:
        now = anyio.current_time()
        quickest = self._quickest.get(kind)
        if quickest is None:
            quickest = self._quickest[kind] = _WindowedMin()
        quickest.add(now, round_trip)
        self._answers += 1
        if self._answers > 32 and now < self._next_look:
            return
        per_second, period = self._rate()
        self._next_look = now + period / 32
        slowest = max(
            (q for q in (m.least(now, period) for m in self._quickest.values()) if q is not None),
            default=0.0,
        )
        steady = math.ceil(2 * per_second * slowest)
        window = min(MAX_FOR_WINDOW, math.ceil(per_second * period / WINDOW_ROUND_TRIPS))
        self._cap = max(MIN_ON_WIRE, steady, window)
