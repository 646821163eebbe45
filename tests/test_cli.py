"""The ``grokimagine`` command against the simulator, served from a thread on loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from grokimagine_async import RateLimit
from grokimagine_async._cli._app import app
from grokimagine_async._cli._batch import default_journal, estimate
from grokimagine_async._cli._inputs import read_rows
from grokimagine_async._exceptions import InputFileError, JournalError
from grokimagine_async._journal import Journal, JournalEntry
from grokimagine_async.simulator import Simulator

from .helpers import TOKEN

COMMANDS = ["generate", "batch", "status", "download", "simulate", "demo"]


@pytest.fixture
def sim() -> Iterator[tuple[Simulator, str]]:
    simulator = Simulator(limit=60, period=1.0, generation_time=(0.2, 0.6), seed=4)
    with simulator.serve_in_thread() as url:
        yield simulator, url


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    return path


@contextmanager
def held_elsewhere(path: Path, payloads: list[dict[str, Any]]) -> Iterator[None]:
    """The journal at ``path``, open in another process until the block ends."""
    script = (
        "import json, sys\n"
        "from grokimagine_async._journal import Journal\n"
        "j = Journal(sys.argv[1], json.loads(sys.argv[2]))\n"
        "print('open', flush=True)\n"
        "sys.stdin.read()\n"
    )
    args = [sys.executable, "-c", script, str(path), json.dumps(payloads)]
    with subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        assert proc.stdin is not None
        assert proc.stdout.readline().strip() == "open"
        try:
            yield
        finally:
            proc.stdin.close()
            proc.wait(timeout=10)


def grok(*args: str | Path, stdin: str | None = None, **env: str) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args], input=stdin, env=env or None)


def api(url: str, key_file: Path) -> list[str | Path]:
    return ["--base-url", url, "--rate-limit", "60/1s", "--api-key-file", key_file]


def no_token_anywhere(result: Result, *files: Path) -> None:
    assert TOKEN not in result.stdout
    assert TOKEN not in result.stderr
    for path in files:
        assert TOKEN.encode() not in path.read_bytes(), path


# -- help and usage -------------------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str) -> None:
    result = grok(command, "--help")
    assert result.exit_code == 0, result.output
    assert "usage" in result.output.lower()
    assert "--" in result.output  # its options are listed


def test_no_command_prints_the_commands() -> None:
    result = grok()
    for command in COMMANDS:
        assert command in result.output


def test_version() -> None:
    from grokimagine_async import __version__

    assert grok("--version").stdout.strip() == f"grokimagine {__version__}"


def test_a_missing_token_is_a_usage_error_that_says_how(tmp_path: Path) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("a fox\n")
    result = grok("batch", prompts, "--out", tmp_path / "v", "--base-url", "http://127.0.0.1:9")
    assert result.exit_code == 2
    assert "GROKIMAGINE_API_KEY" in result.stderr


def test_an_empty_key_file_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "key"
    empty.write_text("\n")
    result = grok("status", "task_1", "--api-key-file", empty)
    assert result.exit_code == 2
    assert "is empty" in result.stderr


@pytest.mark.parametrize("rate", ["lots", "100/.", "0/min"])
def test_a_bad_rate_is_a_usage_error(rate: str) -> None:
    result = grok("status", "task_1", "--rate-limit", rate)
    assert result.exit_code == 2
    assert "--rate-limit" in result.output


def test_a_token_an_http_header_cannot_carry_is_a_usage_error(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("sk-t\u00f6ken\n", encoding="utf-8")
    result = grok("status", "task_1", "--api-key-file", key, "--base-url", "http://127.0.0.1:9")
    assert result.exit_code == 2
    assert "non-ASCII" in result.stderr
    assert "t\u00f6ken" not in result.output


# -- generate, status, download ---------------------------------------------------------


def test_generate_waits_and_downloads_then_status_and_download_find_it(
    sim: tuple[Simulator, str], key_file: Path, tmp_path: Path
) -> None:
    simulator, url = sim
    out = tmp_path / "one"
    result = grok(
        "generate", "a fox in the snow", "--ratio", "3:2", "--out", out, *api(url, key_file)
    )
    assert result.exit_code == 0, result.output
    (video,) = out.glob("*.mp4")
    assert result.stdout.strip() == str(video)
    task_id = video.name.rsplit("_", 1)[0]
    assert simulator.stats.created_requests()[0]["ratio"] == "3:2"

    shown = grok("status", task_id, "--json", *api(url, key_file))
    assert shown.exit_code == 0, shown.output
    (task,) = json.loads(shown.stdout)
    assert task["status"] == "completed"

    again = tmp_path / "again"
    fetched = grok("download", task_id, "--out", again, *api(url, key_file))
    assert fetched.exit_code == 0, fetched.output
    assert (again / video.name).read_bytes() == video.read_bytes()
    no_token_anywhere(result)
    no_token_anywhere(shown)
    assert simulator.stats.tasks_created == 1


def test_generate_refuses_bad_input_before_sending(
    sim: tuple[Simulator, str], key_file: Path
) -> None:
    simulator, url = sim
    result = grok("generate", "a fox", "--ratio", "16:9", *api(url, key_file))
    assert result.exit_code == 2
    assert "ratio" in result.stderr
    assert simulator.stats.requests == 0


def test_generate_reports_a_failure_with_its_kind(key_file: Path, tmp_path: Path) -> None:
    failing = Simulator(limit=60, period=1.0, generation_time=(0.1, 0.2), failure_rate=1.0)
    with failing.serve_in_thread() as failing_url:
        result = grok("generate", "a fox", "--out", tmp_path, *api(failing_url, key_file))
    assert result.exit_code == 1
    assert "failed (" in result.stderr
    assert not list(tmp_path.glob("*.mp4"))


def test_a_refused_token_is_a_usage_error_for_every_command(tmp_path: Path) -> None:
    strict = Simulator(limit=60, period=1.0, generation_time=(0.1, 0.2), api_keys=["good"])
    prompts = tmp_path / "p.txt"
    prompts.write_text("a\nb\nc\n")
    out = tmp_path / "v"
    with strict.serve_in_thread() as url:
        bad = ["--base-url", url, "--rate-limit", "60/1s"]
        for args in (["status", "task_1", "task_2"], ["download", "task_1", "task_2"]):
            result = grok(*args, *bad, GROKIMAGINE_API_KEY="wrong")
            assert result.exit_code == 2, result.output
            assert "401" in result.stderr
        refused = grok("batch", prompts, "--out", out, *bad, GROKIMAGINE_API_KEY="wrong")
        assert refused.exit_code == 2, refused.output
        assert "refused the token" in refused.stderr
        assert strict.stats.tasks_created == 0
        fixed = grok("batch", prompts, "--out", out, *bad, GROKIMAGINE_API_KEY="good")
    assert fixed.exit_code == 0, fixed.output
    assert strict.stats.tasks_created == 3


def test_an_unwritable_out_fails_before_anything_is_sent(
    sim: tuple[Simulator, str], key_file: Path, tmp_path: Path
) -> None:
    simulator, url = sim
    prompts = tmp_path / "p.txt"
    prompts.write_text("a\n")
    result = grok("batch", prompts, "--out", prompts / "sub", *api(url, key_file))
    assert result.exit_code == 2
    assert "--out" in result.stderr
    assert simulator.stats.requests == 0


def test_two_runs_of_one_batch_at_once_are_refused(
    sim: tuple[Simulator, str], key_file: Path, tmp_path: Path
) -> None:
    simulator, url = sim
    prompts = tmp_path / "p.txt"
    prompts.write_text("a\n")
    out = tmp_path / "v"
    rows = read_rows(prompts)
    with held_elsewhere(default_journal(out), [r.request.to_payload() for r in rows]):
        result = grok("batch", prompts, "--out", out, *api(url, key_file))
    assert result.exit_code == 2
    assert "in use by another run" in result.stderr
    assert simulator.stats.requests == 0


def test_status_of_an_unknown_task_exits_1(sim: tuple[Simulator, str], key_file: Path) -> None:
    _simulator, url = sim
    result = grok("status", "task_404", *api(url, key_file))
    assert result.exit_code == 1
    assert "task_404" in result.stdout


# -- batch ------------------------------------------------------------------------------


def test_batch_generates_downloads_and_reports_every_line(
    sim: tuple[Simulator, str], key_file: Path, tmp_path: Path
) -> None:
    simulator, url = sim
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# sample\na fox\n\na boat\na kite\n")
    out = tmp_path / "videos"
    result = grok("batch", prompts, "--out", out, *api(url, key_file))
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert [r["line"] for r in report["results"]] == [2, 4, 5]
    assert {r["status"] for r in report["results"]} == {"completed"}
    assert report["totals"]["downloaded"] == 3
    assert report["credits"] == 120
    for r in report["results"]:
        assert all(Path(f).exists() for f in r["files"])
    assert len(list(out.glob("*.mp4"))) == 3
    assert "batch summary" in result.stdout
    assert "completed" in result.stderr  # plain progress lines, off a terminal
    assert default_journal(out).exists()
    no_token_anywhere(result, out / "report.json", default_journal(out))
    assert simulator.stats.rate_limited == 0

    rerun = grok("batch", prompts, "--out", out, *api(url, key_file))
    assert rerun.exit_code == 0, rerun.output
    assert "from the journal" in rerun.stderr
    assert simulator.stats.tasks_created == 3


def test_batch_reads_jsonl_and_csv(
    sim: tuple[Simulator, str], key_file: Path, tmp_path: Path
) -> None:
    simulator, url = sim
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"prompt": "a fox", "mode": "fun", "ratio": "2:3"}\n"a bare prompt"\n')
    csv = tmp_path / "p.csv"
    csv.write_text(
        "prompt,ratio,images\n"
        '"a kite, red",3:2,https://example.com/a.png https://example.com/b.png\n'
    )
    for path in (jsonl, csv):
        result = grok("batch", path, "--out", tmp_path / path.suffix[1:], *api(url, key_file))
        assert result.exit_code == 0, result.output
    sent = simulator.stats.created_requests()
    assert sent[0] == {"prompt": "a fox", "mode": "fun", "ratio": "2:3"}
    assert sent[1]["prompt"] == "a bare prompt"
    assert sent[2]["prompt"] == "a kite, red"
    assert sent[2]["images"] == ["https://example.com/a.png", "https://example.com/b.png"]


def test_a_bad_file_sends_nothing_and_names_every_bad_line(
    sim: tuple[Simulator, str], key_file: Path, tmp_path: Path
) -> None:
    simulator, url = sim
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"prompt": "x", "ratio": "16:9"}\nnot json\n[1]\n')
    result = grok("batch", bad, "--out", tmp_path / "v", *api(url, key_file))
    assert result.exit_code == 2
    for line in ("line 2: ratio", "line 3: not JSON", "line 4: a JSON list"):
        assert line in result.stderr
    assert "nothing was sent" in result.stderr
    assert simulator.stats.requests == 0


def test_some_failures_exit_1_and_say_why(key_file: Path, tmp_path: Path) -> None:
    simulator = Simulator(
        limit=60, period=1.0, generation_time=(0.1, 0.3), failure_rate=0.5, seed=2
    )
    prompts = tmp_path / "p.txt"
    prompts.write_text("".join(f"video {i}\n" for i in range(8)))
    with simulator.serve_in_thread() as url:
        result = grok("batch", prompts, "--out", tmp_path / "v", *api(url, key_file))
    assert result.exit_code == 1
    report = json.loads((tmp_path / "v" / "report.json").read_text())
    failed = [r for r in report["results"] if r["status"] == "failed"]
    assert failed
    assert all(r["failure_kind"] and r["task_id"] for r in failed)
    assert report["totals"]["failed"] == len(failed)


def test_dry_run_prices_the_batch_and_sends_nothing(
    sim: tuple[Simulator, str], tmp_path: Path
) -> None:
    simulator, url = sim
    prompts = tmp_path / "p.txt"
    prompts.write_text("".join(f"video {i}\n" for i in range(1500)))
    result = grok("batch", prompts, "--dry-run", "--tier", "pro", "--base-url", url)
    assert result.exit_code == 0, result.output
    assert "60,000 credits ($600.00)" in result.stderr
    # 3,000 requests at 1,000 a minute, the first 1,000 at once: 2 minutes at the least.
    assert "least time on the pro plan" in result.stderr
    assert "2m 00s" in result.stderr
    assert simulator.stats.requests == 0
    assert not default_journal(Path("videos")).exists()


def test_a_big_spend_needs_yes_off_a_terminal(
    sim: tuple[Simulator, str], key_file: Path, tmp_path: Path
) -> None:
    simulator, url = sim
    prompts = tmp_path / "p.txt"
    prompts.write_text("a\nb\nc\n")
    out = tmp_path / "v"
    args = ["batch", prompts, "--out", out, "--confirm-over", "80", *api(url, key_file)]
    refused = grok(*args)
    assert refused.exit_code == 2
    assert "--yes" in refused.stderr
    assert simulator.stats.requests == 0
    assert grok(*args, "--yes").exit_code == 0
    assert simulator.stats.tasks_created == 3


def test_max_credits_skips_the_rest_and_exits_1(
    sim: tuple[Simulator, str], key_file: Path, tmp_path: Path
) -> None:
    simulator, url = sim
    prompts = tmp_path / "p.txt"
    prompts.write_text("a\nb\nc\n")
    result = grok(
        "batch", prompts, "--out", tmp_path / "v", "--max-credits", "80", *api(url, key_file)
    )
    assert result.exit_code == 1
    assert "skipped" in result.stdout
    assert simulator.stats.tasks_created == 2


def test_a_journal_of_another_batch_is_refused(
    sim: tuple[Simulator, str], key_file: Path, tmp_path: Path
) -> None:
    simulator, url = sim
    out = tmp_path / "v"
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text("a fox\n")
    second.write_text("a boat\n")
    assert grok("batch", first, "--out", out, *api(url, key_file)).exit_code == 0
    result = grok("batch", second, "--out", out, *api(url, key_file))
    assert result.exit_code == 2
    assert "different batch" in result.stderr
    assert simulator.stats.tasks_created == 1


def test_live_progress_renders(sim: tuple[Simulator, str], key_file: Path, tmp_path: Path) -> None:
    _simulator, url = sim
    prompts = tmp_path / "p.txt"
    prompts.write_text("a\nb\n")
    result = grok(
        "batch", prompts, "--out", tmp_path / "v", "--progress", "live", *api(url, key_file)
    )
    assert result.exit_code == 0, result.output
    assert "2/2 settled" in result.stderr
    assert "credits" in result.stderr


def test_ctrl_c_exits_130_and_the_rerun_pays_for_nothing_twice(
    key_file: Path, tmp_path: Path
) -> None:
    simulator = Simulator(limit=10, period=1.0, generation_time=(0.3, 0.8), seed=8)
    n = 40
    prompts = tmp_path / "p.txt"
    prompts.write_text("".join(f"video {i}\n" for i in range(n)))
    out = tmp_path / "v"
    with simulator.serve_in_thread() as url:
        args: list[str] = [
            sys.executable, "-m", "grokimagine_async", "batch", str(prompts), "--out", str(out),
            "--base-url", url, "--rate-limit", "10/1s", "--api-key-file", str(key_file),
            "--progress", "plain",
        ]  # fmt: skip
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(args, stderr=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + 60
        while simulator.stats.tasks_created < 5 and time.monotonic() < deadline:
            time.sleep(0.01)  # the state waited on is the simulator's; a deadline bounds it
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130
        report = json.loads((out / "report.json").read_text())
        assert report["interrupted"] is True
        created_before = simulator.stats.tasks_created
        assert 5 <= created_before < n
        # A graceful stop: every POST on the wire answered, nothing left uncertain.
        statuses = Counter(r["status"] for r in report["results"])
        assert statuses["uncertain"] == 0
        assert statuses["skipped"] == n - created_before
        rerun = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    per_prompt = Counter(r["prompt"] for r in simulator.stats.created_requests())
    assert max(per_prompt.values()) == 1
    assert len(per_prompt) == n
    assert len(list(out.glob("*.mp4"))) == n
    final = json.loads((out / "report.json").read_text())
    assert set(report["unfinished_task_ids"]) <= {r["task_id"] for r in final["results"]}


def test_demo_runs_a_batch_into_the_folder(tmp_path: Path) -> None:
    out = tmp_path / "videos"
    result = grok("demo", "--out", out)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    completed = [r for r in report["results"] if r["status"] == "completed"]
    assert len(completed) >= len(report["results"]) // 2
    assert len(list(out.glob("*.mp4"))) == len(completed)
    for video in out.glob("*.mp4"):
        assert video.read_bytes()[4:8] == b"ftyp"
    assert "0 answered 429" in result.stderr


# -- the parts ----------------------------------------------------------------------------


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
    with pytest.raises(InputFileError, match="cannot be read"):
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
    plan = estimate(rows, entries, RateLimit(100, 60), max_credits=None, resubmit_uncertain=False)
    assert (plan.settled, plan.in_flight, plan.uncertain, plan.to_submit) == (1, 1, 1, 2)
    assert plan.credits == 80
    resend = estimate(rows, entries, RateLimit(100, 60), max_credits=None, resubmit_uncertain=True)
    assert resend.to_submit == 3
    capped = estimate(rows, entries, RateLimit(100, 60), max_credits=160, resubmit_uncertain=False)
    # Three may already have cost 40 each: room for one more.
    assert capped.to_submit == 1
    resend_capped = estimate(
        rows, entries, RateLimit(100, 60), max_credits=160, resubmit_uncertain=True
    )
    # Resent, the uncertain one costs again: two paid before, room for two.
    assert (resend_capped.to_submit, resend_capped.credits) == (2, 80)


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
