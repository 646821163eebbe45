"""The ``grokimagine`` command: its help, ``--version``, and the commands it runs."""

from __future__ import annotations

from typing import Annotated

import typer

from .._version import __version__
from .commands.batch import batch
from .commands.demo import demo
from .commands.download import download
from .commands.generate import generate
from .commands.simulate import simulate
from .commands.status import status

app = typer.Typer(
    name="grokimagine",
    help=(
        "Generate videos with the Grok Imagine API: one, or a whole file of prompts, "
        "within your plan's rate limit and without paying twice for one video.\n\n"
        "The token comes from GROKIMAGINE_API_KEY or --api-key-file and is never "
        "printed. Exit codes: 0 all done, 1 some failed, 2 usage or configuration "
        "error, 130 interrupted (demo: 0 once it made videos; its simulator fails one "
        "in ten on purpose)."
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


app.command()(generate)
app.command()(batch)
app.command()(status)
app.command()(download)
app.command(
    # Its options are the simulator's own, parsed by it.
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)(simulate)
app.command()(demo)

#: The click command behind ``app``: what the docs' CLI reference is generated from.
cli = typer.main.get_command(app)
