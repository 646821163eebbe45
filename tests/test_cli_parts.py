"""The command line's parts: reading a batch file, and pricing a batch before it runs."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from grokimagine_async import RateLimit
from grokimagine_async._cli._estimate import estimate
from grokimagine_async._cli._format import least_duration
from grokimagine_async._cli._inputs import BatchFile, read_rows
from grokimagine_async._exceptions import ConfigurationError, InputFileError
from grokimagine_async._journal import Journal, JournalEntry


def test_text_files_skip_blanks_and_comments(tmp_path: Path) -> None:
    rows = read_rows(tmp_path / "p.txt", text="# title\n\n  a fox  \n#x\nb\n")
    assert [(r.line, r.request.prompt) for r in rows] == [(3, "a fox"), (5, "b")]


@pytest.mark.parametrize(
    ("name", "text", "problem"),
    [
        ("p.txt", "# only a comment\n", "holds no requests"),
        ("p.csv", "prompt,colour\na,red\n", "unknown column(s) colour"),
        ("p.csv", "ratio\n1:1\n", "prompt is required"),
        ("p.csv", "prompt,ratio\na,1:1,extra\n", "more cells than the header"),
        ("p.jsonl", '{"prompt": "a", "size": 3}\n', "line 1: size"),
    ],
)
def test_bad_files_say_where_and_why(name: str, text: str, problem: str, tmp_path: Path) -> None:
    with pytest.raises(InputFileError) as info:
        read_rows(tmp_path / name, text=text)
    assert problem in str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('prompt,ratio\r\n"two\nlines",3:2\r\nc,1:1\r\n', [(2, "two\nlines"), (4, "c")]),
        ('prompt,images\nx,"https://a/1.png, https://a/2.png"\n', [(2, "x")]),
    ],
)
def test_csv_rows_keep_their_first_line(
    text: str, expected: list[tuple[int, str]], tmp_path: Path
) -> None:
    rows = read_rows(tmp_path / "p.csv", text=text)
    assert [(r.line, r.request.prompt) for r in rows] == expected
    if "images" in text:
        assert rows[0].request.images == ("https://a/1.png", "https://a/2.png")


def test_an_open_quote_is_an_error_not_one_long_prompt(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="line 2: not CSV"):
        read_rows(tmp_path / "p.csv", text='prompt\n"a,3:2\nb\n')


def test_only_newlines_end_a_prompt(tmp_path: Path) -> None:
    rows = read_rows(tmp_path / "p.txt", text="a\u2028still a\x0cand a\r\nb\n")
    assert [r.request.prompt for r in rows] == ["a\u2028still a\x0cand a", "b"]


def test_an_unreadable_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="does not exist: check the path"):
        read_rows(tmp_path / "missing.txt")


def test_undocumented_values_pass_only_when_allowed(tmp_path: Path) -> None:
    with pytest.raises(InputFileError):
        read_rows(tmp_path / "p.jsonl", text='{"prompt": "a", "ratio": "16:9"}\n')
    (row,) = read_rows(
        tmp_path / "p.jsonl", text='{"prompt": "a", "ratio": "16:9"}\n', allow_undocumented=True
    )
    assert row.request.ratio == "16:9"


def test_the_estimate_counts_only_what_is_left_to_pay_for(tmp_path: Path) -> None:
    rows = read_rows(tmp_path / "p.txt", text="a\nb\nc\nd\ne\n")
    entries = [
        JournalEntry(0, Journal.DONE, "t0", None, None, "completed"),
        JournalEntry(1, Journal.SUBMITTED, "t1", None, None, None),
        JournalEntry(2, Journal.SENDING, None, None, None, None),
        JournalEntry(3, Journal.NEW, None, None, None, None),
        JournalEntry(4, Journal.NEW, None, None, None, None),
    ]
    plan = estimate(
        len(rows), entries, RateLimit(100, 60), max_credits=None, resubmit_uncertain=False
    )
    assert (plan.settled, plan.in_flight, plan.uncertain, plan.to_submit) == (1, 1, 1, 2)
    assert plan.credits == 80
    resend = estimate(
        len(rows), entries, RateLimit(100, 60), max_credits=None, resubmit_uncertain=True
    )
    assert resend.to_submit == 3
    capped = estimate(
        len(rows), entries, RateLimit(100, 60), max_credits=160, resubmit_uncertain=False
    )
    # Three may already have cost 40 each: room for one more.
    assert capped.to_submit == 1
    resend_capped = estimate(
        len(rows), entries, RateLimit(100, 60), max_credits=160, resubmit_uncertain=True
    )
    # Resent, the uncertain one costs again: two paid before, room for two.
    assert (resend_capped.to_submit, resend_capped.credits) == (2, 80)


def test_a_long_prompt_is_refused_naming_the_line_and_the_flag(tmp_path: Path) -> None:
    text = "a fox\n" + "x" * 10_001 + "\n" + "y" * 10_000 + "\n"
    with pytest.raises(InputFileError) as info:
        read_rows(tmp_path / "p.txt", text=text)
    message = str(info.value)
    assert "line 2: prompt: 10,001 characters" in message
    assert "--max-prompt-chars" in message
    assert "line 3" not in message  # 10,000 is allowed
    rows = read_rows(tmp_path / "p.txt", text=text, max_prompt_chars=10_001)
    assert [len(r.request.prompt) for r in rows] == [5, 10_001, 10_000]


@pytest.mark.parametrize(
    ("text", "field", "fix"),
    [
        ('{"prompt": "a", "ratio": "16:9"}\n', "ratio", "--allow-undocumented"),
        ('{"prompt": "a", "mode": "cinematic"}\n', "mode", "--allow-undocumented"),
        ('{"mode": "fun"}\n', "prompt", "Give every request a prompt"),
        ('{"prompt": "a", "images": 3}\n', "images", "as a JSON list"),
    ],
)
def test_a_bad_line_is_told_in_the_file_s_terms_not_python_s(
    text: str, field: str, fix: str, tmp_path: Path
) -> None:
    with pytest.raises(InputFileError) as info:
        read_rows(tmp_path / "p.jsonl", text=text)
    message = str(info.value)
    assert f"line 1: {field}: " in message
    assert fix in message
    assert not re.search(r"Unchecked|\w=|GenerateRequest", message), message


def test_the_estimate_counts_the_failed_lines_retry_failed_resends(tmp_path: Path) -> None:
    rows = read_rows(tmp_path / "p.txt", text="a\nb\nc\nd\n")

    def failed(index: int, message: str) -> JournalEntry:
        task = {"task_id": f"t{index}", "status": "failed", "error_message": message}
        return JournalEntry(index, Journal.DONE, f"t{index}", task, message, "failed")

    entries = [
        failed(0, "grok imagine build failed"),
        failed(1, "Network error, please try again later."),
        failed(2, "Inappropriate content, please try another prompt."),
        JournalEntry(3, Journal.DONE, "t3", None, None, "completed"),
    ]
    rate = RateLimit(100, 60)
    plain = estimate(len(rows), entries, rate, max_credits=None, resubmit_uncertain=False)
    assert (plain.retriable, plain.to_submit, plain.credits) == (2, 0, 0)
    resend = estimate(
        len(rows), entries, rate, max_credits=None, resubmit_uncertain=False, retry_failed=True
    )
    assert (resend.to_submit, resend.credits) == (2, 80)
    # Four tasks paid for already: 200 leaves room for one resend.
    capped = estimate(
        len(rows), entries, rate, max_credits=200, resubmit_uncertain=False, retry_failed=True
    )
    assert capped.to_submit == 1


@pytest.mark.parametrize(
    ("seconds", "said"), [(0.0, "under 1s"), (0.4, "under 1s"), (1.0, "1s"), (120.0, "2m 00s")]
)
def test_a_least_time_under_a_second_does_not_read_as_none(seconds: float, said: str) -> None:
    assert least_duration(seconds) == said


def test_a_batch_file_keeps_line_numbers_and_reads_its_requests_again(tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_text("# title\na fox\n\na boat\n")
    source = BatchFile(path).check()
    assert list(source.lines) == [2, 4]
    assert [r.prompt for r in source] == ["a fox", "a boat"]
    # Read twice, the same requests: the second read is the run's.
    assert [r.prompt for r in source] == ["a fox", "a boat"]
    assert source.changed is None


def test_a_batch_file_changed_after_its_check_is_refused_before_the_run(tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_text("a fox\na boat\n")
    source = BatchFile(path).check()
    source.verify()
    path.write_text("a fox\na boat\na third, never priced\n")
    with pytest.raises(InputFileError, match="changed since it was checked"):
        source.verify()


@pytest.mark.parametrize(
    ("rewrite", "read", "why"),
    [
        ("a fox\n\nnot where it was\n", ["a fox"], "line 3 is not where a request was"),
        ("a fox\na boat\na third\n", ["a fox", "a boat"], "line 3 is not where a request was"),
        ("a fox\n", ["a fox"], "it ends after 1 of its 2 requests"),
    ],
)
def test_a_batch_file_that_changes_mid_read_stops_before_anything_unchecked(
    rewrite: str, read: list[str], why: str, tmp_path: Path
) -> None:
    path = tmp_path / "p.txt"
    path.write_text("a fox\na boat\n")
    source = BatchFile(path).check()
    path.write_text(rewrite)
    assert [r.prompt for r in source] == read
    assert source.changed is not None
    assert why in source.changed
    assert "fix it and rerun" in source.changed


def test_a_request_changed_in_place_after_the_check_is_not_read(tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_text("a fox\na boat\n")
    source = BatchFile(path).check()
    stamp = path.stat()
    # The same size and, put back, the same time: only the request itself differs.
    path.write_text("a fox\na goat\n")
    os.utime(path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    source.verify()
    assert [r.prompt for r in source] == ["a fox"]
    assert source.changed is not None
    assert "line 2 is not the request it was when checked" in source.changed


def test_a_bad_line_written_after_the_check_is_not_read(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt": "b"}\n')
    source = BatchFile(path).check()
    path.write_text('{"prompt": "a"}\n{"prompt": "b", "ratio": "16:9"}\n')
    assert [r.prompt for r in source] == ["a"]
    assert source.changed is not None
    assert "line 2: ratio" in source.changed


def test_the_journal_is_checked_against_a_streamed_input(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    payloads = [{"prompt": f"p{i}"} for i in range(5)]
    Journal(path, payloads).close()
    read: list[int] = []

    def stream() -> Iterator[dict[str, Any]]:
        for i, payload in enumerate(payloads):
            read.append(i)
            yield payload

    entries = Journal.scan(path, stream(), len(payloads))
    assert not read  # nothing is read before the first entry is asked for
    assert [e.index for e in entries] == [0, 1, 2, 3, 4]
    assert read == [0, 1, 2, 3, 4]
    other = [*payloads[:3], {"prompt": "another"}, payloads[4]]
    with pytest.raises(ConfigurationError, match="request 3 differs"):
        list(Journal.scan(path, iter(other), len(other)))
    with pytest.raises(ConfigurationError, match="it holds 5, this input has 6"):
        list(Journal.scan(path, iter([*payloads, payloads[0]]), 6))


def test_every_api_command_takes_the_connection_options_declared_once() -> None:
    from grokimagine_async._cli._app import cli
    from grokimagine_async._cli._options import CONNECTION_OPTIONS

    shared = {name for name, _, _ in CONNECTION_OPTIONS}
    for name in ("generate", "batch", "status", "download"):
        command = cli.commands[name]  # type: ignore[attr-defined]
        assert shared <= {p.name for p in command.params}, name
