"""Running a batch file: generate_many, a download as each video completes, a report."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import anyio
from anyio.abc import TaskGroup

from .. import AsyncClient, GenerationPipeline, Outcome, OutcomeStatus
from .._config import CREDITS_PER_VIDEO, USD_PER_CREDIT, RateLimit
from .._exceptions import GrokImagineError, VideoExpiredError
from .._journal import Journal, JournalEntry
from .._models import FailureKind
from ._inputs import Row

#: What to do about a failed task, by why it failed.
FAILURE_ADVICE = {
    FailureKind.CONTENT_REFUSED: "refused by moderation: change the prompt or image",
    FailureKind.UNSUPPORTED_FILE: "send the image as JPEG, PNG or WebP",
    FailureKind.UPSTREAM_BUILD: "a new submission may succeed",
    FailureKind.TRANSIENT_NETWORK: "a new submission may succeed",
    FailureKind.UNKNOWN: "read the message before paying for another try",
}

#: Seconds a Ctrl-C waits for submissions on the wire to answer: past a read timeout.
STOP_GRACE = 45.0

#: Downloads running at once, across the whole batch.
DOWNLOADS_AT_ONCE = 4


def default_journal(out: Path) -> Path:
    """The journal beside the output folder: ``videos/`` keeps ``videos.journal.db``."""
    folder = out.resolve()
    return folder.parent / f"{folder.name}.journal.db"


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


@dataclass(frozen=True)
class Estimate:
    """What a batch would send and spend, from its file and its journal."""

    total: int
    #: Settled in an earlier run of the journal.
    settled: int
    #: Submitted in an earlier run, still to be followed.
    in_flight: int
    #: Under way when an earlier run stopped: may have created a task.
    uncertain: int
    #: Not yet submitted: what this run would pay for.
    to_submit: int
    credits: int
    #: Seconds the plan's rate allows at the least: a submission and one status
    #: poll a video, past the first window's whole budget.
    least_seconds: float
    rate: RateLimit

    @property
    def requests(self) -> int:
        return 2 * self.to_submit + self.in_flight


def estimate(
    rows: Sequence[Row],
    entries: Sequence[JournalEntry],
    rate: RateLimit,
    *,
    max_credits: int | None,
    resubmit_uncertain: bool,
) -> Estimate:
    """The cost and the least time of running ``rows`` now, given the journal's ``entries``."""
    states = Counter(e.state for e in entries)
    settled = states[Journal.DONE]
    in_flight = sum(1 for e in entries if e.state == Journal.SUBMITTED and e.task_id)
    uncertain = states[Journal.SENDING]
    to_submit = len(rows) - settled - in_flight - uncertain if entries else len(rows)
    if resubmit_uncertain:
        to_submit += uncertain
    if max_credits is not None:
        # What may already have been paid for; uncertain ones only if not sent again.
        already = sum(
            1
            for e in entries
            if e.task_id or (e.state == Journal.SENDING and not resubmit_uncertain)
        )
        room = max(0, max_credits - already * CREDITS_PER_VIDEO)
        to_submit = min(to_submit, room // CREDITS_PER_VIDEO)
    requests = 2 * to_submit + in_flight
    least = max(0, requests - rate.requests) / rate.per_second
    return Estimate(
        len(rows),
        settled,
        in_flight,
        uncertain,
        to_submit,
        to_submit * CREDITS_PER_VIDEO,
        least,
        rate,
    )


@dataclass(frozen=True)
class Snapshot:
    """Where a running batch stands, for a progress display."""

    total: int
    #: Requests that created a task, this run or an earlier one.
    submitted: int
    queued: int
    submitting: int
    running: int
    counts: dict[OutcomeStatus, int]
    downloaded: int
    credits: int
    requests_left: int
    limit: int
    period: float
    elapsed: float
    eta: float | None


class Display(Protocol):
    """Where a batch reports as it runs: a live terminal view, or log lines."""

    def __enter__(self) -> Display: ...
    def __exit__(self, *exc: object) -> None: ...
    def event(self, message: str, *, style: str = "") -> None: ...
    def refresh(self, snapshot: Snapshot) -> None: ...


@dataclass
class Result:
    """One row of the batch, as it ended."""

    row: Row
    outcome: Outcome | None = None
    files: list[Path] = field(default_factory=list)
    download_error: str | None = None

    @property
    def done(self) -> bool:
        return (
            self.outcome is not None
            and self.outcome.status is OutcomeStatus.COMPLETED
            and self.download_error is None
            and bool(self.files)
        )

    def to_json(self) -> dict[str, Any]:
        outcome, request = self.outcome, self.row.request
        task = outcome.task if outcome else None
        error = outcome.error if outcome else None
        return {
            "line": self.row.line,
            "request": request.to_payload(),
            "status": str(outcome.status) if outcome else "unsettled",
            "task_id": outcome.task_id if outcome else None,
            "videos": list(outcome.videos) if outcome else [],
            "files": [str(p) for p in self.files],
            "error": str(error) if error else None,
            "error_type": type(error).__name__ if error else None,
            "failure_kind": str(task.failure_kind) if task and task.failure_kind else None,
            "resubmit_may_succeed": task.resubmit_may_succeed if task else None,
            "download_error": self.download_error,
            "from_journal": outcome.from_journal if outcome else False,
        }


@dataclass
class BatchRun:
    """A batch file's rows run through ``generate_many``, downloads and a report."""

    client: AsyncClient
    rows: Sequence[Row]
    source: str
    out: Path
    report: Path
    journal: Path | None
    max_credits: int | None = None
    resubmit_uncertain: bool = False
    timeout: float | None = None
    refresh_every: float = 0.25
    results: list[Result] = field(init=False)
    interrupted: bool = field(init=False, default=False)
    started: float = field(init=False, default=0.0)
    unfinished: dict[str, str] = field(init=False, default_factory=dict)
    _pipeline: GenerationPipeline | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.results = [Result(row) for row in self.rows]

    @property
    def counts(self) -> Counter[OutcomeStatus]:
        return Counter(r.outcome.status for r in self.results if r.outcome)

    @property
    def credits(self) -> int:
        return self._pipeline.progress.spent_credits if self._pipeline else 0

    @property
    def all_done(self) -> bool:
        return all(r.done for r in self.results)

    def snapshot(self) -> Snapshot:
        assert self._pipeline is not None
        progress = self._pipeline.progress
        budget = self.client.rate_limit_status()
        elapsed = time.monotonic() - self.started
        settled_now = sum(1 for r in self.results if r.outcome and not r.outcome.from_journal)
        left = progress.queued + progress.submitting + progress.running
        eta: float | None = None
        if left == 0:
            eta = 0.0
        else:
            floor = (2 * (progress.queued + progress.submitting) + progress.running) / (
                self.client.rate_limit.per_second
            )
            if settled_now >= 3:
                eta = max(floor, left * elapsed / settled_now)
            elif progress.queued:
                eta = floor
        return Snapshot(
            total=len(self.rows),
            submitted=progress.running
            + sum(1 for r in self.results if r.outcome and r.outcome.task_id),
            queued=progress.queued,
            submitting=progress.submitting,
            running=progress.running,
            counts=dict(self.counts),
            downloaded=sum(1 for r in self.results if r.done),
            credits=progress.spent_credits,
            requests_left=budget.remaining,
            limit=budget.limit,
            period=budget.period,
            elapsed=elapsed,
            eta=eta,
        )

    async def run(self, display: Display) -> None:
        """Run to the end (or until cancelled); the report is written either way."""
        self.started = time.monotonic()
        await anyio.Path(self.out).mkdir(parents=True, exist_ok=True)
        self._pipeline = self.client.generate_many(
            [row.request for row in self.rows],
            journal=self.journal,
            max_credits=self.max_credits,
            resubmit_uncertain=self.resubmit_uncertain,
            timeout=self.timeout,
        )
        try:
            with display:
                async with anyio.create_task_group() as outer:
                    outer.start_soon(self._refresh, display)
                    outer.start_soon(self._stop_on_ctrl_c, outer, display)
                    await self._settle_all(display)
                    outer.cancel_scope.cancel()
                display.refresh(self.snapshot())
        except (anyio.get_cancelled_exc_class(), KeyboardInterrupt):
            self.interrupted = True
            raise
        finally:
            if self._pipeline is not None:
                self.unfinished = {
                    task_id: str(task.state) if task else "unknown"
                    for task_id, task in self._pipeline.unfinished.items()
                }
            self.write_report()

    async def _stop_on_ctrl_c(self, group: TaskGroup, display: Display) -> None:
        """First Ctrl-C: send nothing more, let the POSTs on the wire answer so that
        their task ids reach the journal, then stop. A second Ctrl-C stops at once."""
        try:
            signals = anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM)
            receiver = signals.__enter__()
        except (NotImplementedError, ValueError, RuntimeError):
            return  # not the main thread, or no signals here: Ctrl-C stops at once
        try:
            async for _ in receiver:
                if self.interrupted:
                    break
                self.interrupted = True
                assert self._pipeline is not None
                self._pipeline.stop_submitting()
                display.event(
                    "stopping: sending nothing more, waiting for the requests on the wire "
                    "to answer (Ctrl-C again to stop at once)",
                    style="yellow",
                )
                group.start_soon(self._stop_when_sent, group.cancel_scope)
        finally:
            signals.__exit__(None, None, None)
        group.cancel_scope.cancel()

    async def _stop_when_sent(self, scope: anyio.CancelScope) -> None:
        assert self._pipeline is not None
        with anyio.move_on_after(STOP_GRACE):
            await self._pipeline.wait_submitted()
        scope.cancel()

    async def _refresh(self, display: Display) -> None:
        while True:
            display.refresh(self.snapshot())
            await anyio.sleep(self.refresh_every)

    async def _settle_all(self, display: Display) -> None:
        assert self._pipeline is not None
        slots = anyio.CapacityLimiter(DOWNLOADS_AT_ONCE)
        async with anyio.create_task_group() as downloads, self._pipeline as outcomes:
            async for outcome in outcomes:
                result = self.results[outcome.index]
                result.outcome = outcome
                if self.interrupted and outcome.status is OutcomeStatus.SKIPPED:
                    continue
                message, style = _describe(result)
                display.event(message, style=style)
                if outcome.status is OutcomeStatus.COMPLETED and outcome.task is not None:
                    downloads.start_soon(self._download, result, slots, display)

    async def _download(
        self, result: Result, slots: anyio.CapacityLimiter, display: Display
    ) -> None:
        assert result.outcome is not None
        assert result.outcome.task is not None
        task = result.outcome.task
        async with slots:
            try:
                try:
                    result.files = await self.client.download(task, self.out)
                except VideoExpiredError:
                    # Links from an earlier run's journal go stale; the task has fresh ones.
                    result.files = await self.client.download(task.task_id, self.out)
            except (GrokImagineError, OSError) as exc:
                result.download_error = str(exc)
                display.event(
                    f"line {result.row.line}: download of task {task.task_id} failed: {exc}",
                    style="red",
                )
                return
        files = ", ".join(str(p) for p in result.files)
        display.event(f"line {result.row.line}: saved {files}", style="green")

    def write_report(self) -> None:
        """Write the JSON report of every row, atomically."""
        counts = self.counts
        body = {
            "source": self.source,
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "interrupted": self.interrupted,
            "out": str(self.out),
            "journal": str(self.journal) if self.journal else None,
            "totals": {
                "requests": len(self.rows),
                **{str(s): counts.get(s, 0) for s in OutcomeStatus},
                "downloaded": sum(1 for r in self.results if r.done),
                "unsettled": sum(1 for r in self.results if r.outcome is None),
            },
            "credits": self.credits,
            "usd": round(self.credits * USD_PER_CREDIT, 2),
            "unfinished_task_ids": self.unfinished,
            "results": [r.to_json() for r in self.results],
        }
        self.report.parent.mkdir(parents=True, exist_ok=True)
        part = self.report.with_name(self.report.name + ".part")
        part.write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
        os.replace(part, self.report)


def _describe(result: Result) -> tuple[str, str]:
    outcome = result.outcome
    assert outcome is not None
    where = f"line {result.row.line}"
    task = f"task {outcome.task_id}" if outcome.task_id else "no task"
    again = " (from the journal)" if outcome.from_journal else ""
    status = outcome.status
    if status is OutcomeStatus.COMPLETED:
        return f"{where}: completed, {task}{again}", "green"
    if status is OutcomeStatus.FAILED and outcome.task is not None:
        kind = outcome.task.failure_kind or FailureKind.UNKNOWN
        return (
            f"{where}: failed, {task} ({kind}: {outcome.task.error_message}); "
            f"{FAILURE_ADVICE[kind]}{again}",
            "red",
        )
    if status is OutcomeStatus.UNCERTAIN:
        hint = " (--resubmit-uncertain sends it again, at the risk of paying twice)"
        return f"{where}: uncertain: {outcome.error}{hint}{again}", "yellow"
    return f"{where}: {status}, {task}: {outcome.error}{again}", "yellow"
