"""The ``grokimagine`` command line (``pip install 'grokimagine-async[cli]'``)."""

from __future__ import annotations

import sys

_NEEDS = {"typer", "click", "rich", "uvicorn"}


def main() -> None:
    """Run the ``grokimagine`` command."""
    try:
        from ._app import app
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in _NEEDS:
            raise
        sys.stderr.write(
            f"grokimagine: the command line needs {exc.name}, which is not installed: "
            "pip install 'grokimagine-async[cli]'\n"
        )
        sys.exit(2)
    app()
