"""What the simulated server saw, in a shape that survives a trip through JSON."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from copy import deepcopy
from dataclasses import dataclass, field
from typing import Any, NamedTuple


class RequestRecord(NamedTuple):
    """One visible request as the server logged it."""

    #: Simulator clock time when the request arrived.
    time: float
    #: ``generate``, ``status``, ``video`` or ``other``.
    endpoint: str
    #: HTTP status sent; 0 when the connection was dropped without an answer.
    status: int
    #: Whether the rate limiter counted it as an allowed request.
    counted: bool


@dataclass
class SimulatorStats:
    """Counters and a request log, as a snapshot (``Simulator.stats`` returns a fresh copy).

    The background client of ``background_share`` never appears in ``log``,
    ``requests`` or the per-endpoint counts; it has its own two counters.
    """

    #: The simulator's rate period (the default window of :meth:`max_in_window`).
    period: float = 60.0
    requests: int = 0
    by_endpoint: Counter[str] = field(default_factory=Counter)
    by_status: Counter[int] = field(default_factory=Counter)
    #: Answers with code 429, whether the limiter or a fault produced them.
    rate_limited: int = 0
    tasks_created: int = 0
    video_requests: int = 0
    #: Video downloads that carried an ``Authorization`` header (which leaks the token).
    video_requests_with_auth: int = 0
    background_requests: int = 0
    background_rejected: int = 0
    #: How many times each fault kind was applied (``status_backwards`` and
    #: ``video_not_found`` only when they changed the answer).
    faults: Counter[str] = field(default_factory=Counter)
    log: list[RequestRecord] = field(default_factory=list)
    created: list[dict[str, Any]] = field(default_factory=list)
    #: Tasks created whose id never reached the client: the ``generate`` answer was
    #: dropped, emptied, replaced by a 500, truncated before the id, or held back by a
    #: ``delay`` until its client hung up. A client that resubmits these pays twice.
    tasks_unreported: int = 0
    unreported: list[dict[str, Any]] = field(default_factory=list)

    def created_requests(self) -> list[dict[str, Any]]:
        """The request body of every task created, in creation order.

        Count server-side creations per prompt with e.g.
        ``Counter(r["prompt"] for r in stats.created_requests())``.
        """
        return deepcopy(self.created)

    def unreported_requests(self) -> list[dict[str, Any]]:
        """The request body of every task counted in :attr:`tasks_unreported`, in order.

        Each also appears in :meth:`created_requests`.
        """
        return deepcopy(self.unreported)

    def max_in_window(self, window: float | None = None) -> int:
        """The most counted (allowed) visible requests inside any span of ``window`` seconds.

        ``window`` defaults to the rate period. A request at time ``t`` is inside the span
        ``[s, s + window)``, the same rule the sliding-window limiter uses, so a client
        that never trips a 429 under any counting scheme keeps this at or below the limit.
        """
        width = self.period if window is None else window
        return max_in_window([r.time for r in self.log if r.counted], width)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (what ``GET /_sim/stats`` returns)."""
        return {
            "period": self.period,
            "requests": self.requests,
            "by_endpoint": dict(self.by_endpoint),
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "rate_limited": self.rate_limited,
            "tasks_created": self.tasks_created,
            "tasks_unreported": self.tasks_unreported,
            "video_requests": self.video_requests,
            "video_requests_with_auth": self.video_requests_with_auth,
            "background_requests": self.background_requests,
            "background_rejected": self.background_rejected,
            "faults": dict(self.faults),
            "max_in_window": self.max_in_window(),
            "log": [list(r) for r in self.log],
            "created_requests": deepcopy(self.created),
            "unreported_requests": deepcopy(self.unreported),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SimulatorStats:
        """Rebuild stats from :meth:`to_dict` output, e.g. a simulator in another process.

        Output of a simulator from before ``tasks_unreported`` existed reads as none.
        """
        return cls(
            period=float(data["period"]),
            requests=int(data["requests"]),
            by_endpoint=Counter({str(k): int(v) for k, v in data["by_endpoint"].items()}),
            by_status=Counter({int(k): int(v) for k, v in data["by_status"].items()}),
            rate_limited=int(data["rate_limited"]),
            tasks_created=int(data["tasks_created"]),
            video_requests=int(data["video_requests"]),
            video_requests_with_auth=int(data["video_requests_with_auth"]),
            background_requests=int(data["background_requests"]),
            background_rejected=int(data["background_rejected"]),
            faults=Counter({str(k): int(v) for k, v in data["faults"].items()}),
            log=[RequestRecord(float(t), str(e), int(s), bool(c)) for t, e, s, c in data["log"]],
            created=deepcopy(list(data["created_requests"])),
            tasks_unreported=int(data.get("tasks_unreported", 0)),
            unreported=deepcopy(list(data.get("unreported_requests", ()))),
        )

    def copy(self) -> SimulatorStats:
        """An independent copy."""
        # Records are immutable and request bodies are never changed once logged (readers
        # get deep copies from created_requests and unreported_requests), so shallow list
        # copies are enough and keep snapshots cheap for long benchmark runs.
        return SimulatorStats(
            period=self.period,
            requests=self.requests,
            by_endpoint=Counter(self.by_endpoint),
            by_status=Counter(self.by_status),
            rate_limited=self.rate_limited,
            tasks_created=self.tasks_created,
            video_requests=self.video_requests,
            video_requests_with_auth=self.video_requests_with_auth,
            background_requests=self.background_requests,
            background_rejected=self.background_rejected,
            faults=Counter(self.faults),
            log=list(self.log),
            created=list(self.created),
            tasks_unreported=self.tasks_unreported,
            unreported=list(self.unreported),
        )

    def record(self, time: float, endpoint: str, status: int, *, counted: bool) -> None:
        """Log one visible request (the simulator calls this; tests only read)."""
        self.requests += 1
        self.by_endpoint[endpoint] += 1
        self.by_status[status] += 1
        self.log.append(RequestRecord(time, endpoint, status, counted))


def max_in_window(times: Iterable[float], width: float) -> int:
    """The most of ``times`` inside any span ``[s, s + width)``."""
    ordered = sorted(times)
    best = left = 0
    for right, t in enumerate(ordered):
        while t - ordered[left] >= width:
            left += 1
        best = max(best, right - left + 1)
    return best
