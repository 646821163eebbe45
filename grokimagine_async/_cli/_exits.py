"""Exit codes, and what each error the commands can meet exits with and says, in one line."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import NoReturn, TypeVar

import anyio
import typer

from .._exceptions import (
    AuthenticationError,
    ConfigurationError,
    GrokImagineError,
    InputFileError,
    JournalError,
    RateLimiterUnavailableError,
    RequestValidationError,
    never_sent,
)
from ._format import plural, stderr

T = TypeVar("T")

#: Exit codes, as the docs and ``--help`` promise them.
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

#: What to do about a refused token, in every command's words.
TOKEN_ADVICE = "Fix GROKIMAGINE_API_KEY or --api-key-file"  # noqa: S105 - advice, not a secret

#: Errors found before anything is paid for, that the user fixes: a usage error.
_USAGE_ERRORS = (
    ConfigurationError,
    AuthenticationError,
    RequestValidationError,
    InputFileError,
    JournalError,
)


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    stderr().print(f"[bold red]error:[/] {message}", markup=True, soft_wrap=True)
    raise typer.Exit(code)


def exit_for(exc: BaseException) -> tuple[int, str] | None:
    """The exit code and the one line an error ends a command with; None for a bug."""
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED, "interrupted"
    if isinstance(exc, AuthenticationError):
        return EXIT_USAGE, f"the API refused the token: {exc}. {TOKEN_ADVICE}"
    if isinstance(exc, _USAGE_ERRORS):
        return EXIT_USAGE, str(exc)
    if isinstance(exc, GrokImagineError):
        return EXIT_FAILED, f"{exc} ({type(exc).__name__})"
    if isinstance(exc, OSError):
        return EXIT_FAILED, f"{exc.filename or ''}: {exc.strerror or exc}"
    return None


def run(main: Callable[[], Awaitable[T]], *, interrupted: Callable[[], str] | None = None) -> T:
    """Run ``main`` on an event loop, turning what can go wrong into an exit code.

    ``interrupted`` says, on Ctrl-C, what was left running and how to pick it up.
    """
    try:
        return anyio.run(main)
    except BaseException as raised:
        exc = _single(raised)
        known = exit_for(exc)
        if known is None:
            raise
        code, message = known
        if code == EXIT_INTERRUPTED:
            stderr().print(interrupted() if interrupted else message, style="yellow")
            raise typer.Exit(code) from None
        fail(message, code)


def stops_batch(error: BaseException | None) -> bool:
    """Whether an error proves that every other request of a batch would end the same way:
    a refused token, or a request that provably never left (a host no retry could
    reach, the shared limiter's Redis away). The pipeline stops on either."""
    return isinstance(error, AuthenticationError) or never_sent(error)


def stop_line(reason: GrokImagineError, not_submitted: int) -> tuple[int, str]:
    """The exit code and the one line a batch that stopped on ``reason`` ends with."""
    rows = plural(not_submitted, "row")
    if isinstance(reason, AuthenticationError):
        return EXIT_USAGE, (
            f"the API refused the token, so the batch stopped ({rows} not submitted): "
            f"{reason}. {TOKEN_ADVICE}, then rerun the same command"
        )
    if isinstance(reason, RateLimiterUnavailableError):
        cause = type(reason.__cause__).__name__ if reason.__cause__ else "no answer"
        return EXIT_FAILED, (
            f"the shared rate limiter's Redis could not be reached ({cause}), so the batch "
            f"stopped ({rows} not submitted, nothing sent). Check --redis-url (or "
            "GROKIMAGINE_REDIS_URL), or pass --redis-fallback 0.25 to go on at a share of "
            "the plan meanwhile; then rerun the same command"
        )
    return EXIT_FAILED, (
        f"the API could not be reached, so the batch stopped ({rows} not submitted): "
        f"{reason}. Check --base-url and the network, then rerun the same command"
    )


def _single(exc: BaseException) -> BaseException:
    """The error inside task groups' exception groups, when all they hold is one kind."""
    leaves = _leaves(exc)
    return leaves[0] if len({type(e) for e in leaves}) == 1 else exc


def _leaves(exc: BaseException) -> list[BaseException]:
    # Duck-typed: BaseExceptionGroup is a builtin only from Python 3.11.
    inner = getattr(exc, "exceptions", None)
    if not isinstance(inner, tuple):
        return [exc]
    return [leaf for e in inner if isinstance(e, BaseException) for leaf in _leaves(e)]
