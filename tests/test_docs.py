"""The settings table is written once (the README's) and names every setting."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from grokimagine_async import AsyncClient, _config

ROOT = Path(__file__).resolve().parent.parent


def settings_table() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(r"\[start:settings\] -->\n(.*?)<!-- --8<-- \[end:settings\]", readme, re.S)
    assert found, "the README's settings table has lost its markers"
    return found.group(1)


def test_every_argument_and_environment_variable_is_in_the_settings_table() -> None:
    table = settings_table()
    arguments = [p for p in inspect.signature(AsyncClient).parameters if p != "self"]
    missing = [name for name in arguments if f"`{name}" not in table]
    assert not missing, f"AsyncClient arguments missing from the settings table: {missing}"
    variables = [v for k, v in vars(_config).items() if k.startswith("ENV_")]
    missing = [name for name in variables if f"`{name}`" not in table]
    assert not missing, f"environment variables missing from the settings table: {missing}"


def test_the_docs_show_the_readmes_table_rather_than_a_copy() -> None:
    index = (ROOT / "docs" / "index.md").read_text(encoding="utf-8")
    assert '--8<-- "README.md:settings"' in index
    assert "| argument | environment | default |" not in index
