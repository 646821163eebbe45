"""The ``grokimagine`` command: generate, batch, status, download, simulate, demo."""

from __future__ import annotations

import enum
import json
import os
import re
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import anyio
import typer
from rich.console import Console
from rich.table import Table

from .. import AsyncClient, OutcomeStatus
from .._config import CREDITS_PER_VIDEO, ENV_API_KEY, RateLimit, Tier, resolve_tier
from .._exceptions import (
    AuthenticationError,
    ConfigurationError,
    GrokImagineError,
    InputFileError,
    JournalError,
    RequestValidationError,
    TaskFailedError,
    TaskTimeoutError,
)
from .._journal import Journal
from .._models import GenerateRequest, Task, TaskState
from .._version import __version__
from ._batch import (
    FAILURE_ADVICE,
    BatchRun,
    Display,
    Estimate,
    default_journal,
    duration,
    estimate,
    usd,
)
from ._display import LiveDisplay, PlainDisplay
from ._inputs import Row, build_request, read_rows

T = TypeVar("T")

#: Exit codes, as the docs and ``--help`` promise them.
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

#: A batch that would spend more than this asks first (on a terminal) or needs ``--yes``.
DEFAULT_CONFIRM_OVER = 4_000

DEMO_PROMPTS = [
    {"prompt": "a red fox trotting through fresh snow at dawn", "ratio": "3:2"},
    {"prompt": "a paper boat drifting down a rain-soaked street", "mode": "fun"},
    {"prompt": "timelapse of a city skyline from dusk to night", "ratio": "3:2"},
    {"prompt": "a hummingbird hovering over a purple flower, slow motion", "ratio": "2:3"},
    {"prompt": "an astronaut planting a flag made of spaghetti", "mode": "fun"},
    {"prompt": "waves crashing on black volcanic sand", "ratio": "3:2"},
    {"prompt": "a cat conducting an orchestra of kittens", "mode": "fun", "ratio": "2:3"},
    {"prompt": "northern lights over a frozen lake", "ratio": "3:2"},
    {"prompt": "a steam train crossing a stone viaduct in autumn", "ratio": "3:2"},
    {"prompt": "a robot learning to juggle oranges", "mode": "fun"},
    {"prompt": "ink drops blooming in water, macro", "ratio": "1:1"},
    {"prompt": "a lighthouse in a storm, waves over the rail", "ratio": "2:3"},
]

app = typer.Typer(
    name="grokimagine",
    help=(
        "Generate videos with the Grok Imagine API: one, or a whole file of prompts, "
        "within your plan's rate limit and without paying twice for one video.\n\n"
        "The token comes from GROKIMAGINE_API_KEY or --api-key-file and is never "
        "printed. Exit codes: 0 all done, 1 some failed, 2 usage or configuration "
        "error, 130 interrupted."
    ),
    no_args_is_help=True,
    add_completion=False,
    # A traceback's locals could hold the token.
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"grokimagine {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    pass


# -- options shared by the commands that talk to the API ------------------------------


def _parse_rate(value: str | None) -> RateLimit | None:
    if value is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d*\.?\d*)\s*(s|sec|m|min)?\s*", value)
    if not match or (match[2] == "" and match[3] is None):
        raise typer.BadParameter(
            f"{value!r} is not a rate: write REQUESTS/PERIOD, e.g. 1000/min or 60/2s"
        )
    try:
        period = float(match[2] or 1) * (60 if match[3] in ("m", "min") else 1)
        return RateLimit(int(match[1]), period)
    except (ValueError, ConfigurationError) as exc:
        raise typer.BadParameter(str(exc)) from None


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
    Tier | None,
    typer.Option(
        "--tier",
        case_sensitive=False,
        help="Your plan, for its rate limit (default: GROKIMAGINE_TIER, else learned "
        "from the API's headers, starting at free).",
        show_default=False,
    ),
]


def _check_rate(value: str | None) -> str | None:
    _parse_rate(value)
    return value


class Progress(str, enum.Enum):
    AUTO = "auto"
    LIVE = "live"
    PLAIN = "plain"


UndocumentedOption = Annotated[
    bool,
    typer.Option(
        "--allow-undocumented",
        help="Send modes or ratios the API does not document (new ones, say).",
    ),
]
ProgressOption = Annotated[
    Progress,
    typer.Option(help="auto (a live view on a terminal), live, or plain log lines."),
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


@dataclass(frozen=True)
class Connection:
    api_key_file: Path | None
    base_url: str | None
    tier: Tier | None
    rate: str | None

    def client(self, **kwargs: Any) -> AsyncClient:
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
            tier=self.tier,
            rate_limit=_parse_rate(self.rate),
            **kwargs,
        )

    def plan_rate(self) -> tuple[RateLimit, str]:
        """The rate a batch's estimate assumes, and where it comes from."""
        custom = _parse_rate(self.rate)
        if custom is not None:
            return custom, "--rate-limit"
        tier = resolve_tier(self.tier)
        if tier is not None:
            return tier.rate_limit, f"the {tier.value} plan"
        return Tier.FREE.rate_limit, "the free plan (pass --tier for yours)"


# -- running and failing ------------------------------------------------------------


def _err() -> Console:
    return Console(stderr=True, highlight=False)


def _out() -> Console:
    return Console(highlight=False)


def _fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    _err().print(f"[bold red]error:[/] {message}", markup=True, soft_wrap=True)
    raise typer.Exit(code)


def _run(main: Callable[[], Awaitable[T]]) -> T:
    """Run ``main`` on an event loop, turning what can go wrong into an exit code."""
    try:
        return anyio.run(main)
    except BaseException as raised:
        exc = _single(raised)
        if isinstance(exc, KeyboardInterrupt):
            _err().print("interrupted", style="yellow")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        if isinstance(exc, (ConfigurationError, AuthenticationError, RequestValidationError)):
            _fail(str(exc), EXIT_USAGE)
        if isinstance(exc, (InputFileError, JournalError)):
            _fail(str(exc), EXIT_USAGE)
        if isinstance(exc, GrokImagineError):
            _fail(f"{exc} ({type(exc).__name__})", EXIT_FAILED)
        if isinstance(exc, OSError):
            _fail(f"{exc.filename or ''}: {exc.strerror or exc}", EXIT_FAILED)
        raise


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


def _check_writable(option: str, folder: Path) -> None:
    """Fail now, before anything is paid for, if ``folder`` can't take our files."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        _fail(f"{option} {folder}: cannot write there ({exc.strerror or exc})")


def _request(fields: dict[str, Any], allow_undocumented: bool) -> GenerateRequest:
    try:
        return build_request(fields, allow_undocumented=allow_undocumented)
    except RequestValidationError as exc:
        _fail(str(exc))


# -- generate -----------------------------------------------------------------------


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="What the video should show.")],
    mode: Annotated[str, typer.Option(help="fun, normal or spicy.")] = "normal",
    ratio: Annotated[str, typer.Option(help="1:1, 2:3 or 3:2.")] = "1:1",
    image: Annotated[
        list[str] | None,
        typer.Option(
            "--image", help="URL of a reference image; repeat for more.", show_default=False
        ),
    ] = None,
    out: Annotated[Path, typer.Option(help="Folder for the video.")] = Path("videos"),
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the video.")] = 900,
    allow_undocumented: UndocumentedOption = False,
    api_key_file: ApiKeyFile = None,
    base_url: BaseUrl = None,
    tier: TierOption = None,
    rate_limit: RateOption = None,
) -> None:
    """Generate one video (40 credits), wait for it and download it."""
    request = _request(
        {"prompt": prompt, "mode": mode, "ratio": ratio, "images": image or None},
        allow_undocumented,
    )
    connection = Connection(api_key_file, base_url, tier, rate_limit)
    err = _err()

    async def main() -> int:
        async with connection.client() as client:
            task_id = await client.submit_request(request)
            err.print(f"submitted task {task_id} ({CREDITS_PER_VIDEO} credits); waiting...")
            try:
                with err.status(f"generating {task_id}..."):
                    task = await client.wait(task_id, timeout=timeout)
            except TaskFailedError as exc:
                _print_failure(err, exc.task)
                return EXIT_FAILED
            except TaskTimeoutError:
                err.print(
                    f"task {task_id} is still running after {duration(timeout)}; "
                    f"later: grokimagine download {task_id}",
                    style="yellow",
                )
                return EXIT_FAILED
            paths = await client.download(task, out)
        for path in paths:
            typer.echo(str(path))
        return EXIT_OK

    raise typer.Exit(_run(main))


def _print_failure(console: Console, task: Task) -> None:
    kind = task.failure_kind
    advice = FAILURE_ADVICE[kind] if kind else ""
    console.print(
        f"task {task.task_id} failed ({kind}): {task.error_message}; {advice}", style="red"
    )


# -- batch --------------------------------------------------------------------------


@app.command()
def batch(
    file: Annotated[
        Path,
        typer.Argument(
            help="Prompts: a text file (one a line), JSON Lines (.jsonl) or CSV (.csv) "
            "whose columns are prompt, mode, ratio, images. '-' reads text from stdin.",
            show_default=False,
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
    timeout: Annotated[
        float | None,
        typer.Option(
            min=0.001, help="Seconds for the whole batch; rerun to go on.", show_default=False
        ),
    ] = None,
    progress: ProgressOption = Progress.AUTO,
    allow_undocumented: UndocumentedOption = False,
    api_key_file: ApiKeyFile = None,
    base_url: BaseUrl = None,
    tier: TierOption = None,
    rate_limit: RateOption = None,
) -> None:
    """Generate a video for every request in FILE and download each as it completes.

    Rerun the same command after Ctrl-C or a crash: settled requests are read from
    the journal, tasks in flight are followed again, and nothing is paid for twice.
    """
    if journal is not None and no_journal:
        raise typer.BadParameter("pass --journal or --no-journal, not both")
    connection = Connection(api_key_file, base_url, tier, rate_limit)
    try:
        if str(file) == "-":
            rows = read_rows(
                Path("stdin.txt"), text=sys.stdin.read(), allow_undocumented=allow_undocumented
            )
        else:
            rows = read_rows(file, allow_undocumented=allow_undocumented)
        journal_path = None if no_journal else journal or default_journal(out)
        payloads = [row.request.to_payload() for row in rows]
        entries = Journal.peek(journal_path, payloads) if journal_path else []
        rate, rate_source = connection.plan_rate()
    except (InputFileError, ConfigurationError, JournalError) as exc:
        _fail(str(exc))
    plan = estimate(
        rows, entries, rate, max_credits=max_credits, resubmit_uncertain=resubmit_uncertain
    )
    _print_estimate(_err(), plan, rate_source, journal_path)
    if dry_run:
        raise typer.Exit(EXIT_OK)
    if plan.credits > confirm_over and not yes:
        if not (sys.stdin.isatty() and sys.stderr.isatty()):
            _fail(
                f"this batch would spend up to {plan.credits:,} credits "
                f"({usd(plan.credits)}), over --confirm-over {confirm_over:,}: "
                "pass --yes to go ahead"
            )
        try:
            go = typer.confirm(f"Spend up to {plan.credits:,} credits ({usd(plan.credits)})?")
        except (typer.Abort, KeyboardInterrupt):
            _err().print("interrupted: nothing was sent", style="yellow")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        if not go:
            _fail("nothing was sent", EXIT_FAILED)
    report = report or out / "report.json"
    if report.is_dir():
        _fail(f"--report {report} is a folder: name a file")
    _check_writable("--out", out)
    _check_writable("--report", report.parent)
    if journal_path is not None:
        _check_writable("--journal", journal_path.parent)
    try:
        client = connection.client()
    except ConfigurationError as exc:
        _fail(str(exc))
    run_batch(
        client,
        rows,
        source=str(file),
        out=out,
        journal=journal_path,
        report=report,
        max_credits=max_credits,
        resubmit_uncertain=resubmit_uncertain,
        timeout=timeout,
        progress=progress,
    )


def _print_estimate(
    console: Console, plan: Estimate, rate_source: str, journal: Path | None
) -> None:
    lines = [f"{plan.total} request(s)"]
    if plan.settled or plan.in_flight or plan.uncertain:
        lines.append(
            f"the journal {journal} holds {plan.settled} settled, {plan.in_flight} in flight, "
            f"{plan.uncertain} that may have created a task"
        )
    lines.append(
        f"to submit now: {plan.to_submit} video(s), up to {plan.credits:,} credits "
        f"({usd(plan.credits)})"
    )
    lines.append(
        f"least time on {rate_source} ({plan.rate.requests:,} requests per "
        f"{plan.rate.period:g}s): {duration(plan.least_seconds)} for {plan.requests:,} "
        "requests, plus the generation of the last videos"
    )
    for line in lines:
        console.print(line)


def run_batch(
    client: AsyncClient,
    rows: list[Row],
    *,
    source: str,
    out: Path,
    journal: Path | None,
    report: Path,
    max_credits: int | None = None,
    resubmit_uncertain: bool = False,
    timeout: float | None = None,
    progress: Progress = Progress.AUTO,
    demo: bool = False,
    before: Callable[[], Any] | None = None,
) -> NoReturn:
    """Run a batch to its end and exit with its code, after the summary."""
    err = _err()
    live = progress is Progress.LIVE or (progress is Progress.AUTO and err.is_terminal)
    display: Display = LiveDisplay(err) if live else PlainDisplay(sys.stderr)
    job = BatchRun(
        client,
        rows,
        source=source,
        out=out,
        report=report,
        journal=journal,
        max_credits=max_credits,
        resubmit_uncertain=resubmit_uncertain,
        timeout=timeout,
    )

    async def main() -> None:
        async with client:
            await job.run(display)

    try:
        _run(main)
    except typer.Exit as exit_:
        if exit_.exit_code != EXIT_INTERRUPTED:
            raise
        _print_summary(job)
        err.print(
            "interrupted: rerun the same command to resume; nothing settled or submitted "
            "will be paid for again" + (f" (journal {journal})" if journal else ""),
            style="yellow",
        )
        raise
    if job.interrupted:
        _print_summary(job)
        if journal:
            err.print(
                "interrupted: rerun the same command to resume; nothing settled or "
                f"submitted will be paid for again (journal {journal})",
                style="yellow",
            )
        else:
            err.print(
                "interrupted, with no journal: a rerun would pay again for every video. "
                f"The tasks already made are in {report} (results and unfinished_task_ids): "
                "grokimagine download TASK_ID... fetches them",
                style="yellow",
            )
        raise typer.Exit(EXIT_INTERRUPTED)
    refused = next(
        (
            r.outcome.error
            for r in job.results
            if r.outcome and isinstance(r.outcome.error, AuthenticationError)
        ),
        None,
    )
    if refused is not None:
        _print_summary(job)
        _fail(f"the API refused the token, so the batch stopped: {refused}", EXIT_USAGE)
    _print_summary(job)
    if demo:
        raise typer.Exit(EXIT_OK if job.counts.get(OutcomeStatus.COMPLETED) else EXIT_FAILED)
    raise typer.Exit(EXIT_OK if job.all_done else EXIT_FAILED)


def _print_summary(job: BatchRun) -> None:
    out = _out()
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
    downloaded = sum(1 for r in job.results if r.done)
    table.add_row("videos downloaded", str(downloaded))
    table.add_row("credits spent", f"{job.credits:,} ({usd(job.credits)})")
    out.print(table)
    trouble = [r for r in job.results if not r.done and r.outcome is not None]
    for r in trouble[:20]:
        state = str(r.outcome.status) if r.outcome else "unsettled"
        why = r.download_error or (
            str(r.outcome.error) if r.outcome and r.outcome.error else "not downloaded yet"
        )
        out.print(f"  line {r.row.line}: {state}: {why}", soft_wrap=True)
    if len(trouble) > 20:
        out.print(f"  ... and {len(trouble) - 20} more in the report")
    if job.unfinished:
        out.print(f"tasks still running: {', '.join(sorted(job.unfinished))}", soft_wrap=True)
    out.print(f"videos in {job.out}/; report in {job.report}", soft_wrap=True)


# -- status and download ------------------------------------------------------------


TaskIds = Annotated[list[str], typer.Argument(help="One or more task ids.", show_default=False)]


@app.command()
def status(
    task_ids: TaskIds,
    as_json: Annotated[bool, typer.Option("--json", help="Print the tasks as JSON.")] = False,
    api_key_file: ApiKeyFile = None,
    base_url: BaseUrl = None,
    tier: TierOption = None,
    rate_limit: RateOption = None,
) -> None:
    """Show where each task is: pending, running, completed (with its video URLs) or failed."""
    connection = Connection(api_key_file, base_url, tier, rate_limit)

    async def main() -> list[Task | GrokImagineError]:
        found: list[Task | GrokImagineError] = [GrokImagineError("not looked up")] * len(task_ids)
        async with connection.client() as client, anyio.create_task_group() as tg:

            async def one(i: int, task_id: str) -> None:
                try:
                    found[i] = await client.get_task(task_id)
                except (ConfigurationError, AuthenticationError):
                    raise
                except GrokImagineError as exc:
                    found[i] = exc

            for i, task_id in enumerate(task_ids):
                tg.start_soon(one, i, task_id)
        return found

    found = _run(main)
    if as_json:
        typer.echo(
            json.dumps(
                [
                    t.model_dump(mode="json", by_alias=True)
                    if isinstance(t, Task)
                    else {"task_id": i, "error": str(t), "error_type": type(t).__name__}
                    for i, t in zip(task_ids, found, strict=True)
                ],
                indent=2,
            )
        )
    else:
        table = Table()
        for column in ("task", "state", "details"):
            table.add_column(column, overflow="fold")
        for task_id, t in zip(task_ids, found, strict=True):
            if isinstance(t, GrokImagineError):
                table.add_row(task_id, "[red]error[/]", str(t))
            elif t.state is TaskState.FAILED:
                kind = t.failure_kind
                advice = FAILURE_ADVICE[kind] if kind else ""
                table.add_row(task_id, "[red]failed[/]", f"{kind}: {t.error_message} ({advice})")
            else:
                table.add_row(task_id, str(t.state), "\n".join(t.videos) or t.raw_status)
        _out().print(table)
    raise typer.Exit(EXIT_FAILED if any(isinstance(t, GrokImagineError) for t in found) else 0)


@app.command()
def download(
    task_ids: TaskIds,
    out: Annotated[Path, typer.Option(help="Folder for the videos.")] = Path("videos"),
    api_key_file: ApiKeyFile = None,
    base_url: BaseUrl = None,
    tier: TierOption = None,
    rate_limit: RateOption = None,
) -> None:
    """Download the videos of completed tasks (fresh links are fetched first)."""
    connection = Connection(api_key_file, base_url, tier, rate_limit)
    err = _err()

    async def main() -> int:
        failed = 0
        async with connection.client() as client:

            async def one(task_id: str) -> None:
                nonlocal failed
                try:
                    task = await client.get_task(task_id)
                    if task.state is TaskState.FAILED:
                        _print_failure(err, task)
                        failed += 1
                        return
                    if task.state is not TaskState.COMPLETED:
                        err.print(
                            f"task {task_id} is {task.state}: try again later", style="yellow"
                        )
                        failed += 1
                        return
                    paths = await client.download(task, out)
                except (ConfigurationError, AuthenticationError):
                    raise
                except GrokImagineError as exc:
                    err.print(f"task {task_id}: {exc}", style="red")
                    failed += 1
                    return
                for path in paths:
                    typer.echo(str(path))

            async with anyio.create_task_group() as tg:
                for task_id in task_ids:
                    tg.start_soon(one, task_id)
        return EXIT_FAILED if failed else EXIT_OK

    raise typer.Exit(_run(main))


# -- simulate and demo --------------------------------------------------------------


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def simulate(ctx: typer.Context) -> None:
    """Serve the API simulator on loopback for testing (see: grokimagine simulate --help)."""
    from ..simulator.__main__ import main as simulator_main

    try:
        simulator_main(ctx.args, prog="grokimagine simulate")
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_OK) from None
    except (ConfigurationError, ValueError) as exc:
        _fail(str(exc))


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the videos.")] = Path("videos"),
    progress: ProgressOption = Progress.AUTO,
) -> None:
    """Run a batch of sample prompts against the built-in simulator, into ./videos.

    The simulator runs in this process with time compressed (a rate-limit minute
    of 2 s, videos in 2-6 s, one in ten failing); nothing is spent.
    """
    from ..simulator import Simulator

    rows = [Row(i + 1, GenerateRequest.build(p)) for i, p in enumerate(DEMO_PROMPTS)]
    sim = Simulator(limit=60, period=2.0, generation_time=(2.0, 6.0), failure_rate=0.1, seed=2)
    err = _err()
    journal_dir = tempfile.TemporaryDirectory(prefix="grokimagine-demo-")
    with sim.serve_in_thread() as url:
        err.print(
            f"simulator on {url} (a rate-limit minute lasts 2 s); "
            f"{len(rows)} sample prompts, {CREDITS_PER_VIDEO} simulated credits each",
        )
        client = AsyncClient(
            "demo-token", base_url=url, rate_limit=RateLimit(60, 2.0), poll_interval=0.5
        )
        try:
            run_batch(
                client,
                rows,
                source="the demo's sample prompts",
                out=out,
                journal=Path(journal_dir.name) / "demo.journal.db",
                report=out / "report.json",
                progress=progress,
                demo=True,
            )
        finally:
            stats = sim.stats
            err.print(
                f"the simulator saw {stats.requests} requests, {stats.rate_limited} "
                f"answered 429, and created {stats.tasks_created} tasks"
            )
            journal_dir.cleanup()


#: The click command behind ``app``: what the docs' CLI reference is generated from.
cli = typer.main.get_command(app)
