"""Reading a batch file: plain text, JSON Lines or CSV, all checked before anything is sent."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._exceptions import InputFileError, RequestValidationError
from .._models import GenerateRequest, Unchecked


@dataclass(frozen=True)
class Row:
    """One request of a batch file and the line it came from."""

    line: int
    request: GenerateRequest


def build_request(fields: dict[str, Any], *, allow_undocumented: bool) -> GenerateRequest:
    """A checked request; with ``allow_undocumented`` a new mode or ratio goes through."""
    if allow_undocumented:
        for key in ("mode", "ratio"):
            if isinstance(fields.get(key), str):
                fields[key] = Unchecked(fields[key])
    return GenerateRequest.build(fields)


def file_format(path: Path) -> str:
    """``jsonl``, ``csv`` or ``text``, by the file's extension."""
    suffix = path.suffix.lower()
    if suffix in {".jsonl", ".ndjson"}:
        return "jsonl"
    if suffix in {".csv", ".tsv"}:
        return "csv"
    return "text"


def read_rows(
    path: Path, *, text: str | None = None, allow_undocumented: bool = False
) -> list[Row]:
    """Every request in ``path`` (or in ``text``, read as if it were that file).

    Text: one prompt a line; blank lines and lines starting with ``#`` are
    skipped. JSON Lines: one object a line with the request's fields
    (``prompt``, ``mode``, ``ratio``, ``images``), or a bare string prompt.
    CSV: a header row naming those fields; ``images`` holds URLs separated by
    spaces. Raises :class:`InputFileError` listing every bad line.
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
            rows.append(Row(line, build_request(fields, allow_undocumented=allow_undocumented)))
        except RequestValidationError as exc:
            problems.append(f"  line {line}: {exc}")
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
