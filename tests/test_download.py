"""Downloads: whole files or none, unique names, no token to the video host."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from grokimagine_async import AsyncClient, DownloadError, RateLimit, VideoExpiredError
from grokimagine_async.simulator import ManualClock, Simulator

from .helpers import TOKEN

pytestmark = pytest.mark.anyio


async def test_videos_are_streamed_whole_under_unique_names(tmp_path: Path) -> None:
    sim = Simulator(generation_time=(0.1, 0.3), videos_per_task=2, seed=1)
    async with (
        sim.serve() as url,
        AsyncClient(
            TOKEN, base_url=url, rate_limit=RateLimit(100, 1.0), poll_interval=0.05
        ) as client,
    ):
        with anyio.fail_after(20):
            tasks = [await client.generate(prompt=f"p{i}") for i in range(2)]
            paths = [p for t in tasks for p in await client.download(t, tmp_path)]
            again = await client.download(tasks[0].task_id, tmp_path)
    assert len({p.name for p in paths}) == 4
    for path in paths:
        data = path.read_bytes()
        assert data[4:8] == b"ftyp"
        assert len(data) == sim.config.video_bytes
    assert again == paths[:2]
    assert not list(tmp_path.glob("*.part"))
    assert sim.stats.video_requests == 4
    assert sim.stats.video_requests_with_auth == 0


async def test_an_expired_link_says_so_and_how_to_get_a_fresh_one(tmp_path: Path) -> None:
    clock = ManualClock()
    sim = Simulator(clock=clock, generation_time=(1.0, 1.0), video_ttl=5.0, seed=2)
    async with (
        sim.serve() as url,
        AsyncClient(TOKEN, base_url=url, rate_limit=RateLimit(100, 1.0)) as client,
    ):
        task_id = await client.submit(prompt="p")
        clock.advance(2.0)
        task = await client.get_task(task_id)
        clock.advance(10.0)
        with pytest.raises(VideoExpiredError, match=r"expired.*get_task"):
            await client.download(task, tmp_path)
    assert not list(tmp_path.iterdir())


async def test_a_folder_that_cannot_be_written_is_a_download_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    sim = Simulator(generation_time=(0.1, 0.2), seed=2)
    async with (
        sim.serve() as url,
        AsyncClient(
            TOKEN, base_url=url, rate_limit=RateLimit(100, 1.0), poll_interval=0.05
        ) as client,
    ):
        with anyio.fail_after(20):
            task = await client.generate(prompt="p")
            with pytest.raises(DownloadError, match="cannot write"):
                await client.download(task, blocker / "videos")
