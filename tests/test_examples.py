"""The README's demo runs, so the first command a user types stays true."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.anyio


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_the_demo_downloads_its_videos(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    demo = load("demo")
    assert await demo.main(tmp_path) == 0
    videos = sorted(tmp_path.glob("*.mp4"))
    printed = capsys.readouterr().out
    assert printed.count("completed task_") == len(videos)
    assert len(videos) >= len(demo.PROMPTS) // 2
    for video in videos:
        assert video.read_bytes()[4:8] == b"ftyp"
    assert not list(tmp_path.glob("*.part"))
    assert "0 answered 429" in printed
