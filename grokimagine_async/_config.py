"""Plans, rate figures and the settings read from the environment."""

from __future__ import annotations

import enum
import ipaddress
import math
import os
import re
from dataclasses import dataclass

import httpx

from ._exceptions import ConfigurationError

__all__ = ["DEFAULT_BASE_URL", "RateLimit", "Tier", "resolve_api_key", "resolve_base_url"]

DEFAULT_BASE_URL = "https://grokimagineapi.com"
ENV_API_KEY = "GROKIMAGINE_API_KEY"
ENV_BASE_URL = "GROKIMAGINE_BASE_URL"
ENV_TIER = "GROKIMAGINE_TIER"
ENV_POLL_INTERVAL = "GROKIMAGINE_POLL_INTERVAL"
ENV_RATE_LIMIT = "GROKIMAGINE_RATE_LIMIT"
ENV_REDIS_URL = "GROKIMAGINE_REDIS_URL"
ENV_REDIS_FALLBACK = "GROKIMAGINE_REDIS_FALLBACK"
ENV_ALLOW_INSECURE_HTTP = "GROKIMAGINE_ALLOW_INSECURE_HTTP"

#: What one video costs, per the provider's page.
CREDITS_PER_VIDEO = 40
#: What one credit costs in US dollars (40 credits are about 0.40 USD).
USD_PER_CREDIT = 0.01


@dataclass(frozen=True)
class RateLimit:
    """A request budget: at most ``requests`` in any ``period`` seconds.

    Pass one as ``AsyncClient(rate_limit=...)`` for a custom contract, or to
    compress time in tests (``RateLimit(requests=30, period=2.0)``).

    ``burst`` is for servers known to count more finely than their plan (a
    gateway that enforces 100 a minute as a few at once, then one every 0.6 s):
    at most ``burst`` requests go at once, then one every ``period / requests``
    seconds. Left out, the client sends the plan's whole budget at once and
    learns a finer shape from the server's 429s if it has one.
    """

    #: Requests allowed in any ``period``.
    requests: int
    #: The window, in seconds (60 for the provider's plans; shorter for compressed tests).
    period: float = 60.0
    #: Requests the server admits at once, if it is known to count more finely
    #: than ``requests`` per ``period`` (None: the whole budget at once).
    burst: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.requests, bool) or not isinstance(self.requests, int):
            raise ConfigurationError(
                f"rate_limit.requests must be a whole number, got {self.requests!r}"
            )
        if self.requests < 1:
            raise ConfigurationError(f"rate_limit.requests must be at least 1, got {self.requests}")
        if not (isinstance(self.period, (int, float)) and math.isfinite(self.period)):
            raise ConfigurationError(f"rate_limit.period must be seconds, got {self.period!r}")
        if self.period <= 0:
            raise ConfigurationError(f"rate_limit.period must be above 0, got {self.period}")
        if self.burst is not None and (
            isinstance(self.burst, bool)
            or not isinstance(self.burst, int)
            or not 1 <= self.burst <= self.requests
        ):
            raise ConfigurationError(
                f"rate_limit.burst must be a whole number from 1 to requests "
                f"({self.requests}), got {self.burst!r}; leave it out to send the whole "
                "budget at once"
            )

    @property
    def per_second(self) -> float:
        """The steady rate this budget allows."""
        return self.requests / self.period


class Tier(str, enum.Enum):
    """The provider's plans and their per-token request limits."""

    FREE = "free"
    PRO = "pro"
    ENTERPRISE = "enterprise"

    @property
    def rate_limit(self) -> RateLimit:
        """This plan's documented limit: requests per minute per token."""
        return _TIER_LIMITS[self]

    @classmethod
    def parse(cls, value: Tier | str, *, source: str = "tier") -> Tier:
        """``Tier.PRO``, ``"pro"`` or ``"Pro"``; anything else is a
        ``ConfigurationError`` that lists the plans."""
        if isinstance(value, Tier):
            return value
        try:
            return cls(str(value).strip().lower())
        except ValueError:
            names = ", ".join(t.value for t in cls)
            raise ConfigurationError(
                f"{source}: unknown plan {value!r}. Use one of {names}, or pass "
                "rate_limit=RateLimit(requests=..., period=...) for a custom contract."
            ) from None


_TIER_LIMITS = {
    Tier.FREE: RateLimit(100, 60.0),
    Tier.PRO: RateLimit(1_000, 60.0),
    Tier.ENTERPRISE: RateLimit(5_000, 60.0),
}


def resolve_api_key(api_key: str | None) -> str:
    """The token given, else ``GROKIMAGINE_API_KEY``; a clear error if neither."""
    if api_key is not None and not isinstance(api_key, str):
        raise ConfigurationError(
            f"api_key must be the token as a string, got {type(api_key).__name__}: pass "
            "the token from your Grok Imagine dashboard as AsyncClient(api_key='...'), or "
            f"set {ENV_API_KEY}"
        )
    source = "api_key" if api_key is not None else ENV_API_KEY
    key = api_key if api_key is not None else os.environ.get(ENV_API_KEY)
    if key is None or not key.strip():
        raise ConfigurationError(
            "No API token. Pass AsyncClient(api_key=...) or set the "
            f"{ENV_API_KEY} environment variable to the token from your Grok Imagine "
            "dashboard."
        )
    key = key.strip()
    if any(c.isspace() for c in key) or not key.isprintable() or not key.isascii():
        raise ConfigurationError(
            f"{source} holds spaces, control characters or non-ASCII letters, which an HTTP "
            "header cannot carry: copy the token again, without a 'Bearer ' prefix or "
            "line breaks."
        )
    return key


#: Top-level names reserved for tests, which no public resolver answers (an
#: in-process transport such as the simulator's is addressed by one). A bare
#: ``test`` is not one of them: a resolver's search domains may complete it.
_TEST_DOMAINS = ("test", "invalid")
#: ``user:password@`` in a URL, to mask before a message shows it.
_CREDENTIALS = re.compile(r"(//)[^/@\s]*@")


def _masked(text: str) -> str:
    return _CREDENTIALS.sub(r"\1***@", text)


def is_local(host: str) -> bool:
    """Whether a request to ``host`` stays on this machine: ``localhost``,
    127.0.0.0/8, ``::1``, or a name under ``.test`` or ``.invalid``
    (``api.test``)."""
    host = host.strip("[]").lower().rstrip(".")
    if host == "localhost":
        return True
    name, dot, domain = host.rpartition(".")
    if dot and name and domain in _TEST_DOMAINS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_allow_insecure_http(allow: bool | None) -> bool:
    """The choice given, else ``GROKIMAGINE_ALLOW_INSECURE_HTTP``, else False."""
    if allow is not None:
        if not isinstance(allow, bool):
            raise ConfigurationError(f"allow_insecure_http must be True or False, got {allow!r}")
        return allow
    raw = os.environ.get(ENV_ALLOW_INSECURE_HTTP, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise ConfigurationError(
        f"{ENV_ALLOW_INSECURE_HTTP}={raw!r}: set it to 1 to allow plain http:// to a host "
        "that is not this machine, or unset it"
    )


#: How a Python caller allows plain http:// to another machine.
INSECURE_OPT_IN = (
    "AsyncClient(allow_insecure_http=True), --allow-insecure-http on the command line, "
    f"or {ENV_ALLOW_INSECURE_HTTP}=1"
)


def resolve_base_url(
    base_url: str | httpx.URL | None,
    *,
    allow_insecure_http: bool | None = None,
    name: str = "base_url",
    opt_in: str = INSECURE_OPT_IN,
) -> httpx.URL:
    """The base URL given, else ``GROKIMAGINE_BASE_URL``, else the provider's.

    Plain ``http://`` would carry the API token in clear text: it is refused for
    any host but this machine's (see :func:`is_local`) unless ``allow_insecure_http`` (or
    ``GROKIMAGINE_ALLOW_INSECURE_HTTP=1``) says the network is trusted. ``name``
    and ``opt_in`` are how errors call the setting and the way to allow it.
    """
    raw = base_url if base_url is not None else os.environ.get(ENV_BASE_URL) or DEFAULT_BASE_URL
    source = name if base_url is not None else ENV_BASE_URL
    # What the messages show: a user name or password in the URL masked, first of all.
    shown = repr(_masked(str(raw).strip()))
    try:
        url = httpx.URL(str(raw).strip())
    except httpx.InvalidURL as exc:
        raise ConfigurationError(f"{source}: {shown} is not a URL ({_masked(str(exc))})") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigurationError(
            f"{source}: {shown} must be an http(s) URL with a host, "
            f"such as {DEFAULT_BASE_URL} or http://127.0.0.1:8000 for the simulator"
        )
    if url.userinfo:
        # Credentials in the URL would reach logs, reprs and error messages with it.
        raise ConfigurationError(
            f"{source}: {shown} must not carry a user name or password: pass the API token "
            "as api_key (or GROKIMAGINE_API_KEY)"
        )
    if url.query or url.fragment:
        raise ConfigurationError(f"{source}: {shown} must not have a query or fragment")
    if (
        url.scheme == "http"
        and not is_local(url.host)
        and not resolve_allow_insecure_http(allow_insecure_http)
    ):
        raise ConfigurationError(
            f"{source}: {shown} is plain http:// to another machine, which would send your "
            f"API token in clear text. Use https://{url.netloc.decode('ascii')}, or, on a "
            f"network you trust, allow it: {opt_in}"
        )
    return url.copy_with(path=url.path.rstrip("/") or "")


def resolve_tier(tier: Tier | str | None) -> Tier | None:
    """The plan given, else ``GROKIMAGINE_TIER``, else None (not said)."""
    if tier is not None:
        return Tier.parse(tier)
    env = os.environ.get(ENV_TIER)
    if env is None or not env.strip():
        return None
    return Tier.parse(env, source=ENV_TIER)


#: Seconds between status polls of one task when nothing else is said.
DEFAULT_POLL_INTERVAL = 5.0


def resolve_poll_interval(poll_interval: float | None) -> float:
    """The interval given, else ``GROKIMAGINE_POLL_INTERVAL``, else 5 seconds."""
    source = "poll_interval"
    value: object = poll_interval
    if poll_interval is None:
        env = os.environ.get(ENV_POLL_INTERVAL)
        if env is None or not env.strip():
            return DEFAULT_POLL_INTERVAL
        source = ENV_POLL_INTERVAL
        try:
            value = float(env)
        except ValueError:
            value = env
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigurationError(
            f"{source} must be above 0 seconds, got {value!r}: pass e.g. 5 (seconds)"
        )
    return float(value)


def resolve_rate_limit(rate_limit: RateLimit | None) -> RateLimit | None:
    """The budget given, else ``GROKIMAGINE_RATE_LIMIT`` (``REQUESTS/PERIOD``, such
    as ``1000/60s`` or ``60/2s``), else None (the plan's)."""
    if rate_limit is not None:
        if not isinstance(rate_limit, RateLimit):
            raise ConfigurationError(
                "rate_limit must be a RateLimit, such as RateLimit(requests=100, period=60)"
            )
        return rate_limit
    env = os.environ.get(ENV_RATE_LIMIT)
    if env is None or not env.strip():
        return None
    requests, _, period = env.strip().partition("/")
    try:
        return RateLimit(int(requests), float(period.strip().removesuffix("s") or "nan"))
    except (ValueError, ConfigurationError):
        raise ConfigurationError(
            f"{ENV_RATE_LIMIT} must be requests per period in seconds, such as 1000/60s "
            f"or 60/2s, got {env!r}"
        ) from None


#: What a ``redis_url`` may start with: one Redis (``rediss`` with TLS), a Redis Cluster
#: (any of its nodes), or a Unix socket.
REDIS_SCHEMES = ("redis://", "rediss://", "redis+cluster://", "rediss+cluster://", "unix://")


def resolve_redis(
    redis_url: str | None, redis_fallback: float | None
) -> tuple[str | None, float | None]:
    """Where the shared limiter's Redis is (``redis_url``, else
    ``GROKIMAGINE_REDIS_URL``, else None: in-process) and the fallback share
    (``redis_fallback``, else ``GROKIMAGINE_REDIS_FALLBACK``, else None)."""
    url = redis_url if redis_url is not None else os.environ.get(ENV_REDIS_URL) or None
    source = "redis_url" if redis_url is not None else ENV_REDIS_URL
    if url is not None:
        url = url.strip()
        if not url.startswith(REDIS_SCHEMES):
            raise ConfigurationError(
                f"{source} must be a Redis URL such as redis://localhost:6379/0 "
                "(rediss:// for TLS; redis+cluster://host:port, any node, for a Redis "
                "Cluster), got a value that is not one"
            )
    share: object = redis_fallback
    source = "redis_fallback"
    if redis_fallback is None:
        env = os.environ.get(ENV_REDIS_FALLBACK)
        if env is not None and env.strip():
            source = ENV_REDIS_FALLBACK
            try:
                share = float(env)
            except ValueError:
                share = env
    if share is not None and (
        isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1
    ):
        raise ConfigurationError(
            f"{source} must be the share of the plan (above 0, at most 1) each process "
            f"keeps to while Redis is unreachable, such as 0.25; got {share!r}"
        )
    return url, (float(share) if share is not None else None)
