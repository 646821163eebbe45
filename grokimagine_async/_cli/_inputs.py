"""Reading a batch file: plain text, JSON Lines or CSV, all checked before anything is sent."""

from __future__ import annotations

import csv
import io
import json
import re
import zlib
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from .. import DOCUMENTED_MODES, DOCUMENTED_RATIOS, GenerateRequest, Unchecked
from .._exceptions import InputFileError, RequestValidationError

#: The longest prompt a batch line may hold unless ``--max-prompt-chars`` says more.
#: The provider documents no limit; a prompt past this is most likely a pasted file,
#: and every byte of it would go to the API, the journal and the report.
DEFAULT_MAX_PROMPT_CHARS = 10_000

_DOCUMENTED = {"mode": DOCUMENTED_MODES, "ratio": DOCUMENTED_RATIOS}

# Advice written for Python callers: a keyword argument, or a class to wrap a value in.
_PYTHON_ADVICE = re.compile(r"\w=|Unchecked|GenerateRequest")

_FIELD_ADVICE = {
    "prompt": "Give every request a prompt: what the video should show",
    "images": 'Give image URLs as a JSON list (["https://..."]) or, in CSV, separated by spaces',
}


@dataclass(frozen=True)
class Row:
    """One request of a batch file and the line it came from."""

    line: int
    request: GenerateRequest


def option_name(field: str) -> str:
    """The ``generate`` argument or option that sets a request's field."""
    return {"prompt": "PROMPT", "images": "--image"}.get(field, f"--{field}")


def build_request(
    fields: dict[str, Any], *, allow_undocumented: bool, name: Callable[[str], str] = str
) -> GenerateRequest:
    """A checked request; with ``allow_undocumented`` a new mode or ratio goes through.

    Errors name a field as ``name`` says (a column, or an option) and advise the
    command line's flags rather than Python.
    """
    for key, documented in _DOCUMENTED.items():
        value = fields.get(key)
        if not isinstance(value, str):
            continue
        if allow_undocumented:
            fields[key] = Unchecked(value)
        elif value.strip() and value.strip().lower() not in documented:
            raise RequestValidationError(
                name(key),
                f"{value!r} is not a documented {key} (documented: {', '.join(documented)})",
                "Fix the spelling, or if the provider has added it, pass "
                "--allow-undocumented to send it as it is",
            )
    try:
        return GenerateRequest.build(fields)
    except RequestValidationError as exc:
        fix = exc.fix
        if _PYTHON_ADVICE.search(fix):
            fix = _FIELD_ADVICE.get(exc.field, "See grokimagine batch --help for the formats")
        raise RequestValidationError(name(exc.field), exc.problem, fix) from None


def file_format(path: Path) -> str:
    """``jsonl``, ``csv`` or ``text``, by the file's extension."""
    suffix = path.suffix.lower()
    if suffix in {".jsonl", ".ndjson"}:
        return "jsonl"
    if suffix in {".csv", ".tsv"}:
        return "csv"
    return "text"


class BatchFile:
    """A batch file, read as a stream: once to check every line, then again to run it.

    Text: one prompt a line; blank lines and lines starting with ``#`` are
    skipped. JSON Lines: one object a line with the request's fields
    (``prompt``, ``mode``, ``ratio``, ``images``), or a bare string prompt.
    CSV: a header row naming those fields; ``images`` holds URLs separated by
    spaces. A prompt longer than ``max_prompt_chars`` is refused.

    Only the line number of each request is kept between reads, so a file of a
    million prompts costs a few megabytes, not the gigabyte its requests would.
    ``text`` holds what was piped in on stdin, read as if it were ``path``.
    """

    def __init__(
        self,
        path: Path,
        *,
        text: str | None = None,
        allow_undocumented: bool = False,
        max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS,
    ) -> None:
        self.path = path
        self.text = text
        self.allow_undocumented = allow_undocumented
        self.max_prompt_chars = max_prompt_chars
        #: The line each request starts on, in input order (filled by :meth:`check`).
        self.lines = array("L")
        # A checksum of each request as checked: a later read that finds another one
        # in its place (an edit of the same size, within the clock's resolution) stops.
        self._sums = array("L")
        #: Why a later read stopped short: the file changed after it was checked.
        self.changed: str | None = None
        self._stamp: tuple[int, int] | None = None

    def __len__(self) -> int:
        return len(self.lines)

    def __iter__(self) -> Iterator[GenerateRequest]:
        """The checked requests, read again from the file (see :meth:`rows`)."""
        return (row.request for row in self.rows())

    def check(self) -> BatchFile:
        """Read every line and check it; raises :class:`InputFileError` listing every
        bad line, or saying the file holds no request."""
        problems: list[str] = []
        self.lines, self._sums = array("L"), array("L")
        self._stamp = self._file_stamp()
        for line, request in self._read():
            if isinstance(request, str):
                problems.append(f"  line {line}: {request}")
            else:
                self.lines.append(line)
                self._sums.append(_checksum(request))
        if problems:
            raise InputFileError(str(self.path), problems)
        if not self.lines:
            raise InputFileError(str(self.path), ["holds no requests: write one prompt a line"])
        return self

    def verify(self) -> None:
        """Raise :class:`InputFileError` if the file changed since it was checked."""
        if self._stamp is not None and self._file_stamp() != self._stamp:
            raise InputFileError(
                str(self.path),
                ["changed since it was checked: run the command again to check it anew"],
            )

    def rows(self) -> Iterator[Row]:
        """The checked rows, read again, one at a time. Past the checked count, or at
        a line that no longer checks, the read stops and :attr:`changed` says why:
        nothing unchecked is ever sent."""
        return self._checked_rows(self._changed)

    def reread(self) -> Iterator[Row]:
        """The checked rows read again for a report: as :meth:`rows`, but a file that
        changed or went away since only ends the read."""
        return self._checked_rows(lambda why: None)

    def _checked_rows(self, changed: Callable[[str], None]) -> Iterator[Row]:
        count = 0
        try:
            for line, request in self._read():
                if isinstance(request, str):
                    changed(f"line {line}: {request}")
                    return
                if count >= len(self.lines) or self.lines[count] != line:
                    changed(f"line {line} is not where a request was when checked")
                    return
                if self._sums[count] != _checksum(request):
                    changed(f"line {line} is not the request it was when checked")
                    return
                yield Row(line, request)
                count += 1
        except InputFileError as exc:
            changed(str(exc))
            return
        if count < len(self.lines):
            changed(f"it ends after {count:,} of its {len(self.lines):,} requests")

    def _changed(self, why: str) -> None:
        self.changed = f"{self.path} changed while the batch ran ({why}): fix it and rerun"

    def _file_stamp(self) -> tuple[int, int] | None:
        if self.text is not None:
            return None
        try:
            stat = self.path.stat()
        except OSError:
            return None
        return stat.st_size, stat.st_mtime_ns

    def _read(self) -> Iterator[tuple[int, GenerateRequest | str]]:
        """Each request's line and the request, or what is wrong with it."""
        name = str(self.path)
        fmt = file_format(self.path)
        counted = _Counted()
        try:
            with self._open(newline="" if fmt == "csv" else "\n") as stream:
                counted.stream = stream
                records = (
                    _csv(counted, self.path)
                    if fmt == "csv"
                    else _jsonl(counted)
                    if fmt == "jsonl"
                    else _text(counted)
                )
                for line, fields in records:
                    yield line, self._request(fields)
        except FileNotFoundError:
            raise InputFileError(
                name, ["does not exist: check the path (or pass - to read standard input)"]
            ) from None
        except UnicodeDecodeError:
            raise InputFileError(
                name,
                [
                    f"line {self._undecodable_line(counted.lines + 1)}: not UTF-8 text: save "
                    "the file as UTF-8 (in most editors: Save As, encoding UTF-8)"
                ],
            ) from None
        except OSError as exc:
            raise InputFileError(
                name, [f"cannot be read ({exc.strerror or type(exc).__name__}): check the path"]
            ) from None

    def _undecodable_line(self, after: int) -> int:
        """The first line from ``after`` on that is not UTF-8 (the decoder reads ahead
        by whole blocks, so the lines counted so far only bound it)."""
        try:
            with self.path.open("rb") as raw:
                for number, line in enumerate(raw, 1):
                    if number >= after:
                        try:
                            line.decode("utf-8")
                        except UnicodeDecodeError:
                            return number
        except OSError:
            pass
        return after

    def _open(self, *, newline: str) -> TextIO:
        if self.text is not None:
            return io.StringIO(self.text, newline=newline)
        # Only newlines end a line: universal newlines (and str.splitlines()) would
        # also split on a lone CR inside a prompt, making two paid videos of one.
        return self.path.open(encoding="utf-8-sig", newline=newline)

    def _request(self, fields: dict[str, Any] | str) -> GenerateRequest | str:
        if isinstance(fields, str):
            return fields
        try:
            request = build_request(fields, allow_undocumented=self.allow_undocumented)
        except RequestValidationError as exc:
            return str(exc)
        if len(request.prompt) > self.max_prompt_chars:
            return (
                f"prompt: {len(request.prompt):,} characters, over the "
                f"{self.max_prompt_chars:,} a prompt may hold. Shorten it, or pass "
                "--max-prompt-chars to allow more"
            )
        return request


def read_rows(
    path: Path,
    *,
    text: str | None = None,
    allow_undocumented: bool = False,
    max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS,
) -> list[Row]:
    """Every request in ``path`` (or in ``text``), checked, as a list: for inputs
    small enough to hold; :class:`BatchFile` streams them."""
    batch = BatchFile(
        path, text=text, allow_undocumented=allow_undocumented, max_prompt_chars=max_prompt_chars
    )
    return list(batch.check().rows())


def _checksum(request: GenerateRequest) -> int:
    return zlib.crc32(json.dumps(request.to_payload(), sort_keys=True).encode())


class _Counted:
    """A text stream that counts the lines read from it, to say where decoding failed."""

    def __init__(self) -> None:
        self.stream: Iterable[str] = ()
        self.lines = 0

    def __iter__(self) -> Iterator[str]:
        for raw in self.stream:
            self.lines += 1
            yield raw


def _lines(stream: Iterable[str]) -> Iterator[tuple[int, str]]:
    for line, raw in enumerate(stream, 1):
        yield line, raw.removesuffix("\n").removesuffix("\r")


def _text(stream: Iterable[str]) -> Iterator[tuple[int, dict[str, Any] | str]]:
    for line, raw in _lines(stream):
        prompt = raw.strip()
        if prompt and not prompt.startswith("#"):
            yield line, {"prompt": prompt}


def _jsonl(stream: Iterable[str]) -> Iterator[tuple[int, dict[str, Any] | str]]:
    for line, raw in _lines(stream):
        if not raw.strip():
            continue
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            yield line, f"not JSON ({exc.msg} at column {exc.colno}): write one object a line"
            continue
        if isinstance(value, str):
            yield line, {"prompt": value}
        elif isinstance(value, dict):
            yield line, value
        else:
            yield (
                line,
                (
                    f"a JSON {_JSON_NAMES.get(type(value), type(value).__name__)}, not an "
                    "object: write "
                    '{"prompt": "...", "ratio": "3:2"}'
                ),
            )


#: JSON's own names for what a line holds, not Python's.
_JSON_NAMES: dict[type, str] = {
    type(None): "null",
    bool: "true or false",
    int: "number",
    float: "number",
    list: "list",
}


def _csv(stream: Iterable[str], path: Path) -> Iterator[tuple[int, dict[str, Any] | str]]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    # strict: a quote left open is an error, not the rest of the file as one prompt.
    reader = csv.reader(stream, delimiter=delimiter, strict=True)
    try:
        header = [h.strip() for h in next(reader, [])]
    except csv.Error as exc:
        yield 1, f"not CSV: {exc}"
        return
    known = set(GenerateRequest.model_fields)
    unknown = [h for h in header if h not in known]
    if "prompt" not in header or unknown:
        problem = f"unknown column(s) {', '.join(unknown)}; " if unknown else ""
        yield (
            1,
            (
                f"{problem}the header row must name the columns, among: "
                f"{', '.join(GenerateRequest.model_fields)} (prompt is required)"
            ),
        )
        return
    while True:
        line = reader.line_num + 1  # where the row starts, should it span lines
        try:
            cells = next(reader, None)
        except csv.Error as exc:
            yield line, f"not CSV: {exc} (a quote left open?)"
            return
        if cells is None:
            return
        if len(cells) > len(header):
            yield line, "more cells than the header has columns: quote a cell that holds commas"
            continue
        fields: dict[str, Any] = {}
        for key, value in zip(header, cells, strict=False):
            if value.strip():
                fields[key] = _IMAGES.split(value.strip()) if key == "images" else value.strip()
        if fields:
            yield line, fields


# Image URLs in a cell: separated by spaces, or by commas before the next URL.
_IMAGES = re.compile(r"\s*,?\s+|,(?=\s*https?://)")
