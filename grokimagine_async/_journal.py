"""A batch's journal: what was asked, what was sent, what came back, in SQLite.

The journal owns the rules that make a stopped batch (a crash, Ctrl-C,
``kill -9``) resumable without paying twice:

* a request is written ``sending`` before its ``POST`` and ``submitted`` with
  its task id when the id comes back, so a task id that came back is never lost;
* :meth:`Journal.record` decides what each settled outcome leaves behind: a
  refusal or a request never sent goes back to ``new`` (a rerun sends it), an
  uncertain one stays ``sending``, a timed-out or unfollowable task stays
  ``submitted`` (a rerun follows it), anything else is ``done`` with its task
  and its error, type and all. Those ``done`` rows are written a batch at a
  time: with the next write that must land at once, with 63 others, with the
  next one settled a second or more after them, and at the latest when the
  run lets go of the journal. One lost to a crash leaves its row ``submitted``, and a rerun polls
  the task again. Everything else is written before the client goes on;
* :meth:`JournalEntry.resume` says what a rerun does with each row; a row found
  ``sending`` may or may not have created a task, and is resent only with the
  caller's say-so.

One run at a time holds a journal: a lock file beside it (removed when the run
lets go) keeps a second run, in this process or another, from sending what the
first is sending.

A batch's input is streamed into its journal a chunk at a time
(:meth:`Journal.admit`), so the journal checks that a rerun is the same batch
row by row as it is read: a request that differs from the one stored at its
place, or an input that ends before the rows stored (:meth:`Journal.end`),
is refused before anything of it is sent.
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import os
import sqlite3
import sys
import time
import weakref
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from . import _exceptions
from ._exceptions import (
    APIStatusError,
    ConfigurationError,
    GrokImagineError,
    JournalError,
    SubmitUncertainError,
    never_sent,
)
from ._models import GenerateRequest, Task
from ._outcomes import Outcome, OutcomeStatus

__all__ = ["Journal", "JournalEntry", "Resume"]

logger = logging.getLogger("grokimagine_async")

#: Settled rows written in one transaction at the most; and after how many seconds
#: the next row settled writes those waiting (without one, they wait for the next
#: write that must land, or for the journal to close).
SETTLED_BATCH = 64
SETTLED_WAIT = 1.0


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
CREATE TABLE IF NOT EXISTS attempts (
    idx INTEGER NOT NULL,
    task_id TEXT,
    task TEXT,
    error TEXT,
    outcome TEXT,
    at REAL NOT NULL
);
"""
#: Columns added since the first journals were written.
_ADDED_COLUMNS = {"error_detail": "TEXT"}


class Resume(enum.Enum):
    """What a rerun of the batch does with one row of its journal."""

    #: Never sent, or provably created nothing: send it.
    SEND = "send"
    #: It has a task id: follow the task.
    FOLLOW = "follow"
    #: Settled in an earlier run: yield that outcome again.
    SETTLED = "settled"
    #: It may have created a task whose id never came back: settle it as uncertain.
    UNCERTAIN = "uncertain"


@dataclass(frozen=True)
class JournalEntry:
    """One request's row in the journal."""

    #: The request's place in the batch, from 0.
    index: int
    #: ``new``, ``sending``, ``submitted`` or ``done``.
    state: str
    #: The task the request created, if its id came back.
    task_id: str | None
    #: The task's last state as JSON, for settled rows that saw one.
    task: dict[str, Any] | None
    #: The error's message, for settled (and uncertain) rows that have one.
    error: str | None
    #: How it settled (an :class:`OutcomeStatus` value), for ``done`` rows.
    outcome: str | None
    #: The error as written: its type, message and fields.
    error_detail: dict[str, Any] | None = None

    @property
    def may_have_paid(self) -> bool:
        """Whether an earlier run may have paid for this row: it has a task id, or
        was being sent when that run stopped."""
        return bool(self.task_id) or self.state == Journal.SENDING

    def resume(self, *, resubmit_uncertain: bool = False, resubmit_failed: bool = False) -> Resume:
        """What a rerun does with this row.

        ``resubmit_uncertain`` resends a row that was being sent when a run
        stopped (it may have created a task: paying twice is possible);
        ``resubmit_failed`` resends a row whose task failed in a way a new
        submission may cure (its ``failure_kind`` says so).
        """
        if self.state == Journal.NEW:
            return Resume.SEND
        if self.state == Journal.SUBMITTED and self.task_id:
            return Resume.FOLLOW
        if self.state == Journal.DONE:
            if resubmit_failed and self.resubmit_may_succeed:
                return Resume.SEND
            return Resume.SETTLED
        return Resume.SEND if resubmit_uncertain else Resume.UNCERTAIN

    @property
    def resubmit_may_succeed(self) -> bool:
        """For a row whose task failed: whether a new submission may succeed."""
        if self.outcome != OutcomeStatus.FAILED.value or not self.task:
            return False
        try:
            return Task.model_validate(self.task).resubmit_may_succeed
        except ValueError:
            return False

    def outcome_of(self, request: GenerateRequest | None) -> Outcome:
        """The outcome an earlier run settled this row with (``from_journal``);
        its error is rebuilt with the type, message and fields it had then."""
        task = Task.model_validate(self.task) if self.task else None
        status = OutcomeStatus(self.outcome or OutcomeStatus.ERROR.value)
        error = self.error_of(request)
        return Outcome(self.index, request, status, self.task_id, task, error, True)

    def error_of(self, request: GenerateRequest | None) -> GrokImagineError | None:
        """The error written with this row, rebuilt (None if it has none)."""
        if self.error_detail is not None:
            return _load_error(self.error_detail, request)
        if self.error is not None:
            return GrokImagineError(self.error)
        return None


class Journal:
    """One batch's journal in a SQLite file (the standard library's)."""

    NEW = "new"
    SENDING = "sending"
    SUBMITTED = "submitted"
    DONE = "done"

    def __init__(self, path: str | Path, payloads: Sequence[dict[str, Any]] | None = None) -> None:
        """Open (or create) the journal at ``path`` and lock it for this run.

        With ``payloads``, the whole batch is admitted at once (see :meth:`admit`
        and :meth:`end`); a streamed batch admits its rows as it reads them.
        """
        self.path = Path(path)
        self._lock: _Lock | None = None
        self._key = str(self.path.resolve())
        earlier = _OPEN.get(self._key)
        if earlier is not None and not earlier.closed:
            raise JournalError(
                f"journal {self.path} is held by another batch in this process that is "
                "still open: use 'async with client.generate_many(...)' (or call "
                "'await pipeline.aclose()') so a batch lets go of its journal when you "
                "leave it"
            )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Two runs of one batch at once would each send what the other is sending.
            self._lock = _Lock(self.path.with_name(self.path.name + ".lock"), self.path)
            self._open()
            if payloads is not None:
                self.admit(list(enumerate(payloads)))
                self.end(len(payloads))
            _OPEN[self._key] = self
        except (sqlite3.Error, OSError) as exc:
            if self._lock is not None:
                self._lock.release()
            raise JournalError(
                f"journal {self.path} cannot be used ({exc}): pass the path of a new file "
                "or of this batch's earlier journal"
            ) from exc
        except BaseException:
            if self._lock is not None:
                with contextlib.suppress(sqlite3.Error, AttributeError):
                    self._db.close()
                self._lock.release()
                self._lock = None
            raise

    @property
    def closed(self) -> bool:
        """True once the journal has let go of its file and lock."""
        return self._lock is None

    def _open(self) -> None:
        # Settled rows not written yet, as (statement, parameters), and since when.
        self._settled: list[tuple[str, tuple[Any, ...]]] = []
        self._settled_since = 0.0
        # A short busy timeout: waiting here blocks the event loop.
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=0.5)
        # WAL with NORMAL sync survives the process dying at any point, which is
        # what a resume needs, at a fraction of a full fsync's cost.
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        have = {row[1] for row in self._db.execute("PRAGMA table_info(entries)")}
        for column, kind in _ADDED_COLUMNS.items():
            if column not in have:
                self._db.execute(f"ALTER TABLE entries ADD COLUMN {column} {kind}")
        self._count = _batch_size(self._db)

    def admit(self, rows: Sequence[tuple[int, dict[str, Any]]]) -> list[JournalEntry | None]:
        """Check the next rows of the batch against the journal, in one transaction.

        ``rows`` are ``(index, payload)`` in input order. A row the journal does
        not hold yet is written ``new`` and comes back as None; a row it holds
        comes back as its entry, for the rerun to resume. A row whose request
        differs from the one stored at its place means the journal was written
        for another batch: :class:`ConfigurationError`, and nothing is written.
        """
        if not rows:
            return []
        texts = [(index, json.dumps(payload, sort_keys=True)) for index, payload in rows]
        if self._count is not None and texts[-1][0] >= self._count:
            raise _different_batch(self.path, f"it holds {self._count}, this input has more")
        try:
            stored = {
                row[0]: row
                for row in self._db.execute(
                    "SELECT idx, state, task_id, task, error, outcome, error_detail, request "
                    "FROM entries WHERE idx BETWEEN ? AND ?",
                    (texts[0][0], texts[-1][0]),
                )
            }
            found: list[JournalEntry | None] = []
            new = []
            now = time.time()
            for index, text in texts:
                row = stored.get(index)
                if row is None:
                    new.append((index, text, self.NEW, now))
                    found.append(None)
                elif row[7] != text:
                    raise _different_batch(self.path, f"request {index} differs")
                else:
                    found.append(_entry(row[:7]))
            if new:
                with self._transaction():
                    self._db.executemany(
                        "INSERT INTO entries (idx, request, state, updated) VALUES (?, ?, ?, ?)",
                        new,
                    )
        except sqlite3.Error as exc:
            raise JournalError(
                f"journal {self.path}: requests {texts[0][0]}-{texts[-1][0]} not recorded: {exc}"
            ) from exc
        return found

    def end(self, count: int) -> None:
        """The batch's input holds ``count`` requests: a journal of a batch of
        another size was written for another batch (:class:`ConfigurationError`).
        The first run to know the size writes it down."""
        if self._count is None:
            _check_end(self._db, self.path, count)
            try:
                self._db.execute("INSERT OR REPLACE INTO meta VALUES ('count', ?)", (str(count),))
            except sqlite3.Error as exc:
                raise JournalError(f"journal {self.path}: size not recorded: {exc}") from exc
            self._count = count
        elif count != self._count:
            raise _different_batch(self.path, f"it holds {self._count}, this input has {count}")

    @classmethod
    def peek(cls, path: str | Path, payloads: Sequence[dict[str, Any]]) -> list[JournalEntry]:
        """The entries of an existing journal of this batch, read without
        writing anything, in input order: the rows it holds, which may be fewer
        than ``payloads`` if a run stopped while reading its input; empty when
        there is no journal at ``path`` yet."""
        return list(cls.scan(path, payloads, len(payloads)))

    @classmethod
    def scan(
        cls, path: str | Path, payloads: Iterable[dict[str, Any]], size: int
    ) -> Iterator[JournalEntry]:
        """:meth:`peek` one entry at a time, for an input of ``size`` requests whose
        ``payloads`` are read only as the entries need them: a batch of a million
        rows is checked against its journal without holding either whole."""
        path = Path(path)
        if not path.exists():
            return
        try:
            # With no write-ahead log beside it (closed cleanly), the file is whole and
            # immutable=1 reads it without making -wal/-shm files; with one (a crash),
            # its pages must be read too.
            wal = path.with_name(path.name + "-wal").exists()
            mode = "mode=ro" if wal else "mode=ro&immutable=1"
            db = sqlite3.connect(f"{path.resolve().as_uri()}?{mode}", uri=True, timeout=0.5)
            try:
                held = _batch_size(db)
                if held is not None and held != size:
                    raise _different_batch(path, f"it holds {held}, this input has {size}")
                inputs = iter(payloads)
                read, payload = 0, None
                for row in db.execute(
                    f"SELECT idx, state, task_id, task, error, outcome, {_detail(db)}, request "  # noqa: S608 - our names
                    "FROM entries ORDER BY idx"
                ):
                    index = row[0]
                    while read <= index:
                        payload = next(inputs, None)
                        read += 1
                    if (
                        index >= size
                        or payload is None
                        or row[7] != json.dumps(payload, sort_keys=True)
                    ):
                        raise _different_batch(path, f"request {index} differs")
                    yield _entry(row[:7])
            finally:
                db.close()
        except sqlite3.Error as exc:
            raise JournalError(f"journal {path} cannot be read ({exc})") from exc

    def entries(self) -> list[JournalEntry]:
        """Every request's line, in input order."""
        self.flush()
        return _entries(self._db)

    def sending(self, index: int, error: GrokImagineError | None = None) -> None:
        """About to send this request: from now on it may have created a task.
        With ``error``: it ended uncertain, for that reason."""
        self._set(index, state=self.SENDING, **_error_fields(error))

    def submitted(self, index: int, task_id: str) -> None:
        """The request created this task."""
        self._set(index, state=self.SUBMITTED, task_id=task_id, error=None, error_detail=None)

    def unsent(self, index: int) -> None:
        """The request was not sent after all (its budget ran out, say)."""
        self._set(index, state=self.NEW, error=None, error_detail=None)

    def record(self, outcome: Outcome) -> None:
        """Write what a settled outcome leaves for a rerun (see the module's rules)."""
        status, error = outcome.status, outcome.error
        if status is OutcomeStatus.TIMED_OUT:
            return  # still submitted: a rerun follows the task
        if (
            status is OutcomeStatus.SKIPPED
            or never_sent(error)
            # The server's refusal: no task was made, so a rerun may try again.
            or (isinstance(error, APIStatusError) and outcome.task_id is None)
        ):
            self.unsent(outcome.index)
        elif status is OutcomeStatus.UNCERTAIN:
            self.sending(outcome.index, error)
        elif status is OutcomeStatus.ERROR and outcome.task_id is not None:
            return  # its polling failed: still submitted, a rerun follows it again
        else:
            task = outcome.task.model_dump(mode="json", by_alias=True) if outcome.task else None
            self._set_later(
                outcome.index,
                state=self.DONE,
                outcome=status.value,
                task=json.dumps(task) if task is not None else None,
                **_error_fields(error),
            )

    def resend(self, entry: JournalEntry) -> None:
        """Make a settled row new again, keeping its earlier task in ``attempts``
        (a task id that came back is never dropped)."""
        try:
            with self._transaction():
                self._db.execute(
                    "INSERT INTO attempts (idx, task_id, task, error, outcome, at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        entry.index,
                        entry.task_id,
                        json.dumps(entry.task) if entry.task is not None else None,
                        entry.error,
                        entry.outcome,
                        time.time(),
                    ),
                )
                self._db.execute(
                    "UPDATE entries SET state = ?, task_id = NULL, task = NULL, error = NULL, "
                    "error_detail = NULL, outcome = NULL, updated = ? WHERE idx = ?",
                    (self.NEW, time.time(), entry.index),
                )
        except sqlite3.Error as exc:
            raise JournalError(
                f"journal {self.path}: request {entry.index} not reset: {exc}"
            ) from exc

    def _set(self, index: int, **fields: Any) -> None:
        statement = _update(index, fields)
        try:
            if self._settled:
                with self._transaction():
                    self._db.execute(*statement)
            else:
                self._db.execute(*statement)
        except sqlite3.Error as exc:
            raise JournalError(f"journal {self.path}: request {index} not recorded: {exc}") from exc

    def _set_later(self, index: int, **fields: Any) -> None:
        """A settled row: written with the next write that must land, a batch at a time."""
        if not self._settled:
            self._settled_since = time.monotonic()
        self._settled.append(_update(index, fields))
        if (
            len(self._settled) >= SETTLED_BATCH
            or time.monotonic() - self._settled_since >= SETTLED_WAIT
        ):
            self.flush()

    def flush(self) -> None:
        """Write the settled rows not written yet."""
        if not self._settled:
            return
        try:
            with self._transaction():
                pass
        except sqlite3.Error as exc:
            raise JournalError(
                f"journal {self.path}: {len(self._settled)} settled requests not recorded "
                f"(a rerun polls their tasks again): {exc}"
            ) from exc

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One transaction, which writes the settled rows waiting first."""
        with self._db:
            self._db.execute("BEGIN")
            for statement in self._settled:
                self._db.execute(*statement)
            yield
        self._settled.clear()

    def close(self) -> None:
        """Let go of the file and its lock (the lock file is removed); idempotent."""
        if self._lock is None:
            return
        lock, self._lock = self._lock, None
        try:
            try:
                self.flush()
            except JournalError as exc:
                logger.error("%s", exc)
            self._db.close()
        finally:
            # Whatever the file did, the lock goes: a held lock blocks every rerun.
            lock.release()


def _update(index: int, fields: dict[str, Any]) -> tuple[str, tuple[Any, ...]]:
    names = ", ".join(f"{k} = ?" for k in fields)
    return (
        f"UPDATE entries SET {names}, updated = ? WHERE idx = ?",  # noqa: S608 - our names
        (*fields.values(), time.time(), index),
    )


_OPEN: weakref.WeakValueDictionary[str, Journal] = weakref.WeakValueDictionary()


class _Lock:
    """An exclusive lock on ``path``, held by this process until released or dead.

    The lock file is removed on release. Another run may have opened it just
    before, and would then hold a lock on a file no longer there; so a lock is
    only taken to be held once the file at ``path`` is still the one locked.
    """

    def __init__(self, path: Path, journal: Path) -> None:
        self._path = path
        while True:
            self._file = open(path, "a+")  # noqa: SIM115 - held open for the lock's life
            try:
                _lock(self._file.fileno())
            except OSError:
                self._file.close()
                raise JournalError(
                    f"journal {journal} is in use by another run of this batch: wait for it "
                    "to finish (two runs at once could pay twice for a video)"
                ) from None
            if _same_file(self._file.fileno(), path):
                return
            self._file.close()

    def release(self) -> None:
        if not self._file.closed:
            # Unlinked while still locked, so nobody can lock the old file and think it current.
            with contextlib.suppress(OSError):  # Windows keeps a locked file: reused next run
                self._path.unlink(missing_ok=True)
            self._file.close()  # closing the file releases the lock


def _same_file(fd: int, path: Path) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _lock(fd: int) -> None:
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)

else:
    import fcntl

    def _lock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _different_batch(path: Path, why: str) -> ConfigurationError:
    return ConfigurationError(
        f"journal {path} was written for a different batch of requests ({why}); pass "
        "another journal path, or run the batch it was written for"
    )


def _check_end(db: sqlite3.Connection, path: Path, count: int) -> None:
    (beyond,) = db.execute("SELECT COUNT(*) FROM entries WHERE idx >= ?", (count,)).fetchone()
    if beyond:
        raise _different_batch(path, f"it holds {beyond} more than the {count} this input has")


def _batch_size(db: sqlite3.Connection) -> int | None:
    """The batch's size once a run has read its input to the end."""
    meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
    if "count" in meta:
        return int(meta["count"])
    if "batch" in meta:
        # Journals from before streamed input hold every row from the start.
        (rows,) = db.execute("SELECT COUNT(*) FROM entries").fetchone()
        return int(rows)
    return None


def _detail(db: sqlite3.Connection) -> str:
    have = {row[1] for row in db.execute("PRAGMA table_info(entries)")}
    return "error_detail" if "error_detail" in have else "NULL"


def _entry(row: Sequence[Any]) -> JournalEntry:
    index, state, task_id, task, error, outcome, error_json = row
    return JournalEntry(
        index,
        state,
        task_id,
        json.loads(task) if task else None,
        error,
        outcome,
        _json_or_none(error_json),
    )


def _entries(db: sqlite3.Connection) -> list[JournalEntry]:
    rows = db.execute(
        f"SELECT idx, state, task_id, task, error, outcome, {_detail(db)} "  # noqa: S608 - our names
        "FROM entries ORDER BY idx"
    ).fetchall()
    return [_entry(row) for row in rows]


def _json_or_none(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


# -- errors, written and read back ----------------------------------------------------------
# An error is written as its type's name, its message and the fields that JSON can
# hold, so a resumed outcome raises what the first run raised. Only the library's own
# exception types (and httpx's, as causes) are rebuilt; the file never names code to run.

_SCALARS = (str, int, float, bool, type(None))


def _error_fields(error: BaseException | None) -> dict[str, Any]:
    if error is None:
        return {"error": None, "error_detail": None}
    return {"error": str(error), "error_detail": json.dumps(_dump_error(error))}


def _dump_error(error: BaseException, depth: int = 0) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for name, value in vars(error).items():
        if isinstance(value, _SCALARS):
            state[name] = value
        elif isinstance(value, Task):
            state[name] = {"__task__": value.model_dump(mode="json", by_alias=True)}
        elif isinstance(value, GenerateRequest):
            state[name] = {"__request__": True}
        elif isinstance(value, BaseException) and depth < 4:
            state[name] = {"__error__": _dump_error(value, depth + 1)}
    dumped: dict[str, Any] = {
        "type": type(error).__name__,
        "args": [a for a in error.args if isinstance(a, _SCALARS)],
        "state": state,
    }
    if isinstance(error.__cause__, BaseException) and depth < 4:
        dumped["cause"] = _dump_error(error.__cause__, depth + 1)
    return dumped


def _load_error(dumped: dict[str, Any], request: GenerateRequest | None) -> GrokImagineError:
    built = _rebuild(dumped, request)
    if isinstance(built, GrokImagineError):
        return built
    return GrokImagineError(str(built))


def _rebuild(dumped: dict[str, Any], request: GenerateRequest | None) -> BaseException:
    name = str(dumped.get("type", ""))
    args = tuple(dumped.get("args") or ())
    ours = getattr(_exceptions, name, None)
    theirs = getattr(httpx, name, None)
    error: BaseException
    if isinstance(ours, type) and issubclass(ours, GrokImagineError):
        error = ours.__new__(ours)
        error.args = args
        for key, value in dict(dumped.get("state") or {}).items():
            if isinstance(value, dict) and "__task__" in value:
                value = Task.model_validate(value["__task__"])
            elif isinstance(value, dict) and "__request__" in value:
                value = request
            elif isinstance(value, dict) and "__error__" in value:
                value = _rebuild(value["__error__"], request)
            setattr(error, key, value)
        if isinstance(error, SubmitUncertainError) and request is None:
            error = GrokImagineError(*args)
    elif isinstance(theirs, type) and issubclass(theirs, httpx.HTTPError):
        error = theirs(str(args[0]) if args else name)
    else:
        error = GrokImagineError(*(args or (name,)))
    cause = dumped.get("cause")
    if isinstance(cause, dict):
        error.__cause__ = _rebuild(cause, request)
    return error
