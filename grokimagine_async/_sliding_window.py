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

The price is the time each request takes to be answered, once a period: an
idle round trip, or after a burst the wait of the last answers behind the
whole burst (``benchmarks/rate_limit.py`` measures what that leaves of the
plan). A fresh limiter sends one request, and lets the rest of the budget go
at once when its answer has said whether someone else is spending the token.

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
* The freshest ``Remaining`` is also a cap: less the requests of ours the
  server may have counted after the one it answered (sent after it, or sent
  before it and still on the way when its answer came), less what someone
  else is reckoned to have taken since, plus what has come back since at the
  plan's rate (not ours that left the window: a bucket does not refill as our
  requests age, and someone else takes from it too). The cap stops
  a burst into a window that someone else has nearly filled. A ``Reset`` that
  says everything is back sooner than the plan's rate could free what is
  missing marks a fixed window near its end (nothing comes back before the
  reset, then all of it; unless the reset is further off than the client's
  cap on server-advised waits) or a bucket with a small burst, not someone
  else's requests.
* A plan that is not known (``upgrades``) starts at the Free figures and
  moves up to the largest plan that the headers prove: a ``Remaining`` above
  what the current limit allows.

Servers that count differently from what they say
--------------------------------------------------
* While the server says nothing of its count (no ``Remaining``), a slow
  start: one request until an answer comes, then one more unanswered request
  for each answer that is not a 429. And while it says nothing, someone else
  spends the token, or the server counts finely, no more requests are in
  flight than the plan's rate needs at the round trips measured (at least
  four, a hung request not counting): a full window is learnt of with few of
  ours on the way.
* A 429 is a refusal our own count cannot explain (the guarantee keeps it
  under the plan): the server counts more finely, or counts someone else.
  The limiter then paces (:class:`_Pacer`): one request at a time at the
  plan's rate, slower with each further 429 of a request sent under that
  setting, relaxing a step after each quiet spell (by half steps back up to
  a pace that was refused). ``RateLimit(burst=...)`` states the shape
  instead.
* A 429 closes the gate for every waiter until ``Retry-After`` (else
  ``X-RateLimit-Reset``, else two of the plan's intervals, doubling with each
  refusal in a row; from the second refusal in a row, at least that doubled
  wait even when the server gave a time, which proved too short; never
  longer than two periods, nor than the client's cap on server-advised
  waits, ``RateFeedback.max_wait``), and reserves what was left of the
  budget; that reservation fades over the following period, so the gate
  reopens at the plan's steady rate rather than to a burst.
* A 429 that comes with at least half of the window's budget let in to us,
  and a tenth or more not, tells a full window apart from fine counting
  (which refuses a burst early): what ours do not account for is someone
  else's. That share, with a margin, is held for a period after the gate
  opens (the window frees no sooner than ours age out of it) and then fades,
  and the pace keeps under our share of the window. A shortfall of a few
  slots is an approximate counter's lag, not someone else.
"""

from __future__ import annotations

import bisect
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from itertools import takewhile

import anyio

from ._config import RateLimit
from ._headers import RateFeedback, readable
from ._limiter import RateLimitStatus, RecordedOnce, SlotContext
from ._policy import POLICY

__all__ = ["SlidingWindowLimiter", "WindowBudget"]

logger = logging.getLogger("grokimagine_async")


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
        # When slots of ours left the window lately, in order: a server's answer was
        # reckoned when it was sent, and counted those that left since.
        self._aged: deque[float] = deque()
        # Those held whose answer was a 429 (a server may or may not count a refusal).
        self._refusals: set[int] = set()
        self._next_seq = 0
        # Someone else's share of the window: _reserved slots, fading linearly
        # to none between _fade_start and _fade_end.
        self._reserved = 0.0
        self._fade_start = initial_time
        self._fade_end = initial_time
        self._gate_until = -math.inf
        # The last few estimates of someone else's use, from Remaining.
        self._others: deque[int] = deque(maxlen=POLICY.others_samples)
        # The freshest Remaining, what it leaves (see _server_allows).
        self._cap: _Cap | None = None
        # One request until an answer has told what the server sees (someone else may
        # be spending the token). If it says nothing of its count (no Remaining), a
        # slow start: one more unanswered request for each answer that is not a 429,
        # doubling each round trip up to the plan, so a server that counts more
        # finely than its plan refuses a few requests, not a burst.
        self._ramp: int | None = 1
        self._refused_in_a_row = 0
        # When the last 429 came: only an answer to a request sent after it ends a run
        # of refusals (one sent before it says nothing of the server's count since).
        self._last_refused = -math.inf
        # Whether the server has said how much is left (X-RateLimit-Remaining).
        self._told = False
        # Round trips of the last answers, and when each request in flight was sent.
        self._rtts: deque[float] = deque(maxlen=32)
        self._sent: dict[int, float] = {}
        # From the round trips, refreshed with each answer rather than on every look:
        # requests in flight the rate needs, and how long one may be out before it
        # stops counting (a hung connection). None until an answer has come.
        self._flight_cap: int | None = None
        self._stale = math.inf
        self._pacer = _Pacer(rate, initial_time)

    # -- reading --------------------------------------------------------------------

    def _expire(self, now: float) -> None:
        held, aged = self._held, self._aged
        while held and held[0][0] <= now:
            expiry, seq = held.popleft()
            self._forget(seq)
            self._refusals.discard(seq)
            aged.append(expiry)
        while aged and aged[0] < now - self.period:
            aged.popleft()

    def _aged_since(self, sent_at: float) -> int:
        """Slots of ours that left the window after ``sent_at``."""
        count = 0
        for expiry in reversed(self._aged):
            if expiry <= sent_at:
                break
            count += 1
        return count

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
        allows = min(self._server_allows(now), self._pacer.free(now))
        if self._ramp is not None:
            free = min(free, self._ramp - self.in_flight)
        if self._capping_flight(now):
            assert self._flight_cap is not None
            young = sum(1 for sent in self._sent.values() if now - sent < self._stale)
            free = min(free, self._flight_cap - young)
        return max(0, min(free, allows))

    def _capping_flight(self, now: float) -> bool:
        """Whether requests in flight are kept to what the rate needs: while someone
        else spends the token, the server counts finely, or it says nothing of its
        count, so that a full window is learnt of with few of ours on the way. Alone
        with a server that says what is left, a burst of the whole budget is safe."""
        return self._flight_cap is not None and (
            self._pacer.pace is not None or not self._told or self.reserved(now) > 0
        )

    def _measured(self, rtt: float) -> None:
        self._rtts.append(rtt)
        rtts = sorted(self._rtts)
        median = rtts[len(rtts) // 2]
        needed = math.ceil(POLICY.flight_factor * self.limit / self.period * rtts[0])
        self._flight_cap = max(POLICY.flight_least, needed)
        self._stale = max(POLICY.stale_round_trips * median, POLICY.stale_least_share * self.period)

    def _server_allows(self, now: float) -> int:
        """What the freshest Remaining leaves now: less ours sent since and what
        someone else is reckoned to have taken since, plus what has come back.

        What comes back is judged by its ``Reset``. A server that says it will all
        be back sooner than the plan's rate could free what is missing (a fixed
        window near its end) frees nothing before then. Otherwise it comes back at
        the plan's rate, and not as ours leave the window: a bucket does not refill
        as our requests age (and someone else takes from it), and whether the
        server is a bucket or a window is not known; the next answers tell what
        really came back."""
        cap = self._cap
        if cap is None:
            return self.limit
        if now >= cap.until:
            self._cap = None
            return self.limit
        since = now - cap.at
        # Ours sent after it count after it; so may ours sent before it that were still
        # on the way when its answer came (the server may have counted them later).
        after = self._next_seq - cap.ticket - 1 + len(cap.unsure) + cap.later
        refilled = math.floor(since * self.limit / self.period) if cap.refills else 0
        # Someone else spends at the rate reserved for them: the last slot the server
        # reported may be gone before our request gets there.
        taken = math.ceil(self.reserved(now) * since / self.period - 1e-9)
        return max(0, cap.remaining - after + refilled - taken)

    def next_change(self, now: float) -> float | None:
        """The earliest time after ``now`` at which :meth:`free` may grow."""
        self._expire(now)
        times: list[float] = []
        if self._held:
            times.append(self._held[0][0])
        if now < self._gate_until:
            times.append(self._gate_until)
        cap = self._cap
        if cap is not None:
            times.append(cap.until)
            if cap.refills:
                rate = self.limit / self.period
                times.append(cap.at + (math.floor((now - cap.at) * rate) + 1) / rate)
        if self._sent and self._capping_flight(now):
            # The next request in flight to go stale frees a place; one stale already
            # frees no more, and left in it would have every look come back "due now"
            # (a waiter woken each millisecond until the hung request's answer).
            stale = [t for sent in self._sent.values() if (t := sent + self._stale) > now]
            if stale:
                times.append(min(stale))
        paced = self._pacer.next_free(now)
        if paced is not None:
            times.append(paced)
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

    @property
    def pace(self) -> float | None:
        """Requests a second sends are spaced to, if the server counts finely (else None)."""
        return self._pacer.pace

    @property
    def burst(self) -> int | None:
        """Requests that may go at once while pacing (None while not pacing)."""
        return self._pacer.burst if self._pacer.pace is not None else None

    # -- changing -------------------------------------------------------------------

    def set_rate(self, rate: RateLimit) -> None:
        """New figures; slots already held keep their times."""
        self.limit = rate.requests
        self.period = rate.period
        self._upgrades = []
        self._pacer.set_rate(rate)

    def take(self, now: float) -> int | None:
        """Take a slot if one is free: its ticket (the send order), else None."""
        if self.free(now) <= 0:
            return None
        self.in_flight += 1
        self._pacer.sent(now)
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
        if self._cap is not None:
            # Never sent: the server counted it on neither side of the cap's answer.
            self._cap.unsure.discard(ticket)

    def answered(
        self, now: float, feedback: RateFeedback | None, ticket: int, sent_at: float
    ) -> None:
        """A request that was (or may have been) counted by the server has ended.

        ``feedback`` is what its answer said, None when no answer came;
        ``ticket`` is what :meth:`take` gave, ``sent_at`` when.
        """
        self.in_flight -= 1
        self._sent.pop(ticket, None)
        self._expire(now)
        self._held.append((now + self.period, ticket))
        remaining, reset_after = readable(feedback)
        if self._cap is not None:
            self._cap.settle(ticket, remaining)
        if feedback is None:
            return
        self._measured(max(0.0, now - sent_at))
        if feedback.rate_limited:
            self._refused_in_a_row += 1
            self._last_refused = now
            self._refusals.add(ticket)
            self._ramp = None
            ours = self._on_rate_limited(now, feedback)
            self._pacer.refused(now, sent_at, resume_at=self._gate_until, share=ours)
        elif remaining is None:
            if sent_at >= self._last_refused:
                self._refused_in_a_row = 0
            # No word on the server's count: the slow start goes on.
            if self._ramp is not None:
                self._ramp = self._ramp + 1 if self._ramp + 1 < self.limit else None
        else:
            if sent_at >= self._last_refused:
                self._refused_in_a_row = 0
            # The server says how much is left: that caps every burst from now on.
            self._ramp = None
            self._told = True
            self._upgrade(remaining, sent_at)
            self._on_remaining(now, remaining, ticket, reset_after, self._aged_since(sent_at))
            if self._cap is None or ticket > self._cap.ticket:
                self._cap = self._fresh_cap(now, remaining, ticket, reset_after, feedback.max_wait)

    def _fresh_cap(
        self,
        now: float,
        remaining: int,
        ticket: int,
        reset_after: float | None,
        max_wait: float = math.inf,
    ) -> _Cap:
        # _sent is in send order: stop at the first sent after it.
        unsure = set(takewhile(lambda seq: seq < ticket, self._sent))
        missing = self.limit - remaining
        # A slot's worth of slack either way: headers round Remaining down and Reset up.
        # A reset further off than the client's cap on server-advised waits holds
        # nothing back until then: what is missing comes back at the plan's rate, as
        # when no reset is said (a call the server then refuses for longer fails at once).
        if (
            reset_after is not None
            and reset_after <= max_wait
            and reset_after * self.limit / self.period < missing - 1
        ):
            # All back sooner than the plan's rate could free it: back at once, then.
            return _Cap(remaining, ticket, now, now + reset_after, False, unsure)
        return _Cap(remaining, ticket, now, now + self.period, True, unsure)

    def _on_remaining(
        self,
        now: float,
        remaining: int,
        ticket: int,
        reset_after: float | None = None,
        aged: int = 0,
    ) -> None:
        # ``aged``: ours that left the window while this request was on its way. The
        # server may have counted them when it answered (and an event loop that is
        # busy reads the answer late): a shortfall no larger proves nobody else.
        if reset_after is not None and reset_after * self.limit / self.period < (
            self.limit - remaining - len(self._window)
        ):
            # All back sooner than the plan's rate could free what is missing: the
            # server holds fewer than the plan at once (a bucket with a small burst),
            # not someone else's requests. The cap on bursts covers it.
            return
        # Ours sent before this one were, as a rule, counted before it. A request
        # that overtook another on the way makes one estimate too high or too low,
        # so the median of the last few is taken.
        ours_before = bisect.bisect_left(self._window, ticket)
        self._others.append(self.limit - remaining - ours_before - 1)
        # Even if every request of ours the server may still count had been counted
        # before this one, what is left over is someone else's: proof that they exist.
        proven = self.limit - remaining - len(self._window) - aged
        if proven <= 0:
            return
        others = max(proven, sorted(self._others)[(len(self._others) - 1) // 2])
        # Someone else's use wobbles from one request to the next, and the window is
        # run full: keep a margin over the estimate rather than collect 429s.
        others = self._with_margin(others)
        # Renewed while the answers keep showing it. Held whole for a period: a fixed
        # window shows the full share only near its end, and the share starts again
        # in the next. Then it fades over another period, as a sliding window sheds it.
        if others >= self.reserved(now):
            self._reserve(now + self.period, now + 2 * self.period, others)

    def _on_rate_limited(self, now: float, feedback: RateFeedback) -> int | None:
        # Without a time from the server: a couple of the plan's intervals, enough for
        # a gateway that counts per second to let one more in, doubling with each
        # refusal in a row (a counter that counts refusals too must be left to fall);
        # the pacing and the reservation below keep what follows from a burst.
        period = self.period
        base = min(
            POLICY.refusal_wait_most_share * period,
            POLICY.refusal_wait_intervals * period / self.limit,
        )
        doubled = base * 2 ** min(self._refused_in_a_row - 1, 16)
        backoff = min(POLICY.refusal_backoff_most_share * period, doubled)
        wait = feedback.advised_wait
        if wait is None:
            wait = backoff
        elif self._refused_in_a_row > 1:
            # The server's time proved too short (someone else took the room it saw):
            # from the second refusal in a row, the longer of the two.
            wait = max(wait, backoff)
        # Never past the client's cap, whatever the plan's period: a server asking for
        # an hour gets the caller's call failed at once (the wire's rule), not every
        # other request of the token held for that hour.
        wait = min(wait, POLICY.gate_most_periods * self.period, feedback.max_wait)
        self._gate_until = max(self._gate_until, now + wait)
        # The server's window was full. When the gate opens, what our own slots don't
        # cover is not known to be free: let it out over a period, not in one burst.
        start = self._gate_until
        # Refused with most of the budget ours, and a tenth or more of it not: the window
        # is full (counting finely refuses a burst early) and what ours that were let in
        # do not account for is someone else's (a few slots short is an approximate
        # count's lag). Returned: the share of the window that is ours, if so.
        ours = sum(1 for expiry, seq in self._held if expiry > now and seq not in self._refusals)
        others = self.limit - self.in_flight - ours
        if (
            ours / self.limit < POLICY.full_window_ours
            or others / self.limit < POLICY.full_window_others
        ):
            still_held = sum(1 for expiry, _ in self._held if expiry > start)
            unseen = self.limit - self.in_flight - still_held
            if unseen > 0 and unseen >= self.reserved(start):
                self._reserve(start, start + self.period, unseen)
            return None
        # It frees no sooner than ours age out: held a period, fading over the next.
        others = self._with_margin(others)
        if others >= self.reserved(start):
            self._reserve(start + self.period, start + 2 * self.period, others)
        return ours

    def _with_margin(self, others: int) -> int:
        return min(self.limit, others + 1 + math.floor(others * POLICY.others_margin))

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
            self._pacer.set_rate(best)


@dataclass(slots=True)
class _Cap:
    """The freshest ``X-RateLimit-Remaining``: ``remaining`` when request
    ``ticket``'s answer came ``at``. It holds ``until`` then (when the server said
    all is back, or a period on), and meanwhile ``refills`` at the plan's rate, or
    not at all.

    Ours sent before ``ticket`` and still on the way when its answer came may
    have been counted after it: ``unsure`` until their own answers tell (a
    ``Remaining`` no higher than this one says later, and adds to ``later``)."""

    remaining: int
    ticket: int
    at: float
    until: float
    refills: bool
    unsure: set[int]
    later: int = 0

    def settle(self, ticket: int, remaining: int | None) -> None:
        """Request ``ticket`` was answered, saying ``remaining`` (None: nothing)."""
        if ticket not in self.unsure:
            return
        self.unsure.discard(ticket)
        if remaining is None or remaining <= self.remaining:
            self.later += 1


class _Pacer:
    """How finely the server is known to count: sends spaced to ``pace`` requests
    a second, at most ``burst`` at once (a GCRA), or no spacing at all.

    Off until a 429 shows that the server counts more finely than the plan
    (a small burst, then so many a second) or counts someone else too; or on
    from the start when the user states a ``burst``. Each 429 of a request
    sent under the current setting tightens it: first the burst halves, down
    to one, then the pace drops. After a quiet spell with no such 429 it
    relaxes one step (the pace back up to the plan's rate, then the burst
    doubling, then off); a 429 right after relaxing doubles the next quiet
    spell, so probing the server costs fewer refusals the longer it goes on.
    """

    def __init__(self, rate: RateLimit, now: float) -> None:
        self._stated = rate.burst
        self._plan = rate
        self.pace: float | None = rate.per_second if rate.burst is not None else None
        self.burst = rate.burst if rate.burst is not None else rate.requests
        # The GCRA's theoretical arrival time: the next send's slot, were it paced.
        self._tat = now
        # When the setting last changed; 429s of requests sent before don't judge it.
        self._changed = now
        self._quiet = POLICY.quiet_periods * rate.period
        self._relaxed = False
        # The last pace a 429 judged too fast: relaxing comes back to it by a half step.
        self._refused_pace: float | None = None

    def set_rate(self, rate: RateLimit) -> None:
        """The plan changed (stated, or proved bigger): keep what was learnt of its shape."""
        if rate.burst is not None:
            self._stated = rate.burst
        if self._stated is not None:
            self._stated = min(self._stated, rate.requests)
            self.pace = self.pace or rate.per_second
            self.burst = min(self.burst, self._stated)
        self._plan = RateLimit(rate.requests, rate.period, self._stated)
        self._quiet = max(self._quiet, POLICY.quiet_periods * rate.period)

    def free(self, now: float) -> int:
        """Requests the spacing lets go at once now."""
        self._relax(now)
        if self.pace is None:
            return self._plan.requests
        allowed = math.floor((now - self._tat) * self.pace + self.burst + 1e-9)
        return max(0, min(self.burst, allowed))

    def next_free(self, now: float) -> float | None:
        """When the spacing next lets a request go, if it holds one back now."""
        if self.pace is None or self.free(now) > 0:
            return None
        return self._tat - (self.burst - 1) / self.pace

    def sent(self, now: float) -> None:
        if self.pace is not None:
            self._tat = max(self._tat, now) + 1 / self.pace

    def refused(
        self, now: float, sent_at: float, *, resume_at: float, share: int | None = None
    ) -> None:
        """A 429 answered a request sent at ``sent_at``; sending resumes at ``resume_at``.

        ``share``: the requests of a full window that were ours, if the refusal
        showed someone else holding the rest; the pace keeps under that share."""
        # Nothing is owed from before the refusal: at most a burst goes when sending resumes.
        self._tat = max(self._tat, resume_at)
        if sent_at < self._changed:
            return  # sent before the current setting: no verdict on it
        plan_rate = self._plan.per_second
        self._refused_pace = self.pace if self.burst == 1 else None
        if self._relaxed and now - self._changed < self._quiet:
            self._quiet = min(POLICY.quiet_most_periods * self._plan.period, self._quiet * 2)
        if self.pace is None:
            self.pace = plan_rate
            self.burst = 1
        elif self.burst > 1:
            self.burst = max(1, self.burst // 2)
        else:
            self.pace = max(plan_rate * POLICY.pace_floor, self.pace * POLICY.pace_backoff)
        if share is not None:
            self.pace = max(
                plan_rate * POLICY.pace_floor, min(self.pace, share / self._plan.period)
            )
        self._changed = now
        self._relaxed = False
        logger.info(
            "the server refused a request the plan allows (%d per %gs): it counts more "
            "finely, or someone else spends the token; pacing to %.3g requests/s, %d at once",
            self._plan.requests,
            self._plan.period,
            self.pace,
            self.burst,
        )

    def _relax(self, now: float) -> None:
        stepped = False
        while self.pace is not None and now - self._changed >= self._quiet:
            plan_rate = self._plan.per_second
            cap = self._stated or self._plan.requests
            if self.pace < plan_rate:
                step = 1 / POLICY.pace_backoff
                refused = self._refused_pace
                if refused is not None and self.pace < refused:
                    # Back up to a pace that was refused by half steps, not past it.
                    step = min(math.sqrt(step), refused / self.pace)
                self.pace = min(plan_rate, self.pace * step)
                if refused is not None and self.pace >= refused * (1 - 1e-9):
                    self._refused_pace = None
            elif self.burst < cap:
                self.burst = min(cap, self.burst * 2)
            elif self._stated is None:
                self.pace = None
                self.burst = self._plan.requests
            else:
                break
            # One step a quiet spell, however late the limiter looks.
            self._changed += self._quiet
            self._relaxed = stepped = True
        if not stepped:
            return
        if self.pace is None:
            logger.info(
                "no 429 for %.3gs: the plan's whole budget may go at once again", self._quiet
            )
        else:
            logger.info(
                "no 429 for %.3gs: pacing relaxed to %.3g requests/s, %d at once",
                self._quiet,
                self.pace,
                self.burst,
            )


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
    change). Waiters are served first come, first served. Cancelling a waiter
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
        self._waiters: deque[_Waiter] = deque()

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
            pace=budget.pace,
            burst=budget.burst,
        )

    def slot(self) -> SlotContext[_Slot]:
        """Wait for permission to send one request (see :meth:`Limiter.slot`)."""
        return SlotContext(self.acquire)

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
            # Granted in the instant the caller was cancelled: the slot passes on
            # rather than count as a request sent.
            await anyio.lowlevel.checkpoint_if_cancelled()
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
