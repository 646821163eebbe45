"""The in-process rate limiter: a sliding window that holds each request's slot
from the moment it is sent until one period after its response.

**Guarantee**: no window of ``period`` seconds, on the server's clock, holds more
than ``limit`` of this limiter's requests, whether the server counts in fixed
windows, sliding windows or a token bucket, and whatever the network's latency.
A sole user of a token therefore never sees a 429.

**Rule**: at most ``limit`` slots are taken at once; a request takes one before it
is sent, and its slot frees one period after its response arrives.

Why it holds: the server counted the request at some instant ``s`` between
sending and the response, which it does not tell; whatever ``s`` was, the
slot was held over all of ``[s, s + period]``. In any ``period``-long window
on the server's clock, every request counted in it was counted at most
``period`` before the last one, at ``t``, so each held its slot at ``t``; and
no more than ``limit`` are held at once.

The price is a round trip a period (``benchmarks/rate_limit.py`` measures what
that leaves of the plan). The other constraints only hold requests back, never
let more through (``_constraints.py``, and ``_rules.py`` for what the responses
teach: a 429 gate, pacing, someone else's share, the freshest ``Remaining`` as
a cap). Two are this process's alone:

* a **slow start** while the server says nothing of its count: one request
  until a response comes, then one more unanswered for each response that is
  not a 429;
* **requests in flight** kept to what the plan's rate needs at the measured
  round trips (at least ``POLICY.flight_least``, a hung one not counting)
  while someone else spends the token, the server counts finely, or says
  nothing of its count: a full window is learnt of with few of ours on the way.

A plan that is not known (``upgrades``) starts at the Free figures and moves up
to the largest plan that a ``Remaining`` proves.
"""

from __future__ import annotations

import bisect
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence

import anyio

from . import _rules as rules
from ._config import RateLimit
from ._constraints import Cap, evaluate
from ._headers import RateFeedback, readable
from ._limiter import RateLimitStatus, RecordedOnce, SlotContext
from ._policy import POLICY
from ._priority import (
    KEEP_WITHIN,
    Priority,
    WaitQueue,
    current_priority,
    may_lead,
    reserve,
)

__all__ = ["SlidingWindowLimiter", "WindowBudget"]

logger = logging.getLogger("grokimagine_async")


class WindowBudget:
    """The limiter's bookkeeping, without any waiting: every method takes ``now``,
    so that it can be driven by a simulated clock."""

    def __init__(
        self, rate: RateLimit, *, upgrades: Sequence[RateLimit] = (), initial_time: float = 0.0
    ) -> None:
        self._rate = rate
        #: Larger plans the headers may prove (same period), smallest first.
        self._upgrades = sorted(
            (r for r in upgrades if r.requests > rate.requests), key=lambda r: r.requests
        )
        self.in_flight = 0
        # Answered requests as (when the slot frees, send order), in order.
        self._held: deque[tuple[float, int]] = deque()
        # Send order of every request of ours the server may still count.
        self._window: list[int] = []
        # When slots of ours left the window lately, in order.
        self._aged: deque[float] = deque()
        # Those held whose response was a 429.
        self._refusals: set[int] = set()
        self._next_seq = 0
        # The plan was guessed (no tier or rate stated): the server's word may set it.
        self._guessed = bool(upgrades)
        self.learned = rules.initial(rate, initial_time)
        self._cap: Cap | None = None
        self._tat = initial_time
        # The last estimates of someone else's use (see rules.told).
        self._samples: deque[int] = deque(maxlen=POLICY.others_samples)
        # The slow start: unanswered requests allowed (None: over).
        self._ramp: int | None = 1
        # Whether the server has said how much is left (X-RateLimit-Remaining).
        self._told = False
        # Round trips of the last responses, and when each request in flight was sent.
        self._rtts: deque[float] = deque(maxlen=32)
        self._sent: dict[int, float] = {}
        # Requests in flight the rate needs, and how long one may be out before it
        # stops counting (a hung connection); refreshed with each response.
        self._flight_cap: int | None = None
        self._stale = math.inf
        self._pacing_shown: tuple[float, int] | None = None
        self._now = initial_time

    @property
    def limit(self) -> int:
        return self._rate.requests

    @property
    def period(self) -> float:
        return self._rate.period

    # -- reading --------------------------------------------------------------------

    def _expire(self, now: float) -> None:
        self._now = max(self._now, now)
        held, aged = self._held, self._aged
        while held and held[0][0] <= now:
            expiry, seq = held.popleft()
            self._forget(seq)
            self._refusals.discard(seq)
            aged.append(expiry)
        while aged and aged[0] < now - self.period:
            aged.popleft()

    def _forget(self, seq: int) -> None:
        i = bisect.bisect_left(self._window, seq)
        if i < len(self._window) and self._window[i] == seq:
            del self._window[i]

    def reserved(self, now: float) -> int:
        """Slots set aside for someone else's use of the token."""
        return self.learned.reservation.at(now)

    def used(self, now: float) -> int:
        """Slots taken now: in flight, answered within a period, and reserved."""
        self._expire(now)
        return self.in_flight + len(self._held) + self.reserved(now)

    def _evaluate(self, now: float) -> tuple[int, list[float]]:
        self._expire(now)
        return evaluate(
            self.learned,
            self._cap,
            now,
            held=self.in_flight + len(self._held),
            next_seq=self._next_seq,
            tat=self._tat,
            limit=self.limit,
            period=self.period,
        )

    def free(self, now: float, keep: int = 0) -> int:
        """Requests that may go right now, leaving ``keep`` of the window's slots free
        or freeing within :data:`KEEP_WITHIN` of a period (see ``_priority.py``)."""
        free, _ = self._evaluate(now)
        if keep > 0:
            # A slot about to free stands in for a kept one only while the window's
            # slots are what limits grants (not pacing, a gate or a cap).
            unbound = self.limit - self.in_flight - len(self._held) - self.reserved(now)
            freeing = self._freeing(now) if free >= unbound else 0
            free -= max(0, keep - freeing)
        self._show_pacing(now)
        if self._ramp is not None:
            free = min(free, self._ramp - self.in_flight)
        if self._capping_flight(now):
            assert self._flight_cap is not None
            young = sum(1 for sent in self._sent.values() if now - sent < self._stale)
            free = min(free, self._flight_cap - young)
        return max(0, free)

    def _freeing(self, now: float) -> int:
        """Held slots that free within :data:`KEEP_WITHIN` of a period."""
        soon = now + KEEP_WITHIN * self.period
        count = 0
        for expiry, _ in self._held:
            if expiry > soon:
                break
            count += 1
        return count

    def _server_allows(self, now: float) -> int:
        """What the freshest ``Remaining`` allows now."""
        if self._cap is None:
            return self.limit
        return self._cap.allows(now, self._next_seq, self.reserved(now), self.limit, self.period)

    def _capping_flight(self, now: float) -> bool:
        """Whether requests in flight are kept to what the rate needs (see the module
        doc). Alone with a server that says what is left, a burst is safe."""
        return self._flight_cap is not None and (
            self._pacing(now) is not None or not self._told or self.reserved(now) > 0
        )

    def _measured(self, rtt: float) -> None:
        self._rtts.append(rtt)
        rtts = sorted(self._rtts)
        median = rtts[len(rtts) // 2]
        needed = math.ceil(POLICY.flight_factor * self.limit / self.period * rtts[0])
        self._flight_cap = max(POLICY.flight_least, needed)
        self._stale = max(POLICY.stale_round_trips * median, POLICY.stale_least_share * self.period)

    def next_change(self, now: float, keep: int = 0) -> float | None:
        """The earliest time after ``now`` at which :meth:`free` (leaving ``keep``) may
        grow."""
        _, times = self._evaluate(now)
        if self._held:
            times.append(self._held[0][0])
        if keep > 0:
            # The next slot to come within reach of a kept one's wait stands in for it.
            within = KEEP_WITHIN * self.period
            reach = next((e for e, _ in self._held if e > now + within), None)
            if reach is not None:
                times.append(reach - within)
        if self._sent and self._capping_flight(now):
            # The next request in flight to go stale frees a place; one stale already
            # frees no more (left in, every look would come back "due now").
            stale = [t for sent in self._sent.values() if (t := sent + self._stale) > now]
            if stale:
                times.append(min(stale))
        later = [t for t in times if t > now]
        if later:
            return min(later)
        # Rounding can leave an event due now that frees nothing yet: look again shortly.
        return now + 1e-3 if times else None

    def resets_in(self, now: float) -> float:
        """Seconds until every slot is free again (ignoring requests in flight)."""
        self._expire(now)
        ends = [now, self.learned.gate]
        if self._held:
            ends.append(self._held[-1][0])
        if self.reserved(now):
            ends.append(self.learned.reservation.end)
        return max(ends) - now

    @property
    def pace(self) -> float | None:
        """Requests a second sends are spaced to, if the server counts finely (else None)."""
        step = self._pacing(self._now)
        return step[0] if step else None

    @property
    def burst(self) -> int | None:
        """Requests that may go at once while pacing (None while not pacing)."""
        step = self._pacing(self._now)
        return step[1] if step else None

    def _pacing(self, now: float) -> tuple[float, int] | None:
        if self.learned.pacing is None:
            return None
        _, pace, burst = self.learned.pacing.now(now)
        return (pace, burst) if pace > 0 else None

    def _show_pacing(self, now: float) -> None:
        pacing = self.learned.pacing
        step, shown = 0, None
        if pacing is not None:
            step, pace, burst = pacing.now(now)
            shown = (pace, burst) if pace > 0 else None
        # Said when a step of relaxing comes in (a tightening says so itself).
        if shown != self._pacing_shown and step > 0:
            if shown is None:
                logger.info("no 429 for a while: the plan's whole budget may go at once again")
            else:
                logger.info(
                    "no 429 for a while: pacing relaxed to %.3g requests/s, %d at once", *shown
                )
        self._pacing_shown = shown

    # -- changing -------------------------------------------------------------------

    def set_rate(self, rate: RateLimit, now: float = 0.0) -> None:
        """New figures; slots already held keep their times."""
        stated = rate.burst if rate.burst is not None else self._rate.burst
        if stated is not None:
            stated = min(stated, rate.requests)
        self._rate = RateLimit(rate.requests, rate.period, stated)
        self._upgrades = []
        self._guessed = False
        rules.replanned(self.learned, now, self._rate)

    def take(self, now: float, keep: int = 0) -> int | None:
        """Take a slot if one is free beyond ``keep``: its ticket (the send order), else None."""
        if self.free(now, keep) <= 0:
            return None
        self.in_flight += 1
        paced = self._pacing(now)
        if paced is not None:
            self._tat = max(self._tat, self.learned.gate, now) + 1 / paced[0]
        seq = self._next_seq
        self._next_seq += 1
        self._sent[seq] = now
        self._window.append(seq)
        return seq

    def give_back(self, ticket: int) -> None:
        """Return a slot whose request was never sent."""
        self.in_flight -= 1
        self._sent.pop(ticket, None)
        self._forget(ticket)

    def answered(
        self, now: float, feedback: RateFeedback | None, ticket: int, sent_at: float
    ) -> None:
        """A request that was (or may have been) counted by the server has ended.

        ``feedback`` is what its response said, None when no response came;
        ``ticket`` is what :meth:`take` gave, ``sent_at`` when.
        """
        self.in_flight -= 1
        self._sent.pop(ticket, None)
        if feedback is not None and feedback.policy is not None and self._guessed:
            # An unstated plan, and the server names its window (RateLimit-Policy).
            requests, period = feedback.policy
            logger.info("the server states its window: %d requests per %gs", requests, period)
            self.set_rate(RateLimit(requests, period), now)
        self._expire(now)
        self._held.append((now + self.period, ticket))
        if feedback is None:
            return
        self._measured(max(0.0, now - sent_at))
        remaining, reset_after = readable(feedback)
        if feedback.rate_limited:
            self._refusals.add(ticket)
            self._ramp = None
            rules.refused(
                self.learned,
                self._window_at(now, ticket, sent_at),
                now,
                sent_at,
                feedback,
                self._rate,
            )
            return
        rules.answered(self.learned, sent_at)
        if remaining is None:
            # No word on the server's count: the slow start goes on.
            if self._ramp is not None:
                self._ramp = self._ramp + 1 if self._ramp + 1 < self.limit else None
            return
        # The server says how much is left: that caps every burst from now on.
        self._ramp = None
        self._told = True
        self._upgrade(remaining, sent_at, now)
        estimate = rules.told(
            self.learned,
            self._window_at(now, ticket, sent_at),
            now,
            remaining,
            reset_after,
            self._samples,
            self.limit,
            self.period,
        )
        if estimate is not None:
            self._samples.append(estimate)
        if self._cap is None or ticket > self._cap.seq:
            self._cap = rules.cap_from(
                remaining,
                ticket,
                now,
                reset_after,
                feedback.max_wait,
                self.limit,
                self.period,
                out=max(0.0, now - sent_at),
            )

    def _window_at(self, now: float, ticket: int, sent_at: float) -> rules.Window:
        ours = sum(1 for expiry, seq in self._held if expiry > now and seq not in self._refusals)
        aged = 0
        for expiry in reversed(self._aged):
            if expiry <= sent_at:
                break
            aged += 1
        return rules.Window(
            held=len(self._window),
            in_flight=self.in_flight,
            ours=ours,
            before=bisect.bisect_left(self._window, ticket),
            aged=aged,
        )

    def _upgrade(self, remaining: int, sent_at: float, now: float) -> None:
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
            upgrades = [p for p in self._upgrades if p.requests > best.requests]
            self.set_rate(best, now)
            self._upgrades = upgrades


class _Slot(RecordedOnce):
    __slots__ = ("_limiter", "sent_at", "ticket")

    def __init__(self, limiter: SlidingWindowLimiter, ticket: int, sent_at: float) -> None:
        super().__init__()
        self._limiter = limiter
        self.ticket = ticket
        self.sent_at = sent_at

    def _ended(self, feedback: RateFeedback | None, sent: bool) -> None:
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
    change). Waiters are served first come, first served, interactive calls
    ahead of bulk work (see ``_priority.py``). Cancelling a waiter
    gives its place back and leaves nothing behind. Works under any event
    loop anyio runs on (asyncio, trio).

    Args:
        rate: the figures to keep to.
        upgrades: bigger plans (of the same period) that the server's
            ``X-RateLimit-Remaining`` may prove; the limiter moves up to the
            largest one proved. Empty: ``rate`` stays until :meth:`set_rate`.
        clock: monotonic seconds; by default the running event loop's clock
            (``anyio.current_time``), so that a loop on a virtual clock (trio's
            ``MockClock``) runs the limiter on it too.
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
        self._waiters: WaitQueue[_Waiter] = WaitQueue()

    def _now(self) -> float:
        if self._clock is not None:
            return self._clock()
        try:
            return anyio.current_time()
        except RuntimeError:
            # No event loop (a status() read from plain code): asyncio's loop keeps
            # this clock, the only one a limiter may meet outside its loop.
            return time.monotonic()

    @property
    def rate(self) -> RateLimit:
        """The figures in force now (an unknown plan may have been raised)."""
        return RateLimit(self._budget.limit, self._budget.period)

    def set_rate(self, rate: RateLimit) -> None:
        """Keep to ``rate`` from now on; plans are no longer guessed."""
        self._budget.set_rate(rate, self._now())
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
            pace=budget.pace,
            burst=budget.burst,
        )

    def slot(self) -> SlotContext[_Slot]:
        """Wait for permission to send one request (see :meth:`Limiter.slot`)."""
        return SlotContext(self.acquire)

    async def acquire(self) -> _Slot:
        """Wait for a slot. The caller must ``record`` on it exactly once."""
        now = self._now()
        priority = current_priority()
        if not self._waiters:
            ticket = self._budget.take(now, self._keep(priority, self._led(now)))
            if ticket is not None:
                self._waiters.note_grant(priority, now)
                return _Slot(self, ticket, now)
        waiter = _Waiter()
        self._waiters.append(waiter, priority)
        try:
            while waiter.ticket is None:
                self._grant()
                if waiter.ticket is not None:
                    break
                delay = math.inf
                now = self._now()
                if self._head(now) is waiter:
                    led = self._led(now)
                    lead = may_lead(led, self._budget.limit)
                    keep = self._keep(self._waiters.head_priority(lead), led)
                    when = self._budget.next_change(now, keep)
                    if keep:
                        # Fewer are kept once the oldest interactive grant ages.
                        aging = self._waiters.next_aging(self._budget.period)
                        if aging is not None and (when is None or aging < when):
                            when = aging
                    if when is not None:
                        delay = max(0.0, when - now)
                waiter.event = anyio.Event()
                with anyio.move_on_after(delay):
                    await waiter.event.wait()
            # Granted in the instant the caller was cancelled: the slot passes on
            # rather than count as a request sent.
            await anyio.lowlevel.checkpoint_if_cancelled()
        except BaseException:
            # Cancelled: a slot granted in the same instant passes on; a place in the
            # queue is given up, and whoever is first now keeps the time.
            if waiter.ticket is not None:
                self._budget.give_back(waiter.ticket)
            else:
                self._waiters.remove(waiter)
            self._wake()
            raise
        return _Slot(self, waiter.ticket, waiter.granted_at)

    def _led(self, now: float) -> int:
        return self._waiters.interactive_granted(now, self._budget.period)

    def _keep(self, priority: Priority | None, led: int) -> int:
        """Free slots a request of ``priority`` leaves to interactive calls."""
        return reserve(led, self._budget.limit) if priority is Priority.BULK else 0

    def _head(self, now: float) -> _Waiter | None:
        return self._waiters.head(may_lead(self._led(now), self._budget.limit))

    def _finish(self, slot: _Slot, feedback: RateFeedback | None, sent: bool) -> None:
        if sent:
            self._budget.answered(self._now(), feedback, slot.ticket, slot.sent_at)
        else:
            self._budget.give_back(slot.ticket)
        self._wake()

    def _grant(self) -> None:
        now = self._now()
        while self._waiters:
            led = self._led(now)
            lead = may_lead(led, self._budget.limit)
            ticket = self._budget.take(now, self._keep(self._waiters.head_priority(lead), led))
            if ticket is None:
                break
            waiter = self._waiters.popleft(lead, now)
            waiter.ticket = ticket
            waiter.granted_at = now
            waiter.event.set()
        head = self._head(now)
        if head is not None:
            # The first waiter may be another now (a grant, or the interactive line's
            # turn come back as its grants age): it keeps the time from now on.
            head.event.set()

    def _wake(self) -> None:
        """The budget changed: grant what it allows, and have the first waiter look again."""
        self._grant()
        head = self._head(self._now())
        if head is not None:
            head.event.set()
