"""The ``grokimagine`` command against the simulator, served from a thread on loopback."""

from __future__ import annotations

import functools
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest
from typer.testing import CliRunner, Result

from grokimagine_async import AsyncClient
from grokimagine_async import _pipeline as pipeline_module
from grokimagine_async._cli import _options as options
from grokimagine_async._cli._app import app
from grokimagine_async._cli._inputs import BatchFile, read_rows
from grokimagine_async._cli.commands import batch as batch_command
from grokimagine_async._cli.commands.batch import default_journal
from grokimagine_async.simulator import Simulator

from .helpers import TOKEN, held_elsewhere
from .redis_server import RedisServer

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


def grok(*args: str | Path, stdin: str | None = None, **env: str) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args], input=stdin, env=env or None)


def api(url: str, key_file: Path) -> list[str | Path]:
    return ["--base-url", url, "--rate-limit", "60/1s", "--api-key-file", key_file]


#: Polls as often as the simulated videos (0.1 s to 0.8 s) call for, not every 5 s.
FAST = ["--poll-interval", "0.05"]


def fast(url: str, key_file: Path) -> list[str | Path]:
    """The options of a command that waits for videos, on the tests' compressed time."""
    return [*api(url, key_file), *FAST]


def said(result: Result) -> str:
    """Everything a command printed, on one line: rich wraps and boxes usage errors."""
    return " ".join(result.output.replace("\u2502", " ").split())


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
    assert not (tmp_path / "v").exists()  # a failed start leaves no folder behind


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


# Advice meant for Python callers, which a command line user cannot act on.
PYTHON_ADVICE = re.compile(r"Unchecked|RateLimit\(|rate_limit[=.]|\w+=\.\.\.|Value error")


@pytest.mark.parametrize(
    ("args", "env", "flag"),
    [
        (["generate", "a fox", "--ratio", "16:9"], {}, "--allow-undocumented"),
        (["generate", "a fox", "--mode", "cinematic"], {}, "--allow-undocumented"),
        (["status", "task_1", "--tier", "gold"], {}, "--tier"),
        (["status", "task_1"], {"GROKIMAGINE_TIER": "gold"}, "--rate-limit"),
        (["status", "task_1", "--rate-limit", "0/min"], {}, "--rate-limit"),
        (["status", "task_1", "--redis-url", "http://cache:6379"], {}, "--redis-url"),
        (["batch", "p.txt", "--redis-fallback", "2"], {}, "--redis-fallback"),
    ],
)
def test_usage_errors_name_the_flag_not_python(
    args: list[str], env: dict[str, str], flag: str, key_file: Path
) -> None:
    result = grok(*args, "--api-key-file", key_file, "--base-url", "http://127.0.0.1:9", **env)
    assert result.exit_code == 2, result.output
    assert flag in said(result)
    assert not PYTHON_ADVICE.search(said(result)), result.output


@pytest.mark.parametrize("command", ["generate", "batch", "status", "download"])
def test_plain_http_to_another_machine_is_refused_before_anything_runs(
    command: str, key_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GROKIMAGINE_ALLOW_INSECURE_HTTP", raising=False)
    prompts = tmp_path / "p.txt"
    prompts.write_text("a fox\n")
    target: dict[str, list[str | Path]] = {
        "generate": ["a fox"],
        "batch": [prompts, "--dry-run"],
        "status": ["t1"],
        "download": ["t1"],
    }
    where: list[str | Path] = ["--base-url", "http://api.example.com", "--api-key-file", key_file]
    refused = grok(command, *target[command], *where)
    assert refused.exit_code == 2, refused.output
    text = said(refused)
    assert "clear text" in text
    assert "--allow-insecure-http" in text
    assert TOKEN not in refused.output


def test_the_flag_lets_plain_http_through(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GROKIMAGINE_ALLOW_INSECURE_HTTP", raising=False)
    prompts = tmp_path / "p.txt"
    prompts.write_text("a fox\n")
    where = ["--base-url", "http://api.example.com"]
    allowed = grok("batch", prompts, "--dry-run", *where, "--allow-insecure-http")
    assert allowed.exit_code == 0, allowed.output
    by_env = grok("batch", prompts, "--dry-run", *where, GROKIMAGINE_ALLOW_INSECURE_HTTP="1")
    assert by_env.exit_code == 0, by_env.output


def test_a_plan_that_does_not_exist_names_the_plans(key_file: Path) -> None:
    result = grok("status", "task_1", "--tier", "gold", "--api-key-file", key_file)
    assert result.exit_code == 2
    assert "Invalid value for '--tier': 'gold' is not a plan: use one of free, pro, enterprise" in (
        said(result)
    )
    assert "Value error" not in result.output


def test_redis_url_makes_the_command_share_the_plan_through_redis(
    sim: tuple[Simulator, str], key_file: Path, redis_server: RedisServer, tmp_path: Path
) -> None:
    import redis

    _, url = sim
    out = tmp_path / "out"
    result = grok(
        "generate", "a fox", "--redis-url", redis_server.url, "--out", out, *fast(url, key_file)
    )
    assert result.exit_code == 0, result.output
    with redis.Redis.from_url(redis_server.url) as r:
        keys = r.keys("grokimagine:*")
    assert keys  # the slots were taken in Redis
    assert all(TOKEN.encode() not in k for k in keys)
    no_token_anywhere(result)


def test_a_batch_with_redis_unreachable_stops_in_one_line_naming_the_flags(
    sim: tuple[Simulator, str], key_file: Path, tmp_path: Path
) -> None:
    simulator, url = sim
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"redis://127.0.0.1:{probe.getsockname()[1]}/0"
    prompts = tmp_path / "p.txt"
    prompts.write_text("".join(f"video {i}\n" for i in range(20)))
    result = grok(
        "batch", prompts, "--out", tmp_path / "v", "--redis-url", closed, "--progress", "plain",
        *fast(url, key_file),
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if "Redis" in line]
    assert len(errors) == 1, result.stderr
    assert "--redis-url" in errors[0]
    assert "--redis-fallback" in errors[0]
    assert "redis_url" not in result.stderr
    assert "redis_fallback" not in result.stderr
    assert "20 rows not submitted" in errors[0]
    assert simulator.stats.requests == 0
    no_token_anywhere(result)


# -- generate, status, download ---------------------------------------------------------


def test_generate_waits_and_downloads_then_status_and_download_find_it(
    sim: tuple[Simulator, str], key_file: Path, tmp_path: Path
) -> None:
    simulator, url = sim
    out = tmp_path / "one"
    result = grok(
        "generate", "a fox in the snow", "--ratio", "3:2", "--out", out, *fast(url, key_file)
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
    # Piped, a line a task: each video URL whole, not wrapped at 80 columns.
    piped = grok("status", task_id, *api(url, key_file))
    assert piped.exit_code == 0, piped.output
    assert piped.stdout.splitlines() == [f"{task_id}\tcompleted\t{' '.join(task['videos'])}"]

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
    result = grok("generate", "a fox", "--ratio", "16:9", *fast(url, key_file))
    assert result.exit_code == 2
    assert "ratio" in result.stderr
    assert simulator.stats.requests == 0


def test_generate_reports_a_failure_with_its_kind(key_file: Path, tmp_path: Path) -> None:
    failing = Simulator(limit=60, period=1.0, generation_time=(0.1, 0.2), failure_rate=1.0)
    with failing.serve_in_thread() as failing_url:
        result = grok("generate", "a fox", "--out", tmp_path, *fast(failing_url, key_file))
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
        batch: list[str | Path] = ["batch", prompts, "--out", out, *bad, *FAST]
        commands: list[list[str | Path]] = [
            ["status", "task_1", "task_2"],
            ["download", "task_1", "task_2"],
            ["generate", "a fox", "--out", out, *FAST],
            batch,
        ]
        for args in commands:
            result = grok(*args, *bad, GROKIMAGINE_API_KEY="wrong")
            assert result.exit_code == 2, result.output
            # Every command says the same: what happened, and what to fix.
            assert "refused the token" in said(result), (args[0], result.output)
            assert "Fix GROKIMAGINE_API_KEY or --api-key-file" in said(result), args[0]
        assert strict.stats.tasks_created == 0
        # Nothing was made: no journal is left to wonder about.
        assert not (tmp_path / "v.journal.db").exists()
        # No token at all: said before any estimate of the spend (--dry-run needs none).
        missing = grok(*batch, *bad, GROKIMAGINE_API_KEY="")
        assert missing.exit_code == 2
        assert "no API token" in said(missing)
        assert "to submit now" not in missing.output
        dry = grok(*batch, *bad, "--dry-run", GROKIMAGINE_API_KEY="")
        assert dry.exit_code == 0, dry.output
        assert "to submit now" in dry.output
        fixed = grok(*batch, GROKIMAGINE_API_KEY="good")
    assert fixed.exit_code == 0, fixed.output
    assert strict.stats.tasks_created == 3


def test_a_refused_token_stops_the_batch_with_one_line(tmp_path: Path) -> None:
    strict = Simulator(limit=60, period=1.0, api_keys=["good"])
    n = 40
    prompts = tmp_path / "p.txt"
    prompts.write_text("".join(f"video {i}\n" for i in range(n)))
    out = tmp_path / "v"
    with strict.serve_in_thread() as url:
        # 4 a second, 4 at once: were the batch not stopped, it would take 10 s.
        args: list[str | Path] = ["batch", prompts, "--out", out, "--base-url", url]
        args += ["--rate-limit", "4/1s"]
        result = grok(*args, *FAST, GROKIMAGINE_API_KEY="wrong")
    assert result.exit_code == 2, result.output
    assert result.output.count("HTTP 401") == 1, result.output
    assert f"refused the token, so the batch stopped ({n} rows not submitted)" in said(result)
    assert not re.search(r"line \d+", result.output), result.output  # no line a row
    assert strict.stats.requests < n
    assert not out.exists()  # nothing was created, so nothing is left behind


def test_an_unreachable_api_stops_the_batch_with_one_line(
    tmp_path: Path, key_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The retries' backoff on compressed time too: 0.01 s, not 0.5 s, doubling.
    monkeypatch.setattr(options, "AsyncClient", functools.partial(AsyncClient, backoff=0.01))
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    n = 40
    prompts = tmp_path / "p.txt"
    prompts.write_text("".join(f"video {i}\n" for i in range(n)))
    out = tmp_path / "v"
    args: list[str | Path] = ["batch", prompts, "--out", out]
    args += ["--base-url", f"http://127.0.0.1:{port}"]
    result = grok(*args, "--api-key-file", key_file, "--rate-limit", "60/1s", *FAST)
    assert result.exit_code == 1, result.output
    assert result.output.count("ConnectError") == 1, result.output
    assert f"could not be reached, so the batch stopped ({n} rows not submitted)" in said(result)
    assert "--base-url" in said(result)
    assert not re.search(r"line \d+", result.output), result.output
    assert not out.exists()


def test_an_unwritable_out_fails_before_anything_is_sent(
    sim: tuple[Simulator, str], key_file: Path, tmp_path: Path
) -> None:
    simulator, url = sim
    prompts = tmp_path / "p.txt"
    prompts.write_text("a\n")
    result = grok("batch", prompts, "--out", prompts / "sub", *fast(url, key_file))
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
        result = grok("batch", prompts, "--out", out, *fast(url, key_file))
    assert result.exit_code == 2
    assert "in use by another run" in result.stderr
    assert simulator.stats.requests == 0


def test_status_of_an_unknown_task_exits_1(sim: tuple[Simulator, str], key_file: Path) -> None:
    _simulator, url = sim
    result = grok("status", "task_404", *api(url, key_file))
    assert result.exit_code == 1
    assert "task_404" in result.stdout


def test_ctrl_c_in_generate_names_the_task_and_the_commands_for_later(
    key_file: Path, tmp_path: Path
) -> None:
    slow = Simulator(limit=60, period=1.0, generation_time=(600.0, 600.0))
    with slow.serve_in_thread() as url:
        args = [
            sys.executable, "-m", "grokimagine_async", "generate", "a fox", "--out", str(tmp_path),
            *map(str, api(url, key_file)),
        ]  # fmt: skip
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env=env) as proc:
            assert proc.stderr is not None
            first = read_line_within(proc.stderr, 30)
            assert first.startswith("submitted task "), first
            task_id = first.split()[2]
            proc.send_signal(signal.SIGINT)
            _, rest = proc.communicate(timeout=30)
            assert proc.returncode == 130
    words = " ".join(rest.split())
    assert f"task {task_id} goes on" in words
    assert f"grokimagine status {task_id}" in words
    assert f"grokimagine download {task_id}" in words
    assert slow.stats.tasks_created == 1


def wait_until(condition: Callable[[], bool], *, within: float) -> None:
    """Return once ``condition`` holds; fail the test if it does not within ``within`` s."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not so within {within}s")
        time.sleep(0.005)  # the other process or thread moves the state: look again


def read_line_within(stream: IO[str], seconds: float) -> str:
    """The next line of ``stream``; fails the test if none comes within ``seconds``."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: lines.put(stream.readline()), daemon=True).start()
    try:
        return lines.get(timeout=seconds)
    except queue.Empty:
        pytest.fail(f"no line within {seconds}s")


def test_simulate_on_a_port_in_use_says_so_in_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = grok("simulate", "--port", str(port))
    assert result.exit_code == 2
    (line,) = result.stderr.splitlines()
    assert f"port {port}" in line
    assert "--port 0" in line
    assert "Traceback" not in result.output


# -- batch ------------------------------------------------------------------------------


def test_batch_generates_downloads_and_reports_every_line(
    sim: tuple[Simulator, str], key_file: Path, tmp_path: Path
) -> None:
    simulator, url = sim
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# sample\na fox\n\na boat\na kite\n")
    out = tmp_path / "videos"
    result = grok("batch", prompts, "--out", out, *fast(url, key_file))
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

    rerun = grok("batch", prompts, "--out", out, *fast(url, key_file))
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
        result = grok("batch", path, "--out", tmp_path / path.suffix[1:], *fast(url, key_file))
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
    result = grok("batch", bad, "--out", tmp_path / "v", *fast(url, key_file))
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
        result = grok("batch", prompts, "--out", tmp_path / "v", *fast(url, key_file))
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
    args = ["batch", prompts, "--out", out, "--confirm-over", "80", *fast(url, key_file)]
    refused = grok(*args)
    assert refused.exit_code == 2
    assert "--yes" in refused.stderr
    assert simulator.stats.requests == 0
    assert grok(*args, "--yes").exit_code == 0
    assert simulator.stats.tasks_created == 3


def test_declining_the_spend_sends_nothing_and_is_no_failure(
    sim: tuple[Simulator, str], key_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    simulator, url = sim
    monkeypatch.setattr(batch_command, "interactive", lambda: True)
    prompts = tmp_path / "p.txt"
    prompts.write_text("a\nb\nc\n")
    out = tmp_path / "v"
    args = ["batch", prompts, "--out", out, "--confirm-over", "80", *fast(url, key_file)]
    result = grok(*args, stdin="n\n")
    assert result.exit_code == 0, result.output
    assert "Spend up to 120 credits ($1.20)?" in result.output
    assert "nothing was sent" in result.stderr
    assert simulator.stats.requests == 0
    assert not out.exists()


def test_the_estimate_reads_well_for_a_small_batch(
    sim: tuple[Simulator, str], tmp_path: Path
) -> None:
    _simulator, url = sim
    prompts = tmp_path / "p.txt"
    prompts.write_text("a fox\n")
    result = grok("batch", prompts, "--out", tmp_path / "v", "--dry-run", "--base-url", url)
    assert result.exit_code == 0, result.output
    words = said(result)
    assert "least time on the free plan, 100 requests per 60s (pass --tier for yours): " in words
    assert "under 1s for 2 requests" in words
    assert ") (" not in words
    assert " 0s " not in words


def test_a_prompt_too_long_is_refused_before_anything_is_sent(
    sim: tuple[Simulator, str], key_file: Path, tmp_path: Path
) -> None:
    simulator, url = sim
    prompts = tmp_path / "p.txt"
    prompts.write_text("a fox\n" + "x" * 10_001 + "\n")
    args = ["batch", prompts, "--out", tmp_path / "v", *fast(url, key_file)]
    result = grok(*args)
    assert result.exit_code == 2
    assert "line 2: prompt: 10,001 characters, over the 10,000" in said(result)
    assert "--max-prompt-chars" in result.stderr
    assert simulator.stats.requests == 0
    allowed = grok(*args, "--max-prompt-chars", "20000", "--dry-run")
    assert allowed.exit_code == 0, allowed.output
    assert "to submit now: 2 videos" in allowed.stderr
    help_text = " ".join(grok("batch", "--help").output.replace("\u2502", " ").split())
    assert "--max-prompt-chars" in help_text
    assert "[default: 10000]" in help_text


def test_retry_failed_resends_only_what_may_succeed_and_counts_it_first(
    key_file: Path, tmp_path: Path
) -> None:
    failing = Simulator(
        limit=60,
        period=1.0,
        generation_time=(0.1, 0.2),
        failure_rate=1.0,
        failure_messages={
            "grok imagine build failed": 1.0,
            "Inappropriate content, please try another prompt.": 1.0,
        },
        seed=3,
    )
    prompts = tmp_path / "p.txt"
    prompts.write_text("".join(f"video {i}\n" for i in range(6)))
    out = tmp_path / "v"
    with failing.serve_in_thread() as url:
        first = grok("batch", prompts, "--out", out, *fast(url, key_file))
    assert first.exit_code == 1, first.output
    report = json.loads((out / "report.json").read_text())
    retriable = {r["line"] for r in report["results"] if r["resubmit_may_succeed"]}
    assert 0 < len(retriable) < 6
    assert "--retry-failed resends it" in first.stderr

    healthy = Simulator(limit=60, period=1.0, generation_time=(0.1, 0.2), seed=3)
    with healthy.serve_in_thread() as url:
        args = ["batch", prompts, "--out", out, *fast(url, key_file)]
        plain = grok(*args, "--dry-run")
        assert "to submit now: 0 videos" in plain.stderr
        assert f"{len(retriable)} failed video" in plain.stderr
        priced = grok(*args, "--retry-failed", "--dry-run")
        credits = 40 * len(retriable)
        assert f"to submit now: {len(retriable)} video" in priced.stderr
        assert f"up to {credits} credits" in priced.stderr
        # The spend question counts the resends too.
        asked = grok(*args, "--retry-failed", "--confirm-over", str(credits - 1))
        assert asked.exit_code == 2
        assert "--yes" in asked.stderr
        assert healthy.stats.requests == 0
        retried = grok(*args, "--retry-failed")
        again = grok(*args, "--retry-failed")
    assert retried.exit_code == 1, retried.output  # the refused ones stay failed
    assert healthy.stats.tasks_created == len(retriable)
    final = json.loads((out / "report.json").read_text())
    completed = {r["line"] for r in final["results"] if r["status"] == "completed"}
    assert completed == retriable
    assert again.exit_code == 1
    assert healthy.stats.tasks_created == len(retriable)  # nothing resent twice


def test_retry_failed_needs_the_journal(tmp_path: Path) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("a\n")
    result = grok("batch", prompts, "--no-journal", "--retry-failed", "--dry-run")
    assert result.exit_code == 2
    assert "--no-journal" in result.stderr


def test_max_credits_skips_the_rest_and_exits_1(
    sim: tuple[Simulator, str], key_file: Path, tmp_path: Path
) -> None:
    simulator, url = sim
    prompts = tmp_path / "p.txt"
    prompts.write_text("a\nb\nc\n")
    result = grok(
        "batch", prompts, "--out", tmp_path / "v", "--max-credits", "80", *fast(url, key_file)
    )
    assert result.exit_code == 1
    assert "skipped" in result.stdout
    assert simulator.stats.tasks_created == 2


@pytest.mark.parametrize("bad_line", [2, 12])
def test_a_file_changed_while_the_batch_runs_sends_nothing_unchecked(
    bad_line: int, key_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Read 8 lines at a time, line 2 comes with the first chunk, before anything is
    # sent; line 12 with the second, after the first 8 were.
    monkeypatch.setattr(pipeline_module, "CHUNK", 8)
    lines = [json.dumps({"prompt": f"video {i}"}) + "\n" for i in range(1, 21)]
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(lines))
    checked = BatchFile.verify

    def verify_then_change(self: BatchFile) -> None:
        checked(self)
        lines[bad_line - 1] = json.dumps({"prompt": "changed", "ratio": "16:9"}) + "\n"
        prompts.write_text("".join(lines))

    monkeypatch.setattr(BatchFile, "verify", verify_then_change)
    simulator = Simulator(limit=200, period=1.0, generation_time=(0.05, 0.1), seed=4)
    with simulator.serve_in_thread() as url:
        options: list[str | Path] = ["--base-url", url, "--rate-limit", "200/1s"]
        options += ["--api-key-file", key_file]
        result = grok("batch", prompts, "--out", tmp_path / "v", *options, *FAST)
    assert result.exit_code == 2, result.output
    assert f"changed while the batch ran (line {bad_line}: ratio" in said(result)
    sent = [r["prompt"] for r in simulator.stats.created_requests()]
    assert "changed" not in sent
    assert len(sent) == (0 if bad_line <= 8 else bad_line - 1)
    if sent:
        report = json.loads((tmp_path / "v" / "report.json").read_text())
        assert len(report["results"]) == 20
        assert report["totals"]["completed"] == len(sent)


def test_a_journal_of_another_batch_is_refused(
    sim: tuple[Simulator, str], key_file: Path, tmp_path: Path
) -> None:
    simulator, url = sim
    out = tmp_path / "v"
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text("a fox\n")
    second.write_text("a boat\n")
    assert grok("batch", first, "--out", out, *fast(url, key_file)).exit_code == 0
    result = grok("batch", second, "--out", out, *fast(url, key_file))
    assert result.exit_code == 2
    assert "different batch" in result.stderr
    assert simulator.stats.tasks_created == 1


def test_live_progress_renders(sim: tuple[Simulator, str], key_file: Path, tmp_path: Path) -> None:
    _simulator, url = sim
    prompts = tmp_path / "p.txt"
    prompts.write_text("a\nb\n")
    result = grok(
        "batch", prompts, "--out", tmp_path / "v", "--progress", "live", *fast(url, key_file)
    )
    assert result.exit_code == 0, result.output
    assert "2/2 settled" in result.stderr
    assert "credits" in result.stderr


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_exits_130_and_the_rerun_pays_for_nothing_twice(
    signum: signal.Signals, key_file: Path, tmp_path: Path
) -> None:
    # The server allows more than the first run asks for, so that the rerun can go fast.
    simulator = Simulator(limit=100, period=1.0, generation_time=(0.3, 0.8), seed=8)
    n = 40
    prompts = tmp_path / "p.txt"
    prompts.write_text("".join(f"video {i}\n" for i in range(n)))
    out = tmp_path / "v"
    with simulator.serve_in_thread() as url:
        command: list[str] = [
            sys.executable, "-m", "grokimagine_async", "batch", str(prompts), "--out", str(out),
            "--base-url", url, "--api-key-file", str(key_file), "--progress", "plain", *FAST,
        ]  # fmt: skip
        # Slow enough that the Ctrl-C lands with most of the batch unsent.
        args = [*command, "--rate-limit", "10/1s"]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
        )
        wait_until(lambda: simulator.stats.tasks_created >= 5, within=60)
        proc.send_signal(signum)
        # A deadline, not a speed: the stop waits only for the POSTs on the wire.
        summary, _ = proc.communicate(timeout=30)
        assert proc.returncode == 130
        assert not list(out.glob("*.part"))
        report = json.loads((out / "report.json").read_text())
        assert report["interrupted"] is True
        created_before = simulator.stats.tasks_created
        assert 5 <= created_before < n
        # A graceful stop: every POST on the wire answered, nothing left uncertain.
        statuses = Counter(r["status"] for r in report["results"])
        assert statuses["uncertain"] == 0
        assert statuses["skipped"] == n - created_before
        # The rows not sent are one line of the summary, not one line each.
        unsent = f"{n - created_before} rows not submitted; rerun the same command to resume"
        assert unsent in summary
        assert "skipped:" not in summary
        rerun = subprocess.run(
            [*command, "--rate-limit", "100/1s"],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
    assert rerun.returncode == 0, rerun.stderr
    per_prompt = Counter(r["prompt"] for r in simulator.stats.created_requests())
    assert max(per_prompt.values()) == 1
    assert len(per_prompt) == n
    assert len(list(out.glob("*.mp4"))) == n
    final = json.loads((out / "report.json").read_text())
    assert set(report["unfinished_task_ids"]) <= {r["task_id"] for r in final["results"]}


def test_demo_runs_a_batch_into_the_folder(tmp_path: Path) -> None:
    out = tmp_path / "videos"
    result = grok("demo", "--out", out, "--time-scale", "0.2")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    completed = [r for r in report["results"] if r["status"] == "completed"]
    assert len(completed) >= len(report["results"]) // 2
    assert len(list(out.glob("*.mp4"))) == len(completed)
    for video in out.glob("*.mp4"):
        assert video.read_bytes()[4:8] == b"ftyp"
    assert "0 answered 429" in result.stderr
    # Its exit code is the one its help promises: 0 once videos were made, failed
    # ones (the simulator's, on purpose) or not.
    assert "demo: 0 once it made videos" in said(grok("--help"))
    assert "Exits 0 once it made videos" in said(grok("demo", "--help"))


# -- the journal the batch relies on ------------------------------------------------------
