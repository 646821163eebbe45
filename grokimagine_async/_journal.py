"""A batch's journal: what was asked, what was sent, what came back, in SQLite.

Each request is written before its ``POST`` (``sending``) and again when its
task id comes back (``submitted``), so a batch stopped at any point (a crash,
Ctrl-C, ``kill -9``) can be resumed without paying twice: a request found
``sending`` may or may not have created a task, and is resent only with the
caller's say-so.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import sys
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._exceptions import ConfigurationError, JournalError

__all__ = ["Journal", "JournalEntry"]


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    idx INTEGER PRIMARY KEY,
    request TEXT NOT NULL,
    state TEXT NOT NULL,
    task_id TEXT,
    task TEXT,
    error TEXT,
    outcome TEXT,
    updated REAL NOT NULL
);
"""


@dataclass(frozen=True)
class JournalEntry:
    """One request's line in the journal."""

    index: int
    state: str
    task_id: str | None
    task: dict[str, Any] | None
    error: str | None
    outcome: str | None


class Journal:
    """One batch's journal in a SQLite file (the standard library's)."""

    NEW = "new"
    SENDING = "sending"
    SUBMITTED = "submitted"
    DONE = "done"

    def __init__(self, path: str | Path, payloads: Sequence[dict[str, Any]]) -> None:
        self.path = Path(path)
        self._lock: _Lock | None = None
        key = str(self.path.resolve())
        earlier = _OPEN.get(key)
        if earlier is not None:
            # In this process, the journal of a batch left behind (a `break` out of a
            # bare `async for`) passes to the new run; the old one can send no more.
            earlier.close()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Two runs of one batch at once would each send what the other is sending.
            self._lock = _Lock(self.path.with_name(self.path.name + ".lock"))
            self._open(payloads)
            _OPEN[key] = self
        except (sqlite3.Error, OSError) as exc:
            if self._lock is not None:
                self._lock.release()
            raise JournalError(
                f"journal {self.path} cannot be used ({exc}): pass the path of a new file "
                "or of this batch's earlier journal"
            ) from exc
        except BaseException:
            if self._lock is not None:
                self._lock.release()
            raise

    def _open(self, payloads: Sequence[dict[str, Any]]) -> None:
        # A short busy timeout: waiting here blocks the event loop.
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=0.5)
        # WAL with NORMAL sync survives the process dying at any point, which is
        # what a resume needs, at a fraction of a full fsync's cost.
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        fingerprint = _fingerprint(payloads)
        row = self._db.execute("SELECT value FROM meta WHERE key='batch'").fetchone()
        if row is None:
            with self._db:
                self._db.execute("BEGIN")
                self._db.execute("INSERT INTO meta VALUES ('batch', ?)", (fingerprint,))
                self._db.executemany(
                    "INSERT INTO entries (idx, request, state, updated) VALUES (?, ?, ?, ?)",
                    [
                        (i, json.dumps(p, sort_keys=True), self.NEW, time.time())
                        for i, p in enumerate(payloads)
                    ],
                )
        elif row[0] != fingerprint:
            self._db.close()
            raise ConfigurationError(
                f"journal {self.path} was written for a different batch of requests; "
                "pass another journal path, or run the batch it was written for"
            )

    @classmethod
    def peek(cls, path: str | Path, payloads: Sequence[dict[str, Any]]) -> list[JournalEntry]:
        """The entries of an existing journal of this batch, read without
        writing anything; empty when there is no journal at ``path`` yet."""
        path = Path(path)
        if not path.exists():
            return []
        try:
            # With no write-ahead log beside it (closed cleanly), the file is whole and
            # immutable=1 reads it without making -wal/-shm files; with one (a crash),
            # its pages must be read too.
            wal = path.with_name(path.name + "-wal").exists()
            mode = "mode=ro" if wal else "mode=ro&immutable=1"
            db = sqlite3.connect(f"{path.resolve().as_uri()}?{mode}", uri=True, timeout=0.5)
            try:
                row = db.execute("SELECT value FROM meta WHERE key='batch'").fetchone()
                if row is not None and row[0] != _fingerprint(payloads):
                    raise ConfigurationError(
                        f"journal {path} was written for a different batch of requests; "
                        "pass another journal path, or run the batch it was written for"
                    )
                return _entries(db)
            finally:
                db.close()
        except sqlite3.Error as exc:
            raise JournalError(f"journal {path} cannot be read ({exc})") from exc

    def entries(self) -> list[JournalEntry]:
        """Every request's line, in input order."""
        return _entries(self._db)

    def sending(self, index: int) -> None:
        """About to send this request: from now on it may have created a task."""
        self._set(index, state=self.SENDING)

    def submitted(self, index: int, task_id: str) -> None:
        """The request created this task."""
        self._set(index, state=self.SUBMITTED, task_id=task_id)

    def done(
        self,
        index: int,
        outcome: str,
        *,
        task: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        """The request is settled, one way or another."""
        self._set(
            index,
            state=self.DONE,
            outcome=outcome,
            task=json.dumps(task) if task is not None else None,
            error=error,
        )

    def unsent(self, index: int) -> None:
        """The request was not sent after all (its budget ran out, say)."""
        self._set(index, state=self.NEW)

    def _set(self, index: int, **fields: Any) -> None:
        names = ", ".join(f"{k} = ?" for k in fields)
        try:
            self._db.execute(
                f"UPDATE entries SET {names}, updated = ? WHERE idx = ?",  # noqa: S608 - our names
                (*fields.values(), time.time(), index),
            )
        except sqlite3.Error as exc:
            raise JournalError(f"journal {self.path}: request {index} not recorded: {exc}") from exc

    def close(self) -> None:
        self._db.close()
        if self._lock is not None:
            self._lock.release()
            self._lock = None


_OPEN: weakref.WeakValueDictionary[str, Journal] = weakref.WeakValueDictionary()


class _Lock:
    """An exclusive lock on a file, held by this process until released or dead."""

    def __init__(self, path: Path) -> None:
        self._file = open(path, "a+")  # noqa: SIM115 - held open for the lock's life
        try:
            _lock(self._file.fileno())
        except OSError:
            self._file.close()
            raise JournalError(
                f"journal {path.with_suffix('')} is in use by another run of this batch: "
                "wait for it to finish (two runs at once could pay twice for a video)"
            ) from None

    def release(self) -> None:
        if not self._file.closed:
            self._file.close()  # closing the file releases the lock


if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _lock(fd: int) -> None:
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)

else:
    import fcntl

    def _lock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _fingerprint(payloads: Sequence[dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(list(payloads), sort_keys=True).encode()).hexdigest()


def _entries(db: sqlite3.Connection) -> list[JournalEntry]:
    rows = db.execute(
        "SELECT idx, state, task_id, task, error, outcome FROM entries ORDER BY idx"
    ).fetchall()
    return [
        JournalEntry(i, state, task_id, json.loads(task) if task else None, error, outcome)
        for i, state, task_id, task, error, outcome in rows
    ]
