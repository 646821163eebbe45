"""examples/bulk.py, the script users copy, run as they would run it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from grokimagine_async.simulator import Simulator

from .helpers import TOKEN, load_example, serving

pytestmark = [pytest.mark.anyio, pytest.mark.backends("asyncio", "trio")]


async def test_the_bulk_script_downloads_every_video_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bulk = load_example("bulk")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a fox\n\na boat\na kite\na lighthouse\n")
    out = tmp_path / "videos"
    sim = Simulator(generation_time=(0.2, 0.5), seed=1)
    async with serving(sim) as url:
        monkeypatch.setenv("GROKIMAGINE_API_KEY", TOKEN)
        monkeypatch.setenv("GROKIMAGINE_BASE_URL", url)
        monkeypatch.setenv("GROKIMAGINE_POLL_INTERVAL", "0.1")  # generations of 0.2-0.5 s
        assert await bulk.main(prompts, out, None) == 0
        assert await bulk.main(prompts, out, None) == 0  # a rerun: from the journal
    printed = capsys.readouterr().out
    assert printed.count("4 of 4 videos") == 2
    videos = sorted(out.glob("*.mp4"))
    assert len(videos) == 4
    assert all(v.read_bytes()[4:8] == b"ftyp" for v in videos)
    assert Counter(r["prompt"] for r in sim.stats.created_requests()) == Counter(
        ["a fox", "a boat", "a kite", "a lighthouse"]
    )
    assert out.with_name("videos.journal.db").exists()


async def test_the_bulk_script_stops_at_max_credits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bulk = load_example("bulk")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a\nb\nc\n")
    sim = Simulator(generation_time=(0.2, 0.5), seed=2)
    async with serving(sim) as url:
        monkeypatch.setenv("GROKIMAGINE_API_KEY", TOKEN)
        monkeypatch.setenv("GROKIMAGINE_BASE_URL", url)
        monkeypatch.setenv("GROKIMAGINE_POLL_INTERVAL", "0.1")  # generations of 0.2-0.5 s
        assert await bulk.main(prompts, tmp_path / "v", 80) == 1
    assert "1 prompts not submitted (--max-credits)" in capsys.readouterr().out
    assert sim.stats.tasks_created == 2


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_the_bulk_scripts_ctrl_c_leaves_nothing_uncertain_and_one_line(
    signum: signal.Signals, tmp_path: Path
) -> None:
    n = 30
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"video {i}\n" for i in range(n)))
    out = tmp_path / "videos"
    sim = Simulator(limit=100, period=1.0, generation_time=(0.3, 0.8), seed=3)
    script = Path(__file__).resolve().parent.parent / "examples" / "bulk.py"
    with sim.serve_in_thread() as url:
        env = {
            **os.environ, "GROKIMAGINE_API_KEY": TOKEN, "GROKIMAGINE_BASE_URL": url,
            "GROKIMAGINE_POLL_INTERVAL": "0.1", "PYTHONUNBUFFERED": "1",
            # The simulator's compressed minute (else the client keeps to a real one).
            "GROKIMAGINE_RATE_LIMIT": "100/1s",
        }  # fmt: skip
        command = [sys.executable, str(script), str(prompts), "--out", str(out)]
        # Slow enough that the Ctrl-C lands with most of the batch unsent.
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**env, "GROKIMAGINE_RATE_LIMIT": "10/1s"},
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while sim.stats.tasks_created < 3:
            assert time.monotonic() < deadline, "the batch did not start"
            time.sleep(0.005)  # the script's process moves the state: look again
        proc.send_signal(signum)
        printed, errors = proc.communicate(timeout=60)
        created = sim.stats.tasks_created
        assert proc.returncode == 130, errors
        assert "Traceback" not in errors
        assert "CancelledError" not in errors + printed
        assert printed.count("interrupted:") == 1
        assert 3 <= created < n
        # A rerun follows the tasks in flight and sends the rest: each paid for once.
        rerun = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"{n} of {n} videos" in rerun.stdout
    assert sim.stats.tasks_created == n
    assert len(list(out.glob("*.mp4"))) == n
