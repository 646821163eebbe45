"""What the server's answers teach the limiter: the rules, written once.

Both backends call these on every answer, with what their window held at
that moment (:class:`Window`), and keep the result (:class:`Learned`, a
:class:`Cap`): the in-process limiter in memory, the Redis one in Redis,
written back only if no other process changed it meanwhile. None of them
loosens the plan: a rule may only hold requests back.

* A 429 is a refusal the plan cannot explain (the window keeps ours under it):
  the server counts more finely, or counts someone else. It shuts the gate
  (``Retry-After``, else ``X-RateLimit-Reset``, else two of the plan's
  intervals, doubling with each refusal in a row), sets aside what ours do not
  account for, and paces sends.
* A ``Remaining`` lower than ours explain is someone else's use: set aside,
  with a margin, for a period, then fading over another.
* The freshest ``Remaining`` is a cap on what goes next.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

from ._config import RateLimit
from ._constraints import Cap, Learned, Pacing, Reservation
from ._headers import RateFeedback
from ._policy import POLICY

__all__ = ["Window", "cap_from", "initial", "refused", "told"]

logger = logging.getLogger("grokimagine_async")

#: Steps a pacing schedule is planned for, at most (from the floor up to off takes
#: about 9 of pace and one a doubling of the burst).
_MOST_STEPS = 48


@dataclass(frozen=True, slots=True)
class Window:
    """The window when an answer came, as the backend counts it."""

    #: Slots taken: in flight, and answered within a period (every process's).
    held: int
    in_flight: int
    #: Answered within a period and not refused.
    ours: int
    #: Of those held, sent before the answered request.
    before: int
    #: Ours that left the window while the request was on its way (the server may
    #: have counted them when it answered).
    aged: int = 0


def initial(rate: RateLimit, now: float) -> Learned:
    """Nothing learnt yet; a stated burst paces from the start."""
    if rate.burst is None:
        return Learned()
    return Learned(pacing=Pacing([(now, rate.per_second, rate.burst)], _quiet(rate)))


def _quiet(rate: RateLimit) -> float:
    return POLICY.quiet_periods * rate.period


def _with_margin(others: int, limit: int) -> int:
    return min(limit, others + 1 + math.floor(others * POLICY.others_margin))


def _reserve(learned: Learned, start: float, end: float, slots: int) -> None:
    if slots >= learned.reservation.at(start):
        learned.reservation = Reservation(float(slots), start, max(end, start + 1e-6))


def answered(learned: Learned, taken_at: float) -> None:
    """An answer that is not a 429: only one to a request sent after the last
    refusal ends a run of them (one sent before says nothing of the count since)."""
    if learned.streak and taken_at >= learned.last_refused:
        learned.streak = 0


def refused(
    learned: Learned,
    window: Window,
    now: float,
    taken_at: float,
    feedback: RateFeedback,
    rate: RateLimit,
) -> None:
    """A 429 answered a request taken at ``taken_at``."""
    limit, period = rate.requests, rate.period
    learned.streak += 1
    learned.last_refused = now
    # Without a time from the server: a couple of the plan's intervals, enough for a
    # gateway that counts per second to let one more in, doubling with each refusal
    # in a row (a counter that counts refusals too must be left to fall).
    base = min(
        POLICY.refusal_wait_most_share * period, POLICY.refusal_wait_intervals * period / limit
    )
    backoff = min(
        POLICY.refusal_backoff_most_share * period, base * 2 ** min(learned.streak - 1, 16)
    )
    wait = feedback.advised_wait
    if wait is None:
        wait = backoff
    elif learned.streak > 1:
        # The server's time proved too short (someone else took the room it saw).
        wait = max(wait, backoff)
    # Never past the client's cap: a server asking for an hour gets the caller's call
    # failed at once (the wire's rule), not every request of the token held that long.
    wait = min(wait, POLICY.gate_most_periods * period, feedback.max_wait)
    learned.gate = gate = max(learned.gate, now + wait)
    # Most of the budget ours and let in, and a tenth or more not: the window is full
    # (counting finely refuses a burst early) and the rest is someone else's, held for
    # a period after the gate (the window frees no sooner than ours age out), then
    # fading. Otherwise what ours do not cover is not known to be free: let out over
    # a period, not in one burst.
    others = limit - window.in_flight - window.ours
    share: int | None = window.ours
    if window.ours / limit < POLICY.full_window_ours or others / limit < POLICY.full_window_others:
        share = None
        if limit - window.held > 0:
            _reserve(learned, gate, gate + period, limit - window.held)
    else:
        _reserve(learned, gate + period, gate + 2 * period, _with_margin(others, limit))
    # Judged only by requests sent under the setting in force (since its last step).
    if learned.pacing is None or taken_at >= learned.pacing.since(now):
        learned.pacing = _tightened(learned.pacing, now, rate, share)


def _tightened(pacing: Pacing | None, now: float, rate: RateLimit, share: int | None) -> Pacing:
    """A 429 of a request sent under the current setting: the burst halves down to
    one, then the pace drops, never below the floor (and under ``share`` of the
    window, when the rest is someone else's). It relaxes a step each quiet spell,
    a spell that doubles when a 429 comes right after relaxing."""
    plan_rate = rate.per_second
    if pacing is None:
        quiet, pace, burst = _quiet(rate), plan_rate, 1
        refused_pace = None
    else:
        quiet = pacing.quiet
        index, pace, burst = pacing.now(now)
        if index > 0 and now - pacing.steps[index][0] < quiet:
            quiet = min(POLICY.quiet_most_periods * rate.period, quiet * 2)
        refused_pace = pace if burst == 1 and pace > 0 else None
        if pace <= 0:
            pace, burst = plan_rate, 1
        elif burst > 1:
            burst = max(1, burst // 2)
        else:
            pace = max(plan_rate * POLICY.pace_floor, pace * POLICY.pace_backoff)
    if share is not None:
        pace = max(plan_rate * POLICY.pace_floor, min(pace, share / rate.period))
    logger.info(
        "the server refused a request the plan allows (%d per %gs): it counts more "
        "finely, or someone else spends the token; pacing to %.3g requests/s, %d at once",
        rate.requests,
        rate.period,
        pace,
        burst,
    )
    return Pacing(_relaxing(now, pace, burst, quiet, refused_pace, rate), quiet)


def _relaxing(
    now: float, pace: float, burst: int, quiet: float, refused_pace: float | None, rate: RateLimit
) -> list[tuple[float, float, int]]:
    """The steps from ``now``: the pace back up to the plan's rate (by half steps up
    to one that was refused, not past it), then the burst doubling, then off (or
    the stated burst, for good)."""
    plan_rate, most = rate.per_second, rate.burst or rate.requests
    steps = [(now, pace, burst)]
    at = now
    while len(steps) < _MOST_STEPS:
        at += quiet
        if pace < plan_rate:
            step = 1 / POLICY.pace_backoff
            if refused_pace is not None and pace < refused_pace:
                step = min(math.sqrt(step), refused_pace / pace)
            pace = min(plan_rate, pace * step)
            if refused_pace is not None and pace >= refused_pace * (1 - 1e-9):
                refused_pace = None
        elif burst < most:
            burst = min(most, burst * 2)
        elif rate.burst is None:
            steps.append((at, 0.0, rate.requests))
            break
        else:
            break
        steps.append((at, pace, burst))
    return steps


def replanned(learned: Learned, now: float, rate: RateLimit) -> None:
    """The plan changed: the pacing goes on from where it is, towards the new plan."""
    if learned.pacing is not None:
        _, pace, burst = learned.pacing.now(now)
        if pace <= 0:
            learned.pacing = None
        else:
            burst = min(burst, rate.burst or burst)
            steps = _relaxing(now, pace, burst, learned.pacing.quiet, None, rate)
            learned.pacing = Pacing(steps, max(learned.pacing.quiet, _quiet(rate)))
    elif rate.burst is not None:
        learned.pacing = initial(rate, now).pacing


def told(
    learned: Learned,
    window: Window,
    now: float,
    remaining: int,
    reset_after: float | None,
    samples: Sequence[int],
    limit: int,
    period: float,
) -> int | None:
    """A ``Remaining`` came: someone else's use of the window, if it shows any, is
    set aside. ``samples`` are the last estimates of it (the new one is returned,
    for the caller to keep): a request that overtook another on the way makes one
    too high or too low, so their median is taken."""
    missing = limit - remaining
    if reset_after is not None and reset_after * limit / period < missing - window.held:
        # All back sooner than the plan's rate could free what is missing: the server
        # holds fewer than the plan at once (a bucket with a small burst), not
        # someone else's requests. The cap covers it.
        return None
    estimate = missing - window.before - 1
    # Even if every one of ours the server may count had been counted before this
    # one, what is left over is someone else's: proof that they exist.
    proven = missing - window.held - window.aged
    if proven > 0:
        ordered = sorted([*samples, estimate])
        others = max(proven, ordered[(len(ordered) - 1) // 2])
        # Their use wobbles and the window is run full: a margin rather than 429s.
        # Held whole for a period (a fixed window shows the full share only near its
        # end), then fading over another, as a sliding window sheds it.
        _reserve(learned, now + period, now + 2 * period, _with_margin(others, limit))
    return estimate


def cap_from(
    remaining: int,
    seq: int,
    now: float,
    reset_after: float | None,
    max_wait: float,
    limit: int,
    period: float,
    *,
    out: float = 0.0,
) -> Cap:
    """The cap a ``Remaining`` sets. A ``Reset`` that says everything is back sooner
    than the plan's rate could free what is missing (a slot's slack either way:
    headers round one down, the other up) is a fixed window near its end: nothing
    comes back before it. The server read its clock up to ``out`` (how long the
    request was out) before the answer came, so only a reset short even with that
    added says so: a sliding window full to its last request says it empties in
    a period, which a round trip's delay would otherwise shorten into a fixed
    window's, and shut the budget for a period. A reset further off than the
    client's cap on advised waits holds nothing back (a call refused for longer
    fails at once)."""
    if (
        reset_after is not None
        and reset_after <= max_wait
        and (reset_after + out) * limit / period < limit - remaining - 1
    ):
        return Cap(remaining, seq, now, now + reset_after, refills=False)
    return Cap(remaining, seq, now, now + period, refills=True)
