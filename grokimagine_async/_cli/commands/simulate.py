"""``grokimagine simulate``: the API simulator, served on loopback for testing."""

from __future__ import annotations

import typer

from ..._exceptions import ConfigurationError
from .._exits import EXIT_OK, fail


def simulate(ctx: typer.Context) -> None:
    """Serve the API simulator on loopback for testing (see: grokimagine simulate --help)."""
    from ...simulator.__main__ import main as simulator_main

    try:
        simulator_main(ctx.args, prog="grokimagine simulate")
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_OK) from None
    except (ConfigurationError, ValueError) as exc:
        fail(str(exc))
