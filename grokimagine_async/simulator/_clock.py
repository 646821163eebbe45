"""A clock tests can move by hand."""

from __future__ import annotations

import threading


class ManualClock:
    """A clock that only moves when told to; pass it as ``Simulator(clock=...)``.

    Task progress and rate windows then depend on :meth:`advance` alone, so a test can
    walk a task through ``pending``, ``running`` and ``completed`` without sleeping::

        clock = ManualClock()
        sim = Simulator(clock=clock, generation_time=(10, 10))
        ...                # create a task
        clock.advance(10)  # now it is completed

    Only the simulator's view of time moves: ``delay`` faults and client timeouts still
    run on real time.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        """The current time in seconds."""
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        """Move time forward by ``seconds`` (not backwards); return the new time."""
        if seconds < 0:
            raise ValueError(f"a clock only moves forward, got {seconds}")
        with self._lock:
            self._now += seconds
            return self._now

    def set(self, now: float) -> None:
        """Jump to ``now``, which must not be earlier than the current time."""
        with self._lock:
            if now < self._now:
                raise ValueError(f"a clock only moves forward: {now} < {self._now}")
            self._now = now
