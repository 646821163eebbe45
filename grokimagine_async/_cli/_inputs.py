"""Reading a batch file: plain text, JSON Lines or CSV, all checked before anything is sent."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def read_rows(
    path: Path,
    *,
    text: str | None = None,
    allow_undocumented: bool = False,
    max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS,
) -> list[Row]:
    """Every request in ``path`` (or in ``text``, read as if it were that file).

    Text: one prompt a line; blank lines and lines starting with ``#`` are
    skipped. JSON Lines: one object a line with the request's fields
    (``prompt``, ``mode``, ``ratio``, ``images``), or a bare string prompt.
    CSV: a header row naming those fields; ``images`` holds URLs separated by
    spaces. A prompt longer than ``max_prompt_chars`` is refused. Raises
    :class:`InputFileError` listing every bad line.
    """
    name = str(path)
    if text is None:
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise InputFileError(name, [f"cannot be read: {exc}"]) from None
    fmt = file_format(path)
    records = _csv(text, path) if fmt == "csv" else _jsonl(text) if fmt == "jsonl" else _text(text)
    rows: list[Row] = []
    problems: list[str] = []
    for line, fields in records:
        if isinstance(fields, str):
            problems.append(f"  line {line}: {fields}")
            continue
        try:
            request = build_request(fields, allow_undocumented=allow_undocumented)
        except RequestValidationError as exc:
            problems.append(f"  line {line}: {exc}")
            continue
        if len(request.prompt) > max_prompt_chars:
            problems.append(
                f"  line {line}: prompt: {len(request.prompt):,} characters, over the "
                f"{max_prompt_chars:,} a prompt may hold. Shorten it, or pass "
                "--max-prompt-chars to allow more"
            )
            continue
        rows.append(Row(line, request))
    if problems:
        raise InputFileError(name, problems)
    if not rows:
        raise InputFileError(name, ["holds no requests: write one prompt a line"])
    return rows


def _lines(text: str) -> list[str]:
    # Only newlines end a line: str.splitlines() would also split on U+2028, form
    # feeds and the like inside a prompt, making two paid videos of one.
    return [line.removesuffix("\r") for line in text.split("\n")]


def _text(text: str) -> Iterator[tuple[int, dict[str, Any] | str]]:
    for line, raw in enumerate(_lines(text), 1):
        prompt = raw.strip()
        if prompt and not prompt.startswith("#"):
            yield line, {"prompt": prompt}


def _jsonl(text: str) -> Iterator[tuple[int, dict[str, Any] | str]]:
    for line, raw in enumerate(_lines(text), 1):
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
                    f"a JSON {type(value).__name__}, not an object: write "
                    '{"prompt": "...", "ratio": "3:2"}'
                ),
            )


def _csv(text: str, path: Path) -> Iterator[tuple[int, dict[str, Any] | str]]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    # strict: a quote left open is an error, not the rest of the file as one prompt.
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
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
