"""Every tuning number of the rate limiter, in one place.

The limiter keeps its guarantee (never more than the plan in any window) with
no tuning at all: these numbers decide only how it learns a server that
counts differently from its plan, or someone else spending the token. Only
the rules read them (``_rules.py``), in Python whichever the backend: the
Redis scripts hold none (``tests/test_limiter_parity.py`` checks). Each says
what it does, and which benchmark row judges it where one does.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["POLICY", "LimiterPolicy"]


@dataclass(frozen=True, slots=True)
class LimiterPolicy:
    """The limiter's tuning (see the module doc); :data:`POLICY` is the one in use."""

    #: After a 429 with no time from the server, the gate stays shut for this many of
    #: the plan's intervals (``period / limit``): enough for a gateway that counts per
    #: second to let one more in (``rate_limit.py``'s per-second row).
    refusal_wait_intervals: float = 2.0
    #: ... but never more than this share of the period for the first refusal.
    refusal_wait_most_share: float = 0.25
    #: Each further refusal in a row doubles the wait, up to this share of the period: a
    #: counter that counts refusals too must be left to fall (``count_rejected`` row).
    refusal_backoff_most_share: float = 0.5
    #: The gate never stays shut longer than this many periods, whatever the server said.
    gate_most_periods: float = 2.0
    #: A pace refused again keeps this share of itself (judged by ``rate_limit.py``'s
    #: token-bucket and per-second rows).
    pace_backoff: float = 0.85
    #: The pace never drops below this share of the plan's rate.
    pace_floor: float = 0.25
    #: Periods without a 429 before the pacing relaxes a step: the first spell, and the
    #: longest (a 429 right after relaxing doubles the next spell).
    quiet_periods: float = 2.0
    quiet_most_periods: float = 16.0
    #: Someone else's share, as estimated, is held with this margin: one slot and this
    #: share more (their use wobbles and the window is run full; judged by
    #: ``rate_limit.py``'s hidden-spender rows).
    others_margin: float = 0.1
    #: Estimates of someone else's share whose median is taken (a request that
    #: overtook another on the way skews one).
    others_samples: int = 5
    #: A 429 with at least this share of the window's budget ours, and at least
    #: ``full_window_others`` not, tells a full window (someone else) from a server
    #: that counts finely (which refuses a burst early).
    full_window_ours: float = 0.5
    full_window_others: float = 0.1
    #: While the server says nothing of its count, requests in flight are kept to this
    #: many times what the plan's rate needs at the quickest round trip, and at least
    #: ``flight_least`` (without it, approximate-counter rows fell to 0.87-0.88 of their
    #: sustained rate and a hidden spender drew 2.6% 429s).
    flight_factor: float = 2.0
    flight_least: int = 4
    #: A request in flight longer than this many median round trips (and at least this
    #: share of the period) stops counting toward that cap: a hung connection.
    stale_round_trips: float = 4.0
    stale_least_share: float = 1 / 30
    #: Seconds of slack on a waiting process's promise to ask Redis again (its wait and
    #: turn, then this): one that breaks it loses its place in the queue.
    queue_slack: float = 1.0
    #: Redis away: a process with a fallback asks it again after this share of a period.
    redis_retry_share: float = 1 / 8
    #: ``status()`` of the Redis limiter asks Redis again once its figures are older
    #: than this share of a period.
    status_fresh_share: float = 1 / 20


POLICY = LimiterPolicy()
