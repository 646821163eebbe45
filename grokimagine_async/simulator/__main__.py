"""Run the simulator from the shell: ``python -m grokimagine_async.simulator --help``."""

from __future__ import annotations

import argparse
import errno
import socket
import sys
from collections.abc import Sequence
from typing import Any, get_args

from ._config import TIER_LIMITS, RateModel, ResetFormat, SimulatorConfig
from ._simulator import Simulator


def build_parser(prog: str = "python -m grokimagine_async.simulator") -> argparse.ArgumentParser:
    """The command line's argument parser."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Serve a simulated Grok Imagine video API (POST /v1/generate, "
            "GET /v1/status) for testing clients. Any bearer token is accepted "
            "unless --api-key is given."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    parser.add_argument("--port", type=int, default=8000, help="port (0 picks a free one)")
    parser.add_argument(
        "--tier",
        choices=sorted(TIER_LIMITS),
        help="set the limit of a plan: free=100, pro=1000, enterprise=5000 per minute",
    )
    parser.add_argument("--limit", type=int, help="requests per period per token")
    parser.add_argument("--period", type=float, help="rate period in seconds (default 60)")
    parser.add_argument(
        "--rate-model",
        choices=get_args(RateModel),
        help=(
            "how requests count: fixed windows, a sliding window, a token bucket (gcra), "
            "a leaky bucket (see --burst), an approximate two-window counter, or "
            "HAProxy's http_req_rate (haproxy)"
        ),
    )
    parser.add_argument(
        "--burst",
        type=int,
        metavar="N",
        help=(
            "with --rate-model leaky: requests that may go at once before the rest are "
            "paced at one every period/limit seconds (default: the limit)"
        ),
    )
    parser.add_argument(
        "--reset-format", choices=get_args(ResetFormat), help="format of X-RateLimit-Reset"
    )
    parser.add_argument(
        "--retry-after",
        choices=["seconds", "http-date", "none"],
        help="format of Retry-After on 429s, or none to leave it out",
    )
    parser.add_argument(
        "--no-rate-headers",
        action="store_true",
        help="leave out X-RateLimit-Remaining and X-RateLimit-Reset, as many gateways do",
    )
    parser.add_argument(
        "--count-rejected", action="store_true", help="count 429'd requests against the limit"
    )
    parser.add_argument(
        "--generation-time",
        nargs=2,
        type=float,
        metavar=("MIN", "MAX"),
        help="seconds from creation to the end of a task, drawn uniformly",
    )
    parser.add_argument("--failure-rate", type=float, help="share of tasks that fail (0..1)")
    parser.add_argument(
        "--background-share",
        type=float,
        help="share of each token's limit an invisible second client spends (0..1)",
    )
    parser.add_argument("--video-ttl", type=float, help="seconds video URLs stay valid")
    parser.add_argument(
        "--api-key", action="append", dest="api_keys", help="accept only this token (repeatable)"
    )
    parser.add_argument(
        "--errors-as-http-200",
        action="store_true",
        help="answer errors with HTTP 200 and the error code in the body",
    )
    parser.add_argument("--seed", type=int, help="seed for reproducible ids, timings, failures")
    return parser


def parse_args(
    argv: Sequence[str] | None = None, *, prog: str = "python -m grokimagine_async.simulator"
) -> tuple[SimulatorConfig, str, int, int | None]:
    """The config, host, port and seed a command line asks for."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if args.burst is not None and args.rate_model != "leaky":
        parser.error("--burst needs --rate-model leaky")
    fields: dict[str, Any] = {}
    if args.tier is not None:
        fields["tier"] = args.tier
    for name in (
        "limit",
        "period",
        "rate_model",
        "burst",
        "reset_format",
        "failure_rate",
        "background_share",
        "video_ttl",
        "api_keys",
    ):
        value = getattr(args, name)
        if value is not None:
            fields[name] = value
    if args.generation_time is not None:
        fields["generation_time"] = tuple(args.generation_time)
    if args.retry_after is not None:
        fields["retry_after"] = None if args.retry_after == "none" else args.retry_after
    if args.no_rate_headers:
        fields["rate_headers"] = False
    if args.count_rejected:
        fields["count_rejected"] = True
    if args.errors_as_http_200:
        fields["errors_as_http_200"] = True
    if not 0 <= args.port <= 65535:
        parser.error(
            f"--port {args.port} is not a port: pass one from 0 to 65535 (0 picks a free one)"
        )
    try:
        socket.getaddrinfo(args.host, None)
    except OSError:
        parser.error(f"--host {args.host} is not a name this machine can look up: pass 127.0.0.1")
    if args.api_keys is not None and not all(key.strip() for key in args.api_keys):
        parser.error("--api-key is empty: pass the token clients will send, or leave it out")
    try:
        config = SimulatorConfig().replace(**fields)
    except ValueError as exc:
        parser.error(_as_flags(str(exc)))
    return config, args.host, args.port, args.seed


def _as_flags(message: str) -> str:
    """A setting's error in the command line's words: ``--failure-rate``, not
    ``failure_rate``, and no ``None`` that the flags cannot pass."""
    field, _, rest = message.partition(" ")
    if field.isidentifier():
        message = f"--{field.replace('_', '-')} {rest}"
    return message.replace(" or None", "")


def main(
    argv: Sequence[str] | None = None, *, prog: str = "python -m grokimagine_async.simulator"
) -> None:
    """Parse the command line and serve until interrupted.

    An address it cannot listen on ends it with one line and exit code 2, as
    argparse ends a bad option.
    """
    config, host, port, seed = parse_args(argv, prog=prog)
    try:
        Simulator(config, seed=seed).run(host, port)
    except OSError as exc:
        problem = _cannot_listen(exc, host, port)
        if problem is None:
            raise
        sys.stderr.write(f"{prog}: error: {problem}\n")
        raise SystemExit(2) from None


def _cannot_listen(exc: OSError, host: str, port: int) -> str | None:
    """What to do about an address the server could not listen on; None for other errors."""
    if exc.errno == errno.EADDRINUSE:
        return (
            f"port {port} on {host} is in use, by another simulator or server: stop it, or "
            "pass another --port (--port 0 picks a free one)"
        )
    if exc.errno == errno.EACCES:
        return (
            f"port {port} on {host} needs privileges to listen on: pass a --port above 1023 "
            "(--port 0 picks a free one)"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"--host {host} is not an address of this machine: pass 127.0.0.1"
    # getaddrinfo's errors are negative (EAI_NONAME and the like), re-raised as OSError.
    if isinstance(exc, socket.gaierror) or (exc.errno is not None and exc.errno < 0):
        return f"--host {host} is not a name this machine can look up: pass 127.0.0.1"
    return None


if __name__ == "__main__":
    main()
