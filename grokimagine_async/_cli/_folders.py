"""Where the command line writes: checked before anything is paid for."""

from __future__ import annotations

import tempfile
from pathlib import Path

from ._exits import fail


def check_writable(option: str, folder: Path) -> None:
    """Fail now, before anything is paid for, if ``folder`` could not take our files.

    Nothing is created: a run that fails before it sends anything leaves no folder.
    """
    existing = folder
    try:
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            fail(f"{option} {folder}: {existing} is a file, not a folder")
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        fail(f"{option} {folder}: cannot write there ({exc.strerror or exc})")


def check_journal_is_a_file(path: Path) -> None:
    """Fail now if ``--journal`` names a folder (before it is read as a journal)."""
    if path.is_dir():
        fail(f"--journal {path} is a folder: name a file in it, such as {path / 'batch.db'}")


def check_journal(path: Path) -> None:
    """Fail now if ``--journal`` names a folder, or a place no file can be written."""
    check_journal_is_a_file(path)
    check_writable("--journal", path.parent)
