"""The budget as constraints: each allows so many requests now and says when that
next changes; a request goes only when every one of them allows it.

* the **window**: no more than the plan's slots taken (kept by each backend: a
  deque in the process, a sorted set in Redis), less a **reservation** for
  someone else's use of the token, which fades;
* the **gate**: nothing until a 429's wait is over;
* the **cap**: the freshest ``X-RateLimit-Remaining``, less ours sent since;
* the **pace**: sends spaced to so many a second, so many at once (a GCRA).

This is data, and reading it is the one thing written in both languages: here,
and in the Redis scripts' evaluator (``_redis_scripts.py``), which
``tests/test_limiter_parity.py`` holds to the same answers. What *changes* the
data (what a 429 or a ``Remaining`` teaches) is written once, in ``_rules.py``.
Times are on the backend's clock: the event loop's, or Redis's.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["NEVER", "Cap", "Learned", "Pacing", "Reservation", "evaluate"]

#: A time long past: no gate, no reservation (JSON has no infinity).
NEVER = -1e18


@dataclass(slots=True)
class Reservation:
    """``slots`` set aside for someone else until ``start``, fading linearly to none
    at ``end``."""

    slots: float = 0.0
    start: float = NEVER
    end: float = NEVER

    def at(self, now: float) -> int:
        """Slots set aside at ``now``."""
        if self.slots <= 0 or now >= self.end:
            return 0
        if now <= self.start:
            return math.ceil(self.slots)
        return math.ceil(self.slots * (self.end - now) / (self.end - self.start) - 1e-9)

    def next_change(self, now: float) -> float | None:
        n = self.at(now)
        if n <= 0:
            return None
        if now < self.start:
            return self.start
        # ceil(slots * left) drops to n - 1 once left <= (n - 1) / slots.
        return self.end - (self.end - self.start) * (n - 1) / self.slots


@dataclass(slots=True)
class Cap:
    """``Remaining`` was ``remaining`` when request number ``seq`` was answered,
    ``at``. It holds until ``until``, meanwhile coming back at the plan's rate if
    it ``refills``, or not at all (a fixed window near its reset)."""

    remaining: int
    seq: int
    at: float
    until: float
    refills: bool

    def allows(self, now: float, next_seq: int, reserved: int, limit: int, period: float) -> int:
        if now >= self.until:
            return limit
        since = now - self.at
        # Ours sent after it, and what someone else is reckoned to take meanwhile
        # (at the rate reserved for them), less what came back.
        after = next_seq - self.seq - 1
        refilled = math.floor(since * limit / period) if self.refills else 0
        taken = math.ceil(reserved * since / period - 1e-9)
        return max(0, self.remaining - after + refilled - taken)

    def next_change(self, now: float, limit: float, period: float) -> float:
        if not self.refills:
            return self.until
        rate = limit / period
        return min(self.until, self.at + (math.floor((now - self.at) * rate) + 1) / rate)


@dataclass(slots=True)
class Pacing:
    """Sends spaced to ``pace`` a second, ``burst`` at once, following ``steps``:
    ``(from, pace, burst)``, the first when the setting last changed, each later
    one a step of relaxing; a pace of 0 spaces nothing. ``quiet`` is the spell
    between steps."""

    steps: list[tuple[float, float, int]]
    quiet: float

    def now(self, now: float) -> tuple[int, float, int]:
        """The step in force: its index, pace and burst."""
        index = 0
        for i in range(1, len(self.steps)):
            if self.steps[i][0] > now:
                break
            index = i
        _, pace, burst = self.steps[index]
        return index, pace, burst

    def since(self, now: float) -> float:
        """When the step in force began."""
        return self.steps[self.now(now)[0]][0]

    def allows(self, now: float, tat: float) -> int | None:
        _, pace, burst = self.now(now)
        if pace <= 0:
            return None
        return max(0, min(burst, math.floor((now - tat) * pace + burst + 1e-9)))

    def next_change(self, now: float, tat: float) -> float | None:
        index, pace, burst = self.now(now)
        later = self.steps[index + 1][0] if index + 1 < len(self.steps) else None
        if pace <= 0 or (self.allows(now, tat) or 0) > 0:
            return later
        free_at = tat - (burst - 1) / pace
        return free_at if later is None else min(free_at, later)


@dataclass(slots=True)
class Learned:
    """What the answers taught, shared by every process of a Redis limiter: the
    gate, the reservation, the pacing, and the run of 429s."""

    gate: float = NEVER
    reservation: Reservation = field(default_factory=Reservation)
    pacing: Pacing | None = None
    #: 429s in a row, and when the last came.
    streak: int = 0
    last_refused: float = NEVER

    def to_json(self) -> str:
        r = self.reservation
        data: dict[str, Any] = {
            "gate": self.gate,
            "reserve": [r.slots, r.start, r.end],
            "streak": self.streak,
            "last_refused": self.last_refused,
        }
        if self.pacing is not None:
            data["pacing"] = {"steps": self.pacing.steps, "quiet": self.pacing.quiet}
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str | bytes) -> Learned:
        data = json.loads(text)
        pacing = data.get("pacing")
        return cls(
            gate=data["gate"],
            reservation=Reservation(*data["reserve"]),
            pacing=None
            if pacing is None
            else Pacing([(a, p, int(b)) for a, p, b in pacing["steps"]], pacing["quiet"]),
            streak=data["streak"],
            last_refused=data["last_refused"],
        )


def evaluate(
    learned: Learned,
    cap: Cap | None,
    now: float,
    *,
    held: int,
    next_seq: int,
    tat: float,
    limit: int,
    period: float,
) -> tuple[int, list[float]]:
    """What every constraint but the window's own slots allows now (``held`` of
    them taken), and when each may next allow more (the window's next free slot
    is the backend's to add)."""
    if now < learned.gate:
        return 0, [learned.gate]
    reserved = learned.reservation.at(now)
    tat = max(tat, learned.gate)
    free = limit - held - reserved
    times: list[float] = []
    if cap is not None and now < cap.until:
        free = min(free, cap.allows(now, next_seq, reserved, limit, period))
        times.append(cap.next_change(now, limit, period))
    if learned.pacing is not None:
        paced = learned.pacing.allows(now, tat)
        if paced is not None:
            free = min(free, paced)
        step = learned.pacing.next_change(now, tat)
        if step is not None:
            times.append(step)
    fades = learned.reservation.next_change(now)
    if fades is not None:
        times.append(fades)
    return max(0, free), times
