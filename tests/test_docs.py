"""What the README shows works: its settings table names every setting (and is the
docs' too), its quickstart runs as pasted."""

from __future__ import annotations

import asyncio
import inspect
import re
from pathlib import Path
from typing import Any

import pytest

from grokimagine_async import AsyncClient, _config
from grokimagine_async.simulator import Simulator

from .helpers import TOKEN

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


def quickstart(which: int = 0) -> str:
    """The quickstart's ``which``-th example: the async one, then the blocking one."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    found = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(found) == 2
    return str(found[which]).replace("asyncio.run(main())", "")


@pytest.mark.parametrize("failure_rate", [0.0, 1.0], ids=["made", "refused"])
def test_the_quickstart_runs_as_pasted_whether_the_video_is_made_or_refused(
    failure_rate: float,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sim = Simulator(generation_time=(0.05, 0.1), failure_rate=failure_rate, seed=5)
    with sim.serve_in_thread() as url:
        monkeypatch.setenv("GROKIMAGINE_API_KEY", TOKEN)
        monkeypatch.setenv("GROKIMAGINE_BASE_URL", url)
        monkeypatch.setenv("GROKIMAGINE_POLL_INTERVAL", "0.05")
        monkeypatch.chdir(tmp_path)
        namespace: dict[str, Any] = {}
        exec(compile(quickstart(), "README.md", "exec"), namespace)  # noqa: S102
        asyncio.run(namespace["main"]())
    printed = capsys.readouterr().out
    if failure_rate:
        assert sim.stats.tasks_created == 1  # refused: said, and nothing more sent
        assert printed.strip()
    else:
        assert sim.stats.tasks_created == 2
        assert list((tmp_path / "videos").glob("*.mp4"))


@pytest.mark.parametrize("failure_rate", [0.0, 1.0], ids=["made", "refused"])
def test_the_blocking_quickstart_runs_as_pasted(
    failure_rate: float,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sim = Simulator(generation_time=(0.05, 0.1), failure_rate=failure_rate, seed=5)
    with sim.serve_in_thread() as url:
        monkeypatch.setenv("GROKIMAGINE_API_KEY", TOKEN)
        monkeypatch.setenv("GROKIMAGINE_BASE_URL", url)
        monkeypatch.setenv("GROKIMAGINE_POLL_INTERVAL", "0.05")
        monkeypatch.chdir(tmp_path)
        exec(compile(quickstart(1), "README.md", "exec"), {})  # noqa: S102
    assert sim.stats.tasks_created == 1
    assert capsys.readouterr().out.strip()
    assert bool(list((tmp_path / "videos").glob("*.mp4"))) is not bool(failure_rate)
