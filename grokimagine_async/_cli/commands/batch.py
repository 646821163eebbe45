"""``grokimagine batch``: a file of prompts, priced, confirmed, run, resumable."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from ... import AsyncClient, OutcomeStatus
from ..._exceptions import ConfigurationError, InputFileError, JournalError
from ..._journal import Journal
from .._display import LiveDisplay, PlainDisplay
from .._estimate import estimate
from .._exits import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, fail, run, stop_line
from .._folders import check_journal, check_journal_is_a_file, check_writable
from .._format import stderr, usd
from .._inputs import DEFAULT_MAX_PROMPT_CHARS, BatchFile
from .._options import (
    DEFAULT_POLL_INTERVAL,
    Connection,
    PollIntervalOption,
    Progress,
    ProgressOption,
    UndocumentedOption,
    connected,
)
from .._report import print_estimate, print_summary, write_report
from .._runner import BatchRun, Display

#: A batch that would spend more than this asks first (on a terminal) or needs ``--yes``.
DEFAULT_CONFIRM_OVER = 4_000


def default_journal(out: Path) -> Path:
    """The journal beside the output folder: ``videos/`` keeps ``videos.journal.db``."""
    folder = out.resolve()
    return folder.parent / f"{folder.name}.journal.db"


@connected
def batch(
    file: Annotated[
        Path,
        typer.Argument(
            help="Prompts: a text file (one a line), JSON Lines (.jsonl) or CSV (.csv) "
            "whose columns are prompt, mode, ratio, images. '-' reads text from stdin.",
            show_default=False,
            metavar="FILE",
        ),
    ],
    out: Annotated[Path, typer.Option(help="Folder for the videos.")] = Path("videos"),
    journal: Annotated[
        Path | None,
        typer.Option(
            help="Where the batch records every request and task id, so that rerunning "
            "resumes without paying twice (default: OUT.journal.db beside the folder).",
            show_default=False,
        ),
    ] = None,
    no_journal: Annotated[
        bool, typer.Option("--no-journal", help="Keep no journal: an interrupted run can't resume.")
    ] = False,
    report: Annotated[
        Path | None,
        typer.Option(
            help="Where to write the JSON report (default: OUT/report.json).", show_default=False
        ),
    ] = None,
    max_credits: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Stop submitting before the batch's spend would pass this.",
            show_default=False,
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the cost and the least time; send nothing.")
    ] = False,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Don't ask before spending over --confirm-over.")
    ] = False,
    confirm_over: Annotated[
        int, typer.Option(min=0, help="Ask first when the batch would spend more credits.")
    ] = DEFAULT_CONFIRM_OVER,
    resubmit_uncertain: Annotated[
        bool,
        typer.Option(
            "--resubmit-uncertain",
            help="Resend requests an earlier run was sending when it stopped (each may "
            "have created a task already: you may pay twice).",
        ),
    ] = False,
    retry_failed: Annotated[
        bool,
        typer.Option(
            "--retry-failed",
            help="Resend the lines whose task failed in a way a new submission may cure "
            "(an upstream build failure, a network error); each is paid for again. "
            "Needs the journal of the earlier run.",
        ),
    ] = False,
    max_prompt_chars: Annotated[
        int,
        typer.Option(
            min=1,
            help="Refuse the file if a prompt is longer than this many characters (the "
            "API documents no limit; a longer prompt is most likely a mistake).",
        ),
    ] = DEFAULT_MAX_PROMPT_CHARS,
    timeout: Annotated[
        float | None,
        typer.Option(
            min=0.001, help="Seconds for the whole batch; rerun to go on.", show_default=False
        ),
    ] = None,
    poll_interval: PollIntervalOption = DEFAULT_POLL_INTERVAL,
    progress: ProgressOption = "auto",
    allow_undocumented: UndocumentedOption = False,
    *,
    connection: Connection,
) -> None:
    """Generate a video for every request in FILE and download each as it completes.

    Rerun the same command after Ctrl-C or a crash: settled requests are read from
    the journal, tasks in flight are followed again, and nothing is paid for twice.
    """
    if journal is not None and no_journal:
        raise typer.BadParameter("pass --journal or --no-journal, not both")
    if retry_failed and no_journal:
        fail(
            "--retry-failed resends the lines the journal of an earlier run holds as "
            "failed: drop --no-journal"
        )
    stdin = str(file) == "-"
    source = BatchFile(
        Path("stdin.txt") if stdin else file,
        text=sys.stdin.read() if stdin else None,
        allow_undocumented=allow_undocumented,
        max_prompt_chars=max_prompt_chars,
    )
    try:
        connection.check_base_url()
        source.check()
        journal_path = None if no_journal else journal or default_journal(out)
        if journal_path is not None:
            check_journal_is_a_file(journal_path)
        rate, rate_source, rate_hint = connection.plan_rate()
        entries = (
            Journal.scan(journal_path, (r.request.to_payload() for r in source.rows()), len(source))
            if journal_path
            else ()
        )
        plan = estimate(
            len(source),
            entries,
            rate,
            max_credits=max_credits,
            resubmit_uncertain=resubmit_uncertain,
            retry_failed=retry_failed,
        )
    except (InputFileError, ConfigurationError, JournalError) as exc:
        fail(str(exc))
    if source.changed:
        fail(source.changed)
    if dry_run:
        print_estimate(stderr(), plan, rate_source, rate_hint, journal_path)
        raise typer.Exit(EXIT_OK)
    try:  # no token: said before any estimate of what it would spend
        client = connection.client(poll_interval=poll_interval)
    except ConfigurationError as exc:
        fail(str(exc))
    print_estimate(stderr(), plan, rate_source, rate_hint, journal_path)
    report = report or out / "report.json"
    if report.is_dir():
        fail(f"--report {report} is a folder: name a file")
    check_writable("--out", out)
    check_writable("--report", report.parent)
    if journal_path is not None:
        check_journal(journal_path)
    if plan.credits > confirm_over and not yes:
        if not interactive():
            fail(
                f"this batch would spend up to {plan.credits:,} credits "
                f"({usd(plan.credits)}), over --confirm-over {confirm_over:,}: "
                "pass --yes to go ahead"
            )
        try:
            go = typer.confirm(f"Spend up to {plan.credits:,} credits ({usd(plan.credits)})?")
        except (typer.Abort, KeyboardInterrupt):
            stderr().print("interrupted: nothing was sent", style="yellow")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        if not go:
            # A question answered no: the command did what it was told.
            stderr().print("nothing was sent")
            raise typer.Exit(EXIT_OK)
    try:
        source.verify()
    except InputFileError as exc:
        fail(str(exc))
    run_batch(
        client,
        source,
        source=str(file),
        out=out,
        journal=journal_path,
        report=report,
        max_credits=max_credits,
        resubmit_uncertain=resubmit_uncertain,
        retry_failed=retry_failed,
        timeout=timeout,
        progress=progress,
    )


def interactive() -> bool:
    """Whether someone is there to answer the spend question."""
    return sys.stdin.isatty() and sys.stderr.isatty()


#: The files SQLite keeps beside a journal while it is open.
_SQLITE = ("-wal", "-shm", "-journal")


def run_batch(
    client: AsyncClient,
    rows: BatchFile,
    *,
    source: str,
    out: Path,
    journal: Path | None,
    report: Path,
    max_credits: int | None = None,
    resubmit_uncertain: bool = False,
    retry_failed: bool = False,
    timeout: float | None = None,
    progress: str = Progress.AUTO,
    demo: bool = False,
) -> NoReturn:
    """Run a batch to its end and exit with its code, after the summary."""
    journal_new = journal is not None and not journal.exists()
    err = stderr()
    view = Progress(progress)
    live = view is Progress.LIVE or (view is Progress.AUTO and err.is_terminal)
    display: Display = LiveDisplay(err) if live else PlainDisplay(sys.stderr)
    job = BatchRun(
        client,
        rows,
        out=out,
        journal=journal,
        max_credits=max_credits,
        resubmit_uncertain=resubmit_uncertain,
        retry_failed=retry_failed,
        timeout=timeout,
    )

    async def main() -> None:
        async with client:
            await job.run(display)

    def keep_report(failed: bool) -> Path | None:
        # A run that failed before anything was created leaves nothing behind.
        if failed and not job.created_anything:
            return None
        write_report(job, report, source)
        return report

    try:
        run(main)
    except BaseException as raised:
        code = raised.exit_code if isinstance(raised, typer.Exit) else None
        written = keep_report(failed=True)
        if code == EXIT_INTERRUPTED:
            print_summary(job, written)
            _say_interrupted(job, written)
        raise
    if job.interrupted:
        written = keep_report(failed=True)
        print_summary(job, written)
        _say_interrupted(job, written)
        raise typer.Exit(EXIT_INTERRUPTED)
    if rows.changed:
        print_summary(job, keep_report(failed=True))
        fail(rows.changed)
    if job.stop_reason is not None:
        if job.created_anything:
            print_summary(job, keep_report(failed=True))
        elif journal is not None and journal_new and not job.counts.get(OutcomeStatus.UNCERTAIN):
            # Stopped before any task was made (a refused token, nothing reachable):
            # a journal of nothing would only be left to wonder about.
            for path in (journal, *(journal.with_name(journal.name + x) for x in _SQLITE)):
                path.unlink(missing_ok=True)
        code, line = stop_line(job.stop_reason, sum(r.not_submitted for r in job.results))
        fail(line, code)
    print_summary(job, keep_report(failed=False))
    if demo:
        raise typer.Exit(EXIT_OK if job.counts.get(OutcomeStatus.COMPLETED) else EXIT_FAILED)
    raise typer.Exit(EXIT_OK if job.all_done else EXIT_FAILED)


def _say_interrupted(job: BatchRun, report: Path | None) -> None:
    if job.journal is not None:
        message = (
            "interrupted: rerun the same command to resume; nothing settled or submitted "
            f"will be paid for again (journal {job.journal})"
        )
    elif report is not None:
        message = (
            "interrupted, with no journal: a rerun would pay again for every video. "
            f"The tasks already made are in {report} (results and unfinished_task_ids): "
            "grokimagine download TASK_ID... fetches them"
        )
    else:
        message = "interrupted, with no journal, before any task was made"
    stderr().print(message, style="yellow", soft_wrap=True)
