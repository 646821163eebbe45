"""The simulator's knobs: one frozen dataclass with a default for everything."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, get_args

RateModel = Literal["fixed", "sliding", "gcra", "leaky", "approximate", "haproxy"]
"""How the server counts requests per token.

``"fixed"``: a counter per window, windows aligned to multiples of ``period`` since the
simulator started. ``"sliding"``: a log of request times; a request counts for exactly
``period`` seconds after it was made. ``"gcra"``: a token bucket holding ``limit``
requests that refills at ``limit / period`` per second.

``"leaky"``: a leaky bucket ``burst`` requests deep (``limit`` when ``burst`` is
``None``, which makes it ``"gcra"``) that drains at ``limit / period`` per second:
``burst`` requests may go at once, then one every ``period / limit`` seconds, as an API
gateway enforces a per-minute plan per second.

``"approximate"``: the two-window counter of many gateways: fixed windows as for
``"fixed"``; a request is allowed while the current window's count plus the previous
window's count, weighted by the share of the current window still to run, is below
``limit``. Like the real ones it can let more than ``limit`` through within one
sliding period. Its ``X-RateLimit-Reset`` is when that count is back at zero: the end
of the next window at the latest.

``"haproxy"``: HAProxy's ``http_req_rate`` in a stick table, refusing above ``limit``:
the count of ``"approximate"``, with its windows starting at the token's first request
(again after two idle periods), the request counted before the check and the count
rounded up, so a request goes only while a whole one fits. Pair it with
``count_rejected=True`` (HAProxy tracks a request before it refuses it) and
``rate_headers=False``.
"""

ResetFormat = Literal["epoch_s", "epoch_ms", "delta_s"]
"""How ``X-RateLimit-Reset`` is written: epoch seconds, epoch milliseconds, or seconds from now."""

RetryAfterFormat = Literal["seconds", "http-date"]
"""How ``Retry-After`` is written on a 429."""

Phase = Literal["pending", "running", "completed", "failed"]
"""The four phases of a task; :attr:`SimulatorConfig.status_words` names each on the wire."""

Tier = Literal["free", "pro", "enterprise"]
"""A documented plan, as ``SimulatorConfig.for_tier`` and ``--tier`` take it."""

TIER_LIMITS: Mapping[Tier, int] = MappingProxyType({"free": 100, "pro": 1000, "enterprise": 5000})
"""Requests per minute per token on each documented plan."""

FAILURE_MESSAGES: tuple[str, ...] = (
    "File type not supported",
    "Inappropriate content, please try another prompt.",
    "grok imagine build failed",
    "Network error, please try again later.",
)
"""The four ``error_message`` values the provider documents."""

DEFAULT_STATUS_WORDS: Mapping[Phase, str] = MappingProxyType(
    {"pending": "pending", "running": "processing", "completed": "completed", "failed": "failed"}
)

DOCUMENTED_MODES: tuple[str, ...] = ("fun", "normal", "spicy")
DOCUMENTED_RATIOS: tuple[str, ...] = ("1:1", "2:3", "3:2")

_PHASES: tuple[Phase, ...] = get_args(Phase)


def _default_failure_weights() -> Mapping[str, float]:
    return MappingProxyType(dict.fromkeys(FAILURE_MESSAGES, 1.0))


@dataclass(frozen=True)
class SimulatorConfig:
    """Everything the simulated server can be told; every field has a realistic default.

    Build one directly, or pass the same names as keyword overrides to
    :class:`~grokimagine_async.simulator.Simulator`::

        config = SimulatorConfig(limit=5, period=1.0, rate_model="fixed")
        config = SimulatorConfig.for_tier("pro", failure_rate=0.1)

    Rate limiting:
        ``limit`` requests per ``period`` seconds per token (``tokens`` overrides the limit
        for named tokens). ``api_keys`` of ``None`` accepts any non-empty bearer token;
        otherwise only those listed, anything else gets a 401. ``count_status`` makes
        status polls count (the contract's reading: every request counts).
        ``count_rejected`` makes refused (429) requests count against the window as
        well (they fill the bucket of ``"gcra"`` and ``"leaky"``), which keeps a client
        that hammers the server locked out.
        ``rate_model`` says how the server counts (see
        :data:`~grokimagine_async.simulator.RateModel`). ``burst`` is the depth of the
        ``"leaky"`` bucket: how many requests may go at once before the rest are paced
        at one every ``period / limit`` seconds. ``None`` makes it each token's own
        limit (the whole plan at once); a number applies to every token. The other
        models accept ``burst`` and ignore it.
        ``background_share`` (0..1) adds an invisible second client on every token
        that spends that share of the limit, spread evenly over time; it is counted by
        the limiter but never appears in the request log.

    Headers:
        ``X-RateLimit-Remaining`` is how many requests the token could still send right
        now, one after another; ``X-RateLimit-Reset`` is when the token's counter is
        empty again (its full limit, or the leaky bucket's ``burst``, available),
        written as ``reset_format`` says. ``rate_headers=False`` leaves both out, as
        many gateways do. ``retry_after`` chooses how ``Retry-After`` (when one more
        request is allowed) is written on 429s (``None`` leaves it out).

    Generation:
        Each task takes ``generation_time`` (uniform, seconds) from creation to its
        end, of which the first ``queue_fraction`` is ``pending`` and the rest
        ``running``. It fails with probability ``failure_rate``, with a message drawn
        from ``failure_messages`` (weights). A successful task yields
        ``videos_per_task`` URLs (an int, or an inclusive ``(low, high)`` range; 0 gives
        ``completed`` with an empty list). ``credits_per_video`` is what one generation
        (one task) charges, shown as ``consumed_credits`` from creation on; failed
        tasks keep the charge unless ``refund_failed``. ``status_words`` renames the
        phases (a partial mapping is merged over the defaults).

    Contract readings:
        ``errors_as_http_200`` answers every JSON error with HTTP 200 and the error's
        ``code`` inside the body. ``extra_modes`` / ``extra_ratios`` accept values
        beyond the documented ones.

    Videos:
        Each fake mp4 is ``video_bytes`` long and begins with a real ``ftyp`` box.
        ``video_ttl`` (seconds after completion) makes URLs expire with a 403, like a
        signed CDN URL. ``video_base_url`` puts video URLs on another host than the
        one the API request came in on; ``{scheme}``, ``{host}`` and ``{port}`` in it
        are filled in from the status request, so a server on a random port can still
        hand out e.g. ``http://127.0.0.1:{port}`` while the API is called as
        ``http://localhost:<port>``. ``video_redirect`` makes every video URL answer
        ``302 Found`` to a signed location (the same path with ``?sig=...``), as a
        CDN does; the redirect and its target both count in ``video_requests`` and
        ``video_requests_with_auth``.
    """

    limit: int = 100
    period: float = 60.0
    tokens: Mapping[str, int] | None = None
    api_keys: Collection[str] | None = None
    rate_model: RateModel = "sliding"
    burst: int | None = None
    reset_format: ResetFormat = "epoch_s"
    rate_headers: bool = True
    retry_after: RetryAfterFormat | None = "seconds"
    count_rejected: bool = False
    count_status: bool = True
    background_share: float = 0.0

    generation_time: tuple[float, float] = (20.0, 90.0)
    queue_fraction: float = 0.2
    failure_rate: float = 0.0
    failure_messages: Mapping[str, float] = field(default_factory=_default_failure_weights)
    videos_per_task: int | tuple[int, int] = 1
    credits_per_video: int = 40
    refund_failed: bool = False
    status_words: Mapping[Phase, str] = field(default_factory=lambda: DEFAULT_STATUS_WORDS)

    errors_as_http_200: bool = False
    extra_modes: Collection[str] = ()
    extra_ratios: Collection[str] = ()

    video_ttl: float | None = None
    video_bytes: int = 4096
    video_base_url: str | None = None
    video_redirect: bool = False

    #: Seconds of the simulator's clock per second of the time it stands for: 2/60
    #: for a 2-second "minute". Headers that carry whole seconds (Retry-After, a
    #: Reset delta) are then rounded to whole seconds of that time, as a real server
    #: rounds on the real clock (``Retry-After: 0.0333`` for one such second).
    time_scale: float = 1.0

    def __post_init__(self) -> None:
        self._check_rates()
        self._check_generation()
        self._check_videos()
        # Normalising here means every consumer can rely on the final shapes.
        words = {**DEFAULT_STATUS_WORDS, **dict(self.status_words)}
        object.__setattr__(self, "status_words", MappingProxyType(words))
        object.__setattr__(self, "generation_time", tuple(self.generation_time))
        if isinstance(self.videos_per_task, list):
            object.__setattr__(self, "videos_per_task", tuple(self.videos_per_task))
        if self.video_base_url is not None:
            object.__setattr__(self, "video_base_url", self.video_base_url.rstrip("/"))

    def _check_rates(self) -> None:
        if not (self.time_scale > 0 and math.isfinite(self.time_scale)):
            raise ValueError(f"time_scale must be a positive number, got {self.time_scale}")
        if self.limit < 1:
            raise ValueError(f"limit must be at least 1, got {self.limit}")
        if not (self.period > 0 and math.isfinite(self.period)):
            raise ValueError(f"period must be a positive number of seconds, got {self.period}")
        for limit in (self.tokens or {}).values():
            if limit < 1:
                raise ValueError(f"every per-token limit must be at least 1, got {limit}")
        if self.api_keys is not None and isinstance(self.api_keys, str):
            raise TypeError("api_keys must be a collection of tokens, not one string")
        _check_choice("rate_model", self.rate_model, get_args(RateModel))
        burst = self.burst
        if burst is not None and (
            isinstance(burst, bool) or not isinstance(burst, int) or burst < 1
        ):
            raise ValueError(
                f"burst must be a whole number of requests >= 1 or None, got {burst!r}"
            )
        _check_choice("reset_format", self.reset_format, get_args(ResetFormat))
        if self.retry_after is not None:
            _check_choice("retry_after", self.retry_after, get_args(RetryAfterFormat))
        if not 0.0 <= self.background_share <= 1.0:
            raise ValueError(f"background_share must be within 0..1, got {self.background_share}")

    def _check_generation(self) -> None:
        low, high = self.generation_time
        if not 0.0 <= low <= high:
            raise ValueError(f"generation_time needs 0 <= min <= max, got {low, high}")
        if not 0.0 <= self.queue_fraction <= 1.0:
            raise ValueError(f"queue_fraction must be within 0..1, got {self.queue_fraction}")
        if not 0.0 <= self.failure_rate <= 1.0:
            raise ValueError(f"failure_rate must be within 0..1, got {self.failure_rate}")
        weights = dict(self.failure_messages)
        if not weights or any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise ValueError("failure_messages needs at least one message with a positive weight")
        if self.credits_per_video < 0:
            raise ValueError(f"credits_per_video must be >= 0, got {self.credits_per_video}")
        unknown = set(self.status_words) - set(_PHASES)
        if unknown:
            raise ValueError(f"status_words keys must be among {_PHASES}, got {sorted(unknown)}")

    def _check_videos(self) -> None:
        videos = self.videos_per_task
        if isinstance(videos, int):
            if videos < 0:
                raise ValueError(f"videos_per_task must not be negative, got {videos}")
        else:
            low, high = videos
            if not 0 <= low <= high:
                raise ValueError(f"videos_per_task range must be 0 <= low <= high, got {videos}")
        if self.video_ttl is not None and self.video_ttl < 0:
            raise ValueError(f"video_ttl must not be negative, got {self.video_ttl}")
        if self.video_bytes < 0:
            raise ValueError(f"video_bytes must not be negative, got {self.video_bytes}")

    @classmethod
    def for_tier(cls, tier: Tier, **overrides: Any) -> SimulatorConfig:
        """A config whose ``limit`` is the documented per-minute limit of ``tier``.

        ``tier`` is ``"free"`` (100), ``"pro"`` (1000) or ``"enterprise"`` (5000); the
        period is 60 seconds. Other fields may be given as keyword overrides.
        """
        return cls(limit=tier_limit(tier), period=60.0, **overrides)

    def limit_for(self, token: str) -> int:
        """The request limit per period that applies to ``token``."""
        if self.tokens is not None and token in self.tokens:
            return self.tokens[token]
        return self.limit

    def replace(self, **overrides: Any) -> SimulatorConfig:
        """A copy with some fields changed (``tier=`` is accepted as a shortcut for ``limit``)."""
        tier = overrides.pop("tier", None)
        if tier is not None:
            overrides.setdefault("limit", tier_limit(tier))
            overrides.setdefault("period", 60.0)
        return dataclasses.replace(self, **overrides)


def tier_limit(tier: str) -> int:
    """The documented per-minute limit of a plan name, or ``ValueError``."""
    try:
        return TIER_LIMITS[tier]  # type: ignore[index]
    except KeyError:
        raise ValueError(f"tier must be one of {sorted(TIER_LIMITS)}, got {tier!r}") from None


def _check_choice(name: str, value: object, choices: tuple[Any, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
