"""The client-side rate limiter: the interface every request goes through.

Every request takes a slot from its token's limiter just before it is sent,
and reports what the answer said about the budget when it arrives. The
limiter decides when the next request may go. A backend (the in-process one
here, or one shared by many processes) only has to implement :class:`Limiter`.
"""

from __future__ import annotations

import asyncio
import hashlib
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

from aiolimiter import AsyncLimiter

from ._config import RateLimit
from ._headers import RateFeedback

__all__ = ["Limiter", "PacedLimiter", "RateLimitStatus", "Slot", "shared_limiter"]


@dataclass(frozen=True)
class RateLimitStatus:
    """A snapshot of a token's budget as the client sees it."""

    #: Requests allowed per ``period`` seconds.
    limit: int
    period: float
    #: Requests that may be sent right now without waiting.
    remaining: int
    #: Seconds until the full budget is free again (0 if it is).
    resets_in: float
    #: Requests waiting for a slot.
    waiting: int
    #: Requests sent and not yet answered.
    in_flight: int


class Slot(Protocol):
    """One request's hold on the budget."""

    def record(self, feedback: RateFeedback) -> None:
        """Report what the answer said about the budget."""


class Limiter(Protocol):
    """What the client needs of a rate limiter."""

    def slot(self) -> AbstractAsyncContextManager[Slot]:
        """Wait for permission to send one request; held until the answer.

        Cancelling the wait gives the place back.
        """

    def status(self) -> RateLimitStatus:
        """The budget as the limiter sees it now."""


class _NullSlot:
    def record(self, feedback: RateFeedback) -> None:
        pass


class PacedLimiter:
    """Spaces requests evenly at the plan's rate (``aiolimiter`` underneath)."""

    def __init__(self, rate: RateLimit) -> None:
        self.rate = rate
        self._pacer = AsyncLimiter(1, rate.period / rate.requests)
        self._waiting = 0
        self._in_flight = 0

    @asynccontextmanager
    async def _slot(self) -> AsyncIterator[Slot]:
        self._waiting += 1
        try:
            await self._pacer.acquire()
        finally:
            self._waiting -= 1
        self._in_flight += 1
        try:
            yield _NullSlot()
        finally:
            self._in_flight -= 1

    def slot(self) -> AbstractAsyncContextManager[Slot]:
        return self._slot()

    def status(self) -> RateLimitStatus:
        free = 1 if self._pacer.has_capacity() else 0
        return RateLimitStatus(
            limit=self.rate.requests,
            period=self.rate.period,
            remaining=free,
            resets_in=0.0 if free else self.rate.period / self.rate.requests,
            waiting=self._waiting,
            in_flight=self._in_flight,
        )


_registry: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, str], Limiter]] = (
    weakref.WeakKeyDictionary()
)


def shared_limiter(base_url: str, api_key: str, factory: Callable[[], Limiter]) -> Limiter:
    """The process's limiter for one (base URL, token), made on first use.

    Limiters belong to an event loop, so each running loop has its own
    registry. The token is keyed by its hash, never stored.
    """
    loop = asyncio.get_running_loop()
    per_loop = _registry.setdefault(loop, {})
    key = (base_url, hashlib.sha256(api_key.encode()).hexdigest())
    limiter = per_loop.get(key)
    if limiter is None:
        limiter = per_loop[key] = factory()
    return limiter
