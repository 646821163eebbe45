"""How ``rate_limit.py`` scores a run: pure functions of the request times the server logged.

The run is cut into whole windows of ``period`` seconds from its first request;
the last, partial window is left out, so nothing is counted against an
allowance that ended before it could be spent. A client that spends the plan
exactly (an even stream at ``limit / period``, or a burst of ``limit`` at the
start of every period) fills every whole window with ``limit`` requests and
scores exactly 1.0, however long the run and wherever its last request falls.
A client that sends more than the plan scores above 1. Windows aligned to the
run cannot see two bursts on either side of a boundary; ``max_in_window``,
which slides, does.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Sequence

# Request times are sums of floats (start + i * period / limit); without slack a request
# due exactly on a window's boundary could land a few ulps early, in the window before.
EPS = 1e-9


def whole_windows(start: float, end: float, period: float) -> int:
    """How many whole ``period``-long windows fit between ``start`` and ``end``."""
    if period <= 0:
        raise ValueError(f"period must be above 0, got {period}")
    return max(0, math.floor((end - start) / period + EPS))


def window_counts(times: Sequence[float], period: float, start: float, end: float) -> list[int]:
    """Requests in each whole window ``[start + k*period, start + (k+1)*period)``.

    Times outside the whole windows (before ``start``, or in the partial window
    at the end) are left out.
    """
    counts = [0] * whole_windows(start, end, period)
    for t in times:
        k = math.floor((t - start) / period + EPS)
        if 0 <= k < len(counts):
            counts[k] += 1
    return counts


def _bounds(
    times: Sequence[float], start: float | None, end: float | None
) -> tuple[float, float] | None:
    if start is None or end is None:
        if not times:
            return None
        start = min(times) if start is None else start
        end = max(times) if end is None else end
    return start, end


def utilisation(
    accepted: Sequence[float],
    limit: int,
    period: float,
    *,
    start: float | None = None,
    end: float | None = None,
) -> float:
    """Accepted requests in the run's whole windows over what the plan allows in them.

    ``start`` and ``end`` are the run's first and last request (of any answer);
    they default to the first and last of ``accepted``. NaN when the run holds
    no whole window.
    """
    counts = _whole_window_counts(accepted, period, start, end)
    return sum(counts) / (limit * len(counts)) if counts else math.nan


def throughput(
    accepted: Sequence[float],
    period: float,
    *,
    start: float | None = None,
    end: float | None = None,
) -> float:
    """Accepted requests per second over the same whole windows as :func:`utilisation`."""
    counts = _whole_window_counts(accepted, period, start, end)
    return sum(counts) / (period * len(counts)) if counts else math.nan


def _whole_window_counts(
    accepted: Sequence[float], period: float, start: float | None, end: float | None
) -> list[int]:
    bounds = _bounds(accepted, start, end)
    return [] if bounds is None else list(window_counts(accepted, period, *bounds))


def max_in_window(times: Sequence[float], period: float) -> int:
    """The most requests inside any span ``[s, s + period)``, wherever ``s`` falls."""
    ordered = sorted(times)
    best = lo = 0
    for hi, t in enumerate(ordered):
        while t - ordered[lo] >= period - EPS:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def trailing_counts(times: Sequence[float], period: float, at: Sequence[float]) -> list[int]:
    """For each instant in ``at``, the requests in the ``period`` seconds up to and including it."""
    ordered = sorted(times)
    return [bisect_right(ordered, x) - bisect_left(ordered, x - period + EPS) for x in at]
