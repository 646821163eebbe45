"""The journal a batch relies on: one process at a time, and a look that writes nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from grokimagine_async._exceptions import JournalError
from grokimagine_async._journal import Journal

from .helpers import held_elsewhere


def test_a_journal_is_held_by_one_process_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    with held_elsewhere(path, [{"prompt": "a"}]), pytest.raises(JournalError, match="in use"):
        Journal(path, [{"prompt": "a"}])
    Journal(path, [{"prompt": "a"}]).close()


def test_in_one_process_a_journal_still_open_is_refused_to_a_second_run(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    first = Journal(path, [{"prompt": "a"}])
    with pytest.raises(JournalError, match=r"async with.*aclose"):
        Journal(path, [{"prompt": "a"}])
    first.submitted(0, "t0")  # the first run is untouched
    first.close()
    Journal(path, [{"prompt": "a"}]).close()


def test_peeking_at_a_journal_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    payloads: list[dict[str, Any]] = [{"prompt": "a"}]
    assert Journal.peek(path, payloads) == []
    assert not path.exists()
    journal = Journal(path, payloads)
    journal.submitted(0, "t0")
    journal.close()
    before = path.read_bytes()
    (entry,) = Journal.peek(path, payloads)
    assert entry.task_id == "t0"
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["j.db"]  # no lock left behind
