"""Reading the rate-limit headers, whatever format the server writes them in."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

__all__ = [
    "DEFAULT_MAX_WAIT",
    "RateFeedback",
    "parse_remaining",
    "parse_reset",
    "parse_retry_after",
    "readable",
]

#: The longest wait a server's word may impose, unless the client says otherwise
#: (``AsyncClient(max_retry_after=...)``).
DEFAULT_MAX_WAIT = 120.0

# Below 1e9 a reset can only be a count of seconds: 1e9 epoch seconds is 2001.
_EPOCH_SECONDS_FLOOR = 1e9
_EPOCH_MILLIS_FLOOR = 1e12


def parse_reset(value: str | None, now: float) -> float | None:
    """Seconds from ``now`` (epoch seconds) until ``X-RateLimit-Reset``.

    The header is read as epoch milliseconds above 1e12, epoch seconds above
    1e9, and otherwise as seconds until the reset. A reset in the past gives
    0; an unreadable value gives None.
    """
    number = _number(value)
    if number is None or number < 0:
        return None
    if number > _EPOCH_MILLIS_FLOOR:
        return max(0.0, number / 1000.0 - now)
    if number > _EPOCH_SECONDS_FLOOR:
        return max(0.0, number - now)
    return number


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait per ``Retry-After``: a number of seconds or an HTTP date."""
    if value is None:
        return None
    number = _number(value)
    if number is not None:
        return number if number >= 0 else None
    try:
        when = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:  # pragma: no cover - older Pythons return None
        return None
    return max(0.0, when.timestamp() - now)


def parse_remaining(value: str | None) -> int | None:
    """``X-RateLimit-Remaining`` as a whole number, or None if unreadable."""
    number = _number(value)
    if number is None or number < 0:
        return None
    return int(number)


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None


_POLICY_PARAM = re.compile(r"(?:^|;)\s*([qw])\s*=\s*([0-9.]+)")


def parse_policy(value: str | None) -> tuple[int, float] | None:
    """``RateLimit-Policy`` (the IETF rate-limit headers): the requests a window
    allows and the window in seconds, as ``100;w=60`` (early drafts) or
    ``"default";q=100;w=60``; None when it says neither plainly (several
    policies, or none)."""
    if not value or "," in value:
        return None
    params = dict(_POLICY_PARAM.findall(value))
    head = value.split(";", 1)[0].strip()
    quota = params.get("q", head if head.isdigit() else None)
    window = params.get("w")
    try:
        requests, period = int(quota or ""), float(window or "")
    except ValueError:
        return None
    if requests < 1 or not 0 < period < math.inf:
        return None
    return requests, period


@dataclass(frozen=True)
class RateFeedback:
    """What one answer said about the token's budget; any field may be None
    when the server did not say."""

    #: The answer's HTTP status.
    status_code: int
    #: ``X-RateLimit-Remaining``: requests the server would still allow.
    remaining: int | None = None
    #: ``X-RateLimit-Reset``, as seconds from when the answer arrived.
    reset_after: float | None = None
    #: ``Retry-After``, as seconds from when the answer arrived.
    retry_after: float | None = None
    #: The client's cap on server-advised waits (``max_retry_after``): however long
    #: the server asks for, a limiter holds requests back no longer than this.
    max_wait: float = DEFAULT_MAX_WAIT
    #: ``RateLimit-Policy``, as (requests, period): the server's own word on its window.
    policy: tuple[int, float] | None = None

    @property
    def rate_limited(self) -> bool:
        """True for a 429."""
        return self.status_code == 429

    @property
    def advised_wait(self) -> float | None:
        """The wait the server asked for (``Retry-After``, else ``X-RateLimit-Reset``),
        at most :attr:`max_wait`; None when it named none that can be waited."""
        for wait in (self.retry_after, self.reset_after):
            # Built by hand, a feedback may hold what no header parses to: NaN fails this.
            if wait is not None and wait >= 0:
                return min(wait, self.max_wait)
        return None

    @classmethod
    def from_headers(
        cls,
        status_code: int,
        headers: Mapping[str, str],
        now: float,
        *,
        max_wait: float = DEFAULT_MAX_WAIT,
    ) -> RateFeedback:
        """Read the headers of an answer that arrived at ``now`` (epoch seconds), for
        a client that waits at most ``max_wait`` seconds on the server's word."""
        return cls(
            status_code=status_code,
            remaining=parse_remaining(headers.get("x-ratelimit-remaining")),
            reset_after=parse_reset(headers.get("x-ratelimit-reset"), now),
            retry_after=parse_retry_after(headers.get("retry-after"), now),
            max_wait=max_wait,
            policy=parse_policy(headers.get("ratelimit-policy")),
        )


def readable(feedback: RateFeedback | None) -> tuple[int | None, float | None]:
    """The feedback's ``remaining`` and ``reset_after``, as the header parsers give them.

    A feedback built by hand may hold what no header parses to. Less than nothing
    left is nothing left: taken as said, it would have the server missing more than
    the plan holds, and a reset that far off hold the budget shut for as long. A
    reset that is no time at all (negative, NaN, infinite) is none.
    """
    if feedback is None:
        return None, None
    remaining = feedback.remaining
    if remaining is not None:
        remaining = max(0, remaining)
    reset_after = feedback.reset_after
    if reset_after is not None and not 0 <= reset_after < math.inf:
        reset_after = None
    return remaining, reset_after
