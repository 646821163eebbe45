"""An mkdocs hook: the CLI reference's option tables, generated from the commands.

``<!-- grokimagine-commands -->`` in a page becomes, for every command, its
help text, usage line and a table of its arguments and options, read from the
command objects themselves, so the reference cannot drift from the code.
"""

from __future__ import annotations

import inspect
from typing import Any

MARKER = "<!-- grokimagine-commands -->"


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, "\n".join(_commands()))


def _commands() -> list[str]:
    from grokimagine_async._cli._app import cli

    lines: list[str] = []
    for name, command in cli.commands.items():  # type: ignore[attr-defined]
        ctx = command.make_context(name, ["--help"], resilient_parsing=True)
        pieces = " ".join(command.collect_usage_pieces(ctx))
        lines += [f"### `{name}`", "", inspect.cleandoc(command.help or ""), ""]
        lines += ["```text", f"grokimagine {name} {pieces}", "```", ""]
        params = [p for p in command.get_params(ctx) if not p.hidden]
        if name == "simulate":
            lines += ["Its options are the simulator's: `grokimagine simulate --help`.", ""]
            continue
        lines += ["| argument or option | what it does |", "|---|---|"]
        for param in params:
            record = param.get_help_record(ctx)
            if record is None or param.name == "help":
                continue
            names, help_text = record[0].replace("|", " or "), record[1].replace("|", "&#x7C;")
            lines.append(f"| `{names}` | {help_text} |")
        lines.append("")
    return lines
