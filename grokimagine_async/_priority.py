"""Interactive calls ahead of bulk work, and bulk work's share kept.

**Rule**: every request waits in one of two lines, by the priority of the call
it belongs to. The interactive line is served first while interactive requests
have had fewer than ``1 - BULK_MIN_SHARE`` of the plan granted within the last
period; past that, the bulk line is served first. And
while interactive calls come, bulk work leaves a few of the window's slots free
for them (:func:`reserve`: a quarter as many as they took within the last
period, at least one). A batch that fills the plan takes every slot as it
frees, and its slots free in clumps, so an interactive call first in line
would still wait for the next clump, up to most of a period. A slot that frees
within :data:`KEEP_WITHIN` of a period counts as one left free, while the
window's slots are what limits grants (not pacing after a 429, say): so an
interactive call waits that long at most, and while the batch's slots free
evenly it leaves none idle (one idle slot is a plan's share a period,
about 2% of a batch's time).

So a web handler's call waits neither behind a batch's thousands nor for the
window, and a batch keeps at least :data:`BULK_MIN_SHARE` of the plan however
many interactive calls come. With no interactive call within a period nothing
is kept (a batch alone has the whole plan): the first interactive calls after
a quiet spell, within a window a batch has filled, may wait up to a period.

Every queue a request passes applies it: the place on the wire
(:mod:`._flight`), the in-process limiter, the Redis limiter's local queue, and,
across processes, the Redis queue, which counts the interactive grants of every
process in its window.

A call's priority is a context variable: the bulk calls set ``BULK`` for all
they run, a single call ``INTERACTIVE`` unless told otherwise, and the
requests they make inherit it.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Generic, TypeVar

__all__ = [
    "BULK_MIN_SHARE",
    "HEADROOM",
    "KEEP_WITHIN",
    "Priority",
    "WaitQueue",
    "current_priority",
    "lead_room",
    "may_lead",
    "prioritised",
    "reserve",
]


class Priority(str, enum.Enum):
    """Which line a call's requests wait in when the plan is busy."""

    #: A caller is waiting on it (a web handler's ``submit``, say): served first.
    INTERACTIVE = "interactive"
    #: Part of a batch (``generate_many``, ``submit_many``, ``watch``): keeps at least
    #: :data:`BULK_MIN_SHARE` of the plan while interactive calls wait.
    BULK = "bulk"


#: The least share of the plan that bulk work keeps while interactive calls wait.
BULK_MIN_SHARE = 0.25

#: Free slots kept for interactive calls, as a share of what they took within the
#: last period: room for the next ones, and for their rate to grow.
HEADROOM = 0.25

#: A slot that frees within this share of a period counts as one kept free, while the
#: window's slots are what limits grants: the longest an interactive call first in
#: line then waits for it.
KEEP_WITHIN = 0.05

_current: ContextVar[Priority] = ContextVar("grokimagine_priority", default=Priority.INTERACTIVE)


def current_priority() -> Priority:
    """The priority of the call running in this context."""
    return _current.get()


@contextmanager
def prioritised(priority: Priority | str | None) -> Iterator[None]:
    """Run the block's requests at ``priority`` (None: keep the one in force)."""
    if priority is None:
        yield
        return
    token = _current.set(Priority(priority))
    try:
        yield
    finally:
        _current.reset(token)


def reserve(led: int, limit: int) -> int:
    """Free slots of the window that bulk work leaves to interactive calls, given
    ``led`` interactive grants within the last period: a quarter of those, at least
    one (the slots they hold are taken already); none if they took none, or have
    had their share (:func:`may_lead`)."""
    if led <= 0 or not may_lead(led, limit):
        return 0
    return max(1, math.ceil(HEADROOM * led))


def lead_room(limit: int) -> int:
    """How many interactive grants within a period may go first, on a plan of ``limit``."""
    return limit - math.ceil(BULK_MIN_SHARE * limit)


def may_lead(led: int, limit: int) -> bool:
    """Whether interactive requests go first, given ``led`` interactive grants within
    the last period on a plan of ``limit`` requests."""
    return led < lead_room(limit)


W = TypeVar("W")


class WaitQueue(Generic[W]):
    """Waiters in two lines, served by the rule in the module doc."""

    __slots__ = ("_granted", "_lines")

    def __init__(self) -> None:
        self._lines: dict[Priority, deque[W]] = {p: deque() for p in Priority}
        # When interactive requests were granted, for the share they have had.
        self._granted: deque[float] = deque()

    def __len__(self) -> int:
        return sum(len(line) for line in self._lines.values())

    def __bool__(self) -> bool:
        return any(self._lines.values())

    def append(self, waiter: W, priority: Priority | None = None) -> None:
        """Queue ``waiter`` in the line of ``priority`` (the running call's if None)."""
        self._lines[priority or current_priority()].append(waiter)

    def remove(self, waiter: W) -> bool:
        """Take ``waiter`` out of its line; False if it was in none."""
        for line in self._lines.values():
            for i, queued in enumerate(line):
                if queued is waiter:
                    del line[i]
                    return True
        return False

    def interactive_granted(self, now: float, period: float) -> int:
        """Interactive requests granted within the last ``period`` seconds."""
        granted = self._granted
        # Aged by the sum :meth:`next_aging` gives: rounded alike, it is later than now
        # for every grant kept, so that a wait until it never comes back due at once.
        while granted and granted[0] + period <= now:
            granted.popleft()
        return len(granted)

    def next_aging(self, period: float) -> float | None:
        """When the oldest interactive grant within the last ``period`` seconds leaves
        it (None if there is none)."""
        return self._granted[0] + period if self._granted else None

    def note_grant(self, priority: Priority, now: float) -> None:
        """A request of ``priority`` was granted without queueing."""
        if priority is Priority.INTERACTIVE:
            self._granted.append(now)

    def head(self, lead: bool) -> W | None:
        """The waiter served next (None if none): ``lead`` says whether interactive
        requests may go first now (:func:`may_lead`)."""
        line = self._next_line(lead)
        return None if line is None else line[0]

    def head_priority(self, lead: bool) -> Priority | None:
        """The line the next waiter is served from."""
        line = self._next_line(lead)
        if line is None:
            return None
        return Priority.INTERACTIVE if line is self._lines[Priority.INTERACTIVE] else Priority.BULK

    def count(self, priority: Priority) -> int:
        """Waiters in the line of ``priority``."""
        return len(self._lines[priority])

    def pop(self, priority: Priority) -> W | None:
        """Serve the first waiter of the line of ``priority`` (None if it is empty);
        the caller counted the grant elsewhere."""
        line = self._lines[priority]
        return line.popleft() if line else None

    def popleft(self, lead: bool, now: float) -> W:
        """Serve the next waiter (there must be one)."""
        line = self._next_line(lead)
        assert line is not None
        if line is self._lines[Priority.INTERACTIVE]:
            self._granted.append(now)
        return line.popleft()

    def _next_line(self, lead: bool) -> deque[W] | None:
        first, then = self._lines[Priority.INTERACTIVE], self._lines[Priority.BULK]
        if not lead:
            first, then = then, first
        return first or then or None
