"""examples/bulk.py, the script users copy, run as they would run it."""

from __future__ import annotations

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
    assert "skipped" in capsys.readouterr().out
    assert sim.stats.tasks_created == 2
