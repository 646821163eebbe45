"""``grokimagine status``: where each task is."""

from __future__ import annotations

import json
from typing import Annotated

import anyio
import typer
from rich.table import Table

from ... import Task, TaskState
from ..._exceptions import AuthenticationError, ConfigurationError, GrokImagineError
from .._exits import EXIT_FAILED, EXIT_OK, run
from .._format import FAILURE_ADVICE, stdout
from .._options import (
    Connection,
    connected,
)


def _check_task_ids(values: list[str]) -> list[str]:
    if any(not v.strip() for v in values):
        raise typer.BadParameter("an empty task id: pass the id generate or batch printed")
    return [v.strip() for v in values]


TaskIds = Annotated[
    list[str],
    typer.Argument(
        help="One or more task ids.",
        show_default=False,
        metavar="TASK_ID",
        callback=_check_task_ids,
    ),
]


@connected
def status(
    task_ids: TaskIds,
    as_json: Annotated[bool, typer.Option("--json", help="Print the tasks as JSON.")] = False,
    *,
    connection: Connection,
) -> None:
    """Show where each task is: pending, running, completed (with its video URLs) or failed."""

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

    found = run(main)
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
        rows: list[tuple[str, str, str]] = []
        for task_id, t in zip(task_ids, found, strict=True):
            if isinstance(t, GrokImagineError):
                rows.append((task_id, "error", str(t)))
            elif t.state is TaskState.FAILED:
                kind = t.failure_kind
                advice = FAILURE_ADVICE[kind] if kind else ""
                rows.append((task_id, "failed", f"{kind}: {t.error_message} ({advice})"))
            else:
                rows.append((task_id, str(t.state), " ".join(t.videos) or t.raw_status))
        console = stdout()
        if not console.is_terminal:
            # Into a pipe or a file: a line a task, tab-separated, no URL cut in two.
            for row in rows:
                typer.echo("\t".join(row))
        else:
            table = Table()
            for column in ("task", "state", "details"):
                table.add_column(column, overflow="fold")
            for task_id, state, details in rows:
                style = "red" if state in ("error", "failed") else ""
                table.add_row(task_id, f"[{style}]{state}[/]" if style else state, details)
            console.print(table)
    failed = any(isinstance(t, GrokImagineError) for t in found)
    raise typer.Exit(EXIT_FAILED if failed else EXIT_OK)
