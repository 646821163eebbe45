"""The options the commands share, and the connection they describe: token, address, plan."""

from __future__ import annotations

import enum
import functools
import inspect
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from .. import AsyncClient
from .._config import (
    ENV_ALLOW_INSECURE_HTTP,
    ENV_API_KEY,
    ENV_TIER,
    REDIS_SCHEMES,
    RateLimit,
    Tier,
    resolve_base_url,
)
from .._exceptions import ConfigurationError

_PLANS = ", ".join(t.value for t in Tier)


def parse_rate(value: str | None) -> RateLimit | None:
    """``--rate-limit``'s REQUESTS/PERIOD as a budget; a usage error naming the flag's form."""
    if value is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d*\.?\d*)\s*(s|sec|m|min)?\s*", value)
    if not match or (match[2] == "" and match[3] is None):
        raise typer.BadParameter(
            f"{value!r} is not a rate: write REQUESTS/PERIOD, e.g. 1000/min or 60/2s"
        )
    try:
        period = float(match[2] or 1) * (60 if match[3] in ("m", "min") else 1)
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is not a rate: write REQUESTS/PERIOD, e.g. 1000/min or 60/2s"
        ) from None
    requests = int(match[1])
    if requests < 1 or not (period > 0 and math.isfinite(period)):
        raise typer.BadParameter(
            f"{value!r} allows no requests: write at least 1 request in a period above 0, "
            "e.g. 1000/min or 60/2s"
        )
    return RateLimit(requests, period)


def parse_tier(value: str | None) -> Tier | None:
    """``--tier``'s plan; a usage error naming the plans (not pydantic's words)."""
    if value is None:
        return None
    try:
        return Tier(value.strip().lower())
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is not a plan: use one of {_PLANS}, "
            "or --rate-limit REQUESTS/PERIOD for a contract of your own"
        ) from None


def _check_rate(value: str | None) -> str | None:
    parse_rate(value)
    return value


def _check_redis_url(value: str | None) -> str | None:
    if value is not None and not value.strip().startswith(REDIS_SCHEMES):
        raise typer.BadParameter(
            f"{value!r} is not a Redis URL: write e.g. redis://localhost:6379/0 (rediss:// "
            "for TLS, redis+cluster://host:port for a Redis Cluster)"
        )
    return value


def _check_tier(value: str | None) -> str | None:
    parse_tier(value)
    return value


class Progress(str, enum.Enum):
    AUTO = "auto"
    LIVE = "live"
    PLAIN = "plain"


ApiKeyFile = Annotated[
    Path | None,
    typer.Option(
        "--api-key-file",
        help="Read the API token from this file (default: the GROKIMAGINE_API_KEY variable).",
        dir_okay=False,
        show_default=False,
    ),
]
BaseUrl = Annotated[
    str | None,
    typer.Option(
        "--base-url",
        help="The API's address (default: GROKIMAGINE_BASE_URL, else the provider's).",
        show_default=False,
    ),
]
TierOption = Annotated[
    str | None,
    typer.Option(
        "--tier",
        metavar="[free|pro|enterprise]",
        callback=_check_tier,
        help="Your plan, for its rate limit (default: GROKIMAGINE_TIER, else learned "
        "from the API's headers, starting at free).",
        show_default=False,
    ),
]
RateOption = Annotated[
    str | None,
    typer.Option(
        "--rate-limit",
        callback=_check_rate,
        help="A custom limit, REQUESTS/PERIOD (e.g. 1000/min, 60/2s); overrides --tier.",
        show_default=False,
    ),
]
RedisUrlOption = Annotated[
    str | None,
    typer.Option(
        "--redis-url",
        callback=_check_redis_url,
        help="Share the token's rate limit with every process naming this Redis "
        "(e.g. redis://localhost:6379/0; rediss:// for TLS, redis+cluster:// for a "
        "Redis Cluster): a web app's workers, other batches "
        "(default: GROKIMAGINE_REDIS_URL, else this process's alone).",
        show_default=False,
    ),
]
RedisFallbackOption = Annotated[
    float | None,
    typer.Option(
        "--redis-fallback",
        min=0.0,
        max=1.0,
        help="While that Redis is unreachable, keep to this share of the plan alone "
        "(e.g. 0.25) instead of stopping (default: GROKIMAGINE_REDIS_FALLBACK).",
        show_default=False,
    ),
]
InsecureHttpOption = Annotated[
    bool,
    typer.Option(
        "--allow-insecure-http",
        help="Allow a plain http:// --base-url to another machine, which sends the token "
        "in clear text: only on a network you trust (default: "
        "GROKIMAGINE_ALLOW_INSECURE_HTTP, else refused).",
        show_default=False,
    ),
]
UndocumentedOption = Annotated[
    bool,
    typer.Option(
        "--allow-undocumented",
        help="Send modes or ratios the API does not document (new ones, say).",
    ),
]


def _parse_progress(value: str | Progress) -> Progress:
    if isinstance(value, Progress):
        return value
    try:
        return Progress(str(value).strip().lower())
    except ValueError:
        names = ", ".join(repr(p.value) for p in Progress)
        raise typer.BadParameter(f"{value!r} is not one of {names}") from None


ProgressOption = Annotated[
    str,
    typer.Option(
        metavar="[auto|live|plain]",
        callback=_parse_progress,
        help="auto (a live view on a terminal), live, or plain log lines.",
    ),
]
PollIntervalOption = Annotated[
    float | None,
    typer.Option(
        "--poll-interval",
        min=0.01,
        show_default="GROKIMAGINE_POLL_INTERVAL, else 5",
        help="A first guess of how long a video takes, in seconds, which sets the first "
        "polls; the client then learns how long videos take. Every poll counts against "
        "the rate limit: lower it only for a local simulator.",
    ),
]

#: What ``--poll-interval`` defaults to: the library's own (5 s, or the environment's).
DEFAULT_POLL_INTERVAL: float | None = None


@dataclass(frozen=True)
class Connection:
    """Where the API is and who is asking: the options every API command shares."""

    api_key_file: Path | None
    base_url: str | None
    tier: str | None
    rate: str | None
    redis_url: str | None = None
    redis_fallback: float | None = None
    insecure_http: bool = False

    def client(self, **kwargs: Any) -> AsyncClient:
        self.check_base_url()
        key: str | None = None
        if self.api_key_file is not None:
            try:
                key = self.api_key_file.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigurationError(
                    f"--api-key-file {self.api_key_file}: cannot be read "
                    f"({type(exc).__name__}). Pass a file holding only the token."
                ) from None
            if not key:
                raise ConfigurationError(
                    f"--api-key-file {self.api_key_file} is empty. Put the token in it."
                )
        elif not os.environ.get(ENV_API_KEY):
            raise ConfigurationError(
                f"no API token: set the {ENV_API_KEY} environment variable to the token "
                "from your Grok Imagine dashboard, or pass --api-key-file FILE"
            )
        return AsyncClient(
            key,
            base_url=self.base_url,
            tier=self.plan(),
            rate_limit=parse_rate(self.rate),
            redis_url=self.redis_url,
            redis_fallback=self.redis_fallback,
            allow_insecure_http=self.allow_insecure_http,
            **kwargs,
        )

    @property
    def allow_insecure_http(self) -> bool | None:
        """``--allow-insecure-http``; unset, the environment's
        ``GROKIMAGINE_ALLOW_INSECURE_HTTP`` decides."""
        return True if self.insecure_http else None

    def check_base_url(self) -> None:
        """Refuse a ``--base-url`` the client would refuse, in the command line's words,
        before anything else runs."""
        resolve_base_url(
            self.base_url,
            allow_insecure_http=self.allow_insecure_http,
            name="--base-url",
            opt_in=f"--allow-insecure-http, or {ENV_ALLOW_INSECURE_HTTP}=1",
        )

    def plan(self) -> Tier | None:
        """``--tier``, else ``GROKIMAGINE_TIER``, else None (learned from the API)."""
        if self.tier is not None:
            return parse_tier(self.tier)
        raw = os.environ.get(ENV_TIER, "").strip()
        if not raw:
            return None
        try:
            return Tier.parse(raw, source=ENV_TIER)
        except ConfigurationError:
            # The library's message advises Python callers; this one names the flag.
            raise ConfigurationError(
                f"{ENV_TIER}={raw!r} is not a plan: set it to one of {_PLANS}, or unset it "
                "and pass --rate-limit REQUESTS/PERIOD for a contract of your own"
            ) from None

    def plan_rate(self) -> tuple[RateLimit, str, str]:
        """The rate a batch's estimate assumes, where it comes from, and a hint."""
        custom = parse_rate(self.rate)
        if custom is not None:
            return custom, "--rate-limit", ""
        tier = self.plan()
        if tier is not None:
            return tier.rate_limit, f"the {tier.value} plan", ""
        return Tier.FREE.rate_limit, "the free plan", "pass --tier for yours"


#: The options every API command shares, as (parameter, annotation, default): what
#: :func:`connected` gives a command, gathered into one :class:`Connection`.
CONNECTION_OPTIONS: tuple[tuple[str, Any, Any], ...] = (
    ("api_key_file", ApiKeyFile, None),
    ("base_url", BaseUrl, None),
    ("tier", TierOption, None),
    ("rate_limit", RateOption, None),
    ("redis_url", RedisUrlOption, None),
    ("redis_fallback", RedisFallbackOption, None),
    ("allow_insecure_http", InsecureHttpOption, False),
)

_C = TypeVar("_C", bound=Callable[..., Any])


def connected(command: _C) -> _C:
    """Give an API command the connection options (:data:`CONNECTION_OPTIONS`), written
    once: the command takes ``connection: Connection`` instead of the seven of them."""
    signature = inspect.signature(command, eval_str=True)
    own = [p for p in signature.parameters.values() if p.name != "connection"]
    shared = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=kind)
        for name, kind, default in CONNECTION_OPTIONS
    ]

    @functools.wraps(command)
    def with_connection(*args: Any, **kwargs: Any) -> Any:
        values = [kwargs.pop(name) for name, _, _ in CONNECTION_OPTIONS]
        return command(*args, connection=Connection(*values), **kwargs)

    with_connection.__signature__ = signature.replace(parameters=own + shared)  # type: ignore[attr-defined]
    with_connection.__annotations__ = {
        **{p.name: p.annotation for p in own},
        **{name: kind for name, kind, _ in CONNECTION_OPTIONS},
    }
    return with_connection  # type: ignore[return-value]
