"""Running a batch file's rows: ``generate_many``, a download as each video completes,
a graceful stop on Ctrl-C, and where the run stands for the progress display."""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import anyio
from anyio.abc import TaskGroup

from .. import AsyncClient, GenerationPipeline, Outcome, OutcomeStatus
from .._exceptions import ConfigurationError, GrokImagineError, VideoExpiredError
from ._exits import stops_batch
from ._format import outcome_line
from ._inputs import BatchFile

#: Seconds a Ctrl-C waits for submissions on the wire to answer: past a read timeout.
STOP_GRACE = 45.0

#: Downloads running at once, across the whole batch.
DOWNLOADS_AT_ONCE = 4


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


@dataclass(slots=True)
class Result:
    """One row of the batch, as it ended."""

    line: int
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

    @property
    def not_submitted(self) -> bool:
        """Settled without a submission of its own: skipped, or ended by a stop's reason."""
        outcome = self.outcome
        return outcome is not None and (
            outcome.status is OutcomeStatus.SKIPPED or stops_batch(outcome.error)
        )


@dataclass
class BatchRun:
    """A batch file's rows run through ``generate_many``, with downloads.

    The file is streamed into the pipeline as it needs rows, read again from
    disk; what is kept of each row is its line and how it ended.
    """

    client: AsyncClient
    source: BatchFile
    out: Path
    journal: Path | None
    max_credits: int | None = None
    resubmit_uncertain: bool = False
    retry_failed: bool = False
    timeout: float | None = None
    refresh_every: float = 0.25
    results: list[Result] = field(init=False)
    interrupted: bool = field(init=False, default=False)
    #: Why the pipeline stopped submitting on its own (a refused token, a host out of
    #: reach): said once when the run ends, not once a row.
    stop_reason: GrokImagineError | None = field(init=False, default=None)
    started: float = field(init=False, default=0.0)
    unfinished: dict[str, str] = field(init=False, default_factory=dict)
    _pipeline: GenerationPipeline | None = field(init=False, default=None)
    # Kept as rows settle, so that a progress refresh costs the same for a million
    # rows as for ten.
    _counts: Counter[OutcomeStatus] = field(init=False, default_factory=Counter)
    _settled_now: int = field(init=False, default=0)
    _with_task: int = field(init=False, default=0)
    _downloaded: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.results = [Result(line) for line in self.source.lines]

    @property
    def counts(self) -> Counter[OutcomeStatus]:
        return Counter(self._counts)

    @property
    def credits(self) -> int:
        return self._pipeline.progress.spent_credits if self._pipeline else 0

    @property
    def all_done(self) -> bool:
        return all(r.done for r in self.results)

    @property
    def created_anything(self) -> bool:
        """Whether any row has, or may have, a task: this run's or an earlier one's."""
        return bool(self.unfinished) or any(
            r.outcome is not None
            and (r.outcome.task_id is not None or r.outcome.status is OutcomeStatus.UNCERTAIN)
            for r in self.results
        )

    def snapshot(self) -> Snapshot:
        assert self._pipeline is not None
        progress = self._pipeline.progress
        budget = self.client.rate_limit_status()
        elapsed = time.monotonic() - self.started
        settled_now = self._settled_now
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
            total=len(self.results),
            submitted=progress.running + self._with_task,
            queued=progress.queued,
            submitting=progress.submitting,
            running=progress.running,
            counts=dict(self.counts),
            downloaded=self._downloaded,
            credits=progress.spent_credits,
            requests_left=budget.remaining,
            limit=budget.limit,
            period=budget.period,
            elapsed=elapsed,
            eta=eta,
        )

    async def run(self, display: Display) -> None:
        """Run to the end, or until cancelled."""
        self.started = time.monotonic()
        self._pipeline = self.client.generate_many(
            self.source,
            journal=self.journal,
            max_credits=self.max_credits,
            resubmit_uncertain=self.resubmit_uncertain,
            resubmit_failed=self.retry_failed,
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
            self.unfinished = {
                task_id: str(task.state) if task else "unknown"
                for task_id, task in self._pipeline.unfinished.items()
            }

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
        # A file that changed under the run ends short of the journal's batch (at the
        # start, or after its last outcome): the change, said once the run ends, is
        # what went wrong. Caught inside the task group, which would wrap it.
        with self._unless_the_file_changed():
            async with self._pipeline as outcomes, anyio.create_task_group() as downloads:
                with self._unless_the_file_changed():
                    async for outcome in outcomes:
                        self._settled(outcome, downloads, slots, display)

    @contextmanager
    def _unless_the_file_changed(self) -> Iterator[None]:
        try:
            yield
        except ConfigurationError:
            if self.source.changed is None:
                raise

    def _settled(
        self,
        outcome: Outcome,
        downloads: TaskGroup,
        slots: anyio.CapacityLimiter,
        display: Display,
    ) -> None:
        """Keep how a row ended, say so, and start its download."""
        result = self.results[outcome.index]
        result.outcome = outcome
        self._counts[outcome.status] += 1
        self._settled_now += not outcome.from_journal
        self._with_task += outcome.task_id is not None
        if stops_batch(outcome.error):
            assert outcome.error is not None
            self.stop_reason = self.stop_reason or outcome.error
            return
        if self.interrupted and outcome.status is OutcomeStatus.SKIPPED:
            return
        message, style = outcome_line(result.line, outcome)
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
                    f"line {result.line}: download of task {task.task_id} failed: {exc}",
                    style="red",
                )
                return
        self._downloaded += result.done
        files = ", ".join(str(p) for p in result.files)
        display.event(f"line {result.line}: saved {files}", style="green")
