"""The README's demo runs, so the first command a user types stays true."""

from __future__ import annotations

from pathlib import Path

import pytest

from .helpers import load_example

pytestmark = pytest.mark.anyio


async def test_the_demo_downloads_its_videos(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    demo = load_example("demo")
    assert await demo.main(tmp_path) == 0
    videos = sorted(tmp_path.glob("*.mp4"))
    printed = capsys.readouterr().out
    assert printed.count("completed task_") == len(videos)
    assert len(videos) >= len(demo.PROMPTS) // 2
    for video in videos:
        assert video.read_bytes()[4:8] == b"ftyp"
    assert not list(tmp_path.glob("*.part"))
    assert "0 answered 429" in printed
