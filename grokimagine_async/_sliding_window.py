"""The in-process rate limiter: a sliding window that holds each request from
the moment it is sent until one period after its answer.

Algorithm
---------
A request takes a slot before it is sent and keeps it while it is in flight.
When its answer arrives at time ``a`` the slot stays taken until
``a + period``. At most ``limit`` slots exist.

The server counted the request at some instant ``s`` between sending and the
answer, which it does not tell. Whatever ``s`` was, the request's slot was
held over all of ``[s, s + period]``. Take any ``period``-long window on the
server's clock and the last request the server counted in it, at ``t``: every
request counted in the window was counted at most ``period`` before ``t``, so
each was holding its slot at ``t``. No more than ``limit`` slots are ever
held at once, so:

**Guarantee**: no window of ``period`` seconds, on the server's clock, holds
more than ``limit`` of this limiter's requests, whether the server counts in
fixed windows, sliding windows or a token bucket, and whatever the network's
latency. A sole user of a token therefore never sees a 429.

The price is one round trip per request per period: at 2 ms round trips a
60-second window is used to 99.99%, a 2-second test window to 99.9%. A fresh
limiter sends one request, and lets the rest of the budget go at once when
its answer has said whether someone else is spending the token too.

Corrections from the server
---------------------------
* ``X-RateLimit-Remaining``: the server's count in the window at the moment it
  counted this request was ``limit - remaining``. Our own requests sent before
  it account, as a rule, for part of that; the rest is someone else spending
  the same token. The median of the last few such estimates (a request that
  overtook another on the way skews one), plus a margin, is reserved: held
  for a period after the last answer that showed it, then fading over
  another. Corrections only ever tighten: nothing the server says lets the
  limiter send more than its plan.
* The freshest ``Remaining`` is also a cap: less the requests of ours sent
  after the one it answered, plus ours that have since left the window. It
  stops a burst into a window that someone else has nearly filled.
* A plan that is not known (``upgrades``) starts at the Free figures and
  moves up to the largest plan that the headers prove: a ``Remaining`` above
  what the current limit allows.
* A 429 that happens anyway closes the gate for every waiter until
  ``Retry-After`` (else ``X-RateLimit-Reset``, else a quarter period), and
  reserves what was left of the budget; that reservation fades over the
  following period, so the gate reopens at the plan's steady rate rather
  than to a burst.
"""

from __future__ import annotations

import bisect
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress

import anyio

from ._config import RateLimit
from ._headers import RateFeedback
from ._limiter import RateLimitStatus

__all__ = ["SlidingWindowLimiter", "WindowBudget"]


class WindowBudget:
    """The limiter's bookkeeping, without any waiting: every method takes ``now``.

    Kept apart from :class:`SlidingWindowLimiter` so that it can be driven by
    a simulated clock.
    """

    def __init__(
        self, rate: RateLimit, *, upgrades: Sequence[RateLimit] = (), initial_time: float = 0.0
    ) -> None:
        self.limit = rate.requests
        self.period = rate.period
        #: Larger plans the headers may prove (same period), smallest first.
        self._upgrades = sorted(
            (r for r in upgrades if r.requests > rate.requests), key=lambda r: r.requests
        )
        self.in_flight = 0
        # Answered requests as (when the slot frees, send order), in order.
        self._held: deque[tuple[float, int]] = deque()
        # Send order of every request of ours the server may still count: in flight or held.
        self._window: list[int] = []
        self._next_seq = 0
        # Someone else's share of the window: _reserved slots, fading linearly
        # to none between _fade_start and _fade_end.
        self._reserved = 0.0
        self._fade_start = initial_time
        self._fade_end = initial_time
        self._gate_until = -math.inf
        # The last few estimates of someone else's use, from Remaining.
        self._others: deque[int] = deque(maxlen=5)
        # How many answered requests have left the window so far.
        self._expired = 0
        # The freshest Remaining: (remaining, its request's ticket, _expired then, valid until).
        self._cap: tuple[int, int, int, float] | None = None
        # Until one answer has told us what the server sees, send one request at a
        # time: someone else may already be spending the token.
        self._probing = True

    # -- reading --------------------------------------------------------------------

    def _expire(self, now: float) -> None:
        held = self._held
        while held and held[0][0] <= now:
            _, seq = held.popleft()
            self._forget(seq)
            self._expired += 1

    def _forget(self, seq: int) -> None:
        i = bisect.bisect_left(self._window, seq)
        if i < len(self._window) and self._window[i] == seq:
            del self._window[i]

    def reserved(self, now: float) -> int:
        """Slots set aside for someone else's use of the token."""
        if self._reserved <= 0 or now >= self._fade_end:
            return 0
        if now <= self._fade_start:
            return math.ceil(self._reserved)
        left = (self._fade_end - now) / (self._fade_end - self._fade_start)
        return math.ceil(self._reserved * left - 1e-9)

    def used(self, now: float) -> int:
        """Slots taken now: in flight, answered within a period, and reserved."""
        self._expire(now)
        return self.in_flight + len(self._held) + self.reserved(now)

    def free(self, now: float) -> int:
        """Requests that may go right now."""
        if now < self._gate_until:
            return 0
        free = max(0, self.limit - self.used(now))
        if self._probing:
            return min(free, 1 - self.in_flight)
        return min(free, self._server_allows(now))

    def _server_allows(self, now: float) -> int:
        """What the freshest Remaining leaves: less ours sent since, plus ours gone."""
        if self._cap is None:
            return self.limit
        remaining, ticket, expired, until = self._cap
        if now >= until:
            self._cap = None
            return self.limit
        sent_since = self._next_seq - ticket - 1
        return max(0, remaining - sent_since + (self._expired - expired))

    def next_change(self, now: float) -> float | None:
        """The earliest time after ``now`` at which :meth:`free` may grow."""
        self._expire(now)
        times: list[float] = []
        if self._held:
            times.append(self._held[0][0])
        if now < self._gate_until:
            times.append(self._gate_until)
        if self._cap is not None:
            times.append(self._cap[3])
        n = self.reserved(now)
        if n > 0:
            if now < self._fade_start:
                times.append(self._fade_start)
            else:
                # ceil(reserved * left) drops to n - 1 once left <= (n - 1) / reserved.
                span = self._fade_end - self._fade_start
                times.append(self._fade_end - span * (n - 1) / self._reserved)
        later = [t for t in times if t > now]
        if later:
            return min(later)
        # Rounding can leave an event due now that frees nothing yet: look again shortly.
        return now + 1e-3 if times else None

    def resets_in(self, now: float) -> float:
        """Seconds until every slot is free again (ignoring requests in flight)."""
        self._expire(now)
        ends = [now]
        if self._held:
            ends.append(self._held[-1][0])
        if self.reserved(now):
            ends.append(self._fade_end)
        ends.append(self._gate_until)
        return max(ends) - now

    # -- changing -------------------------------------------------------------------

    def set_rate(self, rate: RateLimit) -> None:
        """New figures; slots already held keep their times."""
        self.limit = rate.requests
        self.period = rate.period
        self._upgrades = []

    def take(self, now: float) -> int | None:
        """Take a slot if one is free: its ticket (the send order), else None."""
        if self.free(now) <= 0:
            return None
        self.in_flight += 1
        seq = self._next_seq
        self._next_seq += 1
        self._window.append(seq)
        return seq

    def give_back(self, ticket: int) -> None:
        """Return a slot whose request was never sent."""
        self.in_flight -= 1
        self._forget(ticket)

    def answered(
        self, now: float, feedback: RateFeedback | None, ticket: int, sent_at: float
    ) -> None:
        """A request that was (or may have been) counted by the server has ended.

        ``feedback`` is what its answer said, None when no answer came;
        ``ticket`` is what :meth:`take` gave, ``sent_at`` when.
        """
        self.in_flight -= 1
        self._expire(now)
        self._held.append((now + self.period, ticket))
        if feedback is None:
            return
        self._probing = False
        if feedback.rate_limited:
            self._on_rate_limited(now, feedback)
        elif feedback.remaining is not None:
            self._upgrade(feedback.remaining, sent_at)
            self._on_remaining(now, feedback.remaining, ticket)
            if self._cap is None or ticket > self._cap[1]:
                self._cap = (feedback.remaining, ticket, self._expired, now + self.period)

    def _on_remaining(self, now: float, remaining: int, ticket: int) -> None:
        # Ours sent before this one were, as a rule, counted before it. A request
        # that overtook another on the way makes one estimate too high or too low,
        # so the median of the last few is taken.
        ours_before = bisect.bisect_left(self._window, ticket)
        self._others.append(self.limit - remaining - ours_before - 1)
        # Even if every request of ours the server may still count had been counted
        # before this one, what is left over is someone else's: proof that they exist.
        proven = self.limit - remaining - len(self._window)
        if proven <= 0:
            return
        others = max(proven, sorted(self._others)[(len(self._others) - 1) // 2])
        # Someone else's use wobbles from one request to the next, and the window is
        # run full: keep a margin over the estimate rather than collect 429s.
        others = min(self.limit, others + 1 + others // 10)
        # Renewed while the answers keep showing it. Held whole for a period: a fixed
        # window shows the full share only near its end, and the share starts again
        # in the next. Then it fades over another period, as a sliding window sheds it.
        if others >= self.reserved(now):
            self._reserve(now + self.period, now + 2 * self.period, others)

    def _on_rate_limited(self, now: float, feedback: RateFeedback) -> None:
        wait = feedback.retry_after
        if wait is None:
            wait = feedback.reset_after
        if wait is None:
            wait = self.period / 4
        self._gate_until = max(self._gate_until, now + min(wait, self.period * 2))
        # The server's window was full. When the gate opens, what our own slots don't
        # cover is not known to be free: let it out over a period, not in one burst.
        start = self._gate_until
        still_held = sum(1 for expiry, _ in self._held if expiry > start)
        unseen = self.limit - self.in_flight - still_held
        if unseen > 0 and unseen >= self.reserved(start):
            self._reserve(start, start + self.period, unseen)

    def _reserve(self, start: float, end: float, slots: float) -> None:
        self._reserved = float(slots)
        self._fade_start = start
        self._fade_end = max(end, start + 1e-6)

    def _upgrade(self, remaining: int, sent_at: float) -> None:
        if not self._upgrades:
            return
        # Ours answered before this request was sent were counted before it.
        before = sum(1 for expiry, _ in self._held if expiry < sent_at + self.period)
        proven = remaining + 1 + before
        best = None
        for plan in self._upgrades:
            if plan.requests <= proven:
                best = plan
        if best is not None:
            self.limit = best.requests
            self._upgrades = [p for p in self._upgrades if p.requests > best.requests]


class _Slot:
    __slots__ = ("_done", "_limiter", "sent_at", "ticket")

    def __init__(self, limiter: SlidingWindowLimiter, ticket: int, sent_at: float) -> None:
        self._limiter = limiter
        self.ticket = ticket
        self.sent_at = sent_at
        self._done = False

    def record(self, feedback: RateFeedback | None, *, sent: bool = True) -> None:
        if self._done:
            return
        self._done = True
        self._limiter._finish(self, feedback, sent)


class _Waiter:
    """One task waiting for a slot: granted a ticket, or nudged to look again."""

    __slots__ = ("event", "granted_at", "ticket")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.ticket: int | None = None
        self.granted_at = 0.0


class SlidingWindowLimiter:
    """Keeps one token's requests within ``rate`` in any window on the server's clock.

    Each request holds a slot from just before it is sent until one period
    after its answer, and there are ``rate.requests`` slots: so no window of
    ``rate.period`` seconds holds more than that many requests, however the
    server counts (the module doc has the proof, and what the server's headers
    change). Waiters are served first come, first served. Cancelling a waiter
    gives its place back and leaves nothing behind. Works under any event
    loop anyio runs on (asyncio, trio).

    Args:
        rate: the figures to keep to.
        upgrades: bigger plans (of the same period) that the server's
            ``X-RateLimit-Remaining`` may prove; the limiter moves up to the
            largest one proved. Empty: ``rate`` stays until :meth:`set_rate`.
        clock: monotonic seconds; ``time.monotonic`` by default.
    """

    def __init__(
        self,
        rate: RateLimit,
        *,
        upgrades: Sequence[RateLimit] = (),
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._clock = clock
        self._budget = WindowBudget(rate, upgrades=upgrades, initial_time=self._now())
        # The first waiter keeps the time: it sleeps until the budget's next change,
        # the others until they are granted a slot or become first.
        self._waiters: deque[_Waiter] = deque()

    def _now(self) -> float:
        return self._clock() if self._clock is not None else time.monotonic()

    @property
    def rate(self) -> RateLimit:
        """The figures in force now (an unknown plan may have been raised)."""
        return RateLimit(self._budget.limit, self._budget.period)

    def set_rate(self, rate: RateLimit) -> None:
        """Keep to ``rate`` from now on; plans are no longer guessed."""
        self._budget.set_rate(rate)
        self._wake()

    def status(self) -> RateLimitStatus:
        """The budget as the limiter sees it now."""
        now = self._now()
        budget = self._budget
        return RateLimitStatus(
            limit=budget.limit,
            period=budget.period,
            remaining=budget.free(now),
            resets_in=budget.resets_in(now),
            waiting=len(self._waiters),
            in_flight=budget.in_flight,
        )

    def slot(self) -> AbstractAsyncContextManager[_Slot]:
        """Wait for permission to send one request (see :meth:`Limiter.slot`)."""
        return self._slot()

    @asynccontextmanager
    async def _slot(self) -> AsyncIterator[_Slot]:
        slot = await self.acquire()
        try:
            yield slot
        finally:
            # No answer recorded: the server may still have counted it.
            slot.record(None)

    async def acquire(self) -> _Slot:
        """Wait for a slot. The caller must ``record`` on it exactly once."""
        now = self._now()
        if not self._waiters:
            ticket = self._budget.take(now)
            if ticket is not None:
                return _Slot(self, ticket, now)
        waiter = _Waiter()
        self._waiters.append(waiter)
        try:
            while waiter.ticket is None:
                self._grant()
                if waiter.ticket is not None:
                    break
                delay = math.inf
                if self._waiters[0] is waiter:
                    now = self._now()
                    when = self._budget.next_change(now)
                    if when is not None:
                        delay = max(0.0, when - now)
                waiter.event = anyio.Event()
                with anyio.move_on_after(delay):
                    await waiter.event.wait()
        except BaseException:
            # Cancelled: a slot granted in the same instant passes on; a place in the
            # queue is given up, and whoever is first now keeps the time.
            if waiter.ticket is not None:
                self._budget.give_back(waiter.ticket)
            else:
                with suppress(ValueError):
                    self._waiters.remove(waiter)
            self._wake()
            raise
        return _Slot(self, waiter.ticket, waiter.granted_at)

    def _finish(self, slot: _Slot, feedback: RateFeedback | None, sent: bool) -> None:
        if sent:
            self._budget.answered(self._now(), feedback, slot.ticket, slot.sent_at)
        else:
            self._budget.give_back(slot.ticket)
        self._wake()

    def _grant(self) -> None:
        now = self._now()
        granted = False
        while self._waiters:
            ticket = self._budget.take(now)
            if ticket is None:
                break
            waiter = self._waiters.popleft()
            waiter.ticket = ticket
            waiter.granted_at = now
            waiter.event.set()
            granted = True
        if granted and self._waiters:
            # A new first waiter: it keeps the time from now on.
            self._waiters[0].event.set()

    def _wake(self) -> None:
        """The budget changed: grant what it allows, and have the first waiter look again."""
        self._grant()
        if self._waiters:
            self._waiters[0].event.set()
