"""``grokimagine download``: the videos of tasks that completed, with fresh links."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import anyio
import typer

from ... import TaskState
from ..._exceptions import AuthenticationError, ConfigurationError, GrokImagineError
from .._exits import EXIT_FAILED, EXIT_OK, run
from .._folders import check_writable
from .._format import failure_line, stderr
from .._options import (
    Connection,
    connected,
)
from .status import TaskIds


@connected
def download(
    task_ids: TaskIds,
    out: Annotated[Path, typer.Option(help="Folder for the videos.")] = Path("videos"),
    *,
    connection: Connection,
) -> None:
    """Download the videos of completed tasks (fresh links are fetched first)."""
    check_writable("--out", out)
    err = stderr()

    async def main() -> int:
        failed = 0
        async with connection.client() as client:

            async def one(task_id: str) -> None:
                nonlocal failed
                try:
                    task = await client.get_task(task_id)
                    if task.state is TaskState.FAILED:
                        err.print(failure_line(task), style="red")
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

    raise typer.Exit(run(main))
