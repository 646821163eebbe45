"""How the simulated server counts requests per token, and the headers it writes."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass
from email.utils import formatdate

from ._config import RateModel, ResetFormat, RetryAfterFormat, SimulatorConfig

# Float sums of period/limit drift by a few ulps; without slack the limit-th request of
# a burst would sometimes be refused.
_EPS = 1e-9


def _slack(t: float) -> float:
    # Clock readings can be large (monotonic seconds since boot), where an absolute
    # epsilon is smaller than one ulp.
    return _EPS + abs(t) * 1e-12


@dataclass(frozen=True)
class Window:
    """What a token's limiter looks like at one instant (all times on the simulator clock)."""

    #: Requests the token could still send right now, one after another.
    remaining: int
    #: When the token's counter is empty again, so its full limit (or burst) is
    #: available (``now`` if it already is).
    reset_at: float
    #: When at least one request is allowed again (``now`` if one is allowed now).
    retry_at: float


class Limiter(ABC):
    """One token's counter under one rate model."""

    def __init__(self, limit: int, period: float) -> None:
        self.limit = limit
        self.period = period

    @property
    def memory(self) -> float:
        """How long after it a request can still change what the limiter decides."""
        return self.period

    @abstractmethod
    def acquire(self, now: float, *, count_rejected: bool) -> bool:
        """Count a request at ``now`` if the limit allows it; say whether it was allowed."""

    @abstractmethod
    def window(self, now: float) -> Window:
        """The limiter's state at ``now`` without counting anything."""


class FixedWindowLimiter(Limiter):
    """A counter per window; windows are aligned to multiples of ``period`` after ``origin``."""

    def __init__(self, limit: int, period: float, origin: float) -> None:
        super().__init__(limit, period)
        self._origin = origin
        self._index = 0
        self._count = 0

    def _roll(self, now: float) -> None:
        index = math.floor((now - self._origin) / self.period + _EPS)
        if index != self._index:
            self._index = index
            self._count = 0

    def acquire(self, now: float, *, count_rejected: bool) -> bool:
        self._roll(now)
        allowed = self._count < self.limit
        if allowed or count_rejected:
            self._count += 1
        return allowed

    def window(self, now: float) -> Window:
        self._roll(now)
        end = self._origin + (self._index + 1) * self.period
        return Window(
            remaining=max(0, self.limit - self._count),
            reset_at=end if self._count else now,
            retry_at=now if self._count < self.limit else end,
        )


class SlidingWindowLimiter(Limiter):
    """A log of request times; each one counts for exactly ``period`` seconds."""

    def __init__(self, limit: int, period: float) -> None:
        super().__init__(limit, period)
        self._log: deque[float] = deque()

    def _expire(self, now: float) -> None:
        horizon = now - self.period + _slack(now)
        while self._log and self._log[0] <= horizon:
            self._log.popleft()

    def acquire(self, now: float, *, count_rejected: bool) -> bool:
        self._expire(now)
        allowed = len(self._log) < self.limit
        if allowed or count_rejected:
            self._log.append(now)
        return allowed

    def window(self, now: float) -> Window:
        self._expire(now)
        count = len(self._log)
        retry_at = now if count < self.limit else self._log[count - self.limit] + self.period
        return Window(
            remaining=max(0, self.limit - count),
            reset_at=self._log[-1] + self.period if self._log else now,
            retry_at=retry_at,
        )


class BucketLimiter(Limiter):
    """A bucket drained at ``limit / period`` requests a second, ``burst`` deep (as GCRA).

    A request is allowed while the bucket's level (after draining) is at most
    ``burst - 1``; it then adds one to the level. With ``burst == limit`` this is the
    token bucket that lets a whole plan through at once; with a small ``burst`` it is
    the leaky bucket of a gateway that enforces the plan per second.
    """

    def __init__(self, limit: int, period: float, burst: int | None = None) -> None:
        super().__init__(limit, period)
        #: How many requests may go at once from an empty bucket.
        self.burst = limit if burst is None else burst
        self._interval = period / limit
        self._depth = self.burst * self._interval
        # The theoretical arrival time: when the bucket would be empty again.
        self._tat = -math.inf

    @property
    def memory(self) -> float:
        return max(self.period, self._depth)

    def acquire(self, now: float, *, count_rejected: bool) -> bool:
        start = max(self._tat, now)
        allowed = start + self._interval - now <= self._depth + _slack(start)
        if allowed or count_rejected:
            self._tat = start + self._interval
        return allowed

    def window(self, now: float) -> Window:
        start = max(self._tat, now)
        free = math.floor((self._depth + _slack(start) - (start - now)) / self._interval)
        return Window(
            remaining=min(self.burst, max(0, free)),
            reset_at=start,
            retry_at=max(now, start + self._interval - self._depth),
        )


class ApproximateLimiter(Limiter):
    """Two fixed windows, the previous one weighted by how much of it a period still covers.

    Windows are aligned to multiples of ``period`` after ``origin``. At a time ``t`` a
    fraction ``f`` into the current window the count is ``current + previous * (1 - f)``,
    and a request is allowed while that count is below ``limit``.
    """

    def __init__(self, limit: int, period: float, origin: float) -> None:
        super().__init__(limit, period)
        self._origin = origin
        self._index = 0
        self._current = 0
        self._previous = 0

    @property
    def memory(self) -> float:
        return 2 * self.period

    def _roll(self, now: float) -> None:
        index = math.floor((now - self._origin) / self.period + _EPS)
        if index != self._index:
            self._previous = self._current if index == self._index + 1 else 0
            self._current = 0
            self._index = index

    def _start(self) -> float:
        return self._origin + self._index * self.period

    def _tolerance(self, previous: int, now: float) -> float:
        # The previous window's weight comes from a clock reading; its rounding error,
        # scaled by that window's count, must not turn an allowed request into a refusal
        # at the instant window() promised.
        return _EPS + previous * _slack(now) / self.period

    def _headroom(self, now: float) -> float:
        """``limit`` minus the weighted count, less the rounding tolerance."""
        fraction = (now - self._start()) / self.period
        weight = min(1.0, max(0.0, 1.0 - fraction))
        count = self._current + self._previous * weight
        return self.limit - count - self._tolerance(self._previous, now)

    def acquire(self, now: float, *, count_rejected: bool) -> bool:
        self._roll(now)
        allowed = self._admits(now)
        if allowed or count_rejected:
            self._current += 1
        return allowed

    def _admits(self, now: float) -> bool:
        """Whether a request goes now (the count already rolled to ``now``)."""
        return self._headroom(now) > 0

    def _remaining(self, now: float) -> int:
        # Rounded up: a count of 9.4 out of 10 still lets one more through.
        return max(0, math.ceil(self._headroom(now)))

    def window(self, now: float) -> Window:
        self._roll(now)
        remaining = self._remaining(now)
        start = self._start()
        if self._current:
            reset_at = start + 2 * self.period
        elif self._previous:
            reset_at = max(now, start + self.period)
        else:
            reset_at = now
        return Window(
            remaining=remaining,
            reset_at=reset_at,
            retry_at=now if remaining else max(now, self._retry_at(now, start)),
        )

    def _retry_at(self, now: float, start: float) -> float:
        # Aim a little inside the allowed region (twice the tolerance) so that a request
        # at exactly this instant is allowed despite rounding.
        if self._current < self.limit:
            # Only the previous window's fading weight is in the way.
            margin = 2 * self._tolerance(self._previous, now)
            weight = (self.limit - self._current - margin) / self._previous
            return start + self.period * (1.0 - weight)
        # The current window alone is full; in the next one it is the fading part.
        margin = 2 * self._tolerance(self._current, now)
        weight = (self.limit - margin) / self._current
        return start + self.period * (2.0 - weight)


class HAProxyLimiter(ApproximateLimiter):
    """HAProxy's ``http_req_rate`` in a stick table, refusing above ``limit``.

    The same two-window count as :class:`ApproximateLimiter`, with HAProxy's
    differences: the windows start at the token's first request (and again at
    the first after two idle periods), not at a shared origin; the request is
    counted before the check and the count is rounded up, so a request goes
    only while a whole one fits under the limit.
    """

    def __init__(self, limit: int, period: float) -> None:
        super().__init__(limit, period, origin=0.0)
        self._started = False

    def _roll(self, now: float) -> None:
        if not self._started:
            return
        if now - self._start() >= 2 * self.period - _EPS:
            # Idle for two periods: nothing counts, and the next request starts afresh.
            self._started = False
            self._current = self._previous = 0
            return
        super()._roll(now)

    def _fits(self, now: float) -> float:
        """Whole requests that fit under the limit now (a fraction of one: none)."""
        return self._headroom(now) + 2 * self._tolerance(self._previous, now)

    def acquire(self, now: float, *, count_rejected: bool) -> bool:
        self._roll(now)
        if not self._started:
            self._origin, self._index, self._started = now, 0, True
        return super().acquire(now, count_rejected=count_rejected)

    def _admits(self, now: float) -> bool:
        return self._fits(now) >= 1

    def _remaining(self, now: float) -> int:
        return max(0, math.floor(self._fits(now)))

    def window(self, now: float) -> Window:
        self._roll(now)
        if not self._started:
            return Window(remaining=self.limit, reset_at=now, retry_at=now)
        return super().window(now)

    def _retry_at(self, now: float, start: float) -> float:
        """When the count falls to ``limit - 1``, so that one whole request fits."""
        room = self.limit - 1
        if self._current <= room:
            # Only the previous window's fading weight is in the way (none left by the
            # window's end, when the current one becomes the previous at full weight).
            weight = (room - self._current) / self._previous
            return start + self.period * (1.0 - weight)
        # The current window alone is too full; in the next one it is the fading part.
        return start + self.period * (2.0 - room / self._current)


def make_limiter(
    model: RateModel, limit: int, period: float, origin: float, burst: int | None = None
) -> Limiter:
    """A fresh limiter of the given model (``burst`` is used by ``"leaky"`` only)."""
    if model == "fixed":
        return FixedWindowLimiter(limit, period, origin)
    if model == "sliding":
        return SlidingWindowLimiter(limit, period)
    if model == "leaky":
        return BucketLimiter(limit, period, burst)
    if model == "approximate":
        return ApproximateLimiter(limit, period, origin)
    if model == "haproxy":
        return HAProxyLimiter(limit, period)
    return BucketLimiter(limit, period)


@dataclass
class _TokenState:
    limiter: Limiter
    phantom_interval: float | None
    #: When the background client's next request is scheduled.
    next_phantom: float
    #: When its refused head request may try again (it waits for room, as a client would).
    phantom_blocked_until: float


@dataclass(frozen=True)
class Decision:
    """The outcome of counting one visible request."""

    allowed: bool
    window: Window


class RateLimiterBank:
    """Every token's limiter plus its invisible background client.

    The background client is simulated lazily: before a visible request is counted,
    the background requests that fell due since the last one are replayed at their own
    times, each subject to the limit. A refused one is retried the moment the limiter
    has room again (ahead of a visible request arriving then), so the background client
    really takes its share from a greedy visible one; a request that could not get
    through within a whole period is given up.
    """

    def __init__(self, config: SimulatorConfig, origin: float) -> None:
        self._config = config
        self._origin = origin
        self._tokens: dict[str, _TokenState] = {}
        self.background_sent = 0
        self.background_refused = 0

    def _state(self, token: str, now: float) -> _TokenState:
        state = self._tokens.get(token)
        if state is None:
            config = self._config
            limit = config.limit_for(token)
            share = config.background_share
            state = _TokenState(
                limiter=make_limiter(
                    config.rate_model, limit, config.period, self._origin, config.burst
                ),
                phantom_interval=config.period / (share * limit) if share > 0 else None,
                next_phantom=now,
                phantom_blocked_until=now,
            )
            self._tokens[token] = state
        return state

    def _catch_up(self, state: _TokenState, now: float) -> None:
        interval = state.phantom_interval
        if interval is None:
            return
        # After a long idle spell only the last requests can still affect the limiter,
        # so older background requests are skipped instead of replayed.
        horizon = now - 2 * state.limiter.memory
        if state.next_phantom < horizon:
            skipped = math.ceil((horizon - state.next_phantom) / interval)
            state.next_phantom += skipped * interval
        period = self._config.period
        limiter = state.limiter
        while True:
            at = max(state.next_phantom, state.phantom_blocked_until)
            if at > now:
                return
            if at - state.next_phantom > period:
                state.next_phantom += interval
            elif limiter.acquire(at, count_rejected=False):
                self.background_sent += 1
                state.next_phantom += interval
            else:
                self.background_refused += 1
                # Strictly later, or a float tie could retry at the same instant forever.
                state.phantom_blocked_until = max(
                    limiter.window(at).retry_at, math.nextafter(at, math.inf)
                )

    def hit(self, token: str, now: float) -> Decision:
        """Count a visible request of ``token`` at ``now``."""
        state = self._state(token, now)
        self._catch_up(state, now)
        allowed = state.limiter.acquire(now, count_rejected=self._config.count_rejected)
        return Decision(allowed, state.limiter.window(now))

    def peek(self, token: str, now: float) -> Window:
        """The token's window at ``now`` without counting a visible request."""
        state = self._state(token, now)
        self._catch_up(state, now)
        return state.limiter.window(now)


def ceil_seconds(seconds: float) -> int:
    """Whole seconds rounded up, ignoring float noise just above an integer."""
    return math.ceil(seconds - _EPS)


def _scaled(seconds: float, time_scale: float) -> str:
    """Whole seconds of the compressed clock, rounded up, as a header writes them."""
    if time_scale == 1.0:
        return str(max(1, ceil_seconds(seconds)))
    return f"{max(1, ceil_seconds(seconds / time_scale)) * time_scale:.6g}"


def rate_limit_headers(
    window: Window,
    now: float,
    wall_offset: float,
    reset_format: ResetFormat,
    time_scale: float = 1.0,
) -> list[tuple[bytes, bytes]]:
    """``X-RateLimit-Remaining`` and ``X-RateLimit-Reset`` for ``window``.

    ``wall_offset`` turns simulator clock times into epoch seconds; with a
    ``time_scale``, a delta is whole seconds of the compressed clock.
    """
    if reset_format == "epoch_s":
        reset = ceil_seconds(window.reset_at + wall_offset)
    elif reset_format == "epoch_ms":
        reset = ceil_seconds((window.reset_at + wall_offset) * 1000)
    elif window.reset_at > now:
        return [
            (b"x-ratelimit-remaining", str(window.remaining).encode()),
            (b"x-ratelimit-reset", _scaled(window.reset_at - now, time_scale).encode()),
        ]
    else:
        reset = 0
    return [
        (b"x-ratelimit-remaining", str(window.remaining).encode()),
        (b"x-ratelimit-reset", str(reset).encode()),
    ]


def retry_after_header(
    retry_at: float,
    now: float,
    wall_offset: float,
    fmt: RetryAfterFormat,
    time_scale: float = 1.0,
) -> tuple[bytes, bytes]:
    """A ``Retry-After`` header saying when a request is allowed again (at least 1 s
    away; with a ``time_scale``, whole seconds of the compressed clock)."""
    seconds = max(1, ceil_seconds(retry_at - now))
    if fmt == "seconds":
        return (b"retry-after", _scaled(retry_at - now, time_scale).encode())
    when = math.ceil(now + wall_offset) + seconds
    return (b"retry-after", formatdate(when, usegmt=True).encode())
