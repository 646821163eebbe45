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

    #: Requests the token could still send right now.
    remaining: int
    #: When the token's full limit is available again (``now`` if it already is).
    reset_at: float
    #: When at least one request is allowed again (``now`` if one is allowed now).
    retry_at: float


class Limiter(ABC):
    """One token's counter under one rate model."""

    def __init__(self, limit: int, period: float) -> None:
        self.limit = limit
        self.period = period

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


class GcraLimiter(Limiter):
    """A token bucket (as GCRA): bursts up to ``limit``, refills ``limit / period`` per second."""

    def __init__(self, limit: int, period: float) -> None:
        super().__init__(limit, period)
        self._interval = period / limit
        self._tat = -math.inf

    def acquire(self, now: float, *, count_rejected: bool) -> bool:
        start = max(self._tat, now)
        allowed = start + self._interval - now <= self.period + _slack(start)
        if allowed or count_rejected:
            self._tat = start + self._interval
        return allowed

    def window(self, now: float) -> Window:
        start = max(self._tat, now)
        free = math.floor((now + self.period - start) / self._interval + _EPS)
        return Window(
            remaining=min(self.limit, max(0, free)),
            reset_at=start,
            retry_at=max(now, start + self._interval - self.period),
        )


def make_limiter(model: RateModel, limit: int, period: float, origin: float) -> Limiter:
    """A fresh limiter of the given model."""
    if model == "fixed":
        return FixedWindowLimiter(limit, period, origin)
    if model == "sliding":
        return SlidingWindowLimiter(limit, period)
    return GcraLimiter(limit, period)


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
                limiter=make_limiter(config.rate_model, limit, config.period, self._origin),
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
        # After a long idle spell only the last couple of periods can still affect the
        # limiter, so older background requests are skipped instead of replayed.
        horizon = now - 2 * self._config.period
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


def rate_limit_headers(
    window: Window, now: float, wall_offset: float, reset_format: ResetFormat
) -> list[tuple[bytes, bytes]]:
    """``X-RateLimit-Remaining`` and ``X-RateLimit-Reset`` for ``window``.

    ``wall_offset`` turns simulator clock times into epoch seconds.
    """
    if reset_format == "epoch_s":
        reset = ceil_seconds(window.reset_at + wall_offset)
    elif reset_format == "epoch_ms":
        reset = ceil_seconds((window.reset_at + wall_offset) * 1000)
    elif window.reset_at > now:
        reset = max(1, ceil_seconds(window.reset_at - now))
    else:
        reset = 0
    return [
        (b"x-ratelimit-remaining", str(window.remaining).encode()),
        (b"x-ratelimit-reset", str(reset).encode()),
    ]


def retry_after_header(
    retry_at: float, now: float, wall_offset: float, fmt: RetryAfterFormat
) -> tuple[bytes, bytes]:
    """A ``Retry-After`` header saying when a request is allowed again (at least 1 s away)."""
    seconds = max(1, ceil_seconds(retry_at - now))
    if fmt == "seconds":
        return (b"retry-after", str(seconds).encode())
    when = math.ceil(now + wall_offset) + seconds
    return (b"retry-after", formatdate(when, usegmt=True).encode())
