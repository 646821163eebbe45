"""Downloads: whole files or none, unique names, no token to the video host."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from grokimagine_async import AsyncClient, DownloadError, RateLimit, Task, VideoExpiredError
from grokimagine_async.simulator import Fault, ManualClock, Simulator
from grokimagine_async.simulator._video import fake_mp4

from .helpers import SIM_URL, TOKEN, on_virtual_clock, serving

pytestmark = [pytest.mark.anyio, pytest.mark.backends("asyncio", "trio")]


@asynccontextmanager
async def running(**sim_kwargs: Any) -> AsyncIterator[tuple[Simulator, AsyncClient]]:
    """The simulator on loopback, and a client that polls it often."""
    sim = Simulator(**sim_kwargs)
    async with (
        serving(sim) as url,
        AsyncClient(
            TOKEN, base_url=url, rate_limit=RateLimit(100, 1.0), poll_interval=0.05
        ) as client,
    ):
        yield sim, client


async def test_videos_are_streamed_whole_under_unique_names(tmp_path: Path) -> None:
    async with running(generation_time=(0.1, 0.3), videos_per_task=2, seed=1) as (sim, client):
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


@asynccontextmanager
async def expired(videos: int = 1) -> AsyncIterator[tuple[AsyncClient, Task]]:
    """A completed task whose links have expired, and a client to download it with."""
    clock = ManualClock()
    sim = Simulator(
        clock=clock, generation_time=(1.0, 1.0), video_ttl=5.0, videos_per_task=videos, seed=2
    )
    async with (
        serving(sim) as url,
        AsyncClient(TOKEN, base_url=url, rate_limit=RateLimit(100, 1.0)) as client,
    ):
        task_id = await client.submit(prompt="p")
        clock.advance(2.0)
        task = await client.get_task(task_id)
        clock.advance(10.0)
        yield client, task


async def test_an_expired_link_says_so_and_how_to_get_a_fresh_one(tmp_path: Path) -> None:
    async with expired() as (client, task):
        with pytest.raises(VideoExpiredError, match=r"expired.*get_task"):
            await client.download(task, tmp_path)
    assert not list(tmp_path.iterdir())


async def test_a_fresh_link_that_404s_once_is_tried_again(tmp_path: Path) -> None:
    async with running(generation_time=(0.1, 0.2), seed=4) as (sim, client):
        with anyio.fail_after(20):
            task = await client.generate(prompt="p")
            sim.inject(Fault.video_not_found(), endpoint="video")
            (path,) = await client.download(task, tmp_path)
    assert path.read_bytes()[4:8] == b"ftyp"
    assert sim.stats.faults["video_not_found"] == 1
    assert sim.stats.video_requests == 2


@pytest.mark.parametrize(
    "fault", [Fault.truncated_json(), Fault.empty_body(), Fault.error_in_200(503)]
)
async def test_a_video_answer_that_is_short_empty_or_no_video_is_fetched_again(
    fault: Fault, tmp_path: Path
) -> None:
    # Each comes with a length header that matches what was sent: only looking at the
    # file (an MP4 that ends inside a box, no bytes, a JSON page) tells.
    async with running(generation_time=(0.1, 0.2), video_bytes=4096, seed=5) as (sim, client):
        with anyio.fail_after(20):
            task = await client.generate(prompt="p")
            sim.inject(fault, endpoint="video")
            (path,) = await client.download(task, tmp_path)
    assert path.read_bytes() == fake_mp4(task.task_id, 1, 4096)
    assert sim.stats.video_requests == 2
    assert not list(tmp_path.glob("*.part"))


async def test_a_link_that_404s_twice_has_expired_whatever_the_retries(tmp_path: Path) -> None:
    sim = Simulator(generation_time=(0.1, 0.2), seed=6)
    async with (
        serving(sim) as url,
        AsyncClient(TOKEN, base_url=url, rate_limit=RateLimit(100, 1.0), max_retries=0) as client,
    ):
        with anyio.fail_after(20):
            task = await client.generate(prompt="p")
            gone = task.model_copy(update={"videos": (task.videos[0].replace("/1.mp4", "/9.mp4"),)})
            with pytest.raises(VideoExpiredError):
                await client.download(gone, tmp_path)
    assert sim.stats.video_requests == 2


async def test_a_folder_that_cannot_be_written_is_a_download_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    async with running(generation_time=(0.1, 0.2), seed=2) as (_, client):
        with anyio.fail_after(20):
            task = await client.generate(prompt="p")
            with pytest.raises(DownloadError, match="cannot write"):
                await client.download(task, blocker / "videos")


async def test_a_redirected_video_is_followed_without_the_token(tmp_path: Path) -> None:
    async with running(generation_time=(0.1, 0.2), video_redirect=True, seed=3) as (sim, client):
        with anyio.fail_after(20):
            task = await client.generate(prompt="p")
            (path,) = await client.download(task, tmp_path)
    assert path.read_bytes()[4:8] == b"ftyp"
    assert sim.stats.video_requests == 2  # the 302 and the signed location
    assert sim.stats.video_requests_with_auth == 0


async def test_a_cancelled_download_leaves_no_part_file(tmp_path: Path) -> None:
    half_written = anyio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        yield b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 4096
        half_written.set()
        await anyio.sleep_forever()

    def video_host(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "video/mp4"}, content=slow_body())

    task = Task.model_validate(
        {"task_id": "t1", "status": "completed", "response": ["https://cdn.test/v.mp4"]}
    )
    http = httpx.AsyncClient(transport=httpx.MockTransport(video_host))
    async with http, AsyncClient(TOKEN, base_url=SIM_URL, http_client=http) as client:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(client.download, task, tmp_path)
                await half_written.wait()
                assert [p.name for p in tmp_path.iterdir()] == ["t1_0.mp4.part"]
                tg.cancel_scope.cancel()
    assert list(tmp_path.iterdir()) == []


async def test_every_failed_video_of_a_task_is_reported(tmp_path: Path) -> None:
    async with expired(videos=3) as (client, task):
        with pytest.raises(VideoExpiredError) as info:
            await client.download(task, tmp_path)
    assert len(info.value.errors) == 3
    assert {e.url for e in info.value.errors} == set(task.videos)
    assert "3 of 3 videos" in str(info.value)
    assert info.value.downloaded == []


def test_a_download_backs_off_as_the_client_does_capped() -> None:
    """The wire's one backoff (doubling, jittered, capped at 8 s): five retries at a
    4 s start wait 4 + 8 + 8 + 8 + 8 s at most, not 4 + 8 + 16 + 32 + 64 (virtual time)."""
    failures = 5
    url = "https://cdn.test/t_1.mp4"

    def host(request: httpx.Request) -> httpx.Response:
        nonlocal failures
        if failures:
            failures -= 1
            return httpx.Response(503, text="busy")
        return httpx.Response(200, content=fake_mp4("t", 1, 4096))

    async def main(directory: Path) -> float:
        http = httpx.AsyncClient(transport=httpx.MockTransport(host))
        task = Task.model_validate({"task_id": "t", "status": "completed", "response": [url]})
        client = AsyncClient(TOKEN, base_url=SIM_URL, http_client=http, max_retries=5, backoff=4.0)
        async with http, client:
            started = anyio.current_time()
            await client.download(task, directory)
            return anyio.current_time() - started

    took: list[float] = []

    async def run() -> None:
        with tempfile.TemporaryDirectory() as folder:
            took.append(await main(Path(folder)))

    on_virtual_clock(run)
    assert failures == 0
    assert 0.75 * (4 + 8 * 4) <= took[0] <= 4 + 8 * 4
