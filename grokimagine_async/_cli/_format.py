"""How the command line says things: where it writes, money, durations, and how a
task or a row of a batch ended."""

from __future__ import annotations

from rich.console import Console

from .. import (
    BudgetExceededError,
    FailureKind,
    Outcome,
    OutcomeStatus,
    SubmitUncertainError,
    Task,
    TaskTimeoutError,
)
from .._config import USD_PER_CREDIT

#: What to do about a failed task, by why it failed.
FAILURE_ADVICE = {
    FailureKind.CONTENT_REFUSED: "refused by moderation: change the prompt or image",
    FailureKind.UNSUPPORTED_FILE: "send the image as JPEG, PNG or WebP",
    FailureKind.UPSTREAM_BUILD: "a new submission may succeed",
    FailureKind.TRANSIENT_NETWORK: "a new submission may succeed",
    FailureKind.UNKNOWN: "read the message before paying for another try",
}


def stderr() -> Console:
    """Progress, errors and questions: what a pipe into a file should not catch."""
    return Console(stderr=True, highlight=False)


def stdout() -> Console:
    """Results: file paths, tables, the summary."""
    return Console(highlight=False)


def usd(credits: int) -> str:
    return f"${credits * USD_PER_CREDIT:,.2f}"


def duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def least_duration(seconds: float) -> str:
    """A lower bound, said so that one under a second does not read as no time at all."""
    return "under 1s" if seconds < 1 else duration(seconds)


def plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}" + ("" if count == 1 else "s")


def failure_line(task: Task) -> str:
    """Why a task failed, and what to do about it."""
    kind = task.failure_kind or FailureKind.UNKNOWN
    return f"task {task.task_id} failed ({kind}): {task.error_message}; {FAILURE_ADVICE[kind]}"


def outcome_line(line: int, outcome: Outcome) -> tuple[str, str]:
    """The event line of one settled row of a batch file, and its style."""
    where = f"line {line}"
    task = f"task {outcome.task_id}" if outcome.task_id else "no task"
    again = " (from the journal)" if outcome.from_journal else ""
    status = outcome.status
    if status is OutcomeStatus.COMPLETED:
        return f"{where}: completed, {task}{again}", "green"
    if status is OutcomeStatus.FAILED and outcome.task is not None:
        kind = outcome.task.failure_kind or FailureKind.UNKNOWN
        resend = " (--retry-failed resends it)" if outcome.task.resubmit_may_succeed else ""
        return (
            f"{where}: failed, {task} ({kind}: {outcome.task.error_message}); "
            f"{FAILURE_ADVICE[kind]}{resend}{again}",
            "red",
        )
    if status is OutcomeStatus.UNCERTAIN:
        # The library's message advises Python callers; this one names the flag.
        error = outcome.error
        cause = error.cause if isinstance(error, SubmitUncertainError) else error
        return (
            f"{where}: uncertain: it may have created a task whose id never came back "
            f"({cause}); check your dashboard, or pass --resubmit-uncertain to send it "
            f"again at the risk of paying twice{again}",
            "yellow",
        )
    if status is OutcomeStatus.SKIPPED and isinstance(outcome.error, BudgetExceededError):
        return f"{where}: skipped: sending it would take the spend past --max-credits", "yellow"
    if status is OutcomeStatus.SKIPPED and isinstance(outcome.error, TaskTimeoutError):
        return f"{where}: skipped: not sent before --timeout; rerun to go on", "yellow"
    return f"{where}: {status}, {task}: {outcome.error}{again}", "yellow"
