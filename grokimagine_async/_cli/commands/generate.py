"""``grokimagine generate``: one video, waited for and downloaded."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ... import TaskFailedError, TaskTimeoutError
from ..._config import CREDITS_PER_VIDEO
from ..._exceptions import RequestValidationError
from .._exits import EXIT_FAILED, EXIT_OK, fail, run
from .._folders import check_writable
from .._format import duration, failure_line, stderr
from .._inputs import build_request, option_name
from .._options import (
    DEFAULT_POLL_INTERVAL,
    Connection,
    PollIntervalOption,
    UndocumentedOption,
    connected,
)


@connected
def generate(
    prompt: Annotated[str, typer.Argument(help="What the video should show.", metavar="PROMPT")],
    mode: Annotated[str, typer.Option(help="fun, normal or spicy.")] = "normal",
    ratio: Annotated[str, typer.Option(help="1:1, 2:3 or 3:2.")] = "1:1",
    image: Annotated[
        list[str] | None,
        typer.Option(
            "--image", help="URL of a reference image; repeat for more.", show_default=False
        ),
    ] = None,
    out: Annotated[Path, typer.Option(help="Folder for the video.")] = Path("videos"),
    timeout: Annotated[float, typer.Option(min=0.001, help="Seconds to wait for the video.")] = 900,
    poll_interval: PollIntervalOption = DEFAULT_POLL_INTERVAL,
    allow_undocumented: UndocumentedOption = False,
    *,
    connection: Connection,
) -> None:
    """Generate one video (40 credits), wait for it and download it."""
    fields = {"prompt": prompt, "mode": mode, "ratio": ratio, "images": image or None}
    try:
        request = build_request(fields, allow_undocumented=allow_undocumented, name=option_name)
    except RequestValidationError as exc:
        fail(str(exc))
    # Before the paid submission: a video with nowhere to go would be paid for for nothing.
    check_writable("--out", out)
    err = stderr()
    submitted: list[str] = []

    async def main() -> int:
        async with connection.client(poll_interval=poll_interval) as client:
            task_id = await client.submit_request(request)
            submitted.append(task_id)
            err.print(f"submitted task {task_id} ({CREDITS_PER_VIDEO} credits); waiting...")
            try:
                with err.status(f"generating {task_id}..."):
                    task = await client.wait(task_id, timeout=timeout)
            except TaskFailedError as exc:
                err.print(failure_line(exc.task), style="red")
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

    def interrupted() -> str:
        if not submitted:
            return "interrupted"
        task_id = submitted[0]
        return (
            f"interrupted: task {task_id} goes on without this command "
            f"({CREDITS_PER_VIDEO} credits); later, 'grokimagine status {task_id}' shows "
            f"where it is and 'grokimagine download {task_id}' fetches its video"
        )

    raise typer.Exit(run(main, interrupted=interrupted))
