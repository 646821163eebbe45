"""What a batch tells before and after it runs: the estimate, the summary, report.json."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from .. import BudgetExceededError, GenerateRequest, OutcomeStatus, TaskTimeoutError
from .._config import USD_PER_CREDIT
from ._estimate import Estimate
from ._exits import stops_batch
from ._format import least_duration, outcome_line, plural, stdout, usd
from ._runner import BatchRun, Result

#: Rows of trouble the summary lists one a line; the report holds them all.
LISTED = 20


def print_estimate(
    console: Console, plan: Estimate, rate_source: str, rate_hint: str, journal: Path | None
) -> None:
    console.print(f"{plural(plan.total, 'request')}")
    if plan.settled or plan.in_flight or plan.uncertain:
        console.print(
            f"the journal {journal} holds {plan.settled} settled, {plan.in_flight} in flight, "
            f"{plan.uncertain} that may have created a task",
            soft_wrap=True,
        )
    if plan.retriable:
        console.print(
            f"{plural(plan.retriable, 'failed video')} may succeed if sent again: "
            "--retry-failed resends them (each is paid for again)",
            soft_wrap=True,
        )
    console.print(
        f"to submit now: {plural(plan.to_submit, 'video')}, up to {plan.credits:,} credits "
        f"({usd(plan.credits)})",
        soft_wrap=True,
    )
    hint = f" ({rate_hint})" if rate_hint else ""
    console.print(
        f"least time on {rate_source}, {plan.rate.requests:,} requests per "
        f"{plan.rate.period:g}s{hint}: {least_duration(plan.least_seconds)} for "
        f"{plural(plan.requests, 'request')}, plus the time the last videos take to generate",
        soft_wrap=True,
    )


def print_summary(job: BatchRun, report: Path | None) -> None:
    """The outcome table, the rows in trouble, and where the videos and report are."""
    out = stdout()
    counts = job.counts
    table = Table(title="batch summary", title_justify="left")
    table.add_column("outcome")
    table.add_column("requests", justify="right")
    for status in OutcomeStatus:
        if counts.get(status):
            table.add_row(str(status), str(counts[status]))
    unsettled = sum(1 for r in job.results if r.outcome is None)
    if unsettled:
        table.add_row("not settled", str(unsettled))
    table.add_row("videos downloaded", str(sum(1 for r in job.results if r.done)))
    table.add_row("credits spent", f"{job.credits:,} ({usd(job.credits)})")
    out.print(table)
    trouble = [
        r for r in job.results if not r.done and r.outcome is not None and not r.not_submitted
    ]
    for r in trouble[:LISTED]:
        assert r.outcome is not None
        if r.outcome.status is OutcomeStatus.COMPLETED:
            line = f"line {r.line}: completed, not downloaded: {r.download_error}"
        else:
            line = outcome_line(r.line, r.outcome)[0]
        out.print(f"  {line}", soft_wrap=True)
    if len(trouble) > LISTED:
        out.print(f"  ... and {len(trouble) - LISTED} more in the report")
    for why, count in _not_submitted(job).items():
        out.print(f"  {plural(count, 'row')} not submitted; {why}", soft_wrap=True)
    if job.unfinished:
        out.print(f"tasks still running: {', '.join(sorted(job.unfinished))}", soft_wrap=True)
    where = f"videos in {job.out}/"
    out.print(f"{where}; report in {report}" if report else where, soft_wrap=True)


def _not_submitted(job: BatchRun) -> dict[str, int]:
    """Rows that were never sent, counted by why, in one line each rather than a row a line."""
    reasons: dict[str, int] = {}
    for r in job.results:
        if not r.not_submitted:
            continue
        assert r.outcome is not None
        error = r.outcome.error
        if stops_batch(error):
            why = "the batch stopped early (the error says why)"
        elif isinstance(error, BudgetExceededError):
            why = f"--max-credits {job.max_credits or 0:,} reached"
        elif isinstance(error, TaskTimeoutError):
            why = "--timeout reached"
        elif job.journal:
            why = "rerun the same command to resume"
        else:
            why = "the run stopped first"
        reasons[why] = reasons.get(why, 0) + 1
    return reasons


def row_json(result: Result, request: GenerateRequest | None) -> dict[str, Any]:
    """A row of the report; ``request`` is what the row asks for, if it is known."""
    outcome = result.outcome
    task = outcome.task if outcome else None
    error = outcome.error if outcome else None
    return {
        "line": result.line,
        "request": request.to_payload() if request else None,
        "status": str(outcome.status) if outcome else "unsettled",
        "task_id": outcome.task_id if outcome else None,
        "videos": list(outcome.videos) if outcome else [],
        "files": [str(p) for p in result.files],
        "error": str(error) if error else None,
        "error_type": type(error).__name__ if error else None,
        "failure_kind": str(task.failure_kind) if task and task.failure_kind else None,
        "resubmit_may_succeed": task.resubmit_may_succeed if task else None,
        "download_error": result.download_error,
        "from_journal": outcome.from_journal if outcome else False,
    }


def write_report(job: BatchRun, path: Path, source: str) -> None:
    """The JSON report of every row, written whole or not at all.

    Written a row at a time: the rows never settled (an interrupted run) get their
    request from the file read again, the others from their outcome.
    """
    counts = job.counts
    body = {
        "source": source,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "interrupted": job.interrupted,
        "out": str(job.out),
        "journal": str(job.journal) if job.journal else None,
        "totals": {
            "requests": len(job.results),
            **{str(s): counts.get(s, 0) for s in OutcomeStatus},
            "downloaded": sum(1 for r in job.results if r.done),
            "unsettled": sum(1 for r in job.results if r.outcome is None),
        },
        "credits": job.credits,
        "usd": round(job.credits * USD_PER_CREDIT, 2),
        "unfinished_task_ids": job.unfinished,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    try:
        with part.open("w", encoding="utf-8") as out:
            out.write(json.dumps(body, indent=2).removesuffix("\n}"))
            out.write(',\n  "results": [')
            for i, (result, request) in enumerate(_with_requests(job)):
                row = json.dumps(row_json(result, request), indent=2).replace("\n", "\n    ")
                out.write(f"{',' if i else ''}\n    {row}")
            out.write("\n  ]\n}\n")
        os.replace(part, path)
    finally:
        # Whole or not at all: a report cut off (a full disk, say) leaves no half behind.
        part.unlink(missing_ok=True)


def _with_requests(job: BatchRun) -> Iterator[tuple[Result, GenerateRequest | None]]:
    rows = job.source.reread()
    row = None
    for result in job.results:
        request = result.outcome.request if result.outcome else None
        if request is None:
            # The file is in line order, like the results: one read serves them all.
            while row is None or row.line < result.line:
                row = next(rows, None)
                if row is None:
                    break
            if row is not None and row.line == result.line:
                request = row.request
        yield result, request
