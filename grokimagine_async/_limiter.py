"""The rate limiter's interface, and the process-wide registry of limiters.

Every request takes a slot from its token's limiter just before it is sent,
and reports what the answer said about the budget when it arrives. The
limiter decides when the next request may go. A backend (the in-process
:class:`~grokimagine_async.SlidingWindowLimiter`, or one shared by
many processes) only has to implement :class:`Limiter`.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import Generic, Protocol, TypeVar

from anyio.lowlevel import RunVar

from ._config import RateLimit
from ._exceptions import ConfigurationError
from ._headers import RateFeedback

__all__ = [
    "Limiter",
    "RateLimitStatus",
    "Slot",
    "SlotContext",
    "release_shared_limiter",
    "shared_limiter",
]

logger = logging.getLogger("grokimagine_async")


@dataclass(frozen=True)
class RateLimitStatus:
    """A snapshot of a token's budget as the client sees it."""

    #: Requests allowed per ``period`` seconds.
    limit: int
    #: The window, in seconds.
    period: float
    #: Requests that may be sent right now without waiting.
    remaining: int
    #: Seconds until the whole budget is free again, counting no requests still in flight.
    resets_in: float
    #: Requests waiting for a slot.
    waiting: int
    #: Requests sent and not yet answered.
    in_flight: int
    #: Requests a second the limiter spaces sends to, when the server has shown (by
    #: a 429 the plan does not explain) or been said (``RateLimit.burst``) to count
    #: more finely than its plan; None while the plan's whole budget may go at once.
    pace: float | None = None
    #: Requests that may go at once while pacing (None while not pacing).
    burst: int | None = None


class Slot(Protocol):
    """One request's hold on the budget."""

    def record(self, feedback: RateFeedback | None, *, sent: bool = True) -> None:
        """Report how the request ended: what its answer said (None if no
        answer came), or ``sent=False`` when it provably never left."""


class RecordedOnce:
    """A :class:`Slot` whose end reaches its limiter once: a second ``record`` (an
    error path after an answer was recorded) would count one request twice."""

    __slots__ = ("_done",)

    def __init__(self) -> None:
        self._done = False

    def record(self, feedback: RateFeedback | None, *, sent: bool = True) -> None:
        if self._done:
            return
        self._done = True
        self._ended(feedback, sent)

    def _ended(self, feedback: RateFeedback | None, sent: bool) -> None:
        """Hand the request's end to the limiter (called once)."""
        raise NotImplementedError


_S = TypeVar("_S", bound=Slot)


class SlotContext(AbstractAsyncContextManager[_S], Generic[_S]):
    """``async with limiter.slot() as slot``: the slot ``acquire`` waits for, and on
    leaving the block without a ``record``, one request the server may have seen.
    (A class rather than ``@asynccontextmanager``: every request passes here.)"""

    __slots__ = ("_acquire", "_slot")

    def __init__(self, acquire: Callable[[], Awaitable[_S]]) -> None:
        self._acquire = acquire
        self._slot: _S | None = None

    async def __aenter__(self) -> _S:
        self._slot = await self._acquire()
        return self._slot

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._slot is not None
        self._slot.record(None)


class Limiter(Protocol):
    """What the client needs of a rate limiter."""

    @property
    def rate(self) -> RateLimit:
        """The figures in force now."""

    def slot(self) -> AbstractAsyncContextManager[Slot]:
        """Wait for permission to send one request.

        The slot is held until it is recorded; leaving the block without
        recording counts as a request the server may have seen. Cancelling
        the wait gives the place back.
        """

    def status(self) -> RateLimitStatus:
        """The budget as the limiter sees it now."""

    def set_rate(self, rate: RateLimit) -> None:
        """Keep to new figures from now on."""


@dataclass
class _Entry:
    limiter: Limiter
    explicit: bool
    #: Where the budget is kept: None in this process, else the Redis URL (hashed).
    backend: str | None
    #: Clients using it now.
    users: int = 0


def _where(backend: str | None) -> str:
    return "in an in-process limiter (no redis_url)" if backend is None else "on Redis (redis_url)"


def _asks(backend: str | None, other: str | None) -> str:
    if backend is None:
        return "names no redis_url"
    return "names another Redis" if other is not None else "names a redis_url"


def token_hash(base_url: str, api_key: str) -> str:
    """Names a (base URL, token) without giving the token away."""
    return hashlib.sha256(f"{base_url}\0{api_key}".encode()).hexdigest()[:32]


#: One limiter per (base URL, token hash) for each running event loop, whatever its kind.
_registry: RunVar[dict[tuple[str, str], _Entry]] = RunVar("grokimagine_async_limiters")


def shared_limiter(
    base_url: str,
    api_key: str,
    rate: RateLimit,
    *,
    explicit: bool,
    factory: Callable[[], Limiter],
    backend: str | None = None,
) -> Limiter:
    """The running loop's limiter for one (base URL, token), made on first use.

    Figures a client states (a tier or a ``RateLimit``) win over figures
    guessed for an unstated plan; when two clients state different figures
    for one token, the stricter rate wins. The token is kept only as a hash.

    ``backend`` names where the budget is kept (None: this process; else the
    Redis URL). A client joins only a limiter of its own backend: one left by
    closed clients is replaced, and one that open clients use is an error,
    since two budgets for one token would spend the plan twice.

    Raises:
        ConfigurationError: open clients of this token keep its budget elsewhere.
    """
    try:
        per_loop = _registry.get()
    except LookupError:
        per_loop = {}
        _registry.set(per_loop)
    key = (base_url, token_hash(base_url, api_key))
    entry = per_loop.get(key)
    backend_id = None if backend is None else hashlib.sha256(backend.encode()).hexdigest()
    if entry is not None and entry.backend != backend_id:
        if entry.users > 0:
            raise ConfigurationError(
                f"another open client of this token keeps its budget {_where(entry.backend)}, "
                f"and this one {_asks(backend_id, entry.backend)}: two budgets for one token "
                "would spend the plan twice. Give every client of the token the same "
                "redis_url, or none"
            )
        # Left by clients now closed: the kind this client names replaces it.
        entry = None
    if entry is None:
        entry = per_loop[key] = _Entry(factory(), explicit, backend_id)
    elif explicit:
        current = entry.limiter.rate
        if not entry.explicit or rate.per_second < current.per_second:
            if entry.explicit:
                logger.warning(
                    "two clients state different limits for one token; keeping the stricter, "
                    "%d requests per %gs",
                    rate.requests,
                    rate.period,
                )
            entry.limiter.set_rate(rate)
        entry.explicit = True
    entry.users += 1
    return entry.limiter


async def release_shared_limiter(base_url: str, api_key: str) -> None:
    """A client is done with its token's limiter. The last one out closes a limiter
    that holds a connection of its own (the Redis one); an in-process limiter stays,
    with what it has learnt, for the next client on this loop."""
    try:
        per_loop = _registry.get()
    except LookupError:
        return
    key = (base_url, token_hash(base_url, api_key))
    entry = per_loop.get(key)
    if entry is None:
        return
    entry.users -= 1
    aclose = getattr(entry.limiter, "aclose", None)
    if entry.users <= 0 and aclose is not None:
        del per_loop[key]
        await aclose()
